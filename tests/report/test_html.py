"""The HTML report: structure and escaping from the markup, then behaviour in headless Chromium."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from fairfm.report.document import Document, FigureBlock, Section, TableBlock, TextBlock
from fairfm.report.html import render_html, write_html
from tests.browser import chromium, chromium_page, image_is_blank
from tests.report.report_document import (
    AUC_VALUES, HOSTILE_TITLE, SECTION_IDS, expected_auc_order, make_document,
)  # fmt: skip


class _Collector(HTMLParser):
    """Every tag with its attributes, and the text inside each kind of tag (an independent reading)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "meta", "br", "input", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data):
        for tag in set(self.stack):
            self.text[tag] = self.text.get(tag, "") + data


@pytest.fixture(scope="module")
def document() -> Document:
    return make_document()


@pytest.fixture(scope="module")
def rendered(document) -> str:
    return render_html(document)


@pytest.fixture(scope="module")
def parsed(rendered) -> _Collector:
    collector = _Collector()
    collector.feed(rendered)
    return collector


def test_every_text_is_escaped(rendered, parsed):
    assert parsed.text["title"] == HOSTILE_TITLE
    assert parsed.text["h1"] == HOSTILE_TITLE
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert len(scripts) == 1  # only the report's own script
    assert "__pwned" not in rendered.split("<script>")[-1]
    assert "<b>not bold</b>" not in rendered and "&lt;b&gt;not bold&lt;/b&gt;" in rendered


def test_no_external_urls_anywhere_in_src_or_href(parsed):
    urls = [attrs[name] for _, attrs in parsed.tags for name in ("src", "href") if name in attrs]
    assert urls, "the report links its sections and embeds its images"
    for url in urls:
        assert url.startswith(("#", "data:image/png;base64,", "data:image/svg+xml;base64,")), url
        assert not re.match(r"(https?:)?//", url)
    assert not any(tag == "link" for tag, _ in parsed.tags)
    # A URL in the text stays text, never becomes a link.
    assert "https://example.org/x" in parsed.text["p"]


def test_table_cells_carry_sort_values_and_flags(parsed):
    cells = [attrs for tag, attrs in parsed.tags if tag == "td"]
    sort_values = [c.get("data-sort") for c in cells]
    # AUC column entries: number → repr(float); None, NaN and "–" → no data-sort (they sort last).
    for value in AUC_VALUES:
        if value is not None and value == value:
            assert repr(float(value)) in sort_values
    flags = [t for t, _ in parsed.tags if t == "span"]
    assert "attribute-aware" in parsed.text["td"] and flags
    assert any(c.get("title") == "needs the attribute at test time" for c in cells)


def test_only_sortable_tables_get_header_buttons(rendered):
    tables = re.findall(r"<table [^>]*>.*?</table>", rendered, flags=re.S)
    assert len(tables) == 3
    sortable = ['class="sortable"' in t.split(">", 1)[0] for t in tables]
    assert sortable == [True, True, False]  # leaderboard, wide table; the checksum table was sortable=False
    assert [t.count("<button") for t in tables] == [6, 15, 0]


def test_write_html_is_atomic_and_returns_the_path(tmp_path, document):
    target = tmp_path / "out" / "report.html"
    assert write_html(document, target) == target
    assert target.read_text(encoding="utf-8") == render_html(document)
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary file left


def test_ids_added_after_construction_are_still_checked(document):
    extra = make_document()
    extra.sections[0].blocks.append(TableBlock(["a"], [[1]], id="overview"))
    with pytest.raises(ValueError, match="'overview' is used twice"):
        render_html(extra)


# -- in the browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    with chromium() as shared:
        yield shared


@pytest.fixture(scope="module")
def page(tmp_path_factory, document, browser):
    path = write_html(document, tmp_path_factory.mktemp("html") / "report.html")
    return browser.open(path, width=1200, height=900)


def test_loads_without_console_errors(page):
    assert page.console_errors() == []


