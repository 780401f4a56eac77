"""The page in a real browser (Debian's chromium via Playwright, offline): upload an example,
run, move the slider, open every view, and check that the views and both answers appear.

Screenshots go to pytest's tmp folder and are copied to /tmp/app_screens/ for a person to look at.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM = "/usr/bin/chromium"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SCREENS = Path("/tmp/app_screens")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def page(app_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        _, pg = new_visitor(browser)
        yield pg
        browser.close()


def new_visitor(browser):
    """A fresh browser context (its own cookies, its own Gradio session) and its page: one more visitor."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # Offline safety net: nothing may leave the machine.
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"), lambda route: route.abort())
    visitor = context.new_page()
    visitor.set_default_timeout(60_000)
    return context, visitor


def shot(page, tmp_path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    return path


def wait_idle(page) -> None:
    """Until no component shows Gradio's "processing" overlay (views are drawn lazily per tab)."""
    page.wait_for_timeout(150)
    page.wait_for_function("() => !document.body.innerText.includes('processing |')")


def run_inside_the_llm(page, budgets: str) -> tuple[str, str]:
    """Compare → Inside the LLM → run at ``budgets``: the note above the plot and the table's text."""
    page.get_by_role("tab", name="Compare methods").click()
    page.get_by_role("tab", name="Inside the LLM").click()
    page.fill("#inllm-budgets textarea, #inllm-budgets input", budgets)
    page.click("#inllm-run")
    page.wait_for_function("() => document.querySelector('#inllm-text').innerText.includes('Measured on')")
    wait_idle(page)
    return text_of(page, "#inllm-text"), text_of(page, "#inllm-table")


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_upload_run_slide_and_read_every_view(page, app_url, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#run")
    assert "not meaningful" in text_of(page, "#banner")  # the demo model says so

    page.set_input_files("#image input[type=file]", str(ASSETS / "cat.jpg"))
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('64 of 577 tokens kept')")
    page.wait_for_selector("#kept img")
    page.fill("#question textarea", "What animal is this?")
    page.click("#run")
    page.wait_for_function(
        "() => document.querySelector('#pruned-answer textarea').value.length > 0"
        " && document.querySelector('#fidelity').innerText.includes('Fidelity')")
    assert page.input_value("#full-answer textarea")
    assert "576 visual tokens" in text_of(page, "#full-head")
    assert "64 visual tokens" in text_of(page, "#pruned-head")
    assert re.search(r"× (faster|slower)", text_of(page, "#pruned-stats"))
    wait_idle(page)
    shot(page, tmp_path, "1-answers")

    # Move the slider (its number box, then release): the views redraw, the answers are flagged.
    page.fill("#budget input[type=number]", "128")
    page.locator("#budget input[type=number]").press("Tab")  # blur = release
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('128 of 577 tokens kept')")
    assert "22.2% of 576" in text_of(page, "#budget-label")
    page.wait_for_function("() => document.querySelector('#stale').innerText.includes('made with 64 tokens')")
    assert page.input_value("#pruned-answer textarea") == ""  # not shown as the answer for 128 tokens
    assert "128 visual tokens" in text_of(page, "#pruned-head")
    wait_idle(page)
    shot(page, tmp_path, "2-slider-128")

    # A preset button does the same.
    page.click("#preset-192")
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('192 of 577 tokens kept')")

    for tab, selector in [("Semantic groups", "#groups img"), ("NMS", "#nms img"), ("Importance", "#importance img"),
                          ("Per-group budget", "#group-chart img"), ("Dynamic ratio", "#dynamic-chart img")]:
        page.get_by_role("tab", name=tab).click()
        page.wait_for_selector(selector)
        wait_idle(page)
        shot(page, tmp_path, "3-" + tab.lower().replace(" ", "-"))
    assert "φ" in text_of(page, "#dynamic-text") and "192" in text_of(page, "#dynamic-text")


def test_answers_and_labels_belong_to_what_is_on_screen(page, app_url, tmp_path):
    """Run on one example, then: the dynamic toggle relabels the budget and hides the answers; another
    example clears them; the question box changes them back to 'not run'."""
    page.goto(app_url)
    page.wait_for_selector("#run")
    page.get_by_text("What animal is this and what is it doing?").first.click()
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('64 of 577 tokens kept')")
    page.click("#run")
    page.wait_for_function("() => document.querySelector('#pruned-answer textarea').value.length > 0")
    wait_idle(page)
    page.check("#dynamic input[type=checkbox]")
    page.wait_for_function("() => document.querySelector('#budget-label').innerText.includes('for this image')")
    tokens = int(re.search(r"(\d+) tokens\s+for this image", text_of(page, "#budget-label")).group(1))
    assert f"{tokens} visual tokens" in text_of(page, "#pruned-head")
    assert page.input_value("#pruned-answer textarea") == "" and "Not run for this setting" in text_of(page, "#stale")
    page.uncheck("#dynamic input[type=checkbox]")
    page.wait_for_function("() => document.querySelector('#pruned-answer textarea').value.length > 0")
    page.fill("#question textarea", "Something else entirely?")
    page.wait_for_function("() => document.querySelector('#stale').innerText.includes('Not run for this question')")
    assert page.input_value("#pruned-answer textarea") == ""
    page.get_by_text("What drink is shown?").first.click()
    page.wait_for_function("() => document.querySelector('#stale').innerText.includes('Press Run')")
    page.wait_for_function("() => document.querySelector('#pruned-answer textarea').value === ''")
    assert page.input_value("#full-answer textarea") == ""
    wait_idle(page)
    shot(page, tmp_path, "6-new-example-clears-answers")


def test_bad_upload_shows_a_message_not_a_traceback(page, app_url, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#run")
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    page.set_input_files("#image input[type=file]", str(fake))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('not an image format')")
    body = page.inner_text("body")
    assert "Traceback" not in body
    shot(page, tmp_path, "4-bad-upload")


@pytest.mark.skipif(not (ASSETS / "pan_zoom.mp4").exists(), reason="assets/pan_zoom.mp4 is not in the checkout")
def test_video_shows_per_frame_overlays_and_budgets(page, app_url, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#run")
    page.get_by_role("tab", name="Video", exact=True).click()
    page.check("#dynamic input[type=checkbox]")
    page.set_input_files("#video input[type=file]", str(ASSETS / "pan_zoom.mp4"))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('frames sampled')")
    page.wait_for_selector("#gallery img")
    assert "frame 1" in text_of(page, "#summary")
    page.get_by_role("tab", name="Dynamic ratio").click()
    page.wait_for_selector("#frame-chart img")
    wait_idle(page)
    assert "share" in text_of(page, "#dynamic-text")
    shot(page, tmp_path, "5-video")


@pytest.mark.skipif(not (ASSETS / "pan_zoom.mp4").exists(), reason="assets/pan_zoom.mp4 is not in the checkout")
def test_compare_tab_compares_what_explore_shows(page, app_url, tmp_path):
    """An image was loaded first, then a video: Compare runs on the video's frames and says so."""
    page.goto(app_url)
    page.wait_for_selector("#run")
    page.set_input_files("#image input[type=file]", str(ASSETS / "cat.jpg"))
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('tokens kept')")
    page.get_by_role("tab", name="Video", exact=True).click()
    page.set_input_files("#video input[type=file]", str(ASSETS / "pan_zoom.mp4"))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('frames sampled')")
    page.get_by_role("tab", name="Compare methods").click()
    page.uncheck("#compare-answers input[type=checkbox]")
    page.click("#compare-run")
    page.wait_for_function("() => document.querySelector('#compare-status').innerText.includes('Compared on')")
    status = text_of(page, "#compare-status")
    assert "frames sampled from pan_zoom.mp4" in status and "cat.jpg" not in status
    wait_idle(page)
    shot(page, tmp_path, "7-compare-follows-video")


def test_the_part_of_the_picture_the_model_sees_is_shown_and_said(page, app_url, tmp_path):
    """A tall picture: LLaVA-1.5's processor keeps its middle square. The status line says so in
    words, and the 'On the original' view draws the cut on the whole picture."""
    from PIL import Image

    tall = tmp_path / "tall.png"
    Image.open(ASSETS / "cat.jpg").convert("RGB").resize((500, 3000)).save(tall)
    page.goto(app_url)
    page.wait_for_selector("#run")
    page.set_input_files("#image input[type=file]", str(tall))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('middle square')")
    assert "100% of its width × 17% of its height" in text_of(page, "#status")
    page.get_by_role("tab", name="On the original").click()
    page.wait_for_selector("#original img")
    wait_idle(page)
    size = page.evaluate("() => { const i = document.querySelector('#original img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    assert size[1] > size[0]  # the whole tall picture, not the square the tower sees
    shot(page, tmp_path, "8-on-the-original-tall")


def test_a_failed_model_switch_is_told_only_to_the_visitor_who_asked(page, app_url, tmp_path):
    """Two visitors: one types a model that cannot load; only that visitor's banner says why."""
    context, other = new_visitor(page.context.browser)
    try:
        page.goto(app_url)
        page.wait_for_selector("#run")
        box = page.locator("#model input")
        box.fill("no-such-org/no-such-model-xyz")
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#banner').innerText.includes('no-such-model-xyz')")
        other.goto(app_url)
        other.wait_for_selector("#run")
        other.wait_for_timeout(500)
        assert "no-such-model-xyz" not in other.inner_text("#banner")
        shot(page, tmp_path, "9-failed-switch-asker")
        shot(other, tmp_path, "9-failed-switch-other")
    finally:
        context.close()


def test_a_switch_by_one_visitor_is_seen_by_the_other_and_nothing_mixes(page, app_url, tmp_path, llava_pipeline):
    """Visitor B has a picture analysed; visitor A switches the model in the picker. B's page then
    names the new model, and B's next Run analyses the picture again with it and says so."""
    from studio.models import MANAGER

    context, other = new_visitor(page.context.browser)
    try:
        other.goto(app_url)
        other.wait_for_selector("#run")
        other.set_input_files("#image input[type=file]", str(ASSETS / "cat.jpg"))
        other.wait_for_function("() => document.querySelector('#summary').innerText.includes('tokens kept')")
        page.goto(app_url)
        page.wait_for_selector("#run")
        box = page.locator("#model input")
        box.fill("demo/tiny-llava-next")
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#banner').innerText.includes('demo/tiny-llava-next')")
        other.click("#run")
        other.wait_for_function("() => document.querySelector('#status').innerText.includes('encoded again')")
        other.wait_for_function("() => document.querySelector('#banner').innerText.includes('demo/tiny-llava-next')")
        other.wait_for_function("() => document.querySelector('#pruned-answer textarea').value.length > 0")
        assert "crops" in text_of(other, "#pruned-head")  # answered by the NeXT model, its counts
        other.wait_for_function("() => document.querySelector('#model input').value.includes('LLaVA-NeXT')")
        wait_idle(other)
        shot(other, tmp_path, "10-other-visitor-after-a-switch")
    finally:
        context.close()
        MANAGER.install(llava_pipeline)


def test_a_closed_tab_frees_its_analysis(page, app_url):
    """A visitor uploads a picture and closes the tab: the analysis (picture, features) is freed
    at once, not kept for an hour in case the tab is reopened."""
    import gc

    from studio.session import Analysis

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, Analysis) for o in gc.get_objects())

    context, visitor = new_visitor(page.context.browser)
    before = alive()
    visitor.goto(app_url)
    visitor.wait_for_selector("#run")
    visitor.set_input_files("#image input[type=file]", str(ASSETS / "coffee.jpg"))
    visitor.wait_for_function("() => document.querySelector('#summary').innerText.includes('tokens kept')")
    assert alive() > before
    context.close()
    for _ in range(50):
        if alive() <= before:
            break
        page.wait_for_timeout(200)
    assert alive() <= before


@pytest.mark.parametrize("model_id", ["demo/tiny-qwen2-vl", "demo/tiny-qwen2.5-vl"])
def test_qwen_demo_models_in_the_page(page, app_url, tmp_path, llava_pipeline, model_id):
    """Each Qwen demo from the picker: a wide picture on its own grid, answers with the kept count,
    then the video example as temporal patches."""
    from PIL import Image

    from studio.models import MANAGER

    wide = tmp_path / "wide.png"
    Image.open(ASSETS / "coffee.jpg").convert("RGB").resize((700, 300)).save(wide)
    try:
        page.goto(app_url)
        page.wait_for_selector("#run")
        box = page.locator("#model input")
        box.fill(model_id)
        box.press("Enter")
        page.wait_for_function(f"() => document.querySelector('#banner').innerText.includes('{model_id}')")
        page.set_input_files("#image input[type=file]", str(wide))
        page.wait_for_function("() => document.querySelector('#summary').innerText.includes('merged tokens kept')")
        assert "per 576 tokens" in text_of(page, "#budget-label")
        page.click("#run")
        page.wait_for_function("() => document.querySelector('#pruned-answer textarea').value.length > 0")
        kept = int(re.search(r"(\d+) of (\d+) merged tokens kept", text_of(page, "#summary")).group(1))
        assert f"{kept} visual tokens" in text_of(page, "#pruned-head")
        page.get_by_role("tab", name="Semantic groups").click()
        page.wait_for_selector("#groups img")
        wait_idle(page)
        shot(page, tmp_path, f"11-{model_id.split('/')[-1]}-image")
        page.get_by_role("tab", name="Video", exact=True).click()
        page.set_input_files("#video input[type=file]", str(ASSETS / "pan_zoom.mp4"))
        page.wait_for_function("() => document.querySelector('#status').innerText.includes('frames sampled')")
        page.wait_for_selector("#gallery img")
        assert "temporal patch" in text_of(page, "#budget-label")
        wait_idle(page)
        shot(page, tmp_path, f"11-{model_id.split('/')[-1]}-video")
        # Inside the LLM on the clip: FastV runs on the 3-D positions, PyramidDrop is said not to.
        text, table = run_inside_the_llm(page, "64")
        assert "PyramidDrop does not run" in text
        assert "PruneSID + FastV 64" in table and "PyramidDrop" not in table
        shot(page, tmp_path, f"11-{model_id.split('/')[-1]}-inside-the-llm")
        page.get_by_role("tab", name="Explore PruneSID").click()
    finally:
        MANAGER.install(llava_pipeline)


def test_inside_the_llm_runs_on_the_visitors_picture(page, app_url, tmp_path):
    """Compare → Inside the LLM: the combination study on the uploaded picture, its plot and table."""
    page.goto(app_url)
    page.wait_for_selector("#run")
    page.set_input_files("#image input[type=file]", str(ASSETS / "coffee.jpg"))
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('tokens kept')")
    text, table = run_inside_the_llm(page, "64, 16")
    assert "coffee.jpg" in text and "2 decoder layers" in text
    assert "PruneSID + PyramidDrop 16" in table and "64 → 32 (after layer 1)" in table
    assert page.locator("#inllm-plot img, #inllm-plot canvas, #inllm-plot svg").count() > 0
    shot(page, tmp_path, "12-inside-the-llm")
