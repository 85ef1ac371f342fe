"""``hotupdate config check``: what is wrong with a configuration on this machine, all at once.

The configuration itself was validated when it was loaded (a contradiction between its parts,
domain/config_consistency.py, stops the load and the check prints each one); these checks add
what is legal but probably not meant, and look at the machine: directories that must exist and
be writable, rsync password files (present, mode 600 as the seed insists), the ssh key and
known_hosts of an ops manager that reaches its game hosts over ssh, the Erlang cookie file of
each project an ops manager with a local runner serves, the project-directory symlinks of
version roots, and the broker's TLS files.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from domain.broker_address import parse_broker_address, redact
from domain.config import HotupdateConfig, OpsManagerConfig
from domain.config_consistency import oddities
from domain.erlang_cookie import CookieError, read_cookie


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning", "ok"]
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():7} {self.where}: {self.message}"


def _dir(where: str, path: Path, *, writable: bool) -> Finding:
    if not path.exists():
        return Finding("error", where, f"{path} does not exist")
    if not path.is_dir():
        return Finding("error", where, f"{path} is not a directory")
    if writable and not os.access(path, os.W_OK | os.X_OK):
        return Finding("error", where, f"{path} is not writable by this user")
    return Finding("ok", where, f"{path}")


def _secret_file(where: str, path: Path, what: str) -> Finding | int:
    """The file's mode, or the finding that it is missing or unreadable."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return Finding("error", where, f"{what} {path} is missing")
    except PermissionError:
        return Finding("error", where, f"{what} {path} is not readable by this user")
    if not os.access(path, os.R_OK):
        return Finding("error", where, f"{what} {path} is not readable by this user")
    return mode


def password_file_finding(where: str, path: Path) -> Finding:
    """rsync refuses (and the seed warns about) a password file others can read: it must be 600."""
    mode = _secret_file(where, path, "password file")
    if isinstance(mode, Finding):
        return mode
    if mode != 0o600:
        return Finding("error", where, f"password file {path} has mode {mode:03o}; it must be 600 (chmod 600 {path})")
    return Finding("ok", where, f"password file {path} is mode 600")


def check_receiver(config: HotupdateConfig, name: str) -> list[Finding]:
    receiver = config.receivers[name]
    where = f"receivers.{name}"
    out = [
        _dir(f"{where}.version_root", receiver.version_root, writable=False),
        _dir(f"{where}.backup_root", receiver.backup_root, writable=True),
    ]
    for project in receiver.projects:
        for kind in ("server", "client"):
            project_dir = receiver.version_root / kind / project
            if project_dir.is_symlink() and not project_dir.exists():
                out.append(Finding("error", f"{where}.version_root", f"{project_dir} is a broken symlink"))
            elif not project_dir.exists():
                out.append(Finding(
                    "warning", f"{where}.version_root",
                    f"{project_dir} does not exist (if the version directory has another name, "
                    f"link it: ln -s {receiver.version_root / kind}/<dir> {project_dir})",
                ))
        for target in config.projects[project].rsync_targets:
            out.append(password_file_finding(f"projects.{project}.rsync_targets.{target.name}.pass_file",
                                             target.pass_file))
    return out


def ssh_key_finding(where: str, path: Path) -> Finding:
    """ssh ignores a private key that group or others can read ("UNPROTECTED PRIVATE KEY FILE")."""
    mode = _secret_file(where, path, "ssh key")
    if isinstance(mode, Finding):
        return mode
    if mode & 0o077:
        return Finding("error", where, f"ssh key {path} has mode {mode:03o}; ssh ignores it unless only its "
                                       f"owner can read it (chmod 600 {path})")
    return Finding("ok", where, f"ssh key {path} is mode {mode:03o}")


def _ssh_findings(where: str, manager: OpsManagerConfig) -> list[Finding]:
    runner = manager.runner
    out: list[Finding] = []
    if runner.ssh_key is not None:
        out.append(ssh_key_finding(f"{where}.runner.ssh_key", runner.ssh_key))
    if runner.ssh_known_hosts is None:
        # The ssh runner refuses an unknown host rather than trusting it, so a missing entry fails an IP, loudly.
        out.append(Finding("warning", f"{where}.runner.ssh_known_hosts",
                           "not set: ~/.ssh/known_hosts of the user running the ops executor must list every "
                           "game host"))
    elif not runner.ssh_known_hosts.is_file():
        out.append(Finding("error", f"{where}.runner.ssh_known_hosts", f"{runner.ssh_known_hosts} does not exist"))
    else:
        out.append(Finding("ok", f"{where}.runner.ssh_known_hosts", f"{runner.ssh_known_hosts}"))
    return out