def test_toc_links_every_section_in_reading_order(page):
    hrefs = page.run("return Array.from(document.querySelectorAll('nav.toc a'), a => a.getAttribute('href'))")
    assert hrefs == [f"#{sid}" for sid in SECTION_IDS]
    tags = page.run("return arguments[0].map(id => (document.getElementById(id) || {}).tagName)", SECTION_IDS)
    assert tags == ["SECTION"] * len(SECTION_IDS)
    nested = page.run("return document.querySelectorAll('nav.toc ol ol ol a').length")
    assert nested == 1  # groups-detail sits two levels down


def test_every_image_loads_and_is_not_blank(page):
    images = page.run("return Array.from(document.images, i => [i.complete, i.naturalWidth, i.alt])")
    assert len(images) == 2
    for complete, natural_width, alt in images:
        assert complete and natural_width > 0 and alt
    for figure_id in ("roc", "bars"):
        shot = page.element_screenshot(f"#{figure_id} img")
        assert shot.width > 100 and not image_is_blank(shot)


def test_numeric_header_sorts_ascending_then_descending_missing_last(page):
    table = "#leaderboard"
    header = f"{table} thead th:nth-child(4)"
    page.click(f"{header} button")
    assert page.column_values(table, 3) == expected_auc_order(descending=False)
    assert page.run(f"return document.querySelector('{header}').getAttribute('aria-sort')") == "ascending"
    page.click(f"{header} button")
    assert page.column_values(table, 3) == expected_auc_order(descending=True)
    assert page.run(f"return document.querySelector('{header}').getAttribute('aria-sort')") == "descending"
    # Rows move whole: the model column follows its AUC.
    by_model = dict(zip(page.column_values(table, 0), page.column_values(table, 3)))
    assert by_model["oracle"] == "1.000" and by_model["clip"] == "–"


