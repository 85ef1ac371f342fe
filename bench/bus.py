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
import random
import subprocess
import time
import uuid
from functools import partial

import aio_pika

from bench import observability
from bench.report import Section, write
from bus.consumer import ConsumerService
from bus.contract.envelope import Envelope
from bus.contract.events import PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.publisher import AsyncPublisher
from bus.topology import ServiceQueue, Topology, binding, declare_all
from domain.config import TelemetryConfig

BASE_URL = "amqp://guest:guest@127.0.0.1:5672/"


def fresh_vhost() -> tuple[str, str]:
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    return vhost, f"{BASE_URL}{vhost}"


def drop_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


def envelopes(n: int, sampled_share: float | None = None) -> list[Envelope]:
    """``n`` *pull requested* envelopes of ``n`` updates.

    ``sampled_share``: each carries a ``traceparent``, as the events of an update the CMDB started
    in a request span do, marked sampled with this probability (the decision made where the trace
    started); None: no trace context.
    """
    rng = random.Random(7)

    def trace_context() -> dict[str, str] | None:
        if sampled_share is None:
            return None
        flags = "01" if rng.random() < sampled_share else "00"
        return {"traceparent": f"00-{rng.getrandbits(128) | 1:032x}-{rng.getrandbits(64) | 1:016x}-{flags}"}

    return [make_envelope(EXAMPLES[0], source="hotupdate/cmdb", updateid=f"u-{i}", project="ssss", area="cn",
                          extensions=trace_context()) for i in range(n)]


def bodies(n: int, sampled_share: float | None = None) -> list[bytes]:
    return [envelope.to_bytes() for envelope in envelopes(n, sampled_share)]


async def preload(url: str, queue: str, payloads: list[bytes], *, exchange: str | None = None) -> None:
    """Put ``payloads`` in ``queue`` (declared already), confirmed, before a measurement starts.

    ``exchange``: publish to this topic exchange with each envelope's routing key instead, as a
    publisher does; a service queue needs that (its consumer parks an event published with a
    routing key that is not its envelope's).
    """
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    target = await channel.get_exchange(exchange) if exchange else channel.default_exchange
    keys = [Envelope.from_bytes(body).routing_key for body in payloads] if exchange else [queue] * len(payloads)
    sem = asyncio.Semaphore(256)

    async def one(body: bytes, key: str) -> None:
        async with sem:
            await target.publish(aio_pika.Message(body, delivery_mode=2), routing_key=key)

    await asyncio.gather(*(one(b, k) for b, k in zip(payloads, keys, strict=True)))
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


async def consume_runtime(url: str, n: int, prefetch: int, *, metrics: bool = True, sample_ratio: float | None = None,
                          upstream: float | None = None, cpu_us: list[float] | None = None) -> float:
    """Events/s through ConsumerService to a no-op handler; tracing on when ``sample_ratio`` is given.

    ``upstream``: the events carry trace context, this share of it sampled (:func:`envelopes`)."""
    count = 0
    done = asyncio.Event()

    async def handler(msg: object, emit: object) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    spec = ServiceQueue(service="subject", bindings=(binding(PullRequested),))
    service = ConsumerService(amqp_url=url, queue=spec, handlers={PullRequested: handler},
                              source="hotupdate/bench", prefetch=prefetch, metrics=metrics)
    observability.switch(sample_ratio is not None, sample_ratio or 1.0)
    await declare_all(url, Topology(), [spec])
    await preload(url, Topology().queue("subject"), bodies(n, upstream), exchange=Topology().events_exchange)
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


# The observability cost: three variants of the consumer runtime, measured in the same rounds.
# None: metrics and tracing off; a ratio: metrics on, tracing on with that parent-based sampling.
Variant = float | None


async def _consume_variant(url: str, n: int, prefetch: int, variant: Variant, upstream: float,
                           cpu_us: list[float]) -> float:
    return await consume_runtime(url, n, prefetch, metrics=variant is not None, sample_ratio=variant,
                                 upstream=upstream, cpu_us=cpu_us)


def observability_calls_us(sample_ratio: float, n: int = 20_000) -> float:
    """CPU µs per event of what the runtime adds when on, alone: counters, histogram, a span, a child's context."""
    from bus import tracing
    from bus.metrics import ConsumerMetrics

    sample = envelopes(n, sample_ratio)

    def loop(metrics: ConsumerMetrics) -> float:
        cpu0 = time.process_time()
        for env in sample:
            metrics.consumed("pull.requested")
            with tracing.handling(env, "bench-calls"):
                tracing.child_extensions(env)
            metrics.handled("pull.requested", 0.001)
        return time.process_time() - cpu0

    observability.switch(True, sample_ratio)
    on = loop(ConsumerMetrics("bench-calls"))
    observability.switch(False)
    off = loop(ConsumerMetrics("bench-calls", enabled=False))
    return (on - off) * 1e6 / n


