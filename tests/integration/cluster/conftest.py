"""The three-node RabbitMQ cluster for the tests that need one (issue 20): started once per session, healed
between tests (a node a test killed is started again), a fresh vhost per test, stopped at the end.

The tier runs in ``make test``, so it is bounded: each test (its setup and teardown included) gets
``SECONDS_BOUND`` seconds (a module may set its own), and the whole tier ``TIER_SECONDS`` from the
cluster's start; a test past either fails and the next ones fail at once, instead of holding CI up.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.rabbit_cluster import RabbitCluster, start_cluster

SECONDS_BOUND = 150
TIER_SECONDS = 15 * 60  # it takes 3.5-4 minutes on the shared, loaded 2-CPU machine


class _Budget:
    deadline: float | None = None  # set when the session's cluster has started


@pytest.fixture(autouse=True)
def bounded(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a cluster test that runs past its bound or the tier's (SIGALRM: also interrupts blocking calls)."""
    bound = float(getattr(request.module, "SECONDS_BOUND", SECONDS_BOUND))
    left = _Budget.deadline - time.monotonic() if _Budget.deadline is not None else bound
    if left <= 1:
        pytest.fail(f"the cluster tier ran past its {TIER_SECONDS}s budget", pytrace=False)
    seconds = min(bound, left)

    def expire(_signum: int, _frame: FrameType | None) -> None:
        pytest.fail(f"cluster test ran past its bound of {seconds:.0f}s", pytrace=True)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three clustered nodes on loopback, with their own names, ports, data and cookie."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("rabbit-cluster"))
    except RuntimeError as exc:
        pytest.fail(f"could not start the three-node cluster: {exc}", pytrace=False)
    _Budget.deadline = time.monotonic() + TIER_SECONDS
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster) -> Iterator[RabbitCluster]:
    """The session's cluster with every node running (restarting those a previous test killed)."""
    rabbit_cluster.heal()
    yield rabbit_cluster


@pytest.fixture
def cluster_vhost(cluster: RabbitCluster) -> Iterator[str]:
    """A vhost of the cluster no other test sees; deleted afterwards."""
    vhost = f"test-{uuid.uuid4().hex[:10]}"
    cluster.add_vhost(vhost)
    yield vhost
    # With a node down, deleting each quorum queue waits for its lost member (minutes for a service
    # rig's dozens of queues); the node is started again first, as the next test would anyway.
    cluster.heal()
    cluster.delete_vhost(vhost)
