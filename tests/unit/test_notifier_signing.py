"""Webhook signatures: HMAC-SHA256 over b"<timestamp>." + body, checked with a clock tolerance."""

from __future__ import annotations

import hashlib
import hmac

from consumers.notifier.sending import headers_for
from consumers.notifier.signing import sign, signed_material, verify
from consumers.notifier.webhooks import Endpoint
from domain.config import WebhookConfig

SECRET = b"0123456789abcdef-secret"
BODY = '{"kind":"completed","summary":"全部完成"}'.encode()
NOW = 1_760_000_000


def test_signature_is_hex_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(SECRET, b"1760000000." + BODY, hashlib.sha256).hexdigest()
    assert signed_material(NOW, BODY) == b"1760000000." + BODY
    assert sign(SECRET, NOW, BODY) == f"sha256={expected}"


def test_verify_accepts_a_fresh_signature_of_the_exact_body():
    assert verify(SECRET, str(NOW), BODY, sign(SECRET, NOW, BODY), now=NOW + 10)


def test_verify_refuses_a_changed_body_another_secret_or_another_timestamp():
    signature = sign(SECRET, NOW, BODY)
    assert not verify(SECRET, str(NOW), BODY + b" ", signature, now=NOW)
    assert not verify(b"another-secret-entirely", str(NOW), BODY, signature, now=NOW)
    assert not verify(SECRET, str(NOW + 1), BODY, signature, now=NOW)


def test_verify_refuses_a_replay_outside_the_tolerance_and_a_malformed_timestamp():
    signature = sign(SECRET, NOW, BODY)
    assert not verify(SECRET, str(NOW), BODY, signature, now=NOW + 301)
    assert not verify(SECRET, str(NOW), BODY, signature, now=NOW - 301)
    assert not verify(SECRET, "-1", BODY, signature, now=NOW)
    assert not verify(SECRET, "١٧٦", BODY, signature, now=NOW)  # non-ASCII digits


def test_each_attempt_carries_event_id_delivery_id_timestamp_and_its_signature():
    endpoint = Endpoint("ssss", WebhookConfig(url="https://hooks.example.com/x", secret="0123456789abcdef"), SECRET)
    headers = headers_for(endpoint, BODY, event_id="ev-1", delivery_uuid="d-1", timestamp=NOW)
    assert headers["X-Hotupdate-Event-Id"] == "ev-1"
    assert headers["X-Hotupdate-Delivery"] == "d-1"
    assert headers["X-Hotupdate-Timestamp"] == str(NOW)
    assert headers["X-Hotupdate-Signature"] == sign(SECRET, NOW, BODY)
    assert headers["Content-Type"] == "application/json"
