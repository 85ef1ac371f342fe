"""axe-core (the accessibility rules engine, an npm package) for the browser tests: installed from
``tests/axe/package-lock.json`` on first use, injected into a page, run with the WCAG 2 A/AA rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

AXE_DIR = Path(__file__).resolve().parent / "axe"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
"""WCAG 2.0 and 2.1, A and AA, and axe's best practices (unique landmarks, heading order, among them)."""


def axe_script() -> Path:
    """``axe.min.js``, installed with ``npm ci`` if it is not yet (skips the test without node and npm)."""
    if not AXE_SCRIPT.is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is needed to install axe-core (apt-get install nodejs npm)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=AXE_DIR, check=True, timeout=300,
                       capture_output=True)
    return AXE_SCRIPT


def violations(page: Any) -> list[dict[str, Any]]:
    """What axe-core finds wrong on the page open in ``page`` (a playwright page whose context was made
    with ``bypass_csp=True``: the dashboard's policy refuses the injected script otherwise)."""
    page.add_script_tag(path=str(axe_script()))
    result = page.evaluate("rules => axe.run(document, {runOnly: {type: 'tag', values: rules}})", RULES)
    return list(result["violations"])


def describe(found: list[dict[str, Any]]) -> str:
    """Violations as a reader wants them in a failed assertion: rule, impact, help, and the elements."""
    lines = []
    for v in found:
        lines.append(f"{v['id']} ({v.get('impact')}): {v['help']}")
        lines.extend(f"    {n['html'][:200]}  {json.dumps(n.get('failureSummary', ''))[:300]}" for n in v["nodes"][:5])
    return "\n".join(lines)
