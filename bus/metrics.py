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

import collections
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from bus.contract.events import CdnDirFinished, Event, IpFinished, UpdateCompleted

_SERVICE_EVENT = ("service", "event")
# Handlers run from a millisecond (a projection row) to minutes (an IP's hot update, a push).
_HANDLER_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300, 900)
_UPDATE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)

EVENTS_CONSUMED = Counter("hotupdate_events_consumed_total",
                          "Deliveries taken from the service's queue (malformed ones as event=\"malformed\")",
                          _SERVICE_EVENT)
EVENTS_HANDLED = Counter("hotupdate_events_handled_total", "Events a handler handled successfully", _SERVICE_EVENT)
EVENTS_RETRIED = Counter("hotupdate_events_retried_total", "Failed handlings sent to a delay queue for a retry",
                         _SERVICE_EVENT)
EVENTS_PARKED = Counter("hotupdate_events_parked_total", "Events moved to the service's parking queue",
                        _SERVICE_EVENT)
HANDLER_SECONDS = Histogram("hotupdate_handler_duration_seconds",
                            "Time a handler (or a batch handler, per event) took, successful or not",
                            _SERVICE_EVENT, buckets=_HANDLER_BUCKETS)
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


@dataclass
class ConsumerMetrics:
    """The counters of one consumer service, with each (service, event) child looked up once.

    ``enabled=False`` makes every call a no-op (the benchmarks' "off" side).
    """

    service: str
    enabled: bool = True
    _children: dict[tuple[str, str], tuple[Counter, Counter, Counter, Counter, Histogram]] = field(
        default_factory=dict, repr=False)

    def _of(self, event: str) -> tuple[Counter, Counter, Counter, Counter, Histogram]:
        children = self._children.get((self.service, event))
        if children is None:
            labels = {"service": self.service, "event": event}
            children = (EVENTS_CONSUMED.labels(**labels), EVENTS_HANDLED.labels(**labels),
                        EVENTS_RETRIED.labels(**labels), EVENTS_PARKED.labels(**labels),
                        HANDLER_SECONDS.labels(**labels))
            self._children[(self.service, event)] = children
        return children

    def consumed(self, event: str) -> None:
        if self.enabled:
            self._of(event)[0].inc()

    def handled(self, event: str, seconds: float) -> None:
        if self.enabled:
            children = self._of(event)
            children[1].inc()
            children[4].observe(seconds)

    def handled_batch(self, events: list[str]) -> None:
        """Events a batch handler handled (their time is the batch's: hotupdate_batch_duration_seconds)."""
        if self.enabled:
            for event, count in collections.Counter(events).items():
                self._of(event)[1].inc(count)

    def failed(self, event: str, seconds: float) -> None:
        """A handling that raised: its time counts in the latency too."""
        if self.enabled:
            self._of(event)[4].observe(seconds)

    def retried(self, event: str) -> None:
        if self.enabled:
            self._of(event)[2].inc()

    def parked(self, event: str) -> None:
        if self.enabled:
            self._of(event)[3].inc()


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
