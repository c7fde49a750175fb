"""The report's document model: cells, ids, and what it refuses."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairfm.report.document import (
    Cell, DetailsBlock, Document, FigureBlock, NoteBlock, Section, TableBlock, TextBlock, as_cell, data_uri,
    slug,
)  # fmt: skip

PNG = data_uri(b"\x89PNG\r\n\x1a\n", "image/png")


@pytest.mark.parametrize(("value", "text", "key"), [
    (None, "–", None), (0.81234, "0.812", 0.81234), (float("nan"), "–", None), (float("inf"), "–", None),
    (np.float32(0.5), "0.500", 0.5), (3, "3", 3), (np.int64(7), "7", 7), ("erm", "erm", "erm"),
    ("", "", None),
    ("–", "–", None), (Cell("0.8 [0.7, 0.9]", sort_value=0.8), "0.8 [0.7, 0.9]", 0.8),
    (Cell("x", sort_value=float("nan")), "x", None),
])  # fmt: skip
def test_cells_format_and_sort_keys(value, text, key):
    cell = as_cell(value)
    assert cell.text == text
    assert cell.sort_key == key


def test_unknown_cell_types_are_refused_with_the_place():
    with pytest.raises(TypeError, match=r"table 'lb': row 1, column 'AUC': .*not dict"):
        TableBlock(["model", "AUC"], [["a", 0.5], ["b", {}]], id="lb")


def test_ragged_rows_are_refused():
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        TableBlock(["model", "AUC"], [["a"]], caption="Leaderboard")


def test_numeric_columns():
    table = TableBlock(["m", "auc", "mixed", "empty"], [["a", 0.5, 1, None], ["b", None, "x", "–"]])
    assert table.numeric_columns() == [False, True, False, False]


@given(st.text(max_size=30), st.sets(st.text(max_size=8), max_size=5))
def test_slug_is_url_safe_and_unique(text, taken):
    taken = {slug(t) for t in taken}
    before = set(taken)
    made = slug(text, taken)
    assert re.fullmatch(r"[a-z][a-z0-9-]*", made)
    assert made not in before and made in taken
    Section(made, text)  # a slug is always a valid section id


def test_slug_examples():
    assert slug("Per-group ROC (y)") == "per-group-roc-y"
    assert slug("Ünïcode — trade-off") == "unicode-trade-off"
    assert slug("2 runs") == "s-2-runs"
    assert slug("leaderboard", {"leaderboard"}) == "leaderboard-2"


@pytest.mark.parametrize("bad", ["has space", "1st", "a/b", "", "x#y", "contents"])
def test_unsafe_or_reserved_section_ids_are_refused(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        Section(bad, "Title")


def test_duplicate_ids_name_both_owners():
    with pytest.raises(ValueError, match="'roc' is used twice: by section 'ROC' and by figure 'curves'"):
        Document("d", [Section("roc", "ROC", [FigureBlock(PNG, alt="curves", id="roc")])])
    nested = Section("a", "A", subsections=[Section("a", "A again")])
    with pytest.raises(ValueError, match="'a' is used twice"):
        Document("d", [nested])
    # an id that the HTML derives (a section's heading is "<id>-title") is taken too
    with pytest.raises(ValueError, match="'a-title' is used twice"):
        Document("d", [Section("a", "A", [TableBlock(["x"], [[1]], id="a-title")])])


def test_note_kinds_and_non_blocks():
    assert NoteBlock("x", kind="warning").kind == "warning"
    with pytest.raises(ValueError, match="note kind 'danger'"):
        NoteBlock("x", kind="danger")
    with pytest.raises(TypeError, match="str is not a block"):
        Document("d", [Section("s", "S", ["just text"])])


def test_numbers_count_tables_and_figures_in_reading_order_details_included():
    first, second, third = (TableBlock(["x"], [[i]]) for i in range(3))
    figure = FigureBlock(PNG, alt="a figure")
    blocks = [first, DetailsBlock("more", [second, figure])]
    doc = Document("d", [Section("a", "A", blocks, subsections=[Section("b", "B", [third])])])
    numbers = doc.numbers()
    assert [numbers[id(t)] for t in (first, second, third)] == [1, 2, 3]
    assert numbers[id(figure)] == 1


def test_figure_decode_round_trips():
    mime, content = FigureBlock(data_uri(b"<svg/>", "image/svg+xml"), alt="s").decode()
    assert (mime, content) == ("image/svg+xml", b"<svg/>")
    with pytest.raises(ValueError, match="not embeddable"):
        data_uri(b"", "image/gif")


def test_text_paragraphs():
    assert TextBlock("a\nb\n\n  \n c ").paragraphs() == ["a b", "c"]
