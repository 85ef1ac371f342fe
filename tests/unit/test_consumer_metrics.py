"""The consumer runtime's per-event counters, as a scrape reads them (bus/metrics.py's collector)."""

from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families

from bus.metrics import ConsumerMetrics, exposition


def _samples(service: str) -> dict[tuple[str, str, str], float]:
    """(sample name, event, le) -> value of this service's samples in a fresh scrape."""
    found = {}
    for family in text_string_to_metric_families(exposition()[0].decode()):
        for sample in family.samples:
            if sample.labels.get("service") == service:
                found[(sample.name, sample.labels["event"], sample.labels.get("le", ""))] = sample.value
    return found


def test_a_scrape_reads_what_the_runtime_counted_per_service_and_event() -> None:
    service = f"svc.{uuid.uuid4().hex[:8]}"
    metrics = ConsumerMetrics(service)
    for _ in range(3):
        metrics.consumed("ip.finished")
    metrics.handled("ip.finished", 0.002)
    metrics.failed("ip.finished", 40.0)
    metrics.retried("ip.finished")
    metrics.parked("ip.finished")
    metrics.handled_batch(["pull.requested", "pull.requested", "ip.finished"])
    seen = _samples(service)
    assert seen[("hotupdate_events_consumed_total", "ip.finished", "")] == 3
    assert seen[("hotupdate_events_handled_total", "ip.finished", "")] == 2  # one alone, one in a batch
    assert seen[("hotupdate_events_handled_total", "pull.requested", "")] == 2
    assert seen[("hotupdate_events_retried_total", "ip.finished", "")] == 1
    assert seen[("hotupdate_events_parked_total", "ip.finished", "")] == 1
    # the latency: the handled and the failed handling, cumulative buckets, count and sum
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "0.001")] == 0
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "0.005")] == 1
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "30.0")] == 1
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "60.0")] == 2
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "+Inf")] == 2
    assert seen[("hotupdate_handler_duration_seconds_count", "ip.finished", "")] == 2
    assert seen[("hotupdate_handler_duration_seconds_sum", "ip.finished", "")] == 40.002


def test_a_bucket_bound_is_inclusive_and_two_runtimes_of_one_service_add_up() -> None:
    service = f"svc.{uuid.uuid4().hex[:8]}"
    ConsumerMetrics(service).handled("ip.finished", 0.1)  # le="0.1" holds 0.1 itself
    ConsumerMetrics(service).handled("ip.finished", 1000.0)  # beyond the last bound: +Inf only
    seen = _samples(service)
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "0.025")] == 0
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "0.1")] == 1
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "900.0")] == 1
    assert seen[("hotupdate_handler_duration_seconds_bucket", "ip.finished", "+Inf")] == 2
    assert seen[("hotupdate_events_handled_total", "ip.finished", "")] == 2


def test_switched_off_it_counts_nothing() -> None:
    service = f"svc.{uuid.uuid4().hex[:8]}"
    metrics = ConsumerMetrics(service, enabled=False)
    metrics.consumed("ip.finished")
    metrics.handled("ip.finished", 0.5)
    assert _samples(service) == {}
