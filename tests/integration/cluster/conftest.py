"""The three-node RabbitMQ cluster for the tests that need one (issue 20): started once per session, healed
between tests (a node a test killed is started again), a fresh vhost per test, stopped at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.rabbit_cluster import RabbitCluster, start_cluster


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory) -> Iterator[RabbitCluster]:
    """Three clustered nodes on loopback, with their own names, ports, data and cookie."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("rabbit-cluster"))
    except RuntimeError as exc:
        pytest.fail(f"could not start the three-node cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster) -> Iterator[RabbitCluster]:
    """The session's cluster with every node running (restarting those a previous test killed)."""
    for index, node in enumerate(rabbit_cluster.nodes):
        if node is None or node.process.poll() is not None:
            rabbit_cluster.start(index)
    rabbit_cluster.wait_members(len(rabbit_cluster.slots))
    yield rabbit_cluster


@pytest.fixture
def cluster_vhost(cluster: RabbitCluster) -> Iterator[str]:
    """A vhost of the cluster no other test sees; deleted afterwards."""
    vhost = f"test-{uuid.uuid4().hex[:10]}"
    cluster.add_vhost(vhost)
    yield vhost
    cluster.delete_vhost(vhost)
