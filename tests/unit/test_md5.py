"""Streamed md5: same digest as hashing at once, whatever the size, and the copy is exact."""

from __future__ import annotations

import hashlib
import io

from domain.md5 import CHUNK, md5_stream


def test_md5_of_data_larger_than_a_chunk_matches_hashlib():
    data = bytes(range(256)) * (CHUNK // 256 * 3 + 7)
    digest, size = md5_stream(io.BytesIO(data))
    assert digest == hashlib.md5(data).hexdigest()
    assert size == len(data)


def test_md5_stream_writes_every_byte_to_the_sink():
    data = b"x" * (CHUNK + 1)
    sink = io.BytesIO()
    md5_stream(io.BytesIO(data), sink)
    assert sink.getvalue() == data


def test_md5_of_empty_stream():
    assert md5_stream(io.BytesIO(b"")) == ("d41d8cd98f00b204e9800998ecf8427e", 0)
