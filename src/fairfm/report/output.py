"""Writing a built report in the format asked for: HTML (self-contained), Markdown, LaTeX, or the leaderboards as
CSV. Files are written atomically; without a path the text goes to standard output (not for HTML)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fairfm.errors import InputError
from fairfm.tableio import write_text_atomic

if TYPE_CHECKING:
    from fairfm.report.build import StoreReport
    from fairfm.report.document import Document

FORMATS = ("html", "md", "latex", "csv")


def render(document: "Document", fmt: str, *, figures_dir: Path | None = None) -> str:
    """The document as text in ``fmt`` (html, md or latex)."""
    from fairfm.report.html import render_html
    from fairfm.report.markdown import render_latex, render_markdown

    if fmt == "html":
        return render_html(document)
    if fmt == "md":
        return render_markdown(document, figures_dir=figures_dir)
    if fmt == "latex":
        return render_latex(document)
    raise InputError(f"unknown report format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def write_report(built: "StoreReport | Document", out: Path | None, fmt: str) -> Path | None:
    """Write ``built`` to ``out`` (or standard output) in ``fmt``; returns the path written, if any. Markdown with a
    path gets its figures as PNG files in ``<out stem>_figures/`` beside it."""
    from fairfm.report.build import StoreReport

    if fmt not in FORMATS:
        raise InputError(f"unknown report format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    document = built.document if isinstance(built, StoreReport) else built
    if fmt == "csv":
        if not isinstance(built, StoreReport):
            raise InputError("--format csv writes leaderboards of stored runs; use 'fairfm evaluate --format csv' "
                             "for one evaluation's MetricTable")  # fmt: skip
        boards = built.leaderboards
        text = boards.drop(columns=[c for c in boards.columns if str(c).endswith("_per_seed")]).to_csv(index=False)
    elif fmt == "html" and out is None:
        raise InputError("an HTML report needs --out FILE")
    else:
        figures_dir = out.with_name(out.stem + "_figures") if fmt == "md" and out is not None else None
        text = render(document, fmt, figures_dir=figures_dir)
    if out is None:
        sys.stdout.write(text)
        return None
    write_text_atomic(out, text)
    return out