def test_sorting_by_keyboard_and_by_text(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    button = page.driver.find_element(By.CSS_SELECTOR, "#leaderboard thead th:nth-child(1) button")
    button.send_keys(Keys.ENTER)  # a <button> answers Enter (and Space) as a click
    models = page.column_values("#leaderboard", 0)
    assert models == sorted(models)
    sorted_headers = page.run("return document.querySelectorAll('#leaderboard th[aria-sort]').length")
    assert sorted_headers == 1  # the previously sorted column is no longer marked


def test_phone_width_never_scrolls_the_page_sideways(page):
    try:
        page.set_size(390, 844)
        inner, scroll = page.run("return [window.innerWidth, document.documentElement.scrollWidth]")
        assert inner == 390 and scroll <= inner
        # The wide table does overflow — inside its own scrolling frame.
        wrap = page.run("var w = document.querySelector('#wide').parentElement;"
                        "return [w.scrollWidth, w.clientWidth]")
        assert wrap[0] > wrap[1]
        assert page.run("return document.querySelector('#wide').parentElement.nextElementSibling.hidden") is False
        widths = page.run("return Array.from(document.images, i => i.getBoundingClientRect().right)")
        assert max(widths) <= 390
    finally:
        page.set_size(1200, 900)


def test_scroll_hint_only_where_a_table_overflows(page):
    import time

    # The hints follow the frame's width on 'resize' (an earlier test changed the size): wait for them to settle.
    deadline, hints = time.monotonic() + 5.0, None
    while time.monotonic() < deadline:
        hints = page.run("return Array.from(document.querySelectorAll('.scroll-hint'), h => h.hidden)")
        if hints == [True, False, True]:
            break
        time.sleep(0.05)
    assert hints == [True, False, True]  # at 1200 px only the 15-column table is wider than its frame


def test_hostile_title_is_shown_as_text_and_never_runs(page):
    assert page.run("return document.title") == HOSTILE_TITLE
    assert page.run("return document.querySelector('h1').textContent") == HOSTILE_TITLE
    assert page.run("return typeof window.__pwned") == "undefined"


def test_full_page_screenshot_covers_beyond_the_viewport(page, tmp_path):
    shot = Image.open(page.screenshot(tmp_path / "page.png"))
    height = page.run("return document.documentElement.scrollHeight")
    assert shot.width == 1200 and shot.height == height > 900
    assert not image_is_blank(shot)


def _python_order(cells, descending: bool) -> list[str]:
    """The oracle: numbers by value, words after them (before them descending), missing values last; ties keep
    their order (both sorts are stable)."""
    present = [c for c in cells if c.sort_key is not None]
    numbers = sorted((c for c in present if not isinstance(c.sort_key, str)), key=lambda c: c.sort_key,
                     reverse=descending)  # fmt: skip
    words = sorted((c for c in present if isinstance(c.sort_key, str)), key=lambda c: c.sort_key,
                   reverse=descending)  # fmt: skip
    ordered = words + numbers if descending else numbers + words
    return [c.text for c in ordered] + [c.text for c in cells if c.sort_key is None]


def test_sort_orders_match_python_on_awkward_numbers(browser, page, tmp_path):
    """Negative numbers, exponents, large integers, ties (0.0 and -0.0 too), missing values, numbers among
    words: the browser's order is Python's, both ways."""
    rng = np.random.default_rng(11)
    floats = [float(v) for v in rng.normal(0, 1, 30) * 10.0 ** rng.integers(-6, 6, 30)] + [0.0, -0.0, 1e-05]
    n = len(floats) + 2
    columns = {
        "floats": floats + [None, float("nan")],
        "ints": [int(v) for v in rng.integers(-1000, 10**9, n - 4)] + [7, 7, None, 7],
        "mixed": [float(v) for v in rng.integers(0, 20, n - 6)] + ["alpha", "beta", "gamma", "–", None, 2.5],
    }
    table = TableBlock(list(columns), [list(row) for row in zip(*columns.values())], id="awkward")
    path = write_html(Document("Sorting", [Section("s", "S", [table])]), tmp_path / "sorting.html")
    try:
        sorting = browser.open(path)
        for index in range(len(columns)):
            cells = [row[index] for row in table.cells()]
            for descending in (False, True):  # the first click sorts ascending, the second descending
                sorting.click(f"#awkward thead th:nth-child({index + 1}) button")
                shown = sorting.column_values("#awkward", index)
                assert shown == _python_order(cells, descending), (list(columns)[index], descending)
        assert sorting.console_errors() == []
    finally:
        browser.open(page.path)  # the report again, for any test after this one


# -- the harness itself --------------------------------------------------------------------------------------


def test_harness_reports_uncaught_errors_and_failed_loads(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><title>x</title><img src='missing.png' alt='gone'>"
                   "<script>undefinedFunction();</script>")  # fmt: skip
    with chromium_page(bad, width=800, height=600) as bad_page:
        errors = bad_page.console_errors()
        assert bad_page.run("return window.innerWidth") == 800
    assert any("undefinedFunction" in e for e in errors)
    assert any("missing.png" in e for e in errors)


def test_image_is_blank_tells_one_colour_from_a_plot():
    white = Image.new("RGB", (200, 100), "white")
    assert image_is_blank(white)
    assert image_is_blank(Image.new("RGB", (200, 100), (40, 40, 40)))
    line = white.copy()
    for x in range(200):
        line.putpixel((x, 50), (0, 0, 255))  # one line across: 1 % of the pixels
    assert not image_is_blank(line)
    speck = white.copy()
    speck.putpixel((3, 3), (0, 0, 0))  # one pixel of 20,000 is noise, not content
    assert image_is_blank(speck)


def test_figure_block_refuses_external_sources_and_missing_alt():
    with pytest.raises(ValueError, match="alt text is required"):
        FigureBlock("data:image/png;base64,iVBORw0KGgo=", alt="  ")
    with pytest.raises(ValueError, match="embeds every image"):
        FigureBlock("https://example.org/plot.png", alt="a plot")
    with pytest.raises(ValueError, match="not valid base64"):
        FigureBlock("data:image/png;base64,@@@", alt="a plot")


def test_text_paragraphs_and_empty_document_render(tmp_path):
    doc = Document("Only text", [Section("s", "S", [TextBlock("one\nline\n\n\ntwo")])])
    html = render_html(doc)
    assert "<p>one line</p>" in html and "<p>two</p>" in html
