"""The projection's ingest worker process: same results as in-process, replaced when it dies, dies with its service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from projections import ingest
from projections import log as event_log
from projections.ingest.worker import IngestWorker, IngestWorkerError, decode_batch, encode_batch
from projections.models import AppliedEvent
from tests.projection_support import hot_client_flow, hot_server_flow, ip_finished, item, migrated_engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'projection.db'}"
    return request.getfixturevalue("postgres_url")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by a parent that is itself gone) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_batches_are_framed_byte_for_byte():
    bodies = [b"", b"{}", "é".encode() * 1000, bytes(range(256))]
    assert decode_batch(encode_batch(bodies)) == (bodies, [""] * len(bodies))
    assert decode_batch(encode_batch(bodies, ["hotupdate.cmdb"] * len(bodies)))[1] == ["hotupdate.cmdb"] * len(bodies)


async def test_the_worker_ingests_like_the_service_would_in_process(database_url, tmp_path):
    flow = hot_server_flow(complete=False) + hot_client_flow()
    poison = ip_finished(flow[4][0], "fe80::1%" + "x" * 200, "game", {"qq_9": True}, offset=40, minutes=9)
    batches = [flow[:5], [*flow[5:], item(poison), *flow[:3]]]  # a poison event and redeliveries
    in_process = migrated_engine(f"sqlite:///{tmp_path / 'in_process.db'}")
    migrated_engine(database_url).dispose()
    worker = IngestWorker(database_url)
    try:
        for batch in batches:
            got = await worker.ingest([env.to_bytes() for env, _ in batch])
            expected = ingest.ingest_batch(in_process, batch)
            assert [(o.event_id, o.status, o.position) for o in got] == [
                (o.event_id, o.status, o.position) for o in expected]
            for g, e in zip(got, expected, strict=True):
                assert (g.error is None) == (e.error is None)
                if e.error is not None:
                    assert str(e.error) in str(g.error) and type(e.error).__name__ in str(g.error)
    finally:
        await worker.close()
        in_process.dispose()
    engine = migrated_engine(database_url)
    with Session(engine) as s:
        verified = event_log.verify(s)
        applied = s.scalars(select(AppliedEvent.event_id)).all()
    engine.dispose()
    assert verified.ok and verified.count == len(flow) + 1
    assert poison.id not in applied and len(applied) == len(flow)


async def test_a_worker_that_dies_fails_its_batch_and_the_next_batch_gets_a_new_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    migrated_engine(url).dispose()
    flow = hot_server_flow()
    worker = IngestWorker(url)
    try:
        await worker.start()
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(IngestWorkerError):
            await worker.ingest([env.to_bytes() for env, _ in flow])
        outcomes = await worker.ingest([env.to_bytes() for env, _ in flow])  # the runtime's retry
        assert worker.pid not in (None, first)
        assert [o.status for o in outcomes] == ["appended"] * len(flow)
    finally:
        await worker.close()
    assert not _alive(first)


def test_the_worker_dies_with_its_service_even_on_kill_9(tmp_path):
    url = f"sqlite:///{tmp_path / 'projection.db'}"
    migrated_engine(url).dispose()
    service = textwrap.dedent(f"""
        import asyncio, sys
        from projections.ingest.worker import IngestWorker

        async def main():
            worker = IngestWorker({url!r})
            await worker.start()
            print(worker.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", service], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        worker_pid = int(proc.stdout.readline())
        assert _alive(worker_pid)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
