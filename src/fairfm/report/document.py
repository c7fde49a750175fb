"""The report's document model: sections of tables, figures, text, notes and collapsible details.

The report builder fills a :class:`Document`; the renderers (:mod:`fairfm.report.html`,
:mod:`fairfm.report.markdown`) turn the same document into HTML, Markdown or LaTeX. The model knows nothing
about metrics or runs: it holds text and numbers already chosen, and checks what would break a renderer
(duplicate or unsafe ids, ragged tables, figures without alt text or with a non-embedded source).
"""

from __future__ import annotations

import base64
import math
import numbers
import re
import unicodedata
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Union

MISSING = "–"
# Texts that mean "no value": such a cell sorts last, like None.
MISSING_TEXTS = frozenset({"", "–", "—", "-"})
# Ids must work unquoted as URL fragments and CSS selectors (``#id``), hence a letter first.
_ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
# Ids the HTML template itself uses.
RESERVED_IDS = frozenset({"contents", "content"})
FIGURE_MIME_TYPES = ("image/png", "image/svg+xml")
NOTE_KINDS = ("info", "warning")


def slug(text: str, taken: set[str] | None = None) -> str:
    """A URL-safe id made from ``text`` ("Per-group ROC (y)" → "per-group-roc-y").

    With ``taken``, a numeric suffix makes it unique among those ids and the result is added to the set."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-") or "section"
    if not base[0].isalpha():
        base = f"s-{base}"
    if taken is None:
        return base
    candidate, n = base, 2
    while candidate in taken or candidate in RESERVED_IDS:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _check_id(value: str | None, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ValueError(f"{what} id {value!r} is not URL-safe: use a letter then letters, digits, '-' or "
                         "'_' (fairfm.report.document.slug makes one)")
    if value in RESERVED_IDS:
        reserved = ", ".join(sorted(RESERVED_IDS))
        raise ValueError(f"{what} id {value!r} is reserved by the report template ({reserved})")


def data_uri(content: bytes, mime: str) -> str:
    """``data:<mime>;base64,…`` for embedding an image (PNG or SVG) in a self-contained file."""
    if mime not in FIGURE_MIME_TYPES:
        raise ValueError(f"figure type {mime!r} is not embeddable (one of {', '.join(FIGURE_MIME_TYPES)})")
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


@dataclass
class Cell:
    """One table cell: the text shown, the value it sorts by, a tooltip and a badge.

    Without ``sort_value`` the cell sorts by its text; a missing text ("", "–") sorts last."""

    text: str
    sort_value: float | str | None = None
    title: str | None = None
    flag: str | None = None

    @property
    def sort_key(self) -> float | str | None:
        """A finite float (numeric sort), a string (text sort) or None (missing: sorts last)."""
        value = self.sort_value
        if value is None:
            return None if self.text.strip() in MISSING_TEXTS else self.text
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
            return value if math.isfinite(value) else None
        return str(value)


CellValue = Union[Cell, str, float, int, None]


def as_cell(value: CellValue) -> Cell:
    """A table entry as a :class:`Cell`: None and non-finite floats → "–", floats with 3 decimals."""
    if isinstance(value, Cell):
        return value
    if value is None:
        return Cell(MISSING)
    if isinstance(value, str):
        return Cell(value)
    if isinstance(value, bool):
        return Cell(str(value), sort_value=str(value))
    if isinstance(value, numbers.Integral):
        return Cell(str(int(value)), sort_value=int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return Cell(f"{number:.3f}", sort_value=number) if math.isfinite(number) else Cell(MISSING)
    kind = type(value).__name__
    raise TypeError(f"a table cell is a Cell, str, int, float or None, not {kind} ({value!r})")


@dataclass
class TableBlock:
    """A table; ``sortable`` tables sort by a header click in HTML. ``notes`` are shown under it."""

    block_type: ClassVar[str] = "table"
    columns: list[str]
    rows: list[list[CellValue]]
    caption: str = ""
    sortable: bool = True
    id: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_id(self.id, "table")
        self.check()

    def check(self) -> None:
        name = f"table {self.id or self.caption or '(no caption)'!r}"
        if not self.columns:
            raise ValueError(f"{name}: no columns")
        for index, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"{name}: row {index} has {len(row)} cells for {len(self.columns)} columns "
                                 f"({', '.join(map(str, self.columns))})")  # fmt: skip
            for column, value in zip(self.columns, row):
                try:
                    as_cell(value)
                except TypeError as exc:
                    raise TypeError(f"{name}: row {index}, column {column!r}: {exc}") from None

    def cells(self) -> list[list[Cell]]:
        return [[as_cell(value) for value in row] for row in self.rows]

    def numeric_columns(self) -> list[bool]:
        """Per column: every non-missing cell sorts as a number (and there is one) — shown right-aligned."""
        keys = [[cell.sort_key for cell in row] for row in self.cells()]
        result = []
        for index in range(len(self.columns)):
            present = [row[index] for row in keys if row[index] is not None]
            result.append(bool(present) and all(isinstance(key, float | int) for key in present))
        return result


@dataclass
class FigureBlock:
    """An embedded image, ``data:image/png;base64,…`` or ``data:image/svg+xml;base64,…``, with alt text."""

    block_type: ClassVar[str] = "figure"
    data_uri: str
    alt: str
    caption: str = ""
    id: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, "figure")
        if not isinstance(self.alt, str) or not self.alt.strip():
            name = self.id or self.caption or "(no caption)"
            raise ValueError(f"figure {name!r}: alt text is required (it "
                             "is what a screen reader says and what Markdown/LaTeX show instead)")
        self.decode()

    def decode(self) -> tuple[str, bytes]:
        """(MIME type, image bytes) of the embedded image."""
        uri = self.data_uri if isinstance(self.data_uri, str) else ""
        match = re.match(r"data:([a-z/+.-]+);base64,", uri)
        if match is None or match.group(1) not in FIGURE_MIME_TYPES:
            start = str(self.data_uri)[:40]
            raise ValueError(f"figure {self.id or self.alt!r}: data_uri must start with "
                             f"data:image/png;base64, or data:image/svg+xml;base64, (got {start!r}); "
                             "the report embeds every image")
        try:
            content = base64.b64decode(self.data_uri[match.end():], validate=True)
        except ValueError:
            raise ValueError(f"figure {self.id or self.alt!r}: data_uri is not valid base64") from None
        return match.group(1), content

    @property
    def extension(self) -> str:
        return "svg" if self.data_uri.startswith("data:image/svg+xml") else "png"


@dataclass
class TextBlock:
    """Plain text; a blank line starts a new paragraph. Never interpreted as markup."""

    block_type: ClassVar[str] = "text"
    text: str

    def paragraphs(self) -> list[str]:
        return paragraphs(self.text)


@dataclass
class NoteBlock:
    """A callout: ``info`` or ``warning`` (e.g. "thresholds chosen on test labels")."""

    block_type: ClassVar[str] = "note"
    text: str
    kind: str = "info"

    def __post_init__(self) -> None:
        if self.kind not in NOTE_KINDS:
            raise ValueError(f"note kind {self.kind!r}: one of {', '.join(NOTE_KINDS)}")

    def paragraphs(self) -> list[str]:
        return paragraphs(self.text)


@dataclass
class DetailsBlock:
    """A collapsible part (HTML ``<details>``): specs, checksums, long tables."""

    block_type: ClassVar[str] = "details"
    summary: str
    blocks: list[Block] = field(default_factory=list)
    open: bool = False  # shown expanded when the page loads (the reader can still fold it)


Block = Union[TableBlock, FigureBlock, TextBlock, NoteBlock, DetailsBlock]
_BLOCK_TYPES = (TableBlock, FigureBlock, TextBlock, NoteBlock, DetailsBlock)


def paragraphs(text: str) -> list[str]:
    """Paragraphs of ``text`` (split at blank lines), each with its lines joined by single spaces."""
    parts = re.split(r"\n\s*\n", text.strip())
    return [" ".join(line.strip() for line in part.splitlines()) for part in parts if part.strip()]


@dataclass
class Section:
    """A headed part of the document, with its own blocks and then its subsections."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    intro: str = ""
    subsections: list[Section] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.id is None:
            raise ValueError(f"section {self.title!r}: an id is required (document.slug makes one)")
        _check_id(self.id, f"section {self.title!r}:")

    def walk(self, depth: int = 0) -> Iterator[tuple[Section, int]]:
        """This section and every subsection below it, in reading order, with their depth (0 = top)."""
        yield self, depth
        for sub in self.subsections:
            yield from sub.walk(depth + 1)


