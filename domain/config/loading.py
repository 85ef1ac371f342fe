"""Loading the configuration: the YAML file, the environment's overrides (``HOTUPDATE_*``), errors that
name the file and the key, and paths made absolute relative to the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from domain.broker_address import parse_broker_address
from domain.config.access import BrokerTls, HttpsFiles, fold_broker_tls
from domain.config.base import ConfigError
from domain.config.machines import RunnerConfig
from domain.config.root import HotupdateConfig


def load_config(path: str | Path | None = None) -> HotupdateConfig:
    """Load and validate the configuration; ``HOTUPDATE_CONFIG`` names the file when ``path`` is None.

    ``HOTUPDATE_AMQP_URL`` overrides ``amqp_url``. Relative paths in the file are taken
    relative to the file's directory, so a config is portable with its tree.
    """
    raw_path = path or os.environ.get("HOTUPDATE_CONFIG")
    if not raw_path:
        raise ConfigError("no configuration file: pass --config or set HOTUPDATE_CONFIG")
    file = Path(raw_path)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    if url := os.environ.get("HOTUPDATE_AMQP_URL"):
        raw["amqp_url"] = url
    if tls_env := _broker_tls_env():
        broker = raw.get("broker") or {}
        if isinstance(broker, dict):  # anything else is reported by the validation
            raw["broker"] = {**broker, "tls": {**(broker.get("tls") or {}), **tls_env}}
    return parse_config(raw, file)


BROKER_TLS_ENV = {
    "ca_file": "HOTUPDATE_BROKER_CA_FILE",
    "cert_file": "HOTUPDATE_BROKER_CERT_FILE",
    "key_file": "HOTUPDATE_BROKER_KEY_FILE",
}


def _broker_tls_env() -> dict[str, str]:
    return {key: value for key, name in BROKER_TLS_ENV.items() if (value := os.environ.get(name))}


def broker_address_from_env(address: str) -> str:
    """``address`` (e.g. ``--amqp-url``) with the TLS files of ``HOTUPDATE_BROKER_*_FILE``, for commands
    that run without a configuration file; a ValueError says what is wrong."""
    env = _broker_tls_env()
    parse_broker_address(address)
    return fold_broker_tls(address, BrokerTls.model_validate(env)) if env else address


def parse_config(raw: dict[str, Any], file: Path) -> HotupdateConfig:
    """Validate an already-parsed mapping; errors name ``file`` and the dotted key."""
    try:
        config = HotupdateConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            cause = err.get("ctx", {}).get("error")
            if not err["loc"] and isinstance(cause, ValueError):
                # Whole-file rules name their own dotted keys, one line each.
                lines += [f"{file}: {line}" for line in str(cause).splitlines()]
            else:
                lines.append(f"{file}: {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return _with_broker_tls(_resolve_paths(config, file.resolve().parent), file.resolve().parent)


def _with_broker_tls(config: HotupdateConfig, base: Path) -> HotupdateConfig:
    """Write the broker.tls files (relative to the config file) into amqp_url, where every component reads it."""
    if config.broker.tls is None:
        return config
    tls = config.broker.tls.model_copy(update={
        key: path if path is None or path.is_absolute() else base / path
        for key, path in (("ca_file", config.broker.tls.ca_file), ("cert_file", config.broker.tls.cert_file),
                          ("key_file", config.broker.tls.key_file))
    })
    return config.model_copy(update={
        "amqp_url": fold_broker_tls(config.amqp_url, tls),
        "broker": config.broker.model_copy(update={"tls": tls}),
    })


def _resolve_paths(config: HotupdateConfig, base: Path) -> HotupdateConfig:
    def fix(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    receivers = {
        n: r.model_copy(update={"version_root": fix(r.version_root), "backup_root": fix(r.backup_root)})
        for n, r in config.receivers.items()
    }
    def fix_runner(r: RunnerConfig) -> RunnerConfig:
        return r.model_copy(update={
            "ssh_key": fix(r.ssh_key) if r.ssh_key else None,
            "ssh_known_hosts": fix(r.ssh_known_hosts) if r.ssh_known_hosts else None,
        })

    managers = {
        n: m.model_copy(update={"incoming_root": fix(m.incoming_root), "cdn_origin_root": fix(m.cdn_origin_root),
                                "runner": fix_runner(m.runner)})
        for n, m in config.ops_managers.items()
    }
    projects = {
        k: p.model_copy(
            update={
                "rsync_targets": [t.model_copy(update={"pass_file": fix(t.pass_file)}) for t in p.rsync_targets],
                "webhooks": [
                    w.model_copy(update={"secret_file": fix(w.secret_file)}) if w.secret_file else w
                    for w in p.webhooks
                ],
                "erlang_cookie_file": fix(p.erlang_cookie_file) if p.erlang_cookie_file else None,
            }
        )
        for k, p in config.projects.items()
    }
    def fix_https(h: HttpsFiles | None) -> HttpsFiles | None:
        return h and HttpsFiles(certfile=fix(h.certfile), keyfile=fix(h.keyfile))

    d = config.dashboard
    dashboard = d.model_copy(update={
        "https": fix_https(d.https),
        "session_secret_file": fix(d.session_secret_file) if d.session_secret_file else None,
        "oidc": d.oidc and d.oidc.model_copy(update={
            "client_secret_file": fix(d.oidc.client_secret_file) if d.oidc.client_secret_file else None}),
    })
    cmdb = config.cmdb.model_copy(update={"https": fix_https(config.cmdb.https)})
    return config.model_copy(update={"receivers": receivers, "ops_managers": managers, "projects": projects,
                                     "dashboard": dashboard, "cmdb": cmdb})
