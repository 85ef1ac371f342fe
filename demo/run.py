"""``hotupdate demo``: bring every part up on this machine, run two hot updates, show the result.

Expected outcome: the hot_server update reaches every IP; every game server but ``qq_4``
(whose files cannot be applied, on purpose) answers the new module version without a
restart, and ``qq_4`` ran no Erlang command; the hot_client update lands in all CDN dirs.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import yaml

from demo.erlang import ErlangNodes
from demo.processes import Children
from demo.rsyncd import RsyncDaemon, free_port
from demo.scenario import Operator, Outcome, ScenarioError, hot_client, hot_server
from demo.world import CDN_DIRS, CDN_ROOT, FAILING, MODULE, SERVERS, World, build, code_dir

# demo child → (component, instance): whose broker user it logs in as
COMPONENT_OF = {"file_pull": ("file_pull", "recv1"), "file_push": ("file_push", "recv1"),
                "ops_executor": ("ops_executor", "ops1"), "projection": ("projection", ""), "cmdb": ("cmdb", "")}

DEMO_VHOST = "hotupdate-demo"


def _broker_url(stack: ExitStack) -> str:
    """The demo's broker: HOTUPDATE_AMQP_URL as given, else a fresh vhost on the local broker."""
    if url := os.environ.get("HOTUPDATE_AMQP_URL"):
        return url
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("no rabbitmqctl here: set HOTUPDATE_AMQP_URL to a broker the demo may use")
    subprocess.run([ctl, "delete_vhost", DEMO_VHOST], capture_output=True, timeout=60)
    for args in (["add_vhost", DEMO_VHOST], ["set_permissions", "-p", DEMO_VHOST, "guest", ".*", ".*", ".*"]):
        done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SystemExit(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()} (is RabbitMQ running?)")
    stack.callback(subprocess.run, [ctl, "delete_vhost", DEMO_VHOST], capture_output=True, timeout=60)
    return f"amqp://guest:guest@127.0.0.1:5672/{DEMO_VHOST}"