def _walk_blocks(blocks: list[Block]) -> Iterator[Block]:
    for block in blocks:
        yield block
        if isinstance(block, DetailsBlock):
            yield from _walk_blocks(block.blocks)


@dataclass
class Document:
    """A whole report: title, sections, and a footer with the generation line and provenance."""

    title: str
    sections: list[Section]
    subtitle: str = ""
    generated: str = ""
    provenance: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def walk(self) -> Iterator[tuple[Section, int]]:
        for section in self.sections:
            yield from section.walk()

    def blocks(self) -> Iterator[Block]:
        """Every block in reading order (a section's blocks, then its subsections'), details included."""
        for section, _ in self.walk():
            yield from _walk_blocks(section.blocks)

    def validate(self) -> None:
        """Raise ValueError on what would break a renderer; the renderers call it again (blocks can be added
        after construction)."""
        seen: dict[str, str] = {}

        def claim(identifier: str | None, what: str) -> None:
            if identifier is None:
                return
            if identifier in seen:
                raise ValueError(f"id {identifier!r} is used twice: by {seen[identifier]} and by {what}")
            seen[identifier] = what

        for section, _ in self.walk():
            if not isinstance(section, Section):
                raise TypeError(f"document {self.title!r}: {type(section).__name__} where a Section belongs")
            _check_id(section.id, f"section {section.title!r}:")
            claim(section.id, f"section {section.title!r}")
            claim(f"{section.id}-title", f"the heading of section {section.title!r}")  # the HTML heading's id
            for block in _walk_blocks(section.blocks):
                if not isinstance(block, _BLOCK_TYPES):
                    raise TypeError(f"section {section.id!r}: {type(block).__name__} is not a block "
                                    "(TableBlock, FigureBlock, TextBlock, NoteBlock, DetailsBlock)")
                if isinstance(block, TableBlock):
                    _check_id(block.id, "table")
                    block.check()
                    claim(block.id, f"table {block.caption!r} in section {section.id!r}")
                    if block.id is not None:
                        # the id of its caption in HTML
                        claim(f"{block.id}-caption", f"the caption of table {block.id!r}")
                elif isinstance(block, FigureBlock):
                    _check_id(block.id, "figure")
                    claim(block.id, f"figure {block.alt!r} in section {section.id!r}")

    def numbers(self) -> dict[int, int]:
        """``id(block)`` → its number ("Table 2", "Figure 3"), tables and figures counted separately."""
        counts = {"table": 0, "figure": 0}
        result = {}
        for block in self.blocks():
            if block.block_type in counts:
                counts[block.block_type] += 1
                result[id(block)] = counts[block.block_type]
        return result
