"""What an update may touch and run: the project's inventory and its allowed Erlang command forms.

One pure rule, checked twice: the CMDB refuses a request that breaks it (HTTP 422, naming the
field), and the ops executor refuses an *update requested* that breaks it (parked with the same
reason) before anything runs. The executor cannot trust that an event came through the CMDB,
so it checks again against its own copy of the configuration.

Erlang commands are matched against the project's ``erlang_cmd_allowed``: regular expressions,
each matched against the *whole* command (surrounding whitespace and one final full stop
removed, so ``c:l(m)`` and ``c:l(m).`` are one form). The default admits hot loading of a
named module and nothing else: no ``os:cmd/1``, no ``open_port/2``, no arbitrary calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from domain.config import AreaInventory, ProjectConfig

# An unquoted Erlang atom, as module names are written.
_ATOM = r"[a-z][A-Za-z0-9_@]*"
DEFAULT_ERLANG_CMD_ALLOWED: tuple[str, ...] = (
    rf"c:l\({_ATOM}\)",  # c:l(Module): purge the old code and load the new .beam
    rf"l\({_ATOM}\)",  # l(Module): the shell's short form of the same
    r"c:lm\(\)",  # c:lm(): load every module whose .beam changed on disk
    rf"code:soft_purge\({_ATOM}\)",  # drop old code only if no process runs it
    rf"code:load_file\({_ATOM}\)",  # load the new .beam
)


@dataclass(frozen=True)
class Refusal:
    """One value an update may not have: where it is (``erlang_cmd_list[0]``), what it is, and why."""

    field: str
    value: str
    why: str

    def __str__(self) -> str:
        return f"{self.field}: {self.value!r} {self.why}"


def describe(refusals: Iterable[Refusal]) -> str:
    """The refusals as one line, for an HTTP error or a park reason."""
    return "; ".join(str(r) for r in refusals)


def check_patterns(patterns: Sequence[str]) -> None:
    """Raise ValueError naming the first pattern that is not a valid regular expression."""
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"erlang_cmd_allowed[{i}]: not a valid regular expression: {exc}") from None


def erlang_command_form(command: str) -> str:
    """A command as it is matched: without surrounding whitespace and one final full stop."""
    text = command.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def command_refusals(commands: Sequence[str], allowed: Sequence[str], *,
                     field: str = "erlang_cmd_list") -> list[Refusal]:
    """Each command that matches none of the ``allowed`` forms in full."""
    compiled = [re.compile(p) for p in allowed]
    return [
        Refusal(f"{field}[{i}]", command, "is not an allowed Erlang command (erlang_cmd_allowed)")
        for i, command in enumerate(commands)
        if not any(p.fullmatch(erlang_command_form(command)) for p in compiled)
    ]


def server_refusals(server_list: Mapping[Any, Mapping[str, Sequence[str]]], inventory: AreaInventory | None, *,
                    field: str = "update_server_list") -> list[Refusal]:
    """Each group, IP or server of ``server_list`` (group → IP → servers) that the inventory does not hold."""
    known: dict[str, dict[str, list[str]]] = {str(g): ips for g, ips in inventory.servers.items()} if inventory else {}
    out: list[Refusal] = []
    for group, ips in server_list.items():
        in_group = known.get(str(group))
        if in_group is None:
            out.append(Refusal(f"{field}[{group}]", group, "is not a server group of the inventory"))
            continue
        for ip, servers in ips.items():
            on_ip = in_group.get(ip)
            if on_ip is None:
                out.append(Refusal(f"{field}[{group}][{ip}]", ip, f"is not an IP of group {group} in the inventory"))
                continue
            out += [Refusal(f"{field}[{group}][{ip}][{i}]", server, f"is not a server on {ip} in the inventory")
                    for i, server in enumerate(servers) if server not in on_ip]
    return out


def cdn_refusals(targets: Sequence[tuple[str, str]], inventory: AreaInventory | None, *,
                 field: str = "data") -> list[Refusal]:
    """Each (CDN root, dir) that the inventory does not configure."""
    known = {(c.cdn_root_url, c.cdn_dir) for c in (inventory.cdn if inventory is not None else [])}
    return [Refusal(f"{field}[{i}]", f"{root}/{cdn_dir}", "is not a CDN dir of the inventory")
            for i, (root, cdn_dir) in enumerate(targets) if (root, cdn_dir) not in known]


def update_refusals(project: ProjectConfig, area_code: str, *,
                    update_server_list: Mapping[Any, Mapping[str, Sequence[str]]] | None = None,
                    cdn_targets: Sequence[tuple[str, str]] = (),
                    erlang_cmd_list: Sequence[str] = ()) -> list[Refusal]:
    """Everything an update of ``project`` in ``area_code`` would touch or run that it may not."""
    inventory = project.inventory.get(area_code)
    return [
        *server_refusals(update_server_list or {}, inventory),
        *cdn_refusals(cdn_targets, inventory),
        *command_refusals(erlang_cmd_list, project.erlang_cmd_allowed),
    ]
