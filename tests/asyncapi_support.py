"""The official AsyncAPI parser (@asyncapi/parser under node), installed from tests/asyncapi/package-lock.json."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PARSER_DIR = Path(__file__).resolve().parent / "asyncapi"


def _installed() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the AsyncAPI parser (apt-get install nodejs npm)")
    if not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PARSER_DIR, check=True, timeout=300,
                       capture_output=True)


def parse_asyncapi(path: Path) -> tuple[bool, list[dict[str, Any]]]:
    """Run the parser on ``path``: (valid, its diagnostics and result lines)."""
    _installed()
    done = subprocess.run(["node", "validate.mjs", str(path)], cwd=PARSER_DIR, capture_output=True, text=True,
                          timeout=180)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode not in (0, 1) or not lines:
        raise RuntimeError(f"the parser did not run: {done.returncode} {done.stderr[-2000:]}")
    return done.returncode == 0, lines
