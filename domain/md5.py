"""Streamed md5 and size of a file (the seed's file_md5), in constant memory whatever the size.

Shared by file_pull (listing a copy), file_push (checking before sending) and the ops manager.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


def md5_stream(stream: BinaryIO, sink: BinaryIO | None = None) -> tuple[str, int]:
    """md5 hex and byte count of ``stream`` read to its end; each chunk is also written to ``sink``."""
    digest = hashlib.md5(usedforsecurity=False)  # the seed's file_md5: an integrity check, not security
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


def file_md5(path: Path) -> tuple[str, int]:
    """md5 hex and size of the file at ``path``."""
    with path.open("rb") as stream:
        return md5_stream(stream)
