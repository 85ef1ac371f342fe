"""Bus benchmark: the consumer runtime and the async publisher against bare aio-pika.

1. Consume: N valid envelopes pre-loaded in a queue; the floor is a bare aio-pika
   consume-and-ack loop, the subject is ConsumerService (parse, validate, dispatch to a
   no-op handler, ack), same prefetch. Goal ≥ 0.8 of the floor.
2. Publish: N confirmed publishes with the same number in flight; floor bare aio-pika on
   a confirming channel, subject AsyncPublisher. Goal ≥ 0.8 of the floor.

Each runs on its own fresh vhost; floor and subject alternate, best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import uuid

import aio_pika

from bench import observability
from bench.report import Section, write
from bus.consumer import ConsumerService
from bus.events import PullRequested
from bus.examples import EXAMPLES
from bus.publisher import AsyncPublisher
from bus.registry import make_envelope
from bus.topology import ServiceQueue, Topology, binding, declare_all

BASE_URL = "amqp://guest:guest@127.0.0.1:5672/"


def fresh_vhost() -> tuple[str, str]:
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    return vhost, f"{BASE_URL}{vhost}"


def drop_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


def bodies(n: int) -> list[bytes]:
    return [make_envelope(EXAMPLES[0], source="hotupdate/cmdb", updateid=f"u-{i}", project="ssss",
                          area="cn").to_bytes() for i in range(n)]


async def preload(url: str, queue: str, payloads: list[bytes]) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    sem = asyncio.Semaphore(256)

    async def one(body: bytes) -> None:
        async with sem:
            await channel.default_exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key=queue)

    await asyncio.gather(*(one(b) for b in payloads))
    await connection.close()


async def consume_floor(url: str, n: int, prefetch: int) -> float:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue("floor", durable=True, arguments={"x-queue-type": "quorum"})
    await preload(url, "floor", bodies(n))
    done = asyncio.Event()
    count = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        await message.ack()
        count += 1
        if count == n:
            done.set()

    t0 = time.perf_counter()
    await queue.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await connection.close()
    return n / elapsed


async def consume_runtime(url: str, n: int, prefetch: int, observe: bool = True,
                          cpu_us: list[float] | None = None) -> float:
    count = 0
    done = asyncio.Event()

    async def handler(msg: object, emit: object) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    spec = ServiceQueue(service="subject", bindings=(binding(PullRequested),))
    service = ConsumerService(amqp_url=url, queue=spec, handlers={PullRequested: handler},
                              source="hotupdate/bench", prefetch=prefetch, metrics=observe)
    observability.switch(observe)
    await declare_all(url, Topology(), [spec])
    await preload(url, Topology().queue("subject"), bodies(n))
    cpu0, t0 = time.process_time(), time.perf_counter()
    await service.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
    if cpu_us is not None:  # this process's CPU per event: steadier than the rate on a shared machine
        cpu_us.append((time.process_time() - cpu0) * 1e6 / n)
    await service.stop()
    return n / elapsed


async def publish_floor(url: str, n: int, in_flight: int) -> float:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange("floor.events", aio_pika.ExchangeType.TOPIC, durable=True)
    payloads = bodies(n)
    sem = asyncio.Semaphore(in_flight)

    async def one(body: bytes) -> None:
        async with sem:
            await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="ssss.cn.x.v1")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in payloads))
    elapsed = time.perf_counter() - t0
    await connection.close()
    return n / elapsed


async def publish_subject(url: str, n: int, in_flight: int) -> float:
    envelopes = [make_envelope(EXAMPLES[0], source="hotupdate/cmdb", updateid=f"u-{i}", project="ssss", area="cn")
                 for i in range(n)]
    sem = asyncio.Semaphore(in_flight)
    async with AsyncPublisher(url) as publisher:
        async def one(env: object) -> None:
            async with sem:
                await publisher.publish(env)  # type: ignore[arg-type]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(e) for e in envelopes))
        return n / (time.perf_counter() - t0)


async def one_round(fn: object, *args: int) -> float:
    vhost, url = fresh_vhost()
    try:
        return float(await fn(url, *args))  # type: ignore[operator]
    finally:
        drop_vhost(vhost)


async def paired(rounds: int, floor: object, subject: object, *args: int) -> tuple[float, float, list[float]]:
    """Best floor rate, best subject rate, and each round's subject/floor ratio.

    Rounds alternate floor and subject, so each ratio compares two runs taken moments apart:
    on a shared 2-core machine the rates drift by a quarter from minute to minute, which
    separate best-ofs taken a minute apart turned into a ratio anywhere from 0.66 to 0.91.
    """
    floors, subjects = [], []
    for _ in range(rounds):
        floors.append(await one_round(floor, *args))
        subjects.append(await one_round(subject, *args))
    return max(floors), max(subjects), [s / f for s, f in zip(subjects, floors, strict=True)]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


async def main(n: int, rounds: int, prefetch: int, in_flight: int) -> Section:
    c_floor, c_subject, c_ratios = await paired(rounds, consume_floor, consume_runtime, n, prefetch)
    p_floor, p_subject, p_ratios = await paired(rounds, publish_floor, publish_subject, n, in_flight)
    c_ratio, p_ratio = _median(c_ratios), _median(p_ratios)

    def spread(ratios: list[float]) -> str:
        return f"{min(ratios):.2f}–{max(ratios):.2f}"

    return Section(
        name="bus",
        title="1. Bus: consumer runtime and async publisher vs bare aio-pika",
        goal="≥ 0.8 of the bare aio-pika floor for both",
        table=[
            ["measure", "floor (bare aio-pika), best round", "hotupdate, best round",
             "ratio (median of paired rounds)", "ratios of the rounds", "goal met"],
            [f"consume + ack, {n} events, prefetch {prefetch}", f"{c_floor:,.0f} ev/s", f"{c_subject:,.0f} ev/s",
             f"{c_ratio:.2f}", spread(c_ratios), "yes" if c_ratio >= 0.8 else "no"],
            [f"confirmed publish, {n} events, {in_flight} in flight", f"{p_floor:,.0f} ev/s",
             f"{p_subject:,.0f} ev/s", f"{p_ratio:.2f}", spread(p_ratios), "yes" if p_ratio >= 0.8 else "no"],
        ],
        notes=[f"{rounds} rounds, each the floor then hotupdate on fresh vhosts; the ratio is the median of the "
               "rounds' ratios (each compares two runs taken moments apart); quorum queues, persistent messages",
               "the runtime's extra work per event: JSON parse, envelope and payload validation (pydantic), "
               "dispatch by type, a log line; no idempotency store in this measurement",
               "the runtime parses an envelope in one pass (`model_validate_json`; a body it refuses is parsed "
               "again the old way, to name the problem as before) and finds an event's newest version in a table "
               "kept per registry",
               "the consume ratio sits at the goal's edge and moves with the machine: 0.81 (0.69–1.20) on the machine "
               "of 2026-11-24 13:55 (kernel 6.18.44-fc-v657); 0.78, 0.73 and 0.73 in three runs on the one of 16:46 "
               "(…-v669), where the runtime's CPU per event varied from 118 to 177 µs between runs of the same code "
               "minutes apart and the same code before that day's decoding changes measured the same. The runtime's "
               "own work per event, profiled, is ≈ 20–30 µs (parse and validation, dispatch)",
               "on the machine of 2026-11-24 evening (kernel …-v782) the bare consume floor is 3,200–5,100 ev/s "
               "from run to run (10,510 on the one of 17:01): the \"about 3,500/s\" issue 8 quotes. Full "
               "collections of the garbage collector were checked there as a cause of the gap (they took up to "
               "120 ms in the dashboard's process): one or two per 10,000 events, for the floor as for the "
               "runtime, so not the difference"],
    )


CPU_OFF: list[float] = []
CPU_ON: list[float] = []


async def consume_observed_off(url: str, n: int, prefetch: int) -> float:
    return await consume_runtime(url, n, prefetch, observe=False, cpu_us=CPU_OFF)


async def consume_observed_on(url: str, n: int, prefetch: int) -> float:
    return await consume_runtime(url, n, prefetch, observe=True, cpu_us=CPU_ON)


def observability_calls_us(n: int = 20_000) -> float:
    """CPU µs per event of what the runtime adds when on, alone: counters, histogram, a span, a child's context."""
    from bus import tracing
    from bus.metrics import ConsumerMetrics

    env = make_envelope(EXAMPLES[0], source="hotupdate/cmdb", updateid="u-1", project="ssss", area="cn")
    metrics = ConsumerMetrics("bench-calls")
    observability.switch(True)
    cpu0 = time.process_time()
    for _ in range(n):
        metrics.consumed("pull.requested")
        with tracing.handling(env, "bench-calls"):
            tracing.child_trace(env)
        metrics.handled("pull.requested", 0.001)
    on = time.process_time() - cpu0
    observability.switch(False)
    metrics.enabled = False
    cpu0 = time.process_time()
    for _ in range(n):
        metrics.consumed("pull.requested")
        with tracing.handling(env, "bench-calls"):
            tracing.child_trace(env)
        metrics.handled("pull.requested", 0.001)
    off = time.process_time() - cpu0
    return (on - off) * 1e6 / n


