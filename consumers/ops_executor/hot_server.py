"""hot_server: apply the update's files to each game server, then run its Erlang commands on the node.

IPs run in parallel (bounded by the executor's semaphore, each with its own deadline); the
game servers of one IP run one after another, as on the seed's hosts. A server whose files
fail to apply (or never get applied: files refused, the IP's deadline) gets no Erlang command: its
``erl_data`` is the seed's "更新失败,不执行erl命令" exactly, its ``update_data`` that text then
": <why>" (events.md, "Texts the seed fixes"); a server's first
failing command stops its later ones, since commands usually depend on the ones before.
Each server's result is recorded the moment it is known and never produced twice.

An abort (the ``halt`` event) lets a server that has started finish, files and all its
commands (a server with new files and half its commands is the worst state to leave), and
starts nothing more: an IP not yet started is not started at all, and the servers of a
started IP that did not start are reported as "已中止,未执行".
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from bus.contract.events import IpFinished, RolloutPlanV2, ServerResult, UpdateServerList
from consumers.ops_executor.records import ServerKey, ServerOutcome
from consumers.ops_executor.rollout import plan_batches
from consumers.ops_executor.runner import (
    INTERRUPTED_UNKNOWN,
    HostRunner,
    HostSession,
    StagedFile,
    run_argv,
)
from consumers.ops_executor.templates import ServerTemplates, erl_output_failed, fill
from domain.types import SERVER_GROUPS, ServerGroup

log = logging.getLogger(__name__)

APPLY_OK = "更新成功"
APPLY_SKIPPED_ERL = "更新失败,不执行erl命令"  # the seed's words
NO_ERL_COMMANDS = "无erl命令"
ABORTED_NOT_STARTED = "已中止,未执行"
ABORTED_SKIPPED_ERL = "已中止,不执行erl命令"


@dataclass(frozen=True)
class IpUnit:
    """The servers of one group on one IP; ``key`` tells its *IP finished* event apart."""

    group: ServerGroup
    ip: str
    servers: tuple[str, ...]
    key: str


def ip_units(server_list: UpdateServerList) -> list[IpUnit]:
    """One unit per (group, IP); the key is the IP, or ``ip/group`` when an IP serves several groups.

    Groups in the order game, cross, cross_center; IPs in address order within a group. Not the
    order of the request's keys: JSON objects are canonicalised (sorted as text) on the bus, so
    that order would put 10.0.0.10 before 10.0.0.2. Rollout batches are cut from this order.
    """
    counts = Counter(ip for group in SERVER_GROUPS for ip in server_list.get(group, {}))
    units = []
    for group in SERVER_GROUPS:
        for ip, servers in sorted(server_list.get(group, {}).items(), key=lambda item: address_order(item[0])):
            if servers:
                key = ip if counts[ip] == 1 else f"{ip}/{group}"
                units.append(IpUnit(group, ip, tuple(servers), key))
    return units


def address_order(ip: str) -> tuple[int, int, str]:
    """Sort key: IPv4 before IPv6, numerically (text last, for a value that is not an address)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0, ip)
    return (address.version, int(address), ip)


def ips_of(units: Sequence[IpUnit]) -> list[str]:
    """The distinct IPs of ``units``, in order (the order *update started* lists them)."""
    return list(dict.fromkeys(u.ip for u in units))


def unit_batches(units: Sequence[IpUnit], plan: RolloutPlanV2 | None) -> list[list[IpUnit]]:
    """The units of each batch: batches are of IPs, and every unit of an IP goes with it."""
    batches = []
    for ips in plan_batches(ips_of(units), plan):
        members = set(ips)
        batches.append([u for u in units if u.ip in members])
    return batches


@dataclass(frozen=True)
class ServerJob:
    """What every server of one update gets: the verified files and the commands to run.

    ``blocked`` says why nothing may run (files failed verification, the update was given up):
    each server not yet recorded then fails with that reason and no command is run.
    """

    project: str
    area: str
    update_id: str
    version: str
    erlang_home: Path | None  # HOME holding the project's .erlang.cookie (local runner); None over ssh
    staged_dir: Path
    files: tuple[StagedFile, ...]
    commands: tuple[str, ...]
    blocked: str | None = None


Record = Callable[[ServerKey, ServerOutcome], Awaitable[None]]
MarkStarted = Callable[[ServerKey], Awaitable[None]]


