"""Auditing the event log: selecting slices of it, exporting them to JSON Lines, verifying an export.

An export is one header line, one line per logged event in position order, and a trailer
line (format in ``docs/audit.md``). Each event line carries the row's position,
``prev_hash``, ``hash`` and the exact canonical envelope text, so a slice that is not
contiguous (a filtered export) still proves itself: every row must hash to its own
``hash`` (:func:`projections.log.chain_hash` over its ``prev_hash`` and envelope), and
rows at consecutive positions must link. The trailer holds the sha256 of every byte
before it, so a removed, added or edited line, or a truncated file, is noticed too.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from projections.log.chain import AT, Chain, ChainRow
from projections.log.store import read_head, read_rows
from projections.models import LoggedEvent

FORMAT = "hotupdate.log.export"
FORMAT_VERSION = 2  # 2: event lines carry the row's verified ``publisher`` (absent on rows logged before it)
_READABLE_VERSIONS = (1, 2)
_EVENT_FIELDS = ("position", "event_id", "type", "updateid", "project", "area", "received_at", "prev_hash", "hash",
                 "envelope")
_EQUAL = ("project", "area", "updateid", "type")
"""A :class:`LogFilter`'s fields that a row's column (and its envelope's field) must equal."""


def parse_time(text: str) -> datetime:
    """An ISO 8601 instant; one without a zone is taken as UTC (the log and the dashboard keep UTC)."""
    value = datetime.fromisoformat(text.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- selecting rows -------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """Which logged events a slice holds; ``None`` selects any. Times are the log's received time, [since, until)."""

    project: str | None = None
    area: str | None = None
    updateid: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def is_empty(self) -> bool:
        return self == LogFilter()

    def _equal(self) -> dict[str, str]:
        return {key: value for key in _EQUAL if (value := getattr(self, key)) is not None}

    def conditions(self) -> list[ColumnElement[bool]]:
        out = [getattr(LoggedEvent, key) == value for key, value in self._equal().items()]
        # SQLite keeps the UTC wall-clock as text: compare with UTC values only.
        if self.since is not None:
            out.append(LoggedEvent.received_at >= self.since.astimezone(UTC))
        if self.until is not None:
            out.append(LoggedEvent.received_at < self.until.astimezone(UTC))
        return out

    def matches(self, fields: dict[str, Any], received_at: datetime) -> bool:
        """Whether a row with these envelope fields and received time belongs to the slice."""
        return (all(fields.get(key) == value for key, value in self._equal().items())
                and (self.since is None or received_at >= self.since)
                and (self.until is None or received_at < self.until))

    def to_json(self) -> dict[str, str | None]:
        times = {key: None if (t := getattr(self, key)) is None else t.astimezone(UTC).isoformat()
                 for key in ("since", "until")}
        return {**{key: getattr(self, key) for key in _EQUAL}, **times}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LogFilter:
        def text(key: str) -> str | None:
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"filter.{key} is not a string")
            return value

        since, until = text("since"), text("until")
        return cls(
            project=text("project"), area=text("area"), updateid=text("updateid"), type=text("type"),
            since=parse_time(since) if since else None, until=parse_time(until) if until else None,
        )


def selected(session: Session, selection: LogFilter) -> tuple[int, int | None, int | None, tuple[int, str]]:
    """How many rows ``selection`` holds up to the log's head as read first, their first and last
    positions, and that head.

    Rows up to the head are committed and never change (the appender writes rows and head together),
    so bounding every read by it gives one consistent slice while appends go on.
    """
    head = read_head(session)
    count, first, last = session.execute(
        select(func.count(), func.min(LoggedEvent.position), func.max(LoggedEvent.position))
        .where(LoggedEvent.position <= head[0], *selection.conditions())
    ).one()
    return int(count), first, last, head


# --- export -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSummary:
    count: int
    first_position: int | None
    last_position: int | None
    head: tuple[int, str]
    sha256: str


def export_log(
    session: Session, selection: LogFilter, out: IO[bytes], *, exported_at: datetime | None = None
) -> ExportSummary:
    """Write the selected rows, up to the log's head as read first, to ``out`` as JSON Lines."""
    count, first, last, head = selected(session, selection)
    header = {
        "kind": "header",
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "exported_at": (exported_at or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "filter": selection.to_json(),
        "count": count,
        "first_position": first,
        "last_position": last,
        "log_head": {"position": head[0], "hash": head[1]},
    }
    digest = hashlib.sha256()

    def write(line: dict[str, Any]) -> None:
        data = json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        digest.update(data)
        out.write(data)

    write(header)
    written = 0
    for row in read_rows(session, up_to=head[0], where=selection.conditions()):
        line = {name: row[AT[name]] for name in _EVENT_FIELDS}
        line["received_at"] = row[AT["received_at"]].astimezone(UTC).isoformat()
        if row[AT["publisher"]] is not None:  # absent for a row logged before publishers were recorded
            line["publisher"] = row[AT["publisher"]]
        write(line)
        written += 1
    if written != count:  # only if someone changes committed rows under us
        raise RuntimeError(f"the log changed during the export: counted {count} rows, read {written}")
    body_sha256 = digest.hexdigest()
    trailer = {"kind": "trailer", "count": written, "sha256": body_sha256}
    out.write(json.dumps(trailer, separators=(",", ":")).encode("utf-8") + b"\n")
    return ExportSummary(count, first, last, head, body_sha256)


# --- verifying an export ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExportVerifyResult:
    """The outcome of checking an export file; ``line`` (1-based) and ``position`` locate a problem."""

    ok: bool
    count: int
    reason: str = ""
    line: int | None = None
    position: int | None = None
    links: int = 0
    """Rows whose link to the row before (or, at position 1, to the genesis hash) was checked."""
    contiguous: bool = True
    publishers: dict[str | None, int] = field(default_factory=dict)
    """Verified rows per recorded publisher (None: logged before publishers were recorded)."""

    def describe(self) -> str:
        if self.ok:
            text = f"all {self.count} events verify"
            if not self.contiguous:
                text += (f" (a filtered slice: each row's own hash, and {self.links} links between "
                         "consecutive positions, checked)")
            return text
        where = f"position {self.position} (line {self.line})" if self.position is not None else f"line {self.line}"
        return f"broken at {where}: {self.reason} ({self.count} events before it verify)"


class _Broken(Exception):
    def __init__(self, reason: str, line: int | None, position: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.line, self.position = reason, line, position


@dataclass
class _Walk:
    """The state of a pass over the event lines: the previous row, and what was seen."""

    header: dict[str, Any]
    selection: LogFilter
    chain: Chain = field(default_factory=Chain)
    count: int = 0
    links: int = 0
    first: int | None = None
    publishers: dict[str | None, int] = field(default_factory=dict)

    def event(self, raw: bytes, line: int) -> None:
        try:
            doc = json.loads(raw)
        except ValueError:
            raise _Broken("not a JSON line", line) from None
        if not isinstance(doc, dict) or doc.get("kind") is not None:
            raise _Broken("not an event line (a header or trailer in the middle of the file?)", line)
        row = _chain_row(doc, line)
        if row.position <= self.chain.position:
            raise _Broken(f"position {row.position} does not follow {self.chain.position}: lines were reordered "
                          "or repeated", line, row.position)
        follows = row.position == self.chain.position + 1
        # Where the predecessor is in the file, the row must link to it; else its own prev_hash stands
        # (a whole-log export has every row: a gap there is missing rows).
        problem = self.chain.follow(row, gaps=not self.selection.is_empty)
        if problem:
            raise _Broken(problem, line, row.position)
        fields = json.loads(row.envelope)
        for key in ("project", "area"):
            if fields.get(key) != doc.get(key):
                raise _Broken(f"column {key} ({doc.get(key)!r}) disagrees with the envelope", line, row.position)
        received_at = _time_field(doc, "received_at", line, row.position)
        if not self.selection.matches(fields, received_at):
            raise _Broken("the row does not match the export's filter", line, row.position)
        self.links += 1 if follows else 0  # position 1 follows the genesis hash
        self.first = self.first if self.first is not None else row.position
        self.count += 1
        self.publishers[row.publisher] = self.publishers.get(row.publisher, 0) + 1


def _chain_row(doc: dict[str, Any], line: int) -> ChainRow:
    position = doc.get("position")
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        raise _Broken("no valid position", line)
    values = {}
    for key in ("event_id", "type", "updateid", "prev_hash", "hash", "envelope"):
        value = doc.get(key)
        if not isinstance(value, str):
            raise _Broken(f"field {key} is missing or not a string", line, position)
        values[key] = value
    publisher = doc.get("publisher")
    if publisher is not None and not isinstance(publisher, str):
        raise _Broken("field publisher is not a string", line, position)
    return ChainRow(position=position, publisher=publisher, **values)


def _time_field(doc: dict[str, Any], key: str, line: int, position: int | None) -> datetime:
    value = doc.get(key)
    try:
        if not isinstance(value, str):
            raise ValueError
        return parse_time(value)
    except ValueError:
        raise _Broken(f"field {key} is not an ISO 8601 time", line, position) from None


def verify_export(lines: Iterable[bytes]) -> ExportVerifyResult:
    """Check an export given as its lines, each ending in ``b"\\n"`` (as iterating a binary file gives them).

    Problems are reported in file order: the first line that does not verify wins.
    """
    digest = hashlib.sha256()
    it = iter(lines)
    walk: _Walk | None = None
    try:
        first = next(it, b"")
        if not first.endswith(b"\n"):
            raise _Broken("the file is empty or ends inside the header: it was truncated", 1)
        header = _header(first)
        digest.update(first)
        walk = _Walk(header, LogFilter.from_json(header["filter"]))
        # Hold each line back one step: the last one must be the trailer, not an event.
        pending: bytes | None = None
        line = 1
        for raw in it:
            if pending is not None:
                walk.event(pending, line)
                digest.update(pending)
            pending, line = raw, line + 1
        _check_trailer(pending, line, walk, digest.hexdigest())
    except _Broken as exc:
        return ExportVerifyResult(False, walk.count if walk else 0, exc.reason, exc.line, exc.position)
    return ExportVerifyResult(True, walk.count, links=walk.links, contiguous=walk.links == walk.count,
                              publishers=walk.publishers)


def _header(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise _Broken("the first line is not a JSON header", 1) from None
    if not isinstance(doc, dict) or doc.get("kind") != "header" or doc.get("format") != FORMAT:
        raise _Broken(f"the first line is not a {FORMAT} header", 1)
    if doc.get("version") not in _READABLE_VERSIONS:
        raise _Broken(f"export format version {doc.get('version')!r} is not one of {_READABLE_VERSIONS}", 1)
    head = doc.get("log_head")
    valid = (
        isinstance(doc.get("filter"), dict)
        and _is_int(doc.get("count"))
        and all(doc.get(k) is None or _is_int(doc.get(k)) for k in ("first_position", "last_position"))
        and isinstance(head, dict) and _is_int(head.get("position")) and isinstance(head.get("hash"), str)
    )
    if not valid:
        raise _Broken("the header lacks filter, count, first/last position or log_head", 1)
    try:
        LogFilter.from_json(doc["filter"])
    except ValueError as exc:
        raise _Broken(f"the header's filter is invalid: {exc}", 1) from None
    return doc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_trailer(raw: bytes | None, line: int, walk: _Walk, body_sha256: str) -> None:
    after = f"after position {walk.chain.position}" if walk.count else "after the header"
    try:
        doc = json.loads(raw) if raw is not None and raw.endswith(b"\n") else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("kind") != "trailer":
        raise _Broken(f"no trailer {after}: the export was truncated", line)
    header = walk.header
    if not (header["count"] == doc.get("count") == walk.count):
        raise _Broken(f"the header says {header['count']} events and the trailer {doc.get('count')!r}, "
                      f"but the file holds {walk.count}: lines were removed or added", line)
    last = walk.chain.position if walk.count else None
    if (header["first_position"], header["last_position"]) != (walk.first, last):
        raise _Broken(f"the header says positions {header['first_position']}..{header['last_position']}, "
                      f"the file holds {walk.first}..{last}", line)
    if doc.get("sha256") != body_sha256:
        raise _Broken("the sha256 of the lines before the trailer is not the trailer's: the file was edited", line)
    head_position, head_hash = header["log_head"]["position"], header["log_head"]["hash"]
    if walk.count and last == head_position and walk.chain.hash != head_hash:
        raise _Broken("the last row's hash is not the log head's hash recorded at export time", line, last)
    if walk.selection.is_empty and (last or 0) != head_position:
        raise _Broken(f"a whole-log export must end at the head's position {head_position}, "
                      f"it ends at {last or 0}", line)


def verify_export_file(path: str) -> ExportVerifyResult:
    """:func:`verify_export` over a file (``-`` for standard input)."""
    if path == "-":
        return verify_export(sys.stdin.buffer)
    with open(path, "rb") as stream:
        return verify_export(stream)
