"""The dashboard's small charts as plain geometry, drawn by the templates as inline SVG.

Server-rendered on purpose: no chart library to vendor, nothing for the Content-Security-Policy
to allow (SVG attributes are not styles), and the live refresh swaps them like any other markup.
Pure functions of the data (:mod:`projections.trends`): unit-tested without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from projections.trends import OUTCOMES, DayOutcomes, FinishBins

WIDTH, HEIGHT = 560, 150
_LEFT, _RIGHT, _TOP, _BOTTOM = 30, 8, 10, 24
_PLOT_W, _PLOT_H = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    kind: str  # a CSS class: an outcome, "ok" or "failed"


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Bar:
    """One column of a chart: its stacked segments and what it says when pointed at."""

    title: str
    rects: list[Rect]


@dataclass(frozen=True)
class Chart:
    """A bar chart's geometry in a ``WIDTH`` × ``HEIGHT`` box, and a sentence saying what it shows."""

    summary: str
    bars: list[Bar]
    labels: list[Label]
    gridlines: list[float] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT


def duration(seconds: float | None) -> str:
    """``seconds`` as an operator reads it: "45 s", "2 min 10 s", "1 h 5 min", "3 d 4 h"."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _scale_top(value: int) -> int:
    """A round number at least ``value`` (the y axis' top): 1, 2, 5, 10, 20, 50, ..."""
    if value <= 1:
        return 1
    magnitude: int = 10 ** len(str(value - 1)) // 10  # the power of ten below value
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _stack(x: float, width: float, parts: Sequence[tuple[str, int]], top: int) -> list[Rect]:
    rects: list[Rect] = []
    base = float(_TOP + _PLOT_H)
    for kind, count in parts:
        if count <= 0:
            continue
        height = _PLOT_H * count / top
        base -= height
        rects.append(Rect(round(x, 2), round(base, 2), round(width, 2), round(height, 2), kind))
    return rects


def _y_axis(top: int) -> tuple[list[Label], list[float]]:
    values = [0, top] if top < 2 else [0, top // 2, top] if top % 2 == 0 else [0, top]
    labels, lines = [], []
    for v in values:
        y = round(_TOP + _PLOT_H * (1 - v / top), 2)
        labels.append(Label(_LEFT - 4, y + 4, str(v), "end"))
        lines.append(y)
    return labels, lines


def updates_per_day(days: Sequence[DayOutcomes]) -> Chart | None:
    """Stacked bars, one per day, of its updates by outcome; None without days."""
    if not days:
        return None
    top = _scale_top(max(d.total for d in days))
    slot = _PLOT_W / len(days)
    bars, labels = [], []
    every = max(1, math.ceil(len(days) / 7))  # at most 7 dates under the axis
    for n, d in enumerate(days):
        x = _LEFT + n * slot + slot * 0.15
        counts = ", ".join(f"{d.counts[o]} {o}" for o in OUTCOMES if d.counts[o]) or "none"
        bars.append(Bar(f"{d.day.isoformat()}: {counts}",
                        _stack(x, slot * 0.7, [(o, d.counts[o]) for o in OUTCOMES], top)))
        if (len(days) - 1 - n) % every == 0:
            labels.append(Label(round(_LEFT + (n + 0.5) * slot, 2), HEIGHT - 8, d.day.strftime("%m-%d")))
    y_labels, lines = _y_axis(top)
    totals = {o: sum(d.counts[o] for d in days) for o in OUTCOMES}
    said = ", ".join(f"{totals[o]} {o}" for o in OUTCOMES)
    summary = f"Updates per day from {days[0].day.isoformat()} to {days[-1].day.isoformat()}: {said}."
    return Chart(summary, bars, y_labels + labels, lines)


def finish_times(spread: FinishBins | None, what: str) -> Chart | None:
    """A histogram of when an update's targets (``what``: "IPs", "CDN dirs") reported after its
    start, ok and failed stacked; None when none reported."""
    if spread is None:
        return None
    n_bins = len(spread.bins)
    top = _scale_top(max(ok + failed for ok, failed in spread.bins))
    slot = _PLOT_W / n_bins
    bars = []
    for n, (ok, failed) in enumerate(spread.bins):
        lo, hi = spread.span_seconds * n / n_bins, spread.span_seconds * (n + 1) / n_bins
        title = f"{duration(lo)} – {duration(hi)}: {ok} ok, {failed} failed"
        bars.append(Bar(title, _stack(_LEFT + n * slot + 1, slot - 2, [("ok", ok), ("failed", failed)], top)))
    y_labels, lines = _y_axis(top)
    x_labels = [Label(_LEFT, HEIGHT - 8, "+0 s", "start"),
                Label(_LEFT + _PLOT_W / 2, HEIGHT - 8, f"+{duration(spread.span_seconds / 2)}"),
                Label(_LEFT + _PLOT_W, HEIGHT - 8, f"+{duration(spread.span_seconds)}", "end")]
    summary = (f"{spread.reported} {what} reported over {duration(spread.span_seconds)} after the start: "
               f"{spread.reported - spread.failed} ok, {spread.failed} failed.")
    return Chart(summary, bars, y_labels + x_labels, lines)
