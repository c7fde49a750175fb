"""Markdown and LaTeX renderings of the report document.

Markdown is read back with markdown-it-py (a CommonMark parser, with GitHub tables enabled) as the independent
oracle: what a reader sees must be exactly the document's text."""

from __future__ import annotations

import base64
import html as html_module
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from fairfm.report.document import Cell, Document, FigureBlock, NoteBlock, Section, TableBlock, TextBlock
from fairfm.report.markdown import latex_escape, md_escape, render_latex, render_markdown, write_markdown
from tests.report.report_document import HOSTILE_TITLE, SECTION_IDS, make_document

_PARSER = MarkdownIt("commonmark").enable(["table", "strikethrough"])  # GitHub's tables and ~~strike~~
# Markdown's punctuation often (so emphasis, links, lists and HTML get tried), any other character too.
_CHARACTERS = st.one_of(st.sampled_from(list("*_`[]()<>|~&#+-=!\\.:1 a;")),
                        st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")))
_TEXT = st.text(_CHARACTERS, min_size=1, max_size=40)


def _visible_text(markdown: str, inline: bool = False) -> str:
    """The text a reader sees: rendered to HTML, tags dropped, entities decoded."""
    rendered = _PARSER.renderInline(markdown) if inline else _PARSER.render(markdown)
    return html_module.unescape(re.sub(r"<[^>]+>", "", rendered)).strip()


@pytest.fixture(scope="module")
def document() -> Document:
    return make_document()


@pytest.fixture(scope="module")
def markdown(document) -> str:
    return render_markdown(document)


_MARKUP_EXAMPLES = [
    "*a*", "_a_", "**b**", "`code`", "[x](y)", "![i](j)", "<b>x</b>", "a|b", "~~s~~", "&amp;",
    "# h", "## h", "1. x", "12) x", "- x", "+ x", "> q", "\\*", "<https://x.org>", "---",
]  # fmt: skip


@given(_TEXT)
@example("*a*")  # the markup a reader must see as typed (random text rarely composes it)
def test_md_escape_shows_any_text_literally(text):
    shown = " ".join(text.split())
    if shown:
        assert _visible_text(md_escape(text)) == shown


@given(st.lists(_TEXT, min_size=2, max_size=4))
@example(_MARKUP_EXAMPLES)
def test_table_cells_read_back_exactly(texts):
    table = TableBlock([f"c{i}" for i in range(len(texts))], [texts])
    doc = Document("t", [Section("s", "S", [table])])
    tokens = _PARSER.parse(render_markdown(doc))
    cells = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "td_open"]
    rendered = [_visible_text(c, inline=True) for c in cells]
    assert rendered == [" ".join(t.split()) for t in texts]


@pytest.mark.parametrize("text", _MARKUP_EXAMPLES)
def test_md_escape_shows_markup_literally(text):
    assert _visible_text(md_escape(text)) == text


def test_headings_follow_the_section_tree(markdown, document):
    tokens = _PARSER.parse(markdown)
    headings = [(t.tag, tokens[i + 1].content) for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[0] == ("h1", md_escape(HOSTILE_TITLE))
    assert _visible_text(markdown.splitlines()[0]) == HOSTILE_TITLE
    levels = {section.id: depth for section, depth in document.walk()}
    titles = {section.id: section.title for section, _ in document.walk()}
    expected = [(f"h{levels[sid] + 2}", titles[sid]) for sid in SECTION_IDS]
    assert [(tag, _visible_text(content, inline=True)) for tag, content in headings[1:]] == expected


def test_leaderboard_is_a_pipe_table_with_flags_and_numeric_alignment(markdown, document):
    tokens = _PARSER.parse(markdown)
    header = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "th_open"][:6]
    assert header == document.sections[0].blocks[2].columns
    align = [t.attrGet("style") for t in tokens if t.type == "th_open"][:6]
    assert align[3] == "text-align:right" and align[0] == "text-align:left"
    assert "| ours | linear\\_probe | fairlora *(attribute-aware)* | 0.774 |" in markdown
    assert "| – |" in markdown  # None and NaN show as a dash
    assert "**Table 1.** Leaderboard" in markdown and "*attribute-aware methods see" in markdown


def test_notes_are_blockquotes_and_figures_placeholders(markdown):
    assert "> **Warning:** Thresholds of run ours" in markdown
    assert "> **Note:** Groups with fewer" in markdown
    assert "*Figure 1: ROC curves of female and male patients*" in markdown
    assert "*Figure 2: Bars of group AUC minus population AUC*" in markdown
    assert "base64" not in markdown
    assert "<details>" in markdown and "<summary>Specs and checksums</summary>" in markdown


