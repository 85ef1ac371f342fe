"""Every Prometheus metric of hotupdate, defined once (docs/observability.md lists them).

Names follow Prometheus conventions: the ``hotupdate_`` prefix, the unit in the name
(``_seconds``), ``_total`` on counters. Label sets are bounded by the configuration: a
service name (``file_pull.recv1``), an event name of the catalogue (``ip.finished``), an
outcome, an update type, a queue name. Never an update id, an IP or a server: those are
unbounded, and they belong to traces and logs.

The metrics live in prometheus_client's default registry (one per process, which is what
a scrape reads); :func:`exposition` renders it for the ``/metrics`` routes.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import hmac
import ipaddress
import itertools
import time
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from bus.contract.events import CdnDirFinished, Event, IpFinished, UpdateCompleted

_SERVICE_EVENT = ("service", "event")
# Handlers run from a millisecond (a projection row) to minutes (an IP's hot update, a push).
_HANDLER_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300, 900)
_UPDATE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)

BATCH_SECONDS = Histogram("hotupdate_batch_duration_seconds",
                          "Time a batch handler took for one batch (batch services: the projection)", ("service",),
                          buckets=_HANDLER_BUCKETS)
QUEUE_MESSAGES = Gauge("hotupdate_queue_messages", "Messages ready in a queue (passive declare at scrape time)",
                       ("queue",))
QUEUE_CONSUMERS = Gauge("hotupdate_queue_consumers", "Consumers attached to a queue (passive declare at scrape time)",
                        ("queue",))
OUTBOX_PENDING = Gauge("hotupdate_outbox_pending_events", "CMDB outbox rows not yet confirmed by the broker")
OUTBOX_OLDEST_AGE = Gauge("hotupdate_outbox_oldest_age_seconds",
                          "Age of the oldest unpublished CMDB outbox row (0 when the outbox is empty)")
OUTBOX_PUBLISHED = Counter("hotupdate_outbox_published_total", "CMDB outbox rows published with a broker confirm")
UPDATES_FINISHED = Counter("hotupdate_updates_finished_total", "Updates an ops executor completed, by outcome",
                           ("update_type", "outcome"))
UPDATE_SECONDS = Histogram("hotupdate_update_duration_seconds",
                           "From an ops executor taking an update to its completion", ("update_type", "outcome"),
                           buckets=_UPDATE_BUCKETS)
IPS_FINISHED = Counter("hotupdate_ips_finished_total", "IPs an ops executor finished (ok: every server ok)",
                       ("outcome",))
SERVERS_FINISHED = Counter("hotupdate_servers_finished_total", "Game servers an ops executor finished",
                           ("outcome",))
CDN_DIRS_FINISHED = Counter("hotupdate_cdn_dirs_finished_total", "CDN dirs an ops executor finished", ("outcome",))
WEBHOOK_DELIVERIES = Counter("hotupdate_webhook_deliveries_total", "Webhook delivery attempts by the notifier",
                             ("outcome",))
PROJECTION_NEWEST = Gauge("hotupdate_projection_newest_event_timestamp_seconds",
                          "CloudEvents time of the newest event the projection wrote (Unix seconds)")
PROJECTION_LAG = Gauge("hotupdate_projection_lag_seconds",
                       "Now minus the time of the newest event the projection wrote")
READY = Gauge("hotupdate_ready", "1 when the component's /readyz answers ready", ("component",))


_projection_newest: list[float] = [0.0]  # what PROJECTION_NEWEST shows; the lag is computed from it at scrape time


def projection_wrote(newest: float) -> None:
    """The projection committed events up to this CloudEvents time (Unix seconds)."""
    if newest > _projection_newest[0]:
        _projection_newest[0] = newest
        PROJECTION_NEWEST.set(newest)


def _lag() -> float:
    newest = _projection_newest[0]
    return max(0.0, time.time() - newest) if newest else 0.0


PROJECTION_LAG.set_function(_lag)


class _Tally:
    """What one consumer service did with one event type: plain numbers, read at scrape time."""

    __slots__ = ("buckets", "consumed", "created", "handled", "parked", "retried", "seconds")

    def __init__(self) -> None:
        self.consumed = self.handled = self.retried = self.parked = 0
        self.buckets = [0] * (len(_HANDLER_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.seconds = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(_HANDLER_BUCKETS, seconds)] += 1  # le: the first bound >= seconds
        self.seconds += seconds


# Every (service, event) the consumer runtime counted in this process. The runtime counts on each
# delivery, so its counters are plain numbers (≈ 0.1 µs an increment) that a collector turns into
# Prometheus metric families at scrape time, rather than prometheus_client's locked values (≈ 1 µs
# each: the runtime's no-op-handler benchmark pays four of them an event; BENCHMARKS.md, section 1b).
# The runtime increments them on its event loop's thread only; a scrape in another thread copies
# them under the GIL and may read one delivery's counts half-applied, never a torn number.
_TALLIES: dict[tuple[str, str], _Tally] = {}


class _ConsumerCollector:
    """prometheus_client custom collector of the runtime's tallies (names as docs/observability.md lists them)."""

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        families = self._families()
        consumed, handled, retried, parked, latency = families
        bounds = [repr(float(b)) for b in _HANDLER_BUCKETS] + ["+Inf"]  # "0.001", "1.0": as Histogram writes them
        for (service, event), tally in list(_TALLIES.items()):
            labels = [service, event]
            consumed.add_metric(labels, tally.consumed, created=tally.created)
            handled.add_metric(labels, tally.handled, created=tally.created)
            retried.add_metric(labels, tally.retried, created=tally.created)
            parked.add_metric(labels, tally.parked, created=tally.created)
            cumulative = list(itertools.accumulate(list(tally.buckets)))
            latency.add_metric(labels, list(zip(bounds, cumulative, strict=True)), tally.seconds)
        return list(families)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, CounterMetricFamily,
                             HistogramMetricFamily]:
        labels = list(_SERVICE_EVENT)
        return (
            CounterMetricFamily("hotupdate_events_consumed_total",
                                "Deliveries taken from the service's queue (malformed ones as event=\"malformed\")",
                                labels=labels),
            CounterMetricFamily("hotupdate_events_handled_total", "Events a handler handled successfully",
                                labels=labels),
            CounterMetricFamily("hotupdate_events_retried_total",
                                "Failed handlings sent to a delay queue for a retry", labels=labels),
            CounterMetricFamily("hotupdate_events_parked_total", "Events moved to the service's parking queue",
                                labels=labels),
            HistogramMetricFamily("hotupdate_handler_duration_seconds",
                                  "Time a handler (or a batch handler, per event) took, successful or not",
                                  labels=labels),
        )