def provision_logins(world: World, admin_url: str, stack: ExitStack) -> dict[str, str]:
    """Each component logs in as its own broker user, as in production (``hotupdate rabbitmq provision``).

    The world's configuration loses its development ``shared_user``; the users are deleted at the end.
    """
    import asyncio

    from bus.identity import component_user
    from bus.permissions import Rabbitmqctl, apply_grants, provision_grants
    from bus.topology import Topology, declare_all
    from domain.config import load_config

    raw = yaml.safe_load(world.config_file.read_text(encoding="utf-8"))
    raw["broker"] = {key: value for key, value in raw.get("broker", {}).items() if key != "shared_user"}
    world.config_file.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    grants = provision_grants(load_config(world.config_file), vhost=DEMO_VHOST)
    ctl = Rabbitmqctl()
    for grant in grants:  # registered first: a half-done provisioning is undone too
        stack.callback(subprocess.run, [*ctl.base, "delete_user", grant.user], capture_output=True, timeout=60)
    asyncio.run(declare_all(admin_url, Topology()))  # as the administrator: components only look them up
    passwords = world.root / "broker"
    apply_grants(grants, ctl, password_dir=passwords)
    parts = urlsplit(admin_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    logins = {}
    for child, (component, instance) in COMPONENT_OF.items():
        user = component_user(component, instance)
        password = (passwords / f"{user}.password").read_text(encoding="utf-8").strip()
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
        logins[child] = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return logins


def _wait_http(url: str, children: Children, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dead := children.dead():
            raise ScenarioError(f"{dead[0].name} exited early; see {dead[0].log_path}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ScenarioError(f"{url} did not answer within {timeout:.0f}s")


def wait_consumers(amqp_url: str, queues: list[str], children: Children, timeout: float = 60) -> None:
    from bus.connection import queues_with_consumers

    deadline = time.monotonic() + timeout
    pending = list(queues)
    while pending and time.monotonic() < deadline:
        if dead := children.dead():
            raise ScenarioError(f"{dead[0].name} exited early; see {dead[0].log_path}")
        ready = queues_with_consumers(amqp_url, pending)
        pending = [name for name in pending if name not in ready]
        time.sleep(0.3)
    if pending:
        raise ScenarioError(f"no consumer on {', '.join(pending)} after {timeout:.0f}s")


CONSUMER_QUEUES = {
    "file_pull": "hotupdate.file_pull.recv1",
    "file_push": "hotupdate.file_push.recv1",
    "ops_executor": "hotupdate.ops_executor.ops1",
    "projection": "hotupdate.projection",
    "cmdb": "hotupdate.cmdb",
}


@dataclass
class Components:
    """The running components of one world: their processes and how to reach them."""

    children: Children
    argv: dict[str, list[str]]  # name → ``hotupdate`` arguments, to start one again after a crash
    cmdb_url: str
    dashboard_url: str


def component_args(world: World, amqp_url: str, cmdb_port: int, dash_port: int) -> dict[str, list[str]]:
    config = str(world.config_file)
    return {
        "file_pull": ["consume", "file-pull", "--config", config, "--receiver", "recv1",
                      "--processed-db", world.db_url("file_pull")],
        "file_push": ["consume", "file-push", "--config", config, "--receiver", "recv1",
                      "--processed-db", world.db_url("file_push")],
        "ops_executor": ["consume", "ops-executor", "--config", config, "--ops-manager", "ops1",
                         "--processed-db", world.db_url("ops_executor")],
        # the broker URL comes from HOTUPDATE_AMQP_URL: a password has no place on a command line
        "projection": ["projection", "run", "--database-url", world.db_url("projection")],
        "cmdb": ["cmdb", "serve", "--config", config, "--port", str(cmdb_port)],
        "dashboard": ["dashboard", "serve", "--database-url", world.db_url("projection"), "--port", str(dash_port)],
    }


def start_components(world: World, amqp_url: str, stack: ExitStack, *, verbose: bool = False,
                     extra_env: dict[str, str] | None = None, logins: dict[str, str] | None = None) -> Components:
    """Start every component as its own process (stopped by ``stack``) and wait until each answers.

    ``logins``: component name → its own broker URL (else every one uses ``amqp_url``).
    """
    env = {**os.environ, "HOTUPDATE_CONFIG": str(world.config_file), "HOTUPDATE_AMQP_URL": amqp_url,
           **(extra_env or {})}
    env_of = {name: {"HOTUPDATE_AMQP_URL": url} for name, url in (logins or {}).items()}
    children = Children(world.logs, env, verbose=verbose, cwd=world.root, env_of=env_of)
    stack.callback(children.stop_all)
    cmdb_port, dash_port = free_port(), free_port()
    argv = component_args(world, amqp_url, cmdb_port, dash_port)
    for name, args in argv.items():
        children.start(name, *args)
    system = Components(children, argv, f"http://127.0.0.1:{cmdb_port}", f"http://127.0.0.1:{dash_port}/")
    _wait_http(system.cmdb_url + "/healthz", children)
    _wait_http(system.dashboard_url, children)
    wait_consumers(amqp_url, list(CONSUMER_QUEUES.values()), children)
    return system


def _node_versions(nodes: ErlangNodes, world: World) -> dict[str, str]:
    versions = {}
    for _group, _ip, server in world.all_servers():
        versions[server] = nodes.apply(world.node(server), MODULE, "version")
    return versions


def _summary(outcomes: list[Outcome], versions: dict[str, str], world: World, dashboard: str) -> bool:
    print("\n== Summary")
    print(f"{'update':<38} {'type':<11} {'state':<10} {'targets ok':>10} {'failed':>7}  result")
    for o in outcomes:
        print(f"{o.update_id:<38} {o.update_type:<11} {o.state:<10} {o.ok_targets:>10} {o.failed_targets:>7}  "
              f"{o.final_data or ''}")
    print(f"\n{'game server':<12} {'ip':<12} {MODULE} version (was 1)")
    for _group, ip, server in world.all_servers():
        print(f"{server:<12} {ip:<12} {versions[server]}")
    cdn_ok = [d for d in CDN_DIRS if (world.root / "cdn" / CDN_ROOT / d / "lang_zh_cn.json").is_file()]
    print(f"\nCDN dirs with the new resources: {', '.join(cdn_ok) or 'none'}")
    print(f"\nDashboard: {dashboard} (send 'Authorization: Bearer {world.token}')\nLogs:      {world.logs}")
    server_ips = sum(len(ips) for ips in SERVERS.values())
    hot_server_outcome, hot_client_outcome = outcomes
    expected = (
        hot_server_outcome.state == "failed"
        and hot_server_outcome.failed_targets == 1
        and hot_server_outcome.ok_targets == server_ips - 1
        and all(v == ("1" if s == FAILING else "2") for s, v in versions.items())
        and hot_client_outcome.state == "completed"
        and hot_client_outcome.ok_targets == len(CDN_DIRS)
        and cdn_ok == list(CDN_DIRS)
    )
    print("\nOutcome: " + ("as expected (qq_4 failed on purpose, everything else updated)"
                           if expected else "NOT as expected — see the logs"))
    return expected


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll drowns the progress
    root = Path(args.workdir).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with ExitStack() as stack:
        amqp_url = _broker_url(stack)
        own_vhost = not os.environ.get("HOTUPDATE_AMQP_URL")  # a broker of ours: we may make its users
        daemon = RsyncDaemon(root / "rsyncd", password=secrets.token_urlsafe(16)).start()
        stack.callback(daemon.stop)
        world = World(root, amqp_url, daemon.port, daemon.password)
        build(world)
        print(f"work directory {root}\nbroker {amqp_url}\nrsync daemon 127.0.0.1:{daemon.port}")
        logins = provision_logins(world, amqp_url, stack) if own_vhost else None
        print("each component logs in as its own broker user (docs/security.md)" if logins else
              "every component logs in as the HOTUPDATE_AMQP_URL user (broker.shared_user)")
        nodes = ErlangNodes(world.cookie)
        stack.callback(nodes.stop_all)
        for _group, ip, server in world.all_servers():
            nodes.start(world.node(server), world.server_dir(ip, server), code_dir(world, ip, server))
        print(f"{len(nodes.pids)} Erlang game servers running {MODULE} version 1")
        system = start_components(world, amqp_url, stack, verbose=args.verbose, logins=logins)
        children, cmdb_url, dashboard_url = system.children, system.cmdb_url, system.dashboard_url
        print("every component is up: file_pull, file_push, ops_executor, projection, cmdb, dashboard")
        operator = Operator(cmdb_url, world.token)
        stack.callback(operator.close)
        try:
            outcomes = [hot_server(operator, sum(len(ips) for ips in SERVERS.values())),
                        hot_client(operator, len(CDN_DIRS))]
        except ScenarioError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
        expected = _summary(outcomes, _node_versions(nodes, world), world, dashboard_url)
        if args.once:
            return 0 if expected else 1
        print("\nEverything stays up for browsing; Ctrl-C stops it all.")
        try:
            while not children.dead():
                time.sleep(0.5)
            print(f"{children.dead()[0].name} exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping…")
            return 0
    return 0
