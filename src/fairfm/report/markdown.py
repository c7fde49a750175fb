"""The report as Markdown (GitHub pipe tables) and as LaTeX (booktabs), from the same Document as the HTML.

Figures: Markdown writes a ``*Figure N: alt*`` placeholder, or, given ``figures_dir``, writes each image there
and links it relatively; LaTeX leaves a comment (embedding images in LaTeX needs files the user places).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from fairfm.report.document import Block, Cell, Document, FigureBlock, Section, TableBlock, paragraphs
from fairfm.tableio import atomic_path, write_text_atomic

# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that change meaning mid-line.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>|~&])")
# ...and these only at the start of a line (headings, lists, block quotes, setext underlines).
_MD_LINE_START = re.compile(r"^([#+\-=>]|\d+(?=[.)]))")


def md_escape(text: str, *, line_start: bool = True) -> str:
    """``text`` shown literally in Markdown: no emphasis, links, HTML or table breaks. ``line_start=False``
    for text that never starts a line (a table cell), where a leading "-" or "1." means nothing."""
    flat = " ".join(str(text).split())
    escaped = _MD_INLINE.sub(r"\\\1", flat)
    if not line_start:
        return escaped
    # "# x" → "\# x"; "12. x" → "12\. x" (a backslash before a digit would show, not escape).
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" if m.group(1)[0].isdigit() else "\\" + m.group(1),
                              escaped)  # fmt: skip


def _md_cell(cell: Cell) -> str:
    text = md_escape(cell.text, line_start=False)
    return f"{text} *({md_escape(cell.flag, line_start=False)})*" if cell.flag else text


def _md_table(table: TableBlock, number: int) -> list[str]:
    lines = [f"**Table {number}.** {md_escape(table.caption)}".rstrip(), ""]
    numeric = table.numeric_columns()
    lines.append("| " + " | ".join(md_escape(c, line_start=False) or " " for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if is_num else ":---" for is_num in numeric) + "|")
    for row in table.cells():
        lines.append("| " + " | ".join(_md_cell(cell) for cell in row) + " |")
    lines.append("")
    lines += [f"*{md_escape(note)}*" for note in table.notes]
    return lines


class _MarkdownWriter:
    def __init__(self, document: Document, figures_dir: Path | None, link_base: Path | None) -> None:
        self.numbers = document.numbers()
        self.figures_dir = figures_dir
        self.link_base = link_base

    def figure(self, figure: FigureBlock, number: int) -> list[str]:
        caption = md_escape(figure.caption or figure.alt)
        if self.figures_dir is None:
            return [f"*Figure {number}: {md_escape(figure.alt)}*"] + (["", caption] if figure.caption else [])
        _, content = figure.decode()
        name = f"figure-{number:02d}{'-' + figure.id if figure.id else ''}.{figure.extension}"
        target = self.figures_dir / name
        with atomic_path(target) as tmp:
            tmp.write_bytes(content)
        link = Path(os.path.relpath(target, self.link_base)).as_posix()
        # Link targets escape only what ends them; alt text is escaped like any text.
        link = link.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
        return [f"![{md_escape(figure.alt)}]({link})", "", f"*Figure {number}.* {caption}"]

    def block(self, block: Block) -> list[str]:
        kind = block.block_type
        if kind == "table":
            return _md_table(block, self.numbers[id(block)])
        if kind == "figure":
            return self.figure(block, self.numbers[id(block)])
        if kind == "text":
            return [line for p in block.paragraphs() for line in (md_escape(p), "")][:-1]
        if kind == "note":
            label = "Warning" if block.kind == "warning" else "Note"
            body = [md_escape(p) for p in block.paragraphs()] or [""]
            lines = [f"> **{label}:** {body[0]}"]
            for p in body[1:]:
                lines += [">", f"> {p}"]
            return lines
        # <details> is HTML that GitHub renders; the blank lines let Markdown work inside it.
        inner = [line for b in block.blocks for line in self.block(b) + [""]]
        summary = html.escape(" ".join(block.summary.split()))
        return ["<details>", f"<summary>{summary}</summary>", ""] + inner + ["</details>"]

    def section(self, section: Section, depth: int) -> list[str]:
        lines = ["#" * min(depth + 2, 6) + " " + md_escape(section.title), ""]
        if section.intro:
            lines += [line for p in paragraphs(section.intro) for line in (md_escape(p), "")]
        for block in section.blocks:
            lines += self.block(block) + [""]
        for sub in section.subsections:
            lines += self.section(sub, depth + 1)
        return lines


def render_markdown(document: Document, figures_dir: str | os.PathLike | None = None, *,
                    link_base: str | os.PathLike | None = None) -> str:  # fmt: skip
    """The report as GitHub-flavoured Markdown.

    Without ``figures_dir`` each figure is a ``*Figure N: alt*`` placeholder (a base64 image would be too big
    to read). With it, the images are written there (``figure-NN[-id].png|svg``) and linked relative to
    ``link_base`` — the folder the Markdown file will be in; by default the parent of ``figures_dir``."""
    document.validate()
    figures = Path(figures_dir) if figures_dir is not None else None
    base = Path(link_base) if link_base is not None else (figures.parent if figures is not None else None)
    writer = _MarkdownWriter(document, figures, base)
    lines = ["# " + md_escape(document.title), ""]
    if document.subtitle:
        lines += [f"*{md_escape(document.subtitle)}*", ""]
    for section in document.sections:
        lines += writer.section(section, 0)
    if document.generated or document.provenance:
        lines += ["---", ""]
        if document.generated:
            lines += [md_escape(document.generated), ""]
        lines += [f"- {md_escape(line)}" for line in document.provenance]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def write_markdown(document: Document, path: str | os.PathLike,
                   figures_dir: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """Write the Markdown atomically; figures (with ``figures_dir``) are linked relative to ``path``."""
    path = Path(path)
    write_text_atomic(path, render_markdown(document, figures_dir, link_base=path.parent))
    return path


# LaTeX: the ten special characters, then a few Unicode signs the report's texts use that pdflatex lacks.
_LATEX_SPECIAL = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    "–": r"\textendash{}", "—": r"\textemdash{}", "±": r"$\pm$", "×": r"$\times$", "≤": r"$\leq$",
    "≥": r"$\geq$", "·": r"$\cdot$", "Δ": r"$\Delta$", "<": r"\textless{}", ">": r"\textgreater{}",
    "−": r"$-$", "→": r"$\rightarrow$", "←": r"$\leftarrow$", "≈": r"$\approx$", "≠": r"$\neq$", "…": r"\ldots{}",
    "✱": r"$\ast$", "⚠": r"(!)", "†": r"\dag{}", "‡": r"\ddag{}", "“": "``", "”": "''", "‘": "`", "’": "'",
    "°": r"$^\circ$", "µ": r"$\mu$", "α": r"$\alpha$", "β": r"$\beta$", "π": r"$\pi$", "σ": r"$\sigma$",
    "²": r"$^2$", "√": r"$\surd$", "∞": r"$\infty$", "↕": r"$\updownarrow$",
}  # fmt: skip
_LATEX_PATTERN = re.compile("|".join(re.escape(ch) for ch in _LATEX_SPECIAL))
_LATEX_HEADINGS = ("section", "subsection", "subsubsection", "paragraph", "subparagraph")


def latex_escape(text: str) -> str:
    """``text`` typeset literally by LaTeX (one pass, so an escape is never escaped again)."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group(0)], " ".join(str(text).split()))