def cookie_findings(config: HotupdateConfig, manager: OpsManagerConfig) -> list[Finding]:
    """Each served project's Erlang cookie file: set, readable, mode 600, a cookie (local runner only)."""
    if manager.runner.kind == "ssh":
        return [Finding("ok", f"projects.{key}.erlang_cookie_file",
                        f"ssh runner: erl_call on each game host reads ~{manager.runner.ssh_user}/.erlang.cookie there")
                for key in manager.projects]
    return [cookie_file_finding(f"projects.{key}.erlang_cookie_file", config.projects[key].erlang_cookie_file,
                                hot_server="hot_server" in config.projects[key].areas)
            for key in manager.projects]


def cookie_file_finding(where: str, path: Path | None, *, hot_server: bool = True) -> Finding:
    """The cookie never has a default and is never on a command line: it is a file only its owner reads."""
    if path is None:
        if not hot_server:
            return Finding("ok", where, "not set (no hot_server updates)")
        return Finding("error", where, "not set: hot_server updates cannot run Erlang commands "
                                       "(name a file holding the cookie, mode 600)")
    mode = _secret_file(where, path, "Erlang cookie file")
    if isinstance(mode, Finding):
        return mode
    try:
        read_cookie(path)
    except CookieError as exc:
        return Finding("error", where, str(exc))
    return Finding("ok", where, f"Erlang cookie file {path} is mode {mode:03o}")


def check_ops_manager(config: HotupdateConfig, name: str) -> list[Finding]:
    manager = config.ops_managers[name]
    where = f"ops_managers.{name}"
    findings = [
        _dir(f"{where}.incoming_root", manager.incoming_root, writable=True),
        _dir(f"{where}.cdn_origin_root", manager.cdn_origin_root, writable=True),
    ]
    if manager.runner.kind == "ssh":
        findings += _ssh_findings(where, manager)
    findings += cookie_findings(config, manager)
    return findings


def check_config(
    config: HotupdateConfig, *, receiver: str | None = None, ops_manager: str | None = None
) -> list[Finding]:
    """Check the named machine roles (or, with none named, every role the file defines)."""
    findings: list[Finding] = []
    receivers = [receiver] if receiver else ([] if ops_manager else list(config.receivers))
    managers = [ops_manager] if ops_manager else ([] if receiver else list(config.ops_managers))
    for name in receivers:
        if name not in config.receivers:
            findings.append(Finding("error", "receivers", f"no receiver named {name!r}"))
            continue
        findings += check_receiver(config, name)
    for name in managers:
        if name not in config.ops_managers:
            findings.append(Finding("error", "ops_managers", f"no ops manager named {name!r}"))
            continue
        findings += check_ops_manager(config, name)
    for key, project in config.projects.items():
        if config.receiver_for(key) is None:
            findings.append(Finding("warning", f"projects.{key}", "no receiver serves this project"))
        if not project.rsync_targets:
            findings.append(Finding("warning", f"projects.{key}", "no rsync_targets: pushes cannot be requested"))
    findings += [Finding("warning", odd.key, odd.message) for odd in oddities(config)]
    if not config.cmdb.operators:
        findings.append(Finding("warning", "cmdb.operators", "no operator tokens: nobody can start an update"))
    findings += broker_tls_findings(config)
    return findings


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def broker_tls_findings(config: HotupdateConfig) -> list[Finding]:
    """Broker nodes reached without TLS (a warning off this machine); the TLS files present, the key private."""
    out = [
        Finding("warning", "amqp_url", f"{redact(node.url)} is reached without TLS (amqps:// and broker.tls)")
        for node in parse_broker_address(config.amqp_url)
        if not node.tls and node.host not in _LOOPBACK
    ]
    tls = config.broker.tls
    if tls is None:
        return out
    for key, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)):
        if path is not None:
            found = _secret_file(f"broker.tls.{key}", path, key.replace("_", " "))
            out.append(found if isinstance(found, Finding) else Finding("ok", f"broker.tls.{key}", f"{path}"))
    if tls.key_file is not None:
        mode = _secret_file("broker.tls.key_file", tls.key_file, "client key")
        if isinstance(mode, Finding):
            out.append(mode)
        elif mode & 0o077:
            fix = f"only its owner may read it (chmod 600 {tls.key_file})"
            out.append(Finding("error", "broker.tls.key_file", f"client key {tls.key_file} has mode {mode:03o}; {fix}"))
        else:
            out.append(Finding("ok", "broker.tls.key_file", f"client key {tls.key_file} is mode {mode:03o}"))
    return out