async def observability_cost(n: int, rounds: int, prefetch: int) -> Section:
    """The consumer runtime with metrics and tracing off, then on, in paired rounds."""
    off, on, ratios = await paired(rounds, consume_observed_off, consume_observed_on, n, prefetch)
    ratio = _median(ratios)
    cpu_off, cpu_on = _median(CPU_OFF), _median(CPU_ON)
    calls = observability_calls_us()
    return Section(
        name="bus-observability",
        title="1b. Bus: the cost of metrics and tracing in the consumer runtime",
        goal="with metrics and tracing on, ≥ 0.95 of the rate with them off",
        table=[["measure", "off, best round", "on, best round", "ratio on/off (median of paired rounds)",
                "ratios of the rounds", "goal met"],
               [f"consume + ack, {n} events, prefetch {prefetch}", f"{off:,.0f} ev/s", f"{on:,.0f} ev/s",
                f"{ratio:.2f}", f"{min(ratios):.2f}–{max(ratios):.2f}", "yes" if ratio >= 0.95 else "no"],
               ["CPU of the consumer's process per event (median of rounds)", f"{cpu_off:,.0f} µs",
                f"{cpu_on:,.0f} µs", f"{cpu_off / cpu_on:.2f}", "", "yes" if cpu_off / cpu_on >= 0.95 else "no"],
               ["what 'on' adds per event, measured alone (counters, histogram, span, child context)", "",
                f"{calls:.1f} µs", f"{calls / cpu_off:.2f} of the off CPU", "",
                "yes" if calls / cpu_off <= 0.05 else "no"]],
        notes=[f"{rounds} rounds, each off then on, on fresh vhosts; {observability.spans_exported():,} spans "
               "were made and exported (to an exporter that drops them: bench/observability.py)",
               "off: ConsumerService(metrics=False), no tracing set up; on: the counters and latency histogram "
               "of bus/metrics.py, a consumer span per event continuing its traceparent",
               "the machine's 2 cores were shared with other engineers' work while this ran: the rounds' "
               "spread is the machine's as much as the code's"],
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--observability", action="store_true",
                        help="measure metrics and tracing on against off instead (section bus-observability)")
    args = parser.parse_args()
    if args.observability:
        write(asyncio.run(observability_cost(args.events, args.rounds, args.prefetch)))
        return
    write(asyncio.run(main(args.events, args.rounds, args.prefetch, args.in_flight)))


if __name__ == "__main__":
    cli()
