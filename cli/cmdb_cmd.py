"""``hotupdate cmdb serve|hash-token`` and ``hotupdate update start|push|status|abort|confirm|retry-failed|rollback``
(an HTTP client of the CMDB).

The update commands print the CMDB's JSON answer and exit 0, or print its message and
exit 1, so scripts can chain them; ``status --wait`` polls until the update needs the
operator again or is over.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from typing import Any

import httpx

from producers.cmdb.states import IN_PROGRESS

DEFAULT_CMDB_URL = "http://127.0.0.1:8000"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmdb = subparsers.add_parser("cmdb", help="the CMDB service")
    cmdb_sub = cmdb.add_subparsers(dest="cmdb_command", required=True)

    serve = cmdb_sub.add_parser("serve", help="run the CMDB API, outbox relay and process manager")
    serve.add_argument("--config", help="configuration file (default: $HOTUPDATE_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--database-url", help="default: $HOTUPDATE_CMDB_DATABASE_URL, else cmdb.database_url of the config"
    )
    serve.set_defaults(func=_serve)

    hash_token = cmdb_sub.add_parser(
        "hash-token", help="print the sha256 of an operator token, for cmdb.operators[].token_sha256"
    )
    hash_token.add_argument("--generate", action="store_true", help="make a new random token and print both")
    hash_token.set_defaults(func=_hash_token)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=None, help=f"CMDB URL (default: $HOTUPDATE_CMDB_URL or {DEFAULT_CMDB_URL})")
    client.add_argument("--token", default=None, help="operator token (default: $HOTUPDATE_TOKEN)")
    client.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    client.add_argument("--trace", action="store_true",
                        help="trace this request and what it starts whatever the sampling ratio (a sampled "
                        "traceparent header); prints the trace id on stderr")
    update = subparsers.add_parser("update", help="start, push and follow hot updates through the CMDB")
    update_sub = update.add_subparsers(dest="update_command", required=True)

    start = update_sub.add_parser(
        "start", parents=[client], help="start an update: the version receiver pulls the files"
    )
    start.add_argument("--project", required=True)
    start.add_argument("--area", required=True, help="display name (大陆) or code (cn)")
    start.add_argument("--area-code", help="which code, when the area name maps to several")
    start.add_argument("--type", dest="update_type", required=True, choices=("hot_server", "hot_client"))
    start.add_argument("--version", required=True)
    start.add_argument("--client-type", type=int, choices=(0, 1), help="hot_client only")
    start.add_argument(
        "--erlang-cmd", action="append", dest="erlang_cmd_list", help="hot_server: an Erlang command (repeatable)"
    )
    start.set_defaults(func=_start)

    push = update_sub.add_parser(
        "push", parents=[client], help="push the pulled files (all unless --file) to the rsync targets"
    )
    push.add_argument("update_id")
    push.add_argument("--file", action="append", dest="files", help="a pulled file to push (repeatable)")
    push.add_argument("--server", action="append", dest="servers", help="hot_server: only this server (repeatable)")
    push.add_argument("--cdn-dir", action="append", dest="cdn_dirs", help="hot_client: only this CDN dir (repeatable)")
    _add_rollout(push)
    push.set_defaults(func=_push)

    abort = update_sub.add_parser(
        "abort", parents=[client], help="abort a running update: what started finishes, nothing more starts"
    )
    abort.add_argument("update_id")
    abort.add_argument("--reason", default="", help="why (kept with the update and sent to the executor)")
    abort.set_defaults(func=_action, action="abort")

    confirm = update_sub.add_parser(
        "confirm", parents=[client], help="go ahead with the next batch after a failed one (--on-failure confirm)"
    )
    confirm.add_argument("update_id")
    confirm.set_defaults(func=_action, action="confirm")

    retry = update_sub.add_parser(
        "retry-failed", parents=[client],
        help="a new linked update of the same files on exactly the failed or not-run servers (CDN dirs)",
    )
    retry.add_argument("update_id")
    _add_rollout(retry)
    retry.set_defaults(func=_action, action="retry-failed")

    rollback = update_sub.add_parser(
        "rollback", parents=[client],
        help="a new linked update applying the previous completed version to the same targets",
    )
    rollback.add_argument("update_id")
    _add_rollout(rollback)
    rollback.set_defaults(func=_action, action="rollback")

    status = update_sub.add_parser("status", parents=[client], help="show an update's state")
    status.add_argument("update_id")
    status.add_argument("--files", action="store_true", help="show the pulled files only")
    status.add_argument("--wait", action="store_true", help="poll until the update needs the operator or is over")
    status.add_argument("--wait-timeout", type=float, default=600.0)
    status.set_defaults(func=_status)


def _add_rollout(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--batch-size", type=int, help="run the targets in batches of N IPs (CDN dirs)")
    size.add_argument("--batch-percent", type=int, help="batches of P%% of the targets (rounded up)")
    parser.add_argument("--pause", type=float, dest="pause_seconds", help="seconds between batches")
    parser.add_argument(
        "--on-failure", choices=("stop", "continue", "confirm"),
        help="a failed batch: stop the rest (default), continue, or wait for 'update confirm'",
    )


def _rollout(args: argparse.Namespace) -> dict[str, Any] | None:
    """The rollout plan from the options; None when none was given (one batch)."""
    plan = {key: getattr(args, key) for key in ("batch_size", "batch_percent", "pause_seconds", "on_failure")
            if getattr(args, key, None) is not None}
    return plan or None


def _serve(args: argparse.Namespace) -> int:
    from bus.tracing import setup_tracing
    from domain.config import ConfigError, load_config
    from producers.cmdb.app import run
    from producers.cmdb.bootstrap import bootstrap

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    database_url = args.database_url or os.environ.get("HOTUPDATE_CMDB_DATABASE_URL")
    runtime = bootstrap(config, database_url)
    stop_tracing = setup_tracing(config.telemetry, "cmdb")
    try:
        asyncio.run(run(runtime, host=args.host, port=args.port))
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        runtime.database.close()
        return 1
    finally:
        stop_tracing()  # flushes the spans not yet exported
    return 0


def _hash_token(args: argparse.Namespace) -> int:
    from producers.cmdb.auth import hash_token, new_token

    if args.generate:
        token = new_token()
        print(f"token:        {token}")
        print(f"token_sha256: {hash_token(token)}")
        return 0
    token = sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("token: ").strip()
    if not token:
        print("no token given", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


def _start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "project": args.project,
        "area": args.area,
        "update_type": args.update_type,
        "version": args.version,
    }
    for key in ("area_code", "client_type", "erlang_cmd_list"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return _call(args, "POST", "/api/updates", body)


def _push(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        key: getattr(args, key) for key in ("files", "servers", "cdn_dirs") if getattr(args, key) is not None
    }
    rollout = _rollout(args)
    if rollout is not None:
        body["rollout"] = rollout
    return _call(args, "POST", f"/api/updates/{args.update_id}/push", body)


def _action(args: argparse.Namespace) -> int:
    """abort, confirm, retry-failed, rollback: ``POST /api/updates/<id>/<action>``."""
    body: dict[str, Any] = {}
    if args.action == "abort" and args.reason:
        body["reason"] = args.reason
    rollout = _rollout(args)
    if rollout is not None:
        body["rollout"] = rollout
    return _call(args, "POST", f"/api/updates/{args.update_id}/{args.action}", body)


def _status(args: argparse.Namespace) -> int:
    path = f"/api/updates/{args.update_id}" + ("/files" if args.files else "")
    if not args.wait:
        return _call(args, "GET", path)
    deadline = time.monotonic() + args.wait_timeout
    with _client(args) as client:
        try:
            while True:
                response = client.get(f"/api/updates/{args.update_id}")
                if response.status_code != 200 or response.json().get("state") not in IN_PROGRESS:
                    break
                if time.monotonic() >= deadline:
                    print(f"update {args.update_id} is still {response.json()['state']}", file=sys.stderr)
                    return 1
                time.sleep(1.0)
            if args.files and response.status_code == 200:
                response = client.get(path)
        except httpx.HTTPError as exc:
            print(f"cannot reach the CMDB at {client.base_url}: {exc}", file=sys.stderr)
            return 1
    return _report(response)


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    with _client(args) as client:
        try:
            response = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            print(f"cannot reach the CMDB at {client.base_url}: {exc}", file=sys.stderr)
            return 1
    return _report(response)


def _client(args: argparse.Namespace) -> httpx.Client:
    url = args.url or os.environ.get("HOTUPDATE_CMDB_URL") or DEFAULT_CMDB_URL
    token = args.token or os.environ.get("HOTUPDATE_TOKEN") or ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if args.trace:
        from bus.tracing import sampled_trace_headers

        headers.update(sampled_trace_headers())
        print(f"trace {headers['traceparent'].split('-')[1]}", file=sys.stderr)
    return httpx.Client(base_url=url, headers=headers, timeout=args.timeout)


def _report(response: httpx.Response) -> int:
    try:
        payload: Any = response.json()
    except ValueError:
        payload = {"detail": response.text}
    if response.is_success:
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return 0
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    if not isinstance(detail, str):
        detail = json.dumps(detail, ensure_ascii=False)
    print(f"error {response.status_code}: {detail}", file=sys.stderr)
    return 1
