"""The demo's operator: two hot updates through the CMDB's HTTP API, with progress in the terminal."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from demo.world import AREA_NAME, CLIENT_VERSION, PROJECT, SERVER_VERSION

WAITING_FOR_PULL = {"pull_requested"}
STOPPED = {"pull_failed", "push_failed", "completed", "failed"}


class ScenarioError(RuntimeError):
    pass


@dataclass
class Outcome:
    update_type: str
    update_id: str
    state: str
    final_data: str | None
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok_targets(self) -> int:
        return sum(1 for r in self.results if r["ok"])

    @property
    def failed_targets(self) -> int:
        return sum(1 for r in self.results if not r["ok"])


class Operator:
    """Talks to the CMDB like an operator's browser would, with a bearer token."""

    def __init__(self, cmdb_url: str, token: str, out: Any = sys.stdout) -> None:
        self._http = httpx.Client(base_url=cmdb_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self._out = out

    def close(self) -> None:
        self._http.close()

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _get(self, update_id: str) -> dict[str, Any]:
        response = self._http.get(f"/api/updates/{update_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def run_update(self, update_type: str, version: str, expected_targets: int, timeout: float = 180) -> Outcome:
        body: dict[str, Any] = {"project": PROJECT, "area": AREA_NAME, "update_type": update_type, "version": version}
        if update_type == "hot_client":
            body["client_type"] = 0
        response = self._http.post("/api/updates", json=body)
        if response.status_code != 201:
            raise ScenarioError(f"CMDB refused the update: {response.status_code} {response.text}")
        update_id = response.json()["id"]
        self._say(f"\n== {update_type} {PROJECT} {AREA_NAME} {version}: update {update_id}")
        deadline = time.monotonic() + timeout
        update = self._wait(update_id, lambda u: u["state"] not in WAITING_FOR_PULL, deadline)
        if update["state"] != "pulled":
            return self._outcome(update_type, update)
        files = update.get("files") or []
        self._say(f"   pulled {len(files)} file(s): " + ", ".join(f["file_name"] for f in files))
        push = self._http.post(f"/api/updates/{update_id}/push", json={})
        if push.status_code >= 400:
            raise ScenarioError(f"CMDB refused the push: {push.status_code} {push.text}")
        self._say("   push confirmed: all files, every rsync target")
        reported: set[str] = set()
        last_state = ""
        while True:
            update = self._get(update_id)
            if update["state"] != last_state:
                last_state = update["state"]
                self._say(f"   state: {last_state}")
            for result in update.get("results") or []:
                if result["target"] not in reported:
                    reported.add(result["target"])
                    self._say("   " + _result_line(result))
                    self._say("   " + _bar(len(reported), expected_targets))
            if update["state"] in STOPPED and len(reported) >= min(expected_targets, len(update.get("results") or [])):
                return self._outcome(update_type, update)
            if time.monotonic() > deadline:
                raise ScenarioError(f"update {update_id} still {update['state']} after {timeout:.0f}s")
            time.sleep(0.3)

    def _wait(self, update_id: str, done: Any, deadline: float) -> dict[str, Any]:
        while True:
            update = self._get(update_id)
            if done(update):
                return update
            if time.monotonic() > deadline:
                raise ScenarioError(f"update {update_id} still {update['state']}")
            time.sleep(0.2)

    @staticmethod
    def _outcome(update_type: str, update: dict[str, Any]) -> Outcome:
        return Outcome(update_type, update["id"], update["state"], update.get("final_data") or update.get("reason"),
                       list(update.get("results") or []))


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _result_line(result: dict[str, Any]) -> str:
    mark = "ok  " if result["ok"] else "FAIL"
    detail = result.get("detail") or {}
    failures = []
    for section in ("update_data", "erl_data"):
        for server, outcome in (detail.get(section) or {}).items():
            if not outcome.get("status"):
                failures.append(f"{server}: {outcome.get('data')}")
    extra = f"  ({'; '.join(sorted(set(failures)))})" if failures else ""
    return f"{mark} {result['kind']} {result['target']}{extra}"


def hot_server(operator: Operator, ips: int) -> Outcome:
    return operator.run_update("hot_server", SERVER_VERSION, ips)


def hot_client(operator: Operator, dirs: int) -> Outcome:
    return operator.run_update("hot_client", CLIENT_VERSION, dirs)
