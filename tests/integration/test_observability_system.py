"""A real hot_server update across every component as its own process, watched as an operator would.

Each component serves /metrics (consumers on telemetry.listen_ports, the CMDB and the dashboard
on their own apps); the counters move as the update did. Each exports its spans over OTLP/HTTP
to a small collector this test runs on loopback. Nothing is sampled on its own (ratio 0): the
operator asks for the push to be traced (``hotupdate update push --trace``), and it is one trace
across the CMDB, file_push, the ops executor and the projection, while the pull left no span.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from demo.rsyncd import free_port
from demo.world import SERVERS
from tests.system import BUMP, FINAL, erlang_commands, running_system

pytestmark = [pytest.mark.rabbit, pytest.mark.erlang, pytest.mark.rsync, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IPS = sum(len(ips) for ips in SERVERS.values())
GAME_SERVERS = sum(len(servers) for ips in SERVERS.values() for servers in ips.values())


class Collector:
    """An OTLP/HTTP traces endpoint on loopback: keeps each span's service, trace id and attributes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    for resource_spans in request.resource_spans:
                        service = next((a.value.string_value for a in resource_spans.resource.attributes
                                        if a.key == "service.name"), "")
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                spans.append({"service": service, "trace": span.trace_id.hex(), "name": span.name,
                                              "attributes": {a.key: a.value.string_value for a in span.attributes}})
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) → value."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def test_metrics_move_with_a_real_update_and_its_trace_spans_four_processes(
        tmp_path, amqp_url, collector, monkeypatch) -> None:
    ports = {"file_pull.recv1": free_port(), "file_push.recv1": free_port(), "ops_executor.ops1": free_port(),
             "projection": free_port()}
    commands = erlang_commands("c:l(role_server).", BUMP)

    def configure(config: dict[str, Any]) -> None:
        commands(config)
        config["telemetry"] = {"listen_ports": ports, "traces_endpoint": collector.url, "traces_sample_ratio": 0}

    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the children export their spans every 0.2 s
    with running_system(tmp_path / "world", amqp_url, configure) as system:
        urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
        cmdb, dashboard = system.components.cmdb_url, system.components.dashboard_url.rstrip("/")
        for base in [*urls.values(), cmdb, dashboard]:
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200
            ready = httpx.get(base + "/readyz", timeout=10)
            assert ready.status_code == 200, (base, ready.text)
        before = {name: scrape(url + "/metrics") for name, url in [*urls.items(), ("cmdb", cmdb)]}

        update_id = system.post_update()
        assert system.wait_state(update_id, {"pulled"} | FINAL)["state"] == "pulled"
        pushed = subprocess.run([sys.executable, "-m", "cli.main", "update", "push", update_id, "--trace",
                                 "--url", cmdb, "--token", system.world.token],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        (asked,) = [line.split()[1] for line in pushed.stderr.splitlines() if line.startswith("trace ")]
        assert system.wait_state(update_id, FINAL, timeout=120)["state"] == "failed"  # qq_4 fails on purpose
        system.wait_logged(update_id, "hotupdate.update.completed.v2")
        after = {name: scrape(url + "/metrics") for name, url in [*urls.items(), ("cmdb", cmdb)]}

        def moved(component: str, name: str, **labels: str) -> float:
            return value(after[component], name, **labels) - value(before[component], name, **labels)

        handled = "hotupdate_events_handled_total"
        assert moved("file_pull.recv1", handled, service="file_pull.recv1", event="pull.requested") == 1
        assert moved("file_push.recv1", handled, service="file_push.recv1", event="push.requested") == 1
        assert moved("ops_executor.ops1", handled, service="ops_executor.ops1", event="update.requested") == 1
        assert moved("ops_executor.ops1", "hotupdate_ips_finished_total") == IPS
        assert moved("ops_executor.ops1", "hotupdate_ips_finished_total", outcome="failed") == 1
        assert moved("ops_executor.ops1", "hotupdate_servers_finished_total") == GAME_SERVERS
        assert moved("ops_executor.ops1", "hotupdate_servers_finished_total", outcome="failed") == 1
        assert moved("ops_executor.ops1", "hotupdate_updates_finished_total",
                     update_type="hot_server", outcome="failed") == 1
        assert moved("ops_executor.ops1", "hotupdate_update_duration_seconds_count", update_type="hot_server") == 1
        assert moved("cmdb", handled, service="cmdb", event="ip.finished") == IPS
        assert moved("cmdb", "hotupdate_outbox_published_total") >= 3  # pull, push and update requested
        assert value(after["cmdb"], "hotupdate_outbox_pending_events") == 0
        # the CMDB sees every configured queue: the ops executor's has its consumer
        assert value(after["cmdb"], "hotupdate_queue_consumers", queue="hotupdate.ops_executor.ops1") == 1
        assert moved("ops_executor.ops1", "hotupdate_handler_duration_seconds_count",
                     service="ops_executor.ops1", event="update.requested") == 1
        system.wait_until(lambda: moved_projection(urls["projection"], before["projection"]) >= IPS,
                          "the projection's ip.finished counter", timeout=30)
        projection = scrape(urls["projection"] + "/metrics")
        assert value(projection, "hotupdate_queue_consumers", queue="hotupdate.projection") == 1
        assert 0 <= value(projection, "hotupdate_projection_lag_seconds") < 600
        board = scrape(dashboard + "/metrics")
        assert value(board, "hotupdate_projection_newest_event_timestamp_seconds") > time.time() - 600

        # One trace, the one the operator asked for: the push request at the CMDB, file_push, the
        # CMDB's process manager, the ops executor, the projection (a batch span is a child of its
        # first event's trace).
        def services_in(trace: str) -> set[str]:
            return {s["service"] for s in list(collector.spans) if s["trace"] == trace}

        four = {"cmdb", "file_push.recv1", "ops_executor.ops1", "projection"}
        system.wait_until(lambda: four <= services_in(asked), "the push's trace across four processes", timeout=30)
        executor_traces = {s["trace"] for s in collector.spans if s["service"] == "ops_executor.ops1"
                           and s["attributes"].get("hotupdate.update_id") == update_id}
        assert executor_traces == {asked}
        # the trace starts at the operator's request: the CMDB's server span of POST …/push
        assert any(s["service"] == "cmdb" and s["name"] == "HTTP POST" and s["trace"] == asked
                   and s["attributes"].get("url.path", "").endswith("/push") for s in collector.spans)
        commands = [s for s in collector.spans if s["name"] == "remote command" and s["trace"] == asked]
        assert {s["attributes"]["server.address"] for s in commands} == {ip for ips in SERVERS.values() for ip in ips}
        # the pull (and every status poll) was not asked for and the ratio keeps nothing: no span of it anywhere
        assert {s["trace"] for s in collector.spans} == {asked}


def moved_projection(url: str, before: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    now = scrape(url + "/metrics")
    name, labels = "hotupdate_events_handled_total", {"service": "projection", "event": "ip.finished"}
    return value(now, name, **labels) - value(before, name, **labels)
