"""Why a pull could not be done, in the words of the ``pull.failed`` event."""

from __future__ import annotations

from typing import Literal

PullFailureReason = Literal["version_missing", "unreadable", "empty", "error"]


class PullProblem(Exception):
    """The pull cannot succeed as asked; ``reason`` and ``detail`` go into *pull failed*."""

    def __init__(self, reason: PullFailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: PullFailureReason = reason
        self.detail = detail
