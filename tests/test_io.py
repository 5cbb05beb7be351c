"""tbclf.io: one CSV dialect whose cells never open as spreadsheet formulas, read back exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tbclf.io import FORMULA_STARTS, escape_cell, read_output_csv, unescape_cell, write_csv

HOSTILE = [
    '=HYPERLINK("http://evil.example","click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB",
    "\rCR",
    "'quoted",
    "''twice",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_formula_cells_are_neutralised(value: str) -> None:
    cell = escape_cell(value)
    assert cell.startswith("'"), "a spreadsheet shows a leading ' as text, never a formula"
    assert unescape_cell(cell) == value


@pytest.mark.parametrize("value", ["0.5", "-0.25", "1e-3", "healthy", "CHNCXR_0001_0", ""])
def test_plain_cells_are_unchanged(value: str) -> None:
    assert escape_cell(value) == value


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.text(st.characters(exclude_characters="\x00"), max_size=30), min_size=1, max_size=8)
)
@example(HOSTILE)
def test_write_then_read_gives_every_value_back(tmp_path_factory, ids: list[str]) -> None:
    path = tmp_path_factory.mktemp("csv") / "out.csv"
    rows = [[i, f"{k / 10:.6f}"] for k, i in enumerate(ids)]
    write_csv(path, ["ID", "LABEL"], rows)
    # What a spreadsheet sees: no cell starts a formula.
    with open(path, newline="", encoding="utf-8") as handle:
        for cells in list(csv.reader(handle))[1:]:
            assert not cells[0].startswith(FORMULA_STARTS)
    header, back = read_output_csv(path)
    assert header == ["ID", "LABEL"]
    assert [r["ID"] for r in back] == ids
    assert [r["LABEL"] for r in back] == [r[1] for r in rows]


def test_row_of_wrong_length_is_a_bug(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cells"):
        write_csv(tmp_path / "x.csv", ["A", "B"], [["only one"]])
    assert not (tmp_path / "x.csv").exists()
