"""Argument templates of a project's runner config, filled per game server with validated values.

A template is a list of arguments; each ``{placeholder}`` is replaced inside its own argument,
so a value can never become a second argument or reach a shell. Unknown placeholders are
refused when the executor is built, not in the middle of an update.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from domain.config import RunnerConfig

# erl_call evaluates the expression it reads on stdin (-e) on the server's node. No -c: erl_call then
# reads $HOME/.erlang.cookie, and the runner points HOME at the project's private cookie directory.
DEFAULT_ERL_CMD: tuple[str, ...] = ("erl_call", "-sname", "{server}", "-e")
# Placeholders each template may use.
SERVER_FIELDS = frozenset({"ip", "server", "server_root", "group", "project", "area", "version", "update_id",
                           "ssh_user", "ssh_port"})
APPLY_FIELDS = SERVER_FIELDS | {"staged_dir", "dest_dir"}
ERL_FIELDS = SERVER_FIELDS | {"command"}
PURGE_FIELDS = frozenset({"cdn_root_url", "cdn_dir", "target_dir", "project", "area", "version", "update_id"})
FILES_ARG = "{files}"  # a purge argument that is exactly this expands to one argument per file

# erl_call prints `{error, …}` (and exits 0) when evaluation fails; an expression whose value is
# `{error, …}` or `{badrpc, …}` (c:l/1 on a missing module) failed too, by Erlang convention.
_ERL_FAILED = re.compile(r"^\s*(\{\s*(error|badrpc)\b|\{\s*ok\s*,\s*\{\s*(error|badrpc)\b|error\s*$)")


class TemplateError(ValueError):
    """A template uses a placeholder it may not use, or is malformed."""


def placeholders(template: Sequence[str]) -> set[str]:
    """The ``{names}`` a template uses."""
    names: set[str] = set()
    for arg in template:
        try:
            parsed = list(string.Formatter().parse(arg))
        except ValueError as exc:
            raise TemplateError(f"argument {arg!r}: {exc}") from None
        for _, name, spec, conv in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conv:
                raise TemplateError(f"argument {arg!r}: only plain {{name}} placeholders are allowed")
            names.add(name)
    return names


def check_template(what: str, template: Sequence[str], allowed: frozenset[str]) -> None:
    """Refuse an empty template or one with placeholders outside ``allowed``."""
    if not template:
        raise TemplateError(f"{what}: an empty argument list")
    unknown = placeholders(template) - allowed
    if unknown:
        raise TemplateError(f"{what}: unknown placeholder(s) {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(allowed))})")


def fill(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Each argument with its placeholders replaced; one argument in, one argument out."""
    return [arg.format_map(values) for arg in template]


@dataclass(frozen=True)
class ServerTemplates:
    """A runner config's templates, checked once."""

    server_root: str
    apply_cmd: tuple[str, ...] | None
    erl_cmd: tuple[str, ...]

    @classmethod
    def of(cls, config: RunnerConfig) -> ServerTemplates:
        check_template("runner.server_root", [config.server_root], frozenset({"ip", "server"}))
        if config.apply_cmd is not None:
            check_template("runner.apply_cmd", config.apply_cmd, APPLY_FIELDS)
        erl = tuple(config.erl_cmd) if config.erl_cmd is not None else DEFAULT_ERL_CMD
        if "cookie" in placeholders(erl):
            raise TemplateError("runner.erl_cmd: {cookie} is not filled any more: a cookie on a command line is "
                                "visible to every user (ps); erl_call reads $HOME/.erlang.cookie, made from the "
                                "project's erlang_cookie_file")
        check_template("runner.erl_cmd", erl, ERL_FIELDS)
        return cls(config.server_root, tuple(config.apply_cmd) if config.apply_cmd else None, erl)

    def root_of(self, ip: str, server: str) -> str:
        return self.server_root.format(ip=ip, server=server)

    def erl_argv(self, values: Mapping[str, str], command: str) -> tuple[list[str], bytes | None]:
        """The erl command's arguments and stdin: the command goes as ``{command}`` if used, else on stdin."""
        if "command" in placeholders(self.erl_cmd):
            return fill(self.erl_cmd, {**values, "command": command}), None
        return fill(self.erl_cmd, values), erl_expression(command).encode("utf-8")


def erl_expression(command: str) -> str:
    """An Erlang expression as erl_call -e reads it: terminated by a full stop and newline."""
    text = command.strip()
    return (text if text.endswith(".") else text + ".") + "\n"


def erl_output_failed(stdout: str) -> bool:
    """Whether erl_call's printed result means the command failed, although it exited 0."""
    return bool(_ERL_FAILED.match(stdout))


def check_purge_template(what: str, template: Sequence[str]) -> None:
    """Like :func:`check_template`; ``{files}`` may only stand alone as a whole argument."""
    if not template or template[0] == FILES_ARG:
        raise TemplateError(f"{what}: the first argument must be the program")
    check_template(what, [a for a in template if a != FILES_ARG], PURGE_FIELDS)


def purge_argv(template: Sequence[str], values: Mapping[str, str], files: Sequence[str]) -> list[str]:
    """A purge command's arguments, with ``{files}`` expanded to one argument per file."""
    argv: list[str] = []
    for arg in template:
        if arg == FILES_ARG:
            argv.extend(files)
        else:
            argv.append(arg.format_map(values))
    return argv