REGISTRY.register(_ConsumerCollector())


@dataclass
class ConsumerMetrics:
    """The counters of one consumer service, with each event's tally looked up once.

    ``enabled=False`` makes every call a no-op (the benchmarks' "off" side).
    """

    service: str
    enabled: bool = True
    _tallies: dict[str, _Tally] = field(default_factory=dict, repr=False)

    def _of(self, event: str) -> _Tally:
        tally = self._tallies.get(event)
        if tally is None:
            tally = self._tallies[event] = _TALLIES.setdefault((self.service, event), _Tally())
        return tally

    def consumed(self, event: str) -> None:
        if self.enabled:
            self._of(event).consumed += 1

    def handled(self, event: str, seconds: float) -> None:
        if self.enabled:
            tally = self._of(event)
            tally.handled += 1
            tally.observe(seconds)

    def handled_batch(self, events: list[str]) -> None:
        """Events a batch handler handled (their time is the batch's: hotupdate_batch_duration_seconds)."""
        if self.enabled:
            for event, count in collections.Counter(events).items():
                self._of(event).handled += count

    def failed(self, event: str, seconds: float) -> None:
        """A handling that raised: its time counts in the latency too."""
        if self.enabled:
            self._of(event).observe(seconds)

    def retried(self, event: str) -> None:
        if self.enabled:
            self._of(event).retried += 1

    def parked(self, event: str) -> None:
        if self.enabled:
            self._of(event).parked += 1


def record_result(event: Event, started: float | None = None) -> None:
    """Count what an ops executor reported: an IP's servers, a CDN dir, a completed update."""
    if isinstance(event, IpFinished):
        results = list(event.update_data.values()) + list(event.erl_data.values())
        IPS_FINISHED.labels(outcome="ok" if all(r.status for r in results) else "failed").inc()
        for name in set(event.update_data) | set(event.erl_data):
            ok = all(r.status for r in (event.update_data.get(name), event.erl_data.get(name)) if r is not None)
            SERVERS_FINISHED.labels(outcome="ok" if ok else "failed").inc()
    elif isinstance(event, CdnDirFinished):
        CDN_DIRS_FINISHED.labels(outcome="ok" if event.status else "failed").inc()
    elif isinstance(event, UpdateCompleted):
        UPDATES_FINISHED.labels(update_type=event.update_type, outcome=event.outcome).inc()
        if started is not None:
            UPDATE_SECONDS.labels(update_type=event.update_type, outcome=event.outcome).observe(
                time.monotonic() - started)


def exposition() -> tuple[bytes, str]:
    """The process's metrics in the Prometheus text format, and their content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def metrics_allowed(client_host: str | None, authorization: str | None, token_sha256: str | None) -> bool:
    """Who may read /metrics of an HTTP app that is otherwise signed in: loopback, or the configured token.

    Metrics carry no ids or addresses, but they do tell how busy the system is; a scraper on
    another host presents ``Authorization: Bearer <token>``, whose sha256 is
    ``telemetry.metrics_token_sha256`` (only the digest is configured, as for operators and readers).
    """
    if token_sha256 and authorization is not None:
        scheme, _, token = authorization.partition(" ")
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        return scheme.lower() == "bearer" and hmac.compare_digest(digest, token_sha256)
    try:
        return client_host is not None and ipaddress.ip_address(client_host).is_loopback
    except ValueError:
        return False
