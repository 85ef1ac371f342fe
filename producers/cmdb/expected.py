"""Which targets an update expects results from, named as the executor names them.

A hot_server target is one (IP, group) of the request's ``update_server_list``: the IP, or
``ip/group`` when the IP serves several groups (the key of its *IP finished*, and how
*update completed*'s ``not_run`` and *update stalled*'s ``silent_targets`` name it). A
hot_client target is ``cdn_root_url/cdn_dir``. The CMDB records each result under that name,
so "what is missing" is a set difference, and *retry failed* maps names back to servers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from producers.cmdb.models import HotUpdate, TargetResult

ServerList = Mapping[str, Mapping[str, list[str]]]


def ip_units(server_list: ServerList) -> Iterator[tuple[str, str, str, list[str]]]:
    """(name, group, ip, servers) per (IP, group), in the request's order."""
    counts: dict[str, int] = {}
    for ips in server_list.values():
        for ip in ips:
            counts[ip] = counts.get(ip, 0) + 1
    for group, ips in server_list.items():
        for ip, servers in ips.items():
            yield (ip if counts[ip] == 1 else f"{ip}/{group}"), group, ip, list(servers)


def ip_target_name(server_list: ServerList, ip: str, group: str) -> str:
    """The name of an *IP finished* for ``ip`` in ``group`` (the IP alone unless it serves several groups)."""
    groups = sum(1 for ips in server_list.values() if ip in ips)
    return ip if groups <= 1 else f"{ip}/{group}"


def cdn_target_name(cdn_root_url: str, cdn_dir: str) -> str:
    return f"{cdn_root_url}/{cdn_dir}"


def expected_targets(row: HotUpdate) -> list[str]:
    """Every target the update runs on, named as results and ``not_run`` name them."""
    targets: dict[str, Any] = row.update_targets or {}
    if row.update_type == "hot_client":
        return [cdn_target_name(d["cdn_root_url"], d["cdn_dir"]) for d in targets.get("data") or []]
    return [name for name, _group, _ip, _servers in ip_units(targets.get("update_server_list") or {})]


def missing_targets(row: HotUpdate, reported: Collection[str]) -> list[str]:
    """Expected targets with no result that the executor did not say it left unrun."""
    accounted = set(reported) | set(row.not_run or [])
    return [t for t in expected_targets(row) if t not in accounted]


def failed_or_unrun(row: HotUpdate, results: Collection[TargetResult]) -> dict[str, Any]:
    """The targets of a retry: exactly the failed or not-run servers (CDN dirs), as ``update_targets``.

    A game server failed when its ``update_data`` or ``erl_data`` says false; a target in
    ``not_run`` or without a result is retried whole. Empty lists/dicts: nothing to retry.
    """
    by_name = {r.target: r for r in results}
    not_run = set(row.not_run or [])
    targets: dict[str, Any] = row.update_targets or {}
    if row.update_type == "hot_client":
        data = [d for d in targets.get("data") or []
                if _retry_whole(cdn_target_name(d["cdn_root_url"], d["cdn_dir"]), by_name, not_run)
                or not by_name[cdn_target_name(d["cdn_root_url"], d["cdn_dir"])].ok]
        return {"data": data}
    server_list: dict[str, dict[str, list[str]]] = {}
    for name, group, ip, servers in ip_units(targets.get("update_server_list") or {}):
        if _retry_whole(name, by_name, not_run):
            chosen = servers
        else:
            chosen = [s for s in servers if not _server_ok(by_name[name].detail, s)]
        if chosen:
            server_list.setdefault(group, {})[ip] = chosen
    return {"update_server_list": server_list}


def _retry_whole(name: str, by_name: Mapping[str, TargetResult], not_run: Collection[str]) -> bool:
    return name in not_run or name not in by_name


def _server_ok(detail: Mapping[str, Any], server: str) -> bool:
    # A server absent from a part (no erl result after a failed update) is judged by the other.
    parts = [detail.get(part, {}).get(server) for part in ("update_data", "erl_data")]
    seen = [p for p in parts if p is not None]
    return bool(seen) and all(bool(p.get("status")) for p in seen)
