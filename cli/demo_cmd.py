"""``hotupdate demo``: a whole hot update on this machine, with embedded defaults."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="run a hot_server and a hot_client update end to end on this machine")
    demo.add_argument("--workdir", default="work/demo", help="where everything is generated (wiped first)")
    demo.add_argument("--once", action="store_true", help="exit after the summary: 0 only if as expected")
    demo.add_argument("--verbose", action="store_true", help="also stream every process's log")
    demo.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from demo.run import run  # the rig is only needed here

    return run(args)
