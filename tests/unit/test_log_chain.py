"""The one chain walk (projections.log.Chain), on rows in memory: no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from projections.log import Chain, ChainRow, Head, log_row
from tests.projection_support import hot_server_flow


def _rows(n: int) -> list[ChainRow]:
    head, rows = Head(), []
    for envelope, _ in hot_server_flow()[:n]:
        values = log_row(head, envelope, datetime(2026, 11, 24, tzinfo=UTC), publisher="ops")
        head.position, head.hash = values["position"], values["hash"]
        rows.append(ChainRow(**{k: values[k] for k in ChainRow.__dataclass_fields__}))
    return rows


def test_rows_made_by_the_appender_walk_from_the_genesis_hash():
    rows, chain = _rows(4), Chain()
    assert [chain.follow(row) for row in rows] == [""] * 4
    assert (chain.position, chain.hash) == (4, rows[-1].hash)


def test_the_walk_stops_at_an_altered_envelope_and_stays_on_the_row_before():
    rows, chain = _rows(4), Chain()
    rows[2] = replace(rows[2], envelope=rows[2].envelope.replace('"source":"', '"source":"forged/', 1))
    assert chain.follow(rows[0]) == chain.follow(rows[1]) == ""
    assert chain.follow(rows[2]).startswith("hash does not match")
    assert chain.position == 2


def test_a_missing_row_is_a_gap_unless_the_walk_is_over_a_filtered_slice():
    rows = _rows(4)
    whole = Chain()
    whole.follow(rows[0])
    assert "rows are missing" in whole.follow(rows[2])
    sliced = Chain()
    sliced.follow(rows[0])
    assert sliced.follow(rows[2], gaps=True) == ""  # its own hash checked, against its own prev_hash
    assert sliced.follow(rows[3], gaps=True) == ""  # and the next one links to it


def test_columns_that_disagree_with_the_envelope_are_found_unless_left_to_the_caller():
    row = replace(_rows(1)[0], updateid="someone-else")
    assert "column updateid" in Chain().follow(row)
    assert Chain().follow(row, columns=False) == ""
