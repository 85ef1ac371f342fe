"""``hotupdate log verify`` and ``log export``: exports verify on their own, and any damage is found.

The log comes from hand-built sequences ingested as the projection does (shuffled, redelivered);
exports are checked for the rows their filter selects, and then edited, cut and reordered.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from datetime import timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from cli.main import main
from projections.log.export import LogFilter, export_log, verify_export
from tests.audit_support import history, ingest_history, log_of, received
from tests.projection_support import migrated_engine

OTHER = "9f0e8d7c-0000-4000-8000-00000000beef"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A logged history (read-only for the tests that use it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'live.db'}"
    engine = migrated_engine(url)
    ingest_history(engine, history())
    yield url, engine, log_of(engine)
    engine.dispose()


def _export(engine, selection: LogFilter | None = None) -> bytes:
    out = io.BytesIO()
    with Session(engine) as s:
        export_log(s, selection or LogFilter(), out)
    return out.getvalue()


def _lines(data: bytes) -> list[bytes]:
    return io.BytesIO(data).readlines()


def _check(data: bytes):
    return verify_export(io.BytesIO(data))


def _edit(data: bytes, index: int, change) -> bytes:
    """The export with line ``index`` (0-based) replaced by change(its JSON)."""
    lines = _lines(data)
    doc = json.loads(lines[index])
    change(doc)
    lines[index] = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    return b"".join(lines)


def test_a_whole_log_export_carries_header_rows_and_trailer_and_verifies_on_its_own(source):
    _url, engine, logged = source
    data = _export(engine)
    lines = _lines(data)
    header, rows, trailer = json.loads(lines[0]), [json.loads(x) for x in lines[1:-1]], json.loads(lines[-1])
    n = len(logged["log"])
    assert (header["kind"], header["count"], header["first_position"], header["last_position"]) == (
        "header", n, 1, n)
    assert (header["log_head"]["position"], header["log_head"]["hash"]) == logged["head"]
    assert header["filter"] == dict.fromkeys(("project", "area", "updateid", "type", "since", "until"))
    assert [(r["position"], r["prev_hash"], r["hash"], r["envelope"]) for r in rows] == [
        (r["position"], r["prev_hash"], r["hash"], r["envelope"]) for r in logged["log"]]
    assert trailer == {"kind": "trailer", "count": n, "sha256": hashlib.sha256(b"".join(lines[:-1])).hexdigest()}

    result = _check(data)
    assert result.ok and result.contiguous and result.describe() == f"all {n} events verify"


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_filters_select_the_rows_of_a_project_area_update_type_and_received_time(kind, request, tmp_path):
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else f"sqlite:///{tmp_path / 'l.db'}"
    engine = migrated_engine(url)
    ingest_history(engine, history())
    logged = log_of(engine)["log"]
    since, until = received(3), received(7)
    cases = [
        (LogFilter(project="mxzj"), lambda r: r["project"] == "mxzj"),
        (LogFilter(area="cn"), lambda r: r["area"] == "cn"),
        (LogFilter(updateid=OTHER), lambda r: r["updateid"] == OTHER),
        (LogFilter(type="hotupdate.ip.finished.v1"), lambda r: r["type"] == "hotupdate.ip.finished.v1"),
        (LogFilter(since=since, until=until), lambda r: since <= r["received_at"] < until),
        (LogFilter(since=since, project="ssss", type="hotupdate.ip.finished.v1"),
         lambda r: r["project"] == "ssss" and r["type"] == "hotupdate.ip.finished.v1" and r["received_at"] >= since),
    ]
    for selection, wanted in cases:
        expected = [r["position"] for r in logged if wanted(r)]
        assert expected and len(expected) < len(logged), selection
        data = _export(engine, selection)
        assert [json.loads(x)["position"] for x in _lines(data)[1:-1]] == expected, selection
        result = _check(data)
        assert result.ok and result.count == len(expected), (selection, result.describe())
    engine.dispose()


def test_a_time_in_another_zone_selects_the_same_instant(source):
    _url, engine, _logged = source
    utc = _export(engine, LogFilter(since=received(4)))
    beijing = _export(engine, LogFilter(since=received(4).astimezone(timezone(timedelta(hours=8)))))
    assert _lines(utc)[1:-1] == _lines(beijing)[1:-1]
    assert json.loads(_lines(utc)[0])["filter"] == json.loads(_lines(beijing)[0])["filter"]


def test_an_edited_envelope_is_found_at_its_position_in_a_whole_and_a_filtered_export(source):
    _url, engine, _logged = source
    for selection in (LogFilter(), LogFilter(updateid=OTHER)):
        data = _export(engine, selection)
        position = json.loads(_lines(data)[3])["position"]
        edited = _edit(data, 3, lambda d: d.update(envelope=d["envelope"].replace('"sequence":', '"sequence":1')))
        result = _check(edited)
        assert (result.ok, result.position, result.line) == (False, position, 4), result.describe()
        assert "hash does not match the stored envelope" in result.reason
        assert result.describe().startswith(f"broken at position {position} (line 4):")


def test_a_rehashed_row_breaks_the_link_in_a_whole_export_and_the_digest_in_a_slice(source):
    from projections.log import chain_hash

    def forge(doc):
        doc["envelope"] = doc["envelope"].replace('"source":"', '"source":"forged/', 1)
        doc["hash"] = chain_hash(doc["prev_hash"], doc["envelope"].encode(), doc.get("publisher"))

    _url, engine, _logged = source
    whole = _check(_edit(_export(engine), 3, forge))
    assert (whole.ok, whole.position) == (False, 4) and "prev_hash" in whole.reason  # position 3's successor

    # In a slice, a row whose successor is not in the file: its link is not there to break, the digest is.
    sliced = _export(engine, LogFilter(type="hotupdate.ip.finished.v1"))
    assert not _check(sliced).contiguous
    positions = [json.loads(x)["position"] for x in _lines(sliced)[1:-1]]
    lonely = next(i for i, (p, q) in enumerate(itertools.pairwise(positions)) if q != p + 1)
    result = _check(_edit(sliced, lonely + 1, forge))
    assert not result.ok and "sha256" in result.reason


def test_an_edited_received_time_is_found_by_the_digest(source):
    _url, engine, _logged = source
    result = _check(_edit(_export(engine), 2, lambda d: d.update(received_at="2020-01-01T00:00:00+00:00")))
    assert not result.ok and "sha256" in result.reason


def test_a_removed_line_is_found(source):
    _url, engine, _logged = source
    lines = _lines(_export(engine))
    whole = _check(b"".join(lines[:5] + lines[6:]))
    assert (whole.ok, whole.position) == (False, 6) and "rows are missing" in whole.reason

    lines = _lines(_export(engine, LogFilter(project="mxzj")))
    sliced = _check(b"".join(lines[:2] + lines[3:]))
    assert not sliced.ok and "lines were removed or added" in sliced.reason


def test_a_truncated_export_is_found(source):
    _url, engine, _logged = source
    data = _export(engine)
    lines = _lines(data)
    cut_in_a_line = _check(data[: len(b"".join(lines[:7])) + 40])
    assert not cut_in_a_line.ok and "truncated" in cut_in_a_line.reason
    assert cut_in_a_line.count == 6  # the complete lines before the cut verify
    cut_at_a_line = _check(b"".join(lines[:-3]))
    assert not cut_at_a_line.ok and "no trailer after position" in cut_at_a_line.reason
    assert not _check(b"").ok and not _check(lines[0][:30]).ok
    assert _check(b"".join(lines[:1] + lines[-1:])).reason.startswith("the header says")


def test_reordered_or_repeated_lines_are_found(source):
    _url, engine, _logged = source
    lines = _lines(_export(engine, LogFilter(area="tw")))
    swapped = _check(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))
    assert not swapped.ok and "reordered or repeated" in swapped.reason
    repeated = _check(b"".join([lines[0], lines[1], lines[1], *lines[2:]]))
    assert not repeated.ok and "reordered or repeated" in repeated.reason


def test_a_row_outside_the_exports_filter_is_found(source):
    _url, engine, _logged = source
    data = _export(engine, LogFilter(project="mxzj"))
    smuggled = [x for x in _lines(_export(engine))[1:-1] if json.loads(x)["project"] == "ssss"][-1]
    lines = _lines(data)
    result = _check(b"".join([*lines[:-1], smuggled, lines[-1]]))
    assert not result.ok and "does not match the export's filter" in result.reason


# --- the commands ------------------------------------------------------------------------------------


def test_log_verify_reports_all_events_or_the_first_tampered_position(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    engine = migrated_engine(url)
    ingest_history(engine, history())
    n = log_of(engine)["head"][0]
    assert main(["log", "verify", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"all {n} events verify" and f"log head: position {n}, hash " in out

    with engine.begin() as conn:
        stored = conn.execute(text("select envelope from projection_event_log where position = 9")).scalar_one()
        conn.execute(text("update projection_event_log set envelope = :e where position = 9"),
                     {"e": stored.replace('"source":"', '"source":"forged/', 1)})
    assert main(["log", "verify", "--database-url", url]) == 1
    assert capsys.readouterr().out.startswith("broken at position 9: hash does not match the stored envelope")
    assert main(["log", "verify", "--database-url", f"sqlite:///{tmp_path / 'missing.db'}"]) == 2
    assert "no such database file" in capsys.readouterr().err
    engine.dispose()


def test_log_export_to_a_file_or_stdout_then_verify_file(source, tmp_path, capsysbinary):
    url, _engine, logged = source
    path = tmp_path / "ssss.jsonl"
    assert main(["log", "export", "--database-url", url, "--project", "ssss", "--since",
                 received(2).replace(tzinfo=None).isoformat(), "-o", str(path)]) == 0
    expected = [r["position"] for r in logged["log"] if r["project"] == "ssss" and r["received_at"] >= received(2)]
    assert f"exported {len(expected)} events".encode() in capsysbinary.readouterr().err
    assert [json.loads(x)["position"] for x in path.read_bytes().splitlines()[1:-1]] == expected
    assert not (tmp_path / "ssss.jsonl.part").exists()

    assert main(["log", "verify", "--file", str(path)]) == 0
    assert capsysbinary.readouterr().out.startswith(f"all {len(expected)} events verify".encode())
    path.write_bytes(path.read_bytes().replace(b'\\"sequence\\":', b'\\"sequence\\":1', 1))
    assert main(["log", "verify", "--file", str(path)]) == 1
    assert capsysbinary.readouterr().out.startswith(b"broken at position")

    assert main(["log", "export", "--database-url", url, "--update-id", OTHER]) == 0
    streamed = capsysbinary.readouterr().out
    assert _check(streamed).ok and _check(streamed).count == sum(r["updateid"] == OTHER for r in logged["log"])
