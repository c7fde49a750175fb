"""The self-contained HTML report: one file, inline CSS and JS, images embedded, nothing fetched.

The page is a jinja2 template (``templates/report.html.j2``, autoescaped: every text of the document is
escaped); this module turns a :class:`~fairfm.report.document.Document` into the plain values the
template shows.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import jinja2

from fairfm.report.document import Document, Section, TableBlock, paragraphs
from fairfm.tableio import write_text_atomic

MAX_HEADING_LEVEL = 6


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("fairfm.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _sort_attr(key: float | str | None) -> str | None:
    if key is None:
        return None
    return repr(float(key)) if isinstance(key, float | int) else key


def _table_view(table: TableBlock, number: int, table_id: str) -> dict:
    numeric = table.numeric_columns()
    rows = []
    for row in table.cells():
        cells = []
        for index, cell in enumerate(row):
            key = cell.sort_key
            kind = None if key is None else ("num" if isinstance(key, float | int) else "text")
            cells.append({"text": cell.text, "title": cell.title, "flag": cell.flag,
                          "numeric": numeric[index], "sort": _sort_attr(key), "type": kind})  # fmt: skip
        rows.append(cells)
    return {
        "block_type": "table", "id": table_id, "number": number, "caption": table.caption,
        "notes": list(table.notes), "sortable": table.sortable and len(table.rows) > 1,
        "columns": [{"label": str(label), "numeric": numeric[i]} for i, label in enumerate(table.columns)],
        "rows": rows,
    }  # fmt: skip


class _Viewer:
    """Numbers tables and figures in reading order and gives tables without an id one that is free."""

    def __init__(self, document: Document) -> None:
        self.numbers = document.numbers()
        self.taken = {s.id for s, _ in document.walk()} | {f"{s.id}-title" for s, _ in document.walk()}
        self.taken |= {b.id for b in document.blocks() if getattr(b, "id", None)}
        self.taken |= {f"{b.id}-caption" for b in document.blocks() if getattr(b, "id", None)}
        self.auto = 0

    def free_id(self, prefix: str) -> str:
        while True:
            self.auto += 1
            candidate = f"{prefix}-{self.auto}"
            if candidate not in self.taken and f"{candidate}-caption" not in self.taken:
                self.taken.update({candidate, f"{candidate}-caption"})
                return candidate

    def block(self, block) -> dict:
        kind = block.block_type
        if kind == "table":
            return _table_view(block, self.numbers[id(block)], block.id or self.free_id("table"))
        if kind == "figure":
            return {"block_type": "figure", "id": block.id, "number": self.numbers[id(block)],
                    "src": block.data_uri, "alt": block.alt, "caption": block.caption}  # fmt: skip
        if kind == "text":
            return {"block_type": "text", "paragraphs": block.paragraphs()}
        if kind == "note":
            return {"block_type": "note", "kind": block.kind, "paragraphs": block.paragraphs()}
        inner = [self.block(b) for b in block.blocks]
        return {"block_type": "details", "summary": block.summary, "blocks": inner, "open": block.open}

    def section(self, section: Section, depth: int) -> dict:
        return {
            "id": section.id, "title": section.title, "level": min(depth + 2, MAX_HEADING_LEVEL),
            "intro": paragraphs(section.intro), "blocks": [self.block(b) for b in section.blocks],
            "subsections": [self.section(s, depth + 1) for s in section.subsections],
        }  # fmt: skip


def render_html(document: Document) -> str:
    """The report as one self-contained HTML page (a string)."""
    document.validate()
    viewer = _Viewer(document)
    sections = [viewer.section(s, 0) for s in document.sections]
    template = _environment().get_template("report.html.j2")
    return template.render(
        title=document.title, subtitle=document.subtitle, generated=document.generated,
        provenance=list(document.provenance), sections=sections,
    )  # fmt: skip


def write_html(document: Document, path: str | os.PathLike) -> Path:
    """Render and write the report atomically; returns the path written."""
    path = Path(path)
    write_text_atomic(path, render_html(document))
    return path

