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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

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

T = TypeVar("T")


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


async def consume_runtime(url: str, n: int, prefetch: int) -> float:
    """Events/s through ConsumerService (its metrics on, tracing off) to a no-op handler."""
    count = 0
    done = asyncio.Event()

    async def handler(msg: object, emit: object) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    spec = ServiceQueue(service="subject", bindings=(binding(PullRequested),))
    service = ConsumerService(amqp_url=url, queue=spec, handlers={PullRequested: handler},
                              source="hotupdate/bench", prefetch=prefetch)
    await declare_all(url, Topology(), [spec])
    await preload(url, Topology().queue("subject"), bodies(n), exchange=Topology().events_exchange)
    t0 = time.perf_counter()
    await service.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
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


async def one_round(fn: Callable[..., Awaitable[T]], *args: int) -> T:
    vhost, url = fresh_vhost()
    try:
        return await fn(url, *args)
    finally:
        drop_vhost(vhost)


async def paired(rounds: int, floor: Callable[..., Awaitable[float]], subject: Callable[..., Awaitable[float]],
                 *args: int) -> tuple[float, float, list[float]]:
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


@dataclass
class Halves:
    """One interleaved run's wall seconds, CPU seconds (the whole process) and events, with observability off and on."""

    wall: dict[bool, float] = field(default_factory=lambda: {False: 0.0, True: 0.0})
    cpu: dict[bool, float] = field(default_factory=lambda: {False: 0.0, True: 0.0})
    events: dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})

    def rate_ratio(self) -> float:
        """On's events/s over off's."""
        return (self.events[True] / self.wall[True]) / (self.events[False] / self.wall[False])

    def cpu_us(self, on: bool) -> float:
        return self.cpu[on] * 1e6 / self.events[on]


async def consume_interleaved(url: str, n: int, prefetch: int, sample_ratio: float, segment: int) -> Halves:
    """One consumer run of ``n`` events whose metrics and tracing switch off and on every ``segment`` events.

    Each on stretch sits between two off ones a fraction of a second away, so the VM's drift (a third
    within an hour, a quarter from minute to minute) falls on both halves alike: separate runs per
    variant gave rounds spread ±20 % around the ratio, interleaved ones ±3 %. The first segment
    (connections and caches warming) is not counted. The events carry a traceparent, sampled for a
    share ``sample_ratio`` of them, as an update's events do when its trace began in the CMDB.
    """
    count = 0
    done = asyncio.Event()
    halves = Halves()
    on = False
    mark: tuple[float, float] | None = None

    def switch() -> None:
        nonlocal on, mark
        now = (time.perf_counter(), time.process_time())
        if mark is not None:
            halves.wall[on] += now[0] - mark[0]
            halves.cpu[on] += now[1] - mark[1]
            halves.events[on] += segment
        on, mark = not on, now
        service.metrics.enabled = on
        observability.switch(on, sample_ratio)

    async def handler(msg: object, emit: object) -> None:
        nonlocal count
        count += 1
        if count % segment == 0:
            switch()
        if count == n:
            done.set()

    spec = ServiceQueue(service="subject", bindings=(binding(PullRequested),))
    service = ConsumerService(amqp_url=url, queue=spec, handlers={PullRequested: handler},
                              source="hotupdate/bench", prefetch=prefetch, metrics=False)
    observability.switch(False)
    await declare_all(url, Topology(), [spec])
    await preload(url, Topology().queue("subject"), bodies(n, sample_ratio), exchange=Topology().events_exchange)
    await service.start()
    await done.wait()
    await service.stop()
    observability.switch(False)
    return halves


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


async def observability_cost(n: int, rounds: int, prefetch: int, sample_ratio: float, segment: int) -> Section:
    """The consumer runtime with metrics and tracing on against off, interleaved within each run
    (:func:`consume_interleaved`), at ``sample_ratio`` and with every trace kept."""
    ratios = (sample_ratio, 1.0)
    runs: dict[float, list[Halves]] = {ratio: [] for ratio in ratios}
    for number in range(rounds):
        for ratio in ratios if number % 2 == 0 else ratios[::-1]:
            runs[ratio].append(await one_round(partial(consume_interleaved, sample_ratio=ratio, segment=segment),
                                               n, prefetch))
    spans = observability.spans_exported()
    calls = {ratio: observability_calls_us(ratio) for ratio in ratios}

    def row(ratio: float, label: str) -> list[list[str]]:
        rates = [halves.rate_ratio() for halves in runs[ratio]]
        cpu_off = _median([halves.cpu_us(False) for halves in runs[ratio]])
        cpu_on = _median([halves.cpu_us(True) for halves in runs[ratio]])
        return [[f"consume + ack, {n:,} events a run, prefetch {prefetch}: {label}", f"{_median(rates):.3f}",
                 f"{min(rates):.3f}–{max(rates):.3f}", "yes" if _median(rates) >= 0.95 else "no"],
                [f"CPU of the consumer's process per event, off → on (medians): {label}",
                 f"{cpu_off:,.0f} → {cpu_on:,.0f} µs ({cpu_off / cpu_on:.3f})", "", ""],
                [f"what 'on' adds per event, measured alone in a loop: {label}",
                 f"{calls[ratio]:.1f} µs ({calls[ratio] / cpu_off:.3f} of the off CPU)", "", ""]]

    return Section(
        name="bus-observability",
        title="1b. Bus: the cost of metrics and tracing in the consumer runtime",
        goal="with metrics and tracing on, ≥ 0.95 of the rate with them off",
        table=[["measure", "on/off (median of runs)", "runs' spread", "goal met"],
               *row(sample_ratio, f"traces sampled at {sample_ratio:g} (parent-based)"),
               *row(1.0, "every trace kept (ratio 1)")],
        notes=[f"{rounds} runs per variant on fresh vhosts, each switching metrics and tracing off and on every "
               f"{segment} events (on ≈ half the events; the first {segment} not counted): on and off interleaved "
               f"a fraction of a second apart, so the machine's drift falls on both; {spans:,} spans were recorded "
               "and exported (to an exporter that drops them: bench/observability.py)",
               "off: the runtime's counters disabled, no tracer; on: the counters and latency histogram of "
               "bus/metrics.py, a consumer span per event (recorded when sampled, none when the traceparent "
               "says unsampled) and its context for what the handler emits",
               f"the events carry a traceparent marked sampled for a share {sample_ratio:g} of them (ratio 1: "
               "all), the decision made where the trace started (the CMDB's request), followed by each consumer",
               "the 'alone' row runs the same calls in a tight loop, their code and data hot in the caches; in the "
               "consumer, between one event's span and the next, the broker client's code runs, and the same "
               "calls cost about twice as much"],
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--observability", action="store_true",
                        help="measure metrics and tracing on against off instead (section bus-observability)")
    parser.add_argument("--segment", type=int, default=500,
                        help="--observability: events between switching metrics and tracing off and on")
    parser.add_argument("--sample-ratio", type=float, default=TelemetryConfig().traces_sample_ratio,
                        help="--observability: the sampled variant's ratio (default: the configuration's default)")
    args = parser.parse_args()
    if args.observability:
        write(asyncio.run(observability_cost(args.events, args.rounds, args.prefetch, args.sample_ratio,
                                                  args.segment)))
        return
    write(asyncio.run(main(args.events, args.rounds, args.prefetch, args.in_flight)))


if __name__ == "__main__":
    cli()
