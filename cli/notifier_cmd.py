"""``hotupdate notifier deliveries``: what the notifier sent to which webhook, and what failed and why."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.engine import make_url

from consumers.notifier.store import DeliveryRecord, DeliveryStatus, DeliveryStore
from consumers.notifier.webhooks import redact_url
from domain.config import ConfigError, load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    notifier = sub.add_parser("notifier", help="the webhook notifier's deliveries")
    notifier_sub = notifier.add_subparsers(dest="notifier_command", required=True)
    deliveries = notifier_sub.add_parser("deliveries", help="list webhook deliveries, newest first")
    source = deliveries.add_mutually_exclusive_group()
    source.add_argument("--config", help="the YAML file (env HOTUPDATE_CONFIG); its notifier.state_url is read")
    source.add_argument("--state-url", help="the notifier's database URL, instead of --config")
    shown = deliveries.add_mutually_exclusive_group()
    shown.add_argument("--failed", action="store_true", help="only deliveries that were given up")
    shown.add_argument("--pending", action="store_true", help="only deliveries still to be made")
    deliveries.add_argument("--update", help="only this update's deliveries")
    deliveries.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    deliveries.add_argument("--attempts", action="store_true", help="also list every attempt of each delivery")
    deliveries.set_defaults(func=_deliveries)


def _deliveries(args: argparse.Namespace) -> int:
    try:
        url = args.state_url or load_config(args.config).notifier.state_url
    except ConfigError as exc:
        print(f"hotupdate notifier deliveries: {exc}", file=sys.stderr)
        return 2
    statuses: tuple[DeliveryStatus, ...] = ("failed",) if args.failed else ("pending",) if args.pending else ()
    # Reading must not create or migrate anybody's database: a wrong URL should say so.
    store = DeliveryStore(url, migrate=False)
    try:
        records = store.deliveries(statuses=statuses, update_id=args.update, limit=args.limit)
        print("\t".join(("ID", "CREATED", "STATUS", "TRIES", "KIND", "PROJECT", "AREA", "UPDATE", "WEBHOOK", "LAST")))
        for record in records:
            print(_row(record))
            if args.attempts:
                for a in store.attempts(record.id):
                    code = a.status_code if a.status_code is not None else "-"
                    print(f"\t  #{a.attempt} {a.attempted_at:%Y-%m-%d %H:%M:%S} {a.outcome} "
                          f"status={code} {a.duration_ms}ms delivery={a.delivery_uuid} {a.error}".rstrip())
    except Exception as exc:  # a missing table or an unreachable server: one line, not a traceback
        shown = make_url(url).render_as_string(hide_password=True)
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        print(f"hotupdate notifier deliveries: cannot read {shown}: {type(exc).__name__}: {first_line}",
              file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _row(record: DeliveryRecord) -> str:
    last = record.last_error or (f"HTTP {record.last_status_code}" if record.last_status_code else "")
    return "\t".join((
        str(record.id), f"{record.created_at:%Y-%m-%d %H:%M:%S}", record.status, str(record.attempts), record.kind,
        record.project, record.area, record.update_id, redact_url(record.webhook_url), last,
    ))
