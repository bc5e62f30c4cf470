"""The leaderboard site in a real browser: headless Chromium (the OS package, /usr/bin/chromium) driven by
playwright. Every page opens from file:// with no console error and no failed request (nothing is fetched
from the network), a click on any column header re-sorts its table, and every plot has a size on screen.
Without Chromium or playwright the test skips, unless BENCH_REQUIRE_BROWSER=1 (CI) makes that a failure.

Run as a script, it renders the committed entries and saves docs/img/leaderboard-site.png:
``.venv/bin/python tests/test_site_browser.py``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # a closed network: nothing to wait for or reach
REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def browser_page():
    """A 1200x800 page of headless Chromium; a skip (a failure under BENCH_REQUIRE_BROWSER=1) without one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [what for what, absent in (("the playwright package", sync_playwright is None),
                                         (str(CHROMIUM), not CHROMIUM.is_file())) if absent]
    if missing:
        message = f"no browser test: {' and '.join(missing)} missing (apt-get install chromium; requirements/ci.txt)"
        if os.environ.get("BENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(message + ", and BENCH_REQUIRE_BROWSER=1 requires it")
        pytest.skip(message)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 800})
        finally:
            browser.close()


COLUMN = """([table, k]) => Array.from(document.querySelectorAll("table.sortable")[table].tBodies[0].rows, row =>
    row.cells[k].hasAttribute("data-sort") ? row.cells[k].dataset.sort : row.cells[k].textContent.trim())"""


def check_sorting(page, table: int) -> None:
    """Click each header of the table: numbers come out in order (empty cells last), text reverses on a second
    click."""
    headers = page.locator("table.sortable").nth(table).locator("thead th")
    for k in range(headers.count()):
        header = headers.nth(k)
        header.click()
        first = page.evaluate(COLUMN, [table, k])
        direction = header.get_attribute("aria-sort")
        if header.get_attribute("data-type") == "number":
            numbers = [float(v) for v in first if v != ""]
            assert numbers == sorted(numbers, reverse=direction == "descending"), (k, first)
            assert first[len(numbers):] == [""] * (len(first) - len(numbers))
        header.click()
        assert header.get_attribute("aria-sort") != direction
        if header.get_attribute("data-type") == "text":
            assert page.evaluate(COLUMN, [table, k]) == first[::-1] or len(set(first)) < len(first)


@pytest.mark.slow
def test_every_page_opens_offline_sorts_its_tables_and_draws_its_plots(all_families_site):
    problems: list[str] = []
    with browser_page() as page:
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
        page.on("request", lambda r: None if r.url.startswith("file://") else problems.append(f"fetched {r.url}"))
        sorted_rows = 0
        for path in sorted(all_families_site.site.glob("*.html")):
            page.goto(path.as_uri(), wait_until="load")
            plots = page.locator("svg.plot")
            assert plots.count() == path.read_text().count('<svg class="plot"')
            for k in range(plots.count()):
                box = plots.nth(k).bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 50, (path.name, k, box)
            assert page.locator("thead th[aria-sort]").count() == page.locator("table.sortable").count()
            for table in range(page.locator("table.sortable").count()):
                rows = page.locator("table.sortable").nth(table).locator("tbody tr").count()
                if rows > 1:
                    check_sorting(page, table)
                    sorted_rows += rows
            assert not problems, (path.name, problems)
    assert sorted_rows >= 10  # the index's models and a model page's results, at least


def screenshot(out: Path) -> None:
    """The site of the committed entries, its MNIST AutoAttack page as a reader first sees it."""
    from bench.leaderboard.site import build_site

    with tempfile.TemporaryDirectory() as folder, browser_page() as page:
        build_site(REPO / "leaderboard", Path(folder))
        page.goto((Path(folder) / "mnist--autoattack.html").as_uri(), wait_until="load")
        page.screenshot(path=str(out))


if __name__ == "__main__":
    screenshot(REPO / "docs" / "img" / "leaderboard-site.png")