class ServerUpdater:
    """Runs a hot_server update's servers through a :class:`HostRunner`."""

    def __init__(self, runner: HostRunner, templates: ServerTemplates, *, ssh_user: str, ssh_port: int,
                 semaphore: asyncio.Semaphore, command_timeout: float, ip_timeout: float) -> None:
        self._runner = runner
        self._templates = templates
        self._ssh = {"ssh_user": ssh_user, "ssh_port": str(ssh_port)}
        self._semaphore = semaphore
        self._command_timeout = command_timeout
        self._ip_timeout = ip_timeout

    async def run_ip(self, job: ServerJob, unit: IpUnit, done: Mapping[ServerKey, ServerOutcome],
                     record: Record, halt: asyncio.Event | None = None, *,
                     started: AbstractSet[ServerKey] = frozenset(),
                     mark_started: MarkStarted | None = None) -> dict[str, ServerOutcome] | None:
        """Every server of ``unit`` not in ``done``, in order, within the per-IP deadline.

        None if ``halt`` was set before the IP started (nothing recorded, nothing run). A server
        in ``started`` (work began in an earlier process that died before recording a result)
        is reported as interrupted, not run again: its files or commands may already have run.
        """
        results: dict[str, ServerOutcome] = {
            s: done[(unit.group, unit.ip, s)] for s in unit.servers if (unit.group, unit.ip, s) in done
        }
        if len(results) == len(unit.servers):
            return results
        if _is_set(halt) and not results:
            return None
        if job.blocked is not None:
            await self._fill(unit, results, job.blocked, record)
            return results
        if _is_set(halt):  # started in an earlier run, then aborted: the rest never starts
            await self._fill(unit, results, ABORTED_NOT_STARTED, record, erl=ABORTED_SKIPPED_ERL)
            return results
        async with self._semaphore:
            if _is_set(halt) and not results:  # aborted while this IP waited for its turn
                return None
            async with self._runner.session(unit.ip, job.update_id) as host:
                await self._run_servers(job, unit, host, results, record, halt, started, mark_started)
        return results

    async def _run_servers(self, job: ServerJob, unit: IpUnit, host: HostSession, results: dict[str, ServerOutcome],
                           record: Record, halt: asyncio.Event | None, started: AbstractSet[ServerKey],
                           mark_started: MarkStarted | None) -> None:
        """The servers of ``unit`` without a result, one after another, within the IP's deadline."""
        deadline = asyncio.get_running_loop().time() + self._ip_timeout
        timeout = f"timeout after {self._ip_timeout:g}s (IP)"
        applied: dict[str, ServerResult] = {}
        for server in unit.servers:
            if server in results:
                continue
            if _is_set(halt):
                log.info("update %s: IP %s: abort requested; its later servers are not started",
                         job.update_id, unit.ip)
                await self._fill(unit, results, ABORTED_NOT_STARTED, record, erl=ABORTED_SKIPPED_ERL)
                return
            key = (unit.group, unit.ip, server)
            if key in started:
                unknown = ServerResult(data=INTERRUPTED_UNKNOWN, status=False)
                await record(key, ServerOutcome(unknown, unknown))
                results[server] = ServerOutcome(unknown, unknown)
                continue
            if mark_started is not None:
                await mark_started(key)
            try:
                async with asyncio.timeout_at(deadline):
                    outcome = await self.run_server(job, host, unit.group, unit.ip, server, applied)
            except TimeoutError:
                log.warning("update %s: IP %s timed out after %ss", job.update_id, unit.ip, self._ip_timeout)
                if server in applied:  # cut off in its Erlang commands: its files did land
                    outcome = ServerOutcome(applied[server], ServerResult(data=timeout, status=False))
                    await record((unit.group, unit.ip, server), outcome)
                    results[server] = outcome
                break
            # Recorded outside the deadline, so what is recorded is what gets reported.
            await record((unit.group, unit.ip, server), outcome)
            results[server] = outcome
        await self._fill(unit, results, timeout, record)

    async def _fill(self, unit: IpUnit, results: dict[str, ServerOutcome], reason: str, record: Record,
                    *, erl: str = APPLY_SKIPPED_ERL) -> None:
        # Servers that never got their files say so in the seed's words; aborted ones in their own.
        update = not_applied(reason) if erl == APPLY_SKIPPED_ERL else ServerResult(data=reason, status=False)
        for server in unit.servers:
            if server not in results:
                outcome = ServerOutcome(update, ServerResult(data=erl, status=False))
                await record((unit.group, unit.ip, server), outcome)
                results[server] = outcome

    async def run_server(self, job: ServerJob, host: HostSession, group: str, ip: str, server: str,
                         progress: dict[str, ServerResult] | None = None) -> ServerOutcome:
        """Apply the files to one server; if that worked, run its Erlang commands.

        A successful apply is also noted in ``progress``, for a caller whose deadline may cut the rest.
        """
        root = self._templates.root_of(ip, server)
        values = {
            "ip": ip, "server": server, "server_root": root, "group": group, "project": job.project,
            "area": job.area, "version": job.version, "update_id": job.update_id,
            **self._ssh,
        }
        applied = await self._apply(job, host, values)
        if not applied.status:
            log.warning("update %s: %s/%s files not applied: %s", job.update_id, ip, server, applied.data)
            return ServerOutcome(applied, ServerResult(data=APPLY_SKIPPED_ERL, status=False))
        if progress is not None:
            progress[server] = applied
        erl = await self._erl(job.commands, host, values, job.erlang_home)
        log.info("update %s: %s/%s applied, erl %s", job.update_id, ip, server, "ok" if erl.status else "failed")
        return ServerOutcome(applied, erl)

    async def _apply(self, job: ServerJob, host: HostSession, values: Mapping[str, str]) -> ServerResult:
        dest_dir = f"{values['server_root']}/ebin"
        if self._templates.apply_cmd is None:
            result = await host.put_files(job.files, dest_dir, timeout=self._command_timeout)
        else:
            # A configured apply command runs here, on the ops manager, where the verified files are.
            argv = fill(self._templates.apply_cmd, {**values, "staged_dir": str(job.staged_dir),
                                                    "dest_dir": dest_dir})
            result = await run_argv(argv, timeout=self._command_timeout)
        if not result.ok:
            return not_applied(result.describe())
        return ServerResult(data=APPLY_OK, status=True)

    async def _erl(self, commands: Sequence[str], host: HostSession, values: Mapping[str, str],
                   home: Path | None) -> ServerResult:
        if not commands:
            return ServerResult(data=NO_ERL_COMMANDS, status=True)
        outputs = []
        for command in commands:
            argv, stdin = self._templates.erl_argv(values, command)
            result = await host.run(argv, stdin=stdin, timeout=self._command_timeout, home=home)
            if not result.ok or erl_output_failed(result.stdout):
                return ServerResult(data=f"{command}: {result.describe()}", status=False)
            outputs.append(f"{command}: {result.stdout.strip()}")
        return ServerResult(data="; ".join(outputs), status=True)


