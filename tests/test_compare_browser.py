"""The Compare tab in a real browser (Debian's chromium via Playwright, offline; issue 24): with every
method on the cat, the table fits its panel, every row and every gallery tile is in view, no header
breaks inside a word, and the counts shown are the ones handed over.

Screenshots go to pytest's tmp folder and are copied to /tmp/compare_walk/ for a person to look at.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import BROWSER_MARKS, CHROMIUM  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SCREENS = Path("/tmp/compare_walk")

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

LAYOUT = """() => {
  const table = document.querySelector('#compare-table');
  const box = table.getBoundingClientRect(), panel = table.parentElement.getBoundingClientRect();
  const scroller = table.querySelector('.table-container');
  const viewport = table.querySelector('.virtual-table-viewport');
  const rows = [...table.querySelectorAll('.virtual-row')].map(r => r.getBoundingClientRect());
  const shown = viewport.getBoundingClientRect();
  const broken = [];
  for (const th of table.querySelectorAll('th.header-cell')) {
    const span = th.querySelector('.header-content span');
    const room = th.querySelector('.cell-wrap').clientWidth;
    for (const word of span.textContent.trim().split(/\\s+/)) {  // would this word have to break?
      const probe = document.createElement('span');
      probe.style.whiteSpace = 'nowrap'; probe.style.position = 'absolute'; probe.textContent = word;
      span.appendChild(probe);
      if (probe.getBoundingClientRect().width > room) broken.push(word);
      probe.remove();
    }
  }
  const grid = document.querySelector('#compare-gallery .grid-wrap');
  const tiles = [...document.querySelectorAll('#compare-gallery .gallery-item')].map(t => t.getBoundingClientRect());
  const gridBox = grid.getBoundingClientRect();
  return {
    table: [box.left, box.right], panel: [panel.left, panel.right],
    tableOverflowX: table.scrollWidth - table.clientWidth,
    pageOverflowX: document.documentElement.scrollWidth - window.innerWidth,
    scrollerOverflowX: scroller.scrollWidth - scroller.clientWidth,
    rowsHidden: viewport.scrollHeight - viewport.clientHeight,
    rows: rows.length, rowsOutside: rows.filter(r => r.bottom > shown.bottom + 1 || r.top < shown.top - 1).length,
    brokenHeaders: broken,
    tiles: tiles.length, tilesOutside: tiles.filter(t => t.bottom > gridBox.bottom + 1).length,
    galleryHidden: grid.scrollHeight - grid.clientHeight,
    cells: [...table.querySelectorAll('.virtual-row')].map(r => [...r.querySelectorAll('.body-cell')].map(c => c.innerText.trim())),
    captions: [...document.querySelectorAll('#compare-gallery .caption-label')].map(c => c.innerText.trim()),
  };
}"""


def shot(page, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)


def test_the_compare_table_fits_its_panel_and_shows_every_row(app_url, llava_pipeline, tmp_path):
    from prunesid_vlm.serving import MANAGER

    MANAGER.install(llava_pipeline)  # another browser test may have switched models
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            for width, height in ((1400, 1000), (390, 844)):
                context = browser.new_context(viewport={"width": width, "height": height})
                context.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"), lambda route: route.abort())
                page = context.new_page()
                page.set_default_timeout(120_000)
                page.goto(app_url)
                page.wait_for_selector("#run")
                page.get_by_role("tab", name="Compare methods").click()
                assert "upload one there" in page.locator("#compare-status").inner_text()  # the empty tab says what to do
                page.get_by_role("tab", name="Explore PruneSID").click()
                page.set_input_files("#image input[type=file]", str(ASSETS / "cat.jpg"))
                page.wait_for_function("() => document.querySelector('#summary').innerText.includes('tokens kept')")
                page.fill("#question textarea", "What animal is this?")
                page.get_by_role("tab", name="Compare methods").click()
                page.click("#compare-run")
                page.wait_for_function(
                    "() => document.querySelector('#compare-status').innerText.includes('Compared on')")
                page.wait_for_function("() => document.querySelectorAll('#compare-table .virtual-row').length === 9"
                                       " && document.querySelectorAll('#compare-gallery .gallery-item').length === 9")
                page.wait_for_timeout(500)
                m = page.evaluate(LAYOUT)
                where = f"at {width}×{height}"
                assert m["pageOverflowX"] <= 0, where
                assert m["table"][0] >= m["panel"][0] - 1 and m["table"][1] <= m["panel"][1] + 1, (where, m)
                assert m["tableOverflowX"] <= 0, where
                if width >= 1000:  # a wide panel holds every column; a phone scrolls the columns inside the table
                    assert m["scrollerOverflowX"] <= 1, (where, m["scrollerOverflowX"])
                assert m["rows"] == 9 and m["rowsOutside"] == 0 and m["rowsHidden"] <= 1, (where, m)
                assert m["brokenHeaders"] == [], where
                assert m["tiles"] == 9 and m["tilesOutside"] == 0 and m["galleryHidden"] <= 1, (where, m)
                # The counts shown are the ones handed over: the table's and the captions' agree, row by row.
                counts = {row[0]: int(row[1].split(" = ")[0]) for row in m["cells"]}
                for caption in m["captions"]:
                    label, count = re.fullmatch(r"(.+) · (\d+) tokens", caption).groups()
                    assert counts[label] == int(count), caption
                assert any("(nominal)" in cell for row in m["cells"] for cell in row)  # PruneSID-Dyn's paper figure
                shot(page, tmp_path, f"browser-compare-{width}")
                context.close()
        finally:
            browser.close()


def test_the_sweep_and_the_in_llm_study_show_the_counts_handed_over(app_url, llava_pipeline, tmp_path):
    """At 1400×1000 on the cat: the sweep's JSON puts PruneSID-Dyn at the tokens its selections hand the
    model (computed here from the same pipeline, not K), and the in-LLM table shows each variant's token
    schedule, the spread of its times and which rows do the same work (the 2-layer demo's FastV and
    PyramidDrop stages coincide). Screenshots of both charts for a person to read."""
    import json

    from prunesid_vlm.studies import handed_tokens
    from prunesid_vlm.media import load_image
    from prunesid_vlm.serving import MANAGER

    MANAGER.install(llava_pipeline)
    image, _ = load_image(str(ASSETS / "cat.jpg"))
    feats = llava_pipeline.encode([image])
    budgets = [16, 32, 64, 128, 192, 320, 576]
    dyn = [handed_tokens(llava_pipeline, feats, llava_pipeline.select(feats, k, method="prunesid-dyn"))
           for k in budgets]
    assert dyn != budgets, "the demo's φ moves PruneSID-Dyn off K on the cat"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"), lambda route: route.abort())
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(app_url)
            page.wait_for_selector("#run")
            page.set_input_files("#image input[type=file]", str(ASSETS / "cat.jpg"))
            page.wait_for_function("() => document.querySelector('#summary').innerText.includes('tokens kept')")
            page.get_by_role("tab", name="Compare methods").click()
            page.get_by_role("tab", name="Budget sweep").click()  # its inputs are drawn once the tab is open
            page.fill("#compare-budgets textarea", ", ".join(map(str, budgets)))
            page.click("#compare-sweep")
            page.wait_for_function("() => document.querySelector('#compare-status').innerText.includes('Swept on')")
            page.get_by_text("Raw numbers (JSON)").click()
            page.wait_for_timeout(800)
            swept = json.loads(page.locator("#compare-json").inner_text().replace("\n", ""))
            assert swept["budgets"] == budgets
            assert swept["handed_tokens"]["prunesid-dyn"] == dyn and swept["handed_tokens"]["prunesid"] == budgets
            shot(page, tmp_path, "browser-sweep-1400")
            page.locator("#compare-sweep-plot").screenshot(path=str(tmp_path / "browser-sweep-plot-1400.png"))
            shutil.copy(tmp_path / "browser-sweep-plot-1400.png", SCREENS / "browser-sweep-plot-1400.png")

            page.get_by_role("tab", name="Inside the LLM").click()
            page.fill("#inllm-budgets textarea", "64, 16")
            page.click("#inllm-run")
            page.wait_for_function("() => document.querySelector('#inllm-text').innerText.includes('Measured on')")
            page.wait_for_timeout(800)
            rows = page.evaluate("() => [...document.querySelectorAll('#inllm-table .virtual-row')].map("
                                 "r => [...r.querySelectorAll('.body-cell')].map(c => c.innerText.trim()))")
            cells = {row[0]: row for row in rows}
            assert cells["No pruning"][1] == "576 (every layer)" and cells["No pruning"][4] == "1 (reference)"
            for k in (64, 16):
                assert cells[f"PruneSID alone {k}"][1] == f"{k} (every layer)"
                assert cells[f"PruneSID + FastV {k}"][1] == f"{k} → {k // 2} (after layer 1)"
                assert cells[f"FastV alone {k}"][1] == f"576 → {k} (after layer 1)"
                assert cells[f"PruneSID + PyramidDrop {k}"][4].endswith(f"same work as PruneSID + FastV {k}")
            for name, row in cells.items():
                if name != "No pruning":
                    assert re.match(r"^\d+\.\d\d \(\d+\.\d\d–\d+\.\d\d\)", row[4]), row
                    assert row[6] in ("same", "changed")
            assert "Same token schedule, same work" in page.locator("#inllm-text").inner_text()
            page.locator("#inllm-plot").screenshot(path=str(tmp_path / "browser-inllm-plot-1400.png"))
            shutil.copy(tmp_path / "browser-inllm-plot-1400.png", SCREENS / "browser-inllm-plot-1400.png")
            shot(page, tmp_path, "browser-inllm-1400")
            context.close()
        finally:
            browser.close()
