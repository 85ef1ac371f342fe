"""docs/notifications.md's receiver code checks real signatures: run it against what the notifier sends."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from consumers.notifier.sending import headers_for
from consumers.notifier.webhooks import Endpoint
from domain.config import WebhookConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "notifications.md"
SECRET = b"a-long-random-string-of-at-least-16-chars"


def documented_check() -> Any:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    (code,) = [b for b in blocks if "def hotupdate_signature_ok" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["hotupdate_signature_ok"]


def sent(body: bytes, timestamp: int) -> dict[str, str]:
    endpoint = Endpoint("ssss", WebhookConfig(url="https://h.example.com/h", secret=SECRET.decode()), SECRET)
    headers = headers_for(endpoint, body, event_id="ev-1", delivery_uuid="d-1", timestamp=timestamp)
    return {k.lower(): v for k, v in headers.items()}


def test_the_documented_receiver_check_accepts_what_the_notifier_signs():
    check = documented_check()
    body = '{"kind":"failed","summary":"qq_2 失败"}'.encode()
    assert check(SECRET, sent(body, int(time.time())), body)


def test_the_documented_receiver_check_refuses_tampering_other_keys_and_old_requests():
    check = documented_check()
    body = b'{"kind":"completed"}'
    now = int(time.time())
    assert not check(SECRET, sent(body, now), b'{"kind":"failed"}')
    assert not check(b"not-the-right-secret-at-all", sent(body, now), body)
    assert not check(SECRET, sent(body, now - 3600), body)
    assert not check(SECRET, {}, body)