def not_applied(why: str) -> ServerResult:
    """``update_data`` of a server whose files were not applied: the seed's text as a prefix, then why.

    The seed shows "更新失败,不执行erl命令" alone; a script of the old system matching it keeps
    matching ``erl_data`` exactly and ``update_data`` by prefix, and the operator still sees why.
    """
    return ServerResult(data=f"{APPLY_SKIPPED_ERL}: {why}", status=False)


def _is_set(halt: asyncio.Event | None) -> bool:
    return halt is not None and halt.is_set()


def was_aborted(outcome: ServerOutcome) -> bool:
    """Whether this server was kept from starting by an abort."""
    return outcome.update.data == ABORTED_NOT_STARTED


def ip_finished(version: str, unit: IpUnit, results: Mapping[str, ServerOutcome]) -> IpFinished:
    """The seed's per-IP callback for ``unit``."""
    return IpFinished(
        version=version, ip=unit.ip, group=unit.group,
        update_data={s: results[s].update for s in unit.servers},
        erl_data={s: results[s].erl for s in unit.servers},
    )


def failures(units: Sequence[IpUnit], results: Mapping[ServerKey, ServerOutcome]) -> list[str]:
    """``ip/server(why)`` for each server that did not fully succeed."""
    failed = []
    for unit in units:
        for server in unit.servers:
            outcome = results[(unit.group, unit.ip, server)]
            if not outcome.ok:
                why = "已中止" if was_aborted(outcome) else "更新失败" if not outcome.update.status else "erl失败"
                failed.append(f"{unit.ip}/{server}({why})")
    return failed
