"""`hotupdate rabbitmq provision` on a fresh vhost: least-privilege users, idempotent, no password on a command line."""

from __future__ import annotations

import stat

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from bus.contract.events import IpFinished, PullRequested
from bus.contract.examples import EXAMPLES
from bus.contract.registry import make_envelope
from bus.permissions import Rabbitmqctl, apply_grants
from bus.publisher import AsyncPublisher, PublishError, SyncPublisher
from bus.topology import ServiceQueue, Topology, declare_all
from cli.main import main as cli_main
from tests.identity_support import provisioned

pytestmark = [pytest.mark.rabbit]


@pytest.fixture(scope="module")
def rig(broker, tmp_path_factory):
    """One provisioning for the module: each rabbitmqctl run costs seconds."""
    with provisioned(tmp_path_factory.mktemp("provisioned"), broker) as provisioned_rig:
        yield provisioned_rig


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    raise AssertionError("never delivered")


def _example(model: type, project: str = "ssss"):
    event = next(e for e in EXAMPLES if isinstance(e, model))
    return make_envelope(event, source="tests", updateid="u-prov", project=project, area="cn")


def test_provision_makes_one_user_per_component_and_team_with_password_files_and_changes_nothing_twice(
        rig, broker, capsys):
    users = {g.user for g in rig.grants}
    prefix = rig.component("cmdb").rsplit(".", 1)[0]
    assert users == {f"{prefix}.{name}" for name in (
        "cmdb", "projection", "notifier", "file_pull.recv1", "file_push.recv1", "ops_executor.ops1")} | {rig.team_user}
    listed = broker.rabbitmqctl("list_users", "--quiet")
    assert all(user in listed for user in users)
    for user in users:
        path = rig.passwords / f"{user}.password"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(rig.password(user)) >= 32
    capsys.readouterr()

    # A second run finds everything as configured and changes nothing
    ctl = Rabbitmqctl()
    assert apply_grants(rig.grants, ctl, password_dir=rig.passwords) == []
    assert [argv[1] for argv in ctl.argv_log] == ["list_users", "list_permissions", "list_topic_permissions"]
    code = cli_main(["rabbitmq", "provision", "--config", str(rig.config_file), "--password-dir",
                     str(rig.passwords), "--amqp-url", rig.admin_url])
    assert code == 0 and "nothing to change: 7 users" in capsys.readouterr().out


def test_passwords_reach_rabbitmqctl_on_stdin_never_in_its_arguments(rig):
    # a rotation: the file of one user removed, a new password generated and set
    cmdb = rig.component("cmdb")
    old = rig.password(cmdb)
    (rig.passwords / f"{cmdb}.password").unlink()
    ctl = Rabbitmqctl()
    done = apply_grants(rig.grants, ctl, password_dir=rig.passwords)
    assert done == [f"{cmdb}: password changed"]
    new = rig.password(cmdb)
    assert new != old
    assert not any(new in arg or old in arg for argv in ctl.argv_log for arg in argv)
    changes = [argv[1:] for argv in ctl.argv_log if not argv[1].startswith("list_")]
    assert changes == [["change_password", cmdb]]
    # the broker took it: the new password logs in, the old one no longer does
    with SyncPublisher(rig.url(cmdb), retry_seconds=1) as pub:
        pub.publish(_example(PullRequested))
    with pytest.raises(PublishError, match="credentials"), \
            SyncPublisher(rig.url(cmdb).replace(new, old), retry_seconds=1) as stale:
        stale.publish(_example(PullRequested))


def test_password_file_readable_by_others_is_refused(rig, capsys):
    path = rig.passwords / f"{rig.team_user}.password"
    path.chmod(0o644)
    try:
        code = cli_main(["rabbitmq", "provision", "--config", str(rig.config_file), "--password-dir",
                         str(rig.passwords), "--amqp-url", rig.admin_url])
    finally:
        path.chmod(0o600)
    assert code == 1
    assert "readable by others" in capsys.readouterr().err


async def test_each_provisioned_user_may_publish_only_the_routing_keys_of_its_own_events(rig):
    allowed = [
        (rig.component("cmdb"), _example(PullRequested)),
        (rig.component("cmdb"), _example(PullRequested, "snqxz")),
        (rig.component("ops_executor", "ops1"), _example(IpFinished)),
        (rig.team_user, _example(PullRequested)),
    ]
    refused = [
        (rig.component("cmdb"), _example(IpFinished)),  # not its event
        (rig.component("ops_executor", "ops1"), _example(IpFinished, "snqxz")),  # not its project
        (rig.component("file_pull", "recv1"), _example(PullRequested)),
        (rig.component("projection"), _example(IpFinished)),  # publishes nothing
        (rig.team_user, _example(PullRequested, "snqxz")),
        (rig.team_user, _example(IpFinished)),
    ]
    for user, envelope in allowed:
        async with AsyncPublisher(rig.url(user), retry_seconds=2) as pub:
            await pub.publish(envelope)
    for user, envelope in refused:
        async with AsyncPublisher(rig.url(user), retry_seconds=2) as pub:
            with pytest.raises(PublishError, match="ACCESS_REFUSED"):
                await pub.publish(envelope)


async def test_publishing_with_a_user_id_other_than_the_login_is_refused_by_the_broker(rig):
    async with AsyncPublisher(rig.url(rig.team_user), retry_seconds=2) as pub:
        pub.login = rig.component("cmdb")  # claim to be the CMDB
        with pytest.raises(PublishError, match="user_id"):
            await pub.publish(_example(PullRequested))
    with SyncPublisher(rig.url(rig.team_user), retry_seconds=2) as sync_pub:
        sync_pub.login = rig.component("cmdb")
        with pytest.raises(PublishError, match="user_id"):
            sync_pub.publish(_example(PullRequested))


async def test_a_component_user_cannot_consume_or_declare_another_services_queue(rig):
    await declare_all(rig.admin_url, Topology(), [ServiceQueue(service="cmdb", bindings=("#",))])
    connection = await aio_pika.connect(rig.url(rig.component("file_pull", "recv1")))
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(Topology().queue("cmdb"), ensure=False)
        with pytest.raises(ChannelAccessRefused):
            await queue.consume(_ignore)
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused):
            await channel.declare_queue("hotupdate.cmdb.parked", durable=True,
                                        arguments={"x-queue-type": "quorum"})
        channel = await connection.channel()
        with pytest.raises(ChannelAccessRefused):  # nor the shared exchanges: provision declared them
            await channel.declare_exchange(Topology().events_exchange, aio_pika.ExchangeType.FANOUT)


def test_publish_cli_as_a_team_user_looks_the_exchanges_up_instead_of_declaring_them(rig, tmp_path, capsys):
    body = tmp_path / "event.json"
    body.write_bytes(_example(PullRequested).to_bytes())
    code = cli_main(["publish", str(body), "--amqp-url", rig.url(rig.team_user)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "published hotupdate.pull.requested.v1" in out.out

