"""Headless Chromium for the HTML tests: Selenium against Debian's chromium and chromedriver.

Both binaries come from one Debian source package, so their versions always match, and nothing is downloaded
(Selenium Manager is never asked: both paths are given). ``make system-deps`` installs them; a missing browser
fails the test with that instruction instead of skipping it.

    with chromium_page(path) as page:
        assert page.console_errors() == []
        page.set_size(390, 844)

One browser can serve several pages (a module-scoped fixture):
``with chromium() as browser: page = browser.open(path)``.
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# LIBRARIES.md §4: root, offline, no first-run or background traffic.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
)  # fmt: skip


def _require_binaries() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the HTML tests need Debian's chromium and "
                    "chromium-driver; run `make system-deps` (as root, or: "
                    "sudo apt-get install -y chromium chromium-driver)", pytrace=False)


class Page:
    """One loaded page. ``driver`` is the Selenium WebDriver, for anything not wrapped here."""

    def __init__(self, driver, path: Path) -> None:
        self.driver = driver
        self.path = path
        self._errors: list[str] = []

    def _drain_log(self) -> None:
        # get_log empties the browser's buffer: keep what it returned so every call sees all entries.
        for entry in self.driver.get_log("browser"):
            if entry.get("level") == "SEVERE":
                self._errors.append(entry.get("message", ""))

    def console_errors(self) -> list[str]:
        """SEVERE browser-log entries since the page loaded: console.error, uncaught errors, failed loads."""
        self._drain_log()
        return list(self._errors)

    def run(self, script: str, *args) -> Any:
        """``execute_script``: ``script`` is a function body, so write ``return …`` to get a value back."""
        return self.driver.execute_script(script, *args)

    def set_size(self, width: int, height: int) -> None:
        """Make the viewport ``width`` × ``height`` CSS pixels (window.innerWidth == width)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        self.run("return document.body.offsetHeight")  # force the new layout before anyone measures it

    def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        element = self.driver.find_element(By.CSS_SELECTOR, css)
        self.run("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def column_values(self, table_css: str, col_index: int) -> list[str]:
        """The text of column ``col_index`` (0-based) of the table's body rows, top to bottom; a cell's
        ``.value`` part when it has one (the report puts badges beside it)."""
        return self.run(
            "var table = document.querySelector(arguments[0]), index = arguments[1];"
            "if (!table) { throw new Error('no table matches ' + arguments[0]); }"
            "return Array.prototype.map.call(table.tBodies[0].rows, function (row) {"
            "  var cell = row.cells[index]; var value = cell.querySelector('.value');"
            "  return (value || cell).textContent.trim(); });",
            table_css, col_index,
        )  # fmt: skip

    def screenshot(self, path: str | Path) -> Path:
        """The whole page (beyond the viewport) as PNG."""
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "fromSurface": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        })  # fmt: skip
        path = Path(path)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def element_screenshot(self, css: str, *, index: int = 0) -> Image.Image:
        """The ``index``-th element matching ``css`` (the first by default) as a PIL image, scrolled into view."""
        from selenium.webdriver.common.by import By

        element = self.driver.find_elements(By.CSS_SELECTOR, css)[index]
        self.run("arguments[0].scrollIntoView({block: 'start'})", element)
        return Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")


    def decoded_images(self) -> list[Image.Image]:
        """Every ``<img>`` of the page as the browser decoded it (drawn onto a canvas at its natural size): what
        each figure shows, without scrolling to it — much faster than an element screenshot per image."""
        script = """
            return Array.from(document.images).map(img => {
                const canvas = document.createElement('canvas');
                canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
                canvas.getContext('2d').drawImage(img, 0, 0);
                return canvas.toDataURL('image/png');
            });"""
        return [Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
                for uri in self.run(script)]  # fmt: skip


class Browser:
    def __init__(self, driver) -> None:
        self.driver = driver

    def open(self, path: str | Path, *, width: int = 1200, height: int = 900) -> Page:
        """Load ``path`` (a local file) at the given viewport size; the previous page's log is discarded."""
        path = Path(path).resolve()
        page = Page(self.driver, path)
        page.set_size(width, height)
        self.driver.get_log("browser")  # entries of an earlier page belong to it
        self.driver.get(path.as_uri())
        return page


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium with a fresh profile, closed afterwards."""
    _require_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fairfm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def chromium_page(path: str | Path, *, width: int = 1200, height: int = 900) -> Iterator[Page]:
    """``path`` loaded in a fresh headless Chromium of viewport ``width`` × ``height``."""
    with chromium() as browser:
        yield browser.open(path, width=width, height=height)


def image_is_blank(img: Image.Image, *, tolerance: int = 12, min_fraction: float = 0.002) -> bool:
    """True when the image is (nearly) one colour: fewer than ``min_fraction`` of its pixels differ from its
    most common colour by more than ``tolerance`` in a channel. A plot with axes and a line is not blank."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.int16).reshape(-1, 3)
    if pixels.shape[0] == 0:
        return True
    packed = (pixels[:, 0].astype(np.int32) << 16) | (pixels[:, 1].astype(np.int32) << 8) | pixels[:, 2]
    mode = int(np.argmax(np.bincount(packed)))  # the most common colour, from one pass over packed RGB
    dominant = np.array([mode >> 16, (mode >> 8) & 255, mode & 255], dtype=np.int16)
    differing = np.any(np.abs(pixels - dominant) > tolerance, axis=1)
    return float(differing.mean()) < min_fraction
