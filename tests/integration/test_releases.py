"""A team's release pipeline announces versions (issue 17), played on the real broker with provisioned users.

The team is granted ``release.announced`` in ``broker.teams`` and logs in as its own provisioned
user. ssss pulls announced releases by itself (``auto_pull_on_release``), snqxz waits for an
operator. An announcement is recorded once, a duplicate changes nothing, a team granted other
events only is refused by the broker, and one let through by a wide grant is parked by the CMDB
with the identity reason.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import httpx
import pytest

from bus.contract.envelope import Envelope
from bus.contract.events import PullRequested, ReleaseAnnounced, ReleaseFile
from bus.contract.registry import make_envelope
from bus.parking import ParkingQueues
from bus.permissions import apply_grant, team_grant
from bus.publisher import AsyncPublisher, PublishError, broker_login
from bus.topology import binding
from producers.cmdb.app import run as run_cmdb
from producers.cmdb.auth import hash_token
from producers.cmdb.bootstrap import bootstrap
from tests.busprobe import Probe
from tests.cmdb_support import TOKENS, auth
from tests.identity_support import Provisioned, as_user, provisioned

pytestmark = [pytest.mark.rabbit]

OTHER_TEAM = f"other{uuid.uuid4().hex[:8]}"
FILES = [ReleaseFile(file_name="ebin/role_server.beam", file_md5="abe347d3fdff45f1078102c4637852a5")]


def _adjust(raw: dict[str, Any], team: str) -> None:
    raw["broker"]["teams"] = {
        team: {"projects": ["ssss", "snqxz"], "events": ["release.announced"]},
        OTHER_TEAM: {"projects": ["ssss"], "events": ["pull.requested"]},  # granted, but not releases
    }
    raw["projects"]["ssss"]["auto_pull_on_release"] = True
    raw["cmdb"]["operators"] = [{"name": n, "token_sha256": hash_token(t)} for n, t in TOKENS.items()]


@pytest.fixture(scope="module")
def rig(broker, tmp_path_factory):
    with provisioned(tmp_path_factory.mktemp("releases"), broker, adjust=_adjust) as provisioned_rig:
        yield provisioned_rig


def _release(project: str, version: str = "004200000") -> Envelope:
    event = ReleaseAnnounced(update_type="hot_server", version=version, files=FILES, announced_by="ssss-build",
                             link="https://ci.example.com/builds/4200")
    return make_envelope(event, source="ci/ssss-build", updateid=str(uuid.uuid4()), project=project, area="cn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(check: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def _parked_reason(rig: Provisioned, message_id: str, timeout: float = 20) -> str:
    queues = ParkingQueues(rig.admin_url)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for parked in await asyncio.to_thread(queues.peek, "cmdb"):
            if parked.message_id == message_id:
                return parked.reason
        assert asyncio.get_running_loop().time() < deadline, f"{message_id} was not parked"
        await asyncio.sleep(0.1)


async def test_announced_releases_are_recorded_once_pulled_by_policy_or_operator_and_refused_to_others(
        rig: Provisioned, broker, tmp_path):
    cmdb_user = rig.component("cmdb")
    runtime = bootstrap(rig.config_as(cmdb_user), f"sqlite:///{tmp_path / 'cmdb.db'}", publish_retry_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(run_cmdb(runtime, host="127.0.0.1", port=_free_port(), stop=stop))
    auto, again, manual = _release("ssss"), _release("ssss"), _release("snqxz")
    wide_user, wide_password = f"team.wide{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    apply_grant(team_grant(wide_user, ["ssss"], vhost=rig.grants[0].vhost), password=wide_password)
    try:
        async with Probe(rig.admin_url) as probe, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=runtime.api), base_url="http://cmdb", headers=auth()) as api:
            await probe.bind(binding(PullRequested, project="ssss"), binding(PullRequested, project="snqxz"))
            await _until(lambda: runtime.consumer.started)
            async with AsyncPublisher(rig.url(rig.team_user), declare=False) as pipeline:
                for envelope in (auto, again, manual):
                    await pipeline.publish(envelope)
            await _until(lambda: runtime.consumer.handled >= 3)
            (pulled,) = await probe.wait_for(1)
            releases = {r["project"]: r for r in (await api.get("/api/releases")).json()}

            # ssss: recorded once (the duplicate under another id and update id did nothing), pulled by itself.
            # Which of the two counts is whichever the CMDB handled first: it handles deliveries concurrently.
            assert set(releases) == {"ssss", "snqxz"}
            first, duplicate = (auto, again) if releases["ssss"]["id"] == auto.id else (again, auto)
            assert releases["ssss"]["id"] == first.id
            assert releases["ssss"]["update_id"] == first.updateid
            assert releases["ssss"]["pull_started_by"] == "auto_pull_on_release"
            assert releases["ssss"]["publisher"] == rig.team_user  # the broker-verified sender
            pull = Envelope.from_bytes(pulled.body)
            assert (pull.type, pull.updateid, pull.causationid) == ("hotupdate.pull.requested.v1", first.updateid,
                                                                     first.id)
            assert pulled.user_id == cmdb_user
            assert (await api.get(f"/api/updates/{first.updateid}")).json()["state"] == "pull_requested"
            assert (await api.get(f"/api/updates/{duplicate.updateid}")).status_code == 404

            # snqxz: pending until an operator starts it, and only once
            assert releases["snqxz"]["update_id"] is None
            started = await api.post(f"/api/releases/{manual.id}/pull")
            assert started.status_code == 201, started.text
            assert started.json()["update_id"] == manual.updateid
            assert started.json()["pull_started_by"] == "alice"
            twice = await api.post(f"/api/releases/{manual.id}/pull")
            assert twice.status_code == 409
            await probe.wait_for(2)
            assert [Envelope.from_bytes(m.body).updateid for m in probe.messages] == [first.updateid, manual.updateid]

            # a team granted other events only: the broker refuses the publish
            with pytest.raises(PublishError):
                async with AsyncPublisher(rig.url(f"team.{OTHER_TEAM}"), declare=False) as other:
                    await other.publish(_release("ssss", "004300000"))
            # a team let through by a wide grant: parked by the CMDB with the identity reason, nothing recorded
            forged = _release("ssss", "004400000")
            async with AsyncPublisher(as_user(rig.admin_url, wide_user, wide_password), declare=False) as wide:
                await wide.publish(forged)
            reason = await _parked_reason(rig, forged.id)
            assert reason == (
                f"identity: broker user {wide_user!r} may not publish hotupdate.release.announced.v1 for project "
                f"'ssss' (allowed: {rig.team_user})")
            assert len((await api.get("/api/releases")).json()) == 2
            await asyncio.sleep(0.3)
            assert len(probe.messages) == 2
    finally:
        stop.set()
        await task
        broker.rabbitmqctl("delete_user", wide_user)
    assert broker_login(rig.url(rig.team_user)) == rig.team_user