async def observability_cost(n: int, rounds: int, prefetch: int, sample_ratio: float) -> Section:
    """The consumer runtime with metrics and tracing off, on with ``sample_ratio``, and on tracing everything.

    The three run in each round, their order rotated round by round, so each round's ratios
    compare runs taken moments apart and no variant always runs first.
    """
    variants: list[Variant] = [None, sample_ratio, 1.0]
    rates: dict[int, list[float]] = {i: [] for i in range(3)}
    cpus: dict[int, list[float]] = {i: [] for i in range(3)}
    for number in range(rounds):
        for i in [(number + k) % 3 for k in range(3)]:
            upstream = variants[i] if variants[i] is not None else sample_ratio  # off: the sampled run's events
            rates[i].append(await one_round(partial(_consume_variant, variant=variants[i], upstream=upstream,
                                                    cpu_us=cpus[i]), n, prefetch))
    spans = observability.spans_exported()
    calls = {ratio: observability_calls_us(ratio) for ratio in (sample_ratio, 1.0)}
    cpu_off = _median(cpus[0])

    def row(i: int, label: str) -> list[list[str]]:
        ratios = [on / off for on, off in zip(rates[i], rates[0], strict=True)]
        ratio, cpu = _median(ratios), _median(cpus[i])
        ratio_of = variants[i] or 0.0
        return [[f"consume + ack, {n} events, prefetch {prefetch}: {label}", f"{max(rates[0]):,.0f} ev/s",
                 f"{max(rates[i]):,.0f} ev/s", f"{ratio:.2f}", f"{min(ratios):.2f}–{max(ratios):.2f}",
                 "yes" if ratio >= 0.95 else "no"],
                [f"CPU of the consumer's process per event (median of rounds): {label}", f"{cpu_off:,.0f} µs",
                 f"{cpu:,.0f} µs", f"{cpu_off / cpu:.2f}",
                 f"off {min(cpus[0]):,.0f}–{max(cpus[0]):,.0f} µs, on {min(cpus[i]):,.0f}–{max(cpus[i]):,.0f} µs",
                 "yes" if cpu_off / cpu >= 0.95 else "no"],
                [f"what 'on' adds per event, measured alone (counters, histogram, span, child context): {label}",
                 "", f"{calls[ratio_of]:.1f} µs", f"{calls[ratio_of] / cpu_off:.3f} of the off CPU", "",
                 "yes" if calls[ratio_of] / cpu_off <= 0.05 else "no"]]

    return Section(
        name="bus-observability",
        title="1b. Bus: the cost of metrics and tracing in the consumer runtime",
        goal="with metrics and tracing on, ≥ 0.95 of the rate with them off",
        table=[["measure", "off, best round", "on, best round", "ratio on/off (median of paired rounds)",
                "spread of the rounds", "goal met"],
               *row(1, f"traces sampled at {sample_ratio:g} (parent-based)"),
               *row(2, "every trace kept (ratio 1)")],
        notes=[f"{rounds} rounds, each running off, sampled and every-trace (order rotated by round) on fresh "
               f"vhosts; {spans:,} spans were recorded and exported (to an exporter that drops them: "
               "bench/observability.py), unsampled ones are never recorded",
               "off: ConsumerService(metrics=False), no tracing set up; on: the counters and latency histogram "
               "of bus/metrics.py, a consumer span per event (recording only when sampled) and its context "
               "injected into what the handler emits",
               "the events carry a traceparent as an update's events do (its trace started in the CMDB's request "
               f"span), marked sampled for a share {sample_ratio:g} of them (ratio 1: all): the decision made "
               "where the trace started, which each consumer follows; an unsampled event's handler runs without "
               "a span and its children carry its traceparent on",
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
    parser.add_argument("--sample-ratio", type=float, default=TelemetryConfig().traces_sample_ratio,
                        help="--observability: the sampled variant's ratio (default: the configuration's default)")
    args = parser.parse_args()
    if args.observability:
        write(asyncio.run(observability_cost(args.events, args.rounds, args.prefetch, args.sample_ratio)))
        return
    write(asyncio.run(main(args.events, args.rounds, args.prefetch, args.in_flight)))


if __name__ == "__main__":
    cli()