def test_figures_dir_writes_the_images_and_links_them_relatively(tmp_path, document):
    out = write_markdown(document, tmp_path / "report.md", figures_dir=tmp_path / "figures")
    text = out.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["figures/figure-01-roc.png", "figures/figure-02-bars.svg"]
    figures = [b for b in document.blocks() if isinstance(b, FigureBlock)]
    for link, figure in zip(links, figures):
        written = (out.parent / link).read_bytes()
        assert written == base64.b64decode(figure.data_uri.split(",", 1)[1])
    assert written.lstrip().startswith(b"<?xml") or b"<svg" in written[:500]
    assert (tmp_path / "figures" / "figure-01-roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_footer_lists_provenance(markdown):
    tail = markdown.split("\n---\n", 1)[1]
    assert "generated 2026-12-08" in tail and "- code: fairfm 0.0+g30609aa" in tail


# -- LaTeX ---------------------------------------------------------------------------------------------------

_LATEX_BACK = {
    r"\&": "&", r"\%": "%", r"\$": "$", r"\#": "#", r"\_": "_", r"\{": "{", r"\}": "}",
    r"\textasciitilde{}": "~", r"\textasciicircum{}": "^", r"\textbackslash{}": "\\", r"\textless{}": "<",
    r"\textgreater{}": ">", r"\textemdash{}": "—", r"\textendash{}": "–", r"$\pm$": "±", r"$\times$": "×",
    r"$\leq$": "≤", r"$\geq$": "≥", r"$\cdot$": "·", r"$\Delta$": "Δ",
}  # fmt: skip
_LATEX_BACK_PATTERN = re.compile("|".join(re.escape(k) for k in sorted(_LATEX_BACK, key=len, reverse=True)))


@given(st.text(st.sampled_from(list("&%$#_{}~^\\<>–—±×ab -")), min_size=1, max_size=30))
def test_latex_escape_is_one_pass_and_reversible(text):
    escaped = latex_escape(text)
    # Outside the escapes no special character is left bare...
    bare = _LATEX_BACK_PATTERN.sub("", escaped)
    assert not set(bare) & set("&%$#_{}~^\\<>")
    # ...and reading the escapes back gives the text (a double escape would not; nor would "--" for "–",
    # which next to a hyphen or another dash reads as a longer dash).
    assert _LATEX_BACK_PATTERN.sub(lambda m: _LATEX_BACK[m.group(0)], escaped) == " ".join(text.split())


def test_latex_escapes_each_special_character():
    assert latex_escape(r"50% of $x_1 & #2 {a} ~ ^ \ ") == (
        r"50\% of \$x\_1 \& \#2 \{a\} \textasciitilde{} \textasciicircum{} \textbackslash{}")


def test_latex_structure(document):
    latex = render_latex(document)
    assert latex.startswith(r"\documentclass") and latex.rstrip().endswith(r"\end{document}")
    assert r"\usepackage{booktabs}" in latex
    assert re.findall(r"\\section\{([^}]*)\}", latex) == ["Overview", "Provenance"]
    assert re.findall(r"\\subsection\{(.*)\}\\label", latex) == [r"Utility\textendash{}fairness trade-off",
                                                                "Per-group relative performance"]  # fmt: skip
    assert re.findall(r"\\subsubsection\{([^}]*)\}", latex) == ["Detail by attribute"]
    assert r"\label{sec:groups-detail}" in latex and r"\label{tab:leaderboard}" in latex
    assert latex.count(r"\toprule") == latex.count(r"\midrule") == latex.count(r"\bottomrule") == 3
    assert r"\begin{tabular}{lllrrr}" in latex  # numeric columns right-aligned
    row = r"ours & linear\_probe & fairlora~\textit{(attribute-aware)} & 0.774 & 0.724 $\pm$ 0.010 & 4 \\"
    assert row in latex
    assert "% Figure 1 omitted (embedded image): ROC curves of female and male patients" in latex
    assert "includegraphics" not in latex and "base64" not in latex
    assert r"\textbf{Warning:} Thresholds" in latex
    assert r"\title{Fairness \textless{}script\textgreater{}window.\_\_pwned" in latex


def test_latex_body_only_and_rows_with_many_columns():
    doc = Document("t", [Section("s", "S & T", [TableBlock(["a", "b"], [[Cell("x", flag="f"), 1.23456]]),
                                               NoteBlock("n"), TextBlock("p1\n\np2")])])  # fmt: skip
    body = render_latex(doc, standalone=False)
    assert not body.startswith(r"\documentclass") and body.startswith(r"\section{S \& T}")
    assert r"x~\textit{(f)} & 1.235 \\" in body and "p1\n\np2" in body