def _latex_cell(cell: Cell) -> str:
    text = latex_escape(cell.text)
    return f"{text}~\\textit{{({latex_escape(cell.flag)})}}" if cell.flag else text


class _LatexWriter:
    def __init__(self, document: Document) -> None:
        self.numbers = document.numbers()

    def table(self, table: TableBlock) -> list[str]:
        spec = "".join("r" if is_num else "l" for is_num in table.numeric_columns())
        lines = [r"\begin{table}[htbp]", r"\centering", r"\small"]
        if table.caption:
            lines.append(rf"\caption{{{latex_escape(table.caption)}}}")
        if table.id:
            lines.append(rf"\label{{tab:{table.id}}}")
        header = " & ".join(rf"\textbf{{{latex_escape(c)}}}" for c in table.columns) + r" \\"
        lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", header, r"\midrule"]
        lines += [" & ".join(_latex_cell(cell) for cell in row) + r" \\" for row in table.cells()]
        lines += [r"\bottomrule", r"\end{tabular}"]
        if table.notes:
            lines += [r"\par\smallskip\footnotesize"] + [latex_escape(note) + r"\par" for note in table.notes]
        lines.append(r"\end{table}")
        return lines

    def block(self, block: Block) -> list[str]:
        kind = block.block_type
        if kind == "table":
            return self.table(block)
        if kind == "figure":
            # A comment cannot hold a line break: the alt text is flattened to one line.
            alt = " ".join(block.alt.split())
            return [f"% Figure {self.numbers[id(block)]} omitted (embedded image): {alt}"]
        if kind == "text":
            return [line for p in block.paragraphs() for line in (latex_escape(p), "")][:-1]
        if kind == "note":
            label = "Warning" if block.kind == "warning" else "Note"
            body = [latex_escape(p) for p in block.paragraphs()] or [""]
            more = [f"\n{p}" for p in body[1:]]
            return [r"\begin{quote}", rf"\textbf{{{label}:}} {body[0]}"] + more + [r"\end{quote}"]
        lines = [rf"\paragraph*{{{latex_escape(block.summary)}}}"]
        for inner in block.blocks:
            lines += self.block(inner) + [""]
        return lines

    def section(self, section: Section, depth: int) -> list[str]:
        command = _LATEX_HEADINGS[min(depth, len(_LATEX_HEADINGS) - 1)]
        lines = [rf"\{command}{{{latex_escape(section.title)}}}\label{{sec:{section.id}}}", ""]
        if section.intro:
            lines += [line for p in paragraphs(section.intro) for line in (latex_escape(p), "")]
        for block in section.blocks:
            lines += self.block(block) + [""]
        for sub in section.subsections:
            lines += self.section(sub, depth + 1)
        return lines


def render_latex(document: Document, *, standalone: bool = True) -> str:
    """The report as LaTeX: ``\\section`` per section, booktabs tables, figures left out with a comment.

    ``standalone`` gives a compilable article (preamble with booktabs); otherwise only the body, to
    ``\\input`` into a paper that loads booktabs itself."""
    document.validate()
    writer = _LatexWriter(document)
    body: list[str] = []
    for section in document.sections:
        body += writer.section(section, 0)
    if document.generated or document.provenance:
        body += [r"\bigskip", r"\noindent\footnotesize"]
        if document.generated:
            body += [latex_escape(document.generated) + r"\par"]
        body += [latex_escape(line) + r"\par" for line in document.provenance]
    if standalone:
        preamble = [
            r"\documentclass[11pt]{article}", r"\usepackage[T1]{fontenc}", r"\usepackage[utf8]{inputenc}",
            r"\usepackage{lmodern}", r"\usepackage{booktabs}", r"\usepackage[margin=2.5cm]{geometry}",
            rf"\title{{{latex_escape(document.title)}}}", rf"\date{{{latex_escape(document.subtitle)}}}",
            r"\author{}", r"\begin{document}", r"\maketitle", "",
        ]  # fmt: skip
        body = preamble + body + ["", r"\end{document}"]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip() + "\n"
