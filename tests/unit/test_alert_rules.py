"""The operators' alert rules and Grafana dashboard are valid, and the parked-events alert fires."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

OPS = Path(__file__).resolve().parents[2] / "ops"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus; "
                                                              "scripts/setup.sh installs it)")


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(OPS / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


@needs_promtool
def test_parked_events_alert_fires_in_promtool_test() -> None:
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=OPS / "prometheus",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    import re

    from prometheus_client import REGISTRY

    import bus.metrics  # noqa: F401  (registers every metric of hotupdate)

    dashboard = json.loads((OPS / "grafana" / "hotupdate.json").read_text(encoding="utf-8"))
    defined = {family.name for family in REGISTRY.collect()}  # counters by their name without _total
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bhotupdate_[a-z_]+", target["expr"])}
    base = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    assert base <= defined, base - defined
