"""A real OpenID Connect provider (panva/oidc-provider under node) on loopback, for the dashboard's
sign-in tests: ``tests/oidc_provider/provider.mjs``, installed from its package-lock.json."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
CLIENT_ID = "hotupdate-dashboard"
CLIENT_SECRET = "test-client-secret-of-the-dashboard"


def _installed() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the test OpenID provider (apt-get install nodejs npm)")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PROVIDER_DIR, check=True, timeout=300,
                       capture_output=True)


class OidcProvider:
    """The provider process: ``accounts`` maps a login to its ``groups`` claim; any password signs in."""

    def __init__(self, redirect_uris: list[str], accounts: dict[str, list[str]]) -> None:
        self.settings = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris,
                         "accounts": accounts}
        self.issuer = ""
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> OidcProvider:
        _installed()
        self.proc = subprocess.Popen(["node", "provider.mjs", json.dumps(self.settings)], cwd=PROVIDER_DIR,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # its warnings go to stderr; "listening <issuer>" when it accepts
            if line.startswith("listening "):
                self.issuer = line.split()[1]
                return self
        raise RuntimeError(f"the OpenID provider did not start (exit {self.proc.wait()})")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)
