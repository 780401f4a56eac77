"""The page in a real browser (Debian's chromium via Playwright, offline): a new visitor lands on
an analysed example; upload another picture, run, move the slider, open every view, and check that
the views and both answers appear and always belong to what is on screen.

Screenshots go to pytest's tmp folder and are copied to /tmp/app_screens/ for a person to look at.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Gradio's cache of its own (before the app is imported): the landing example is a file in that
# cache, and other servers on this machine sharing /tmp/gradio remove each other's files there
# when they stop (an upload of the same bytes lands on the same content-addressed path).
if "GRADIO_TEMP_DIR" not in os.environ:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="gradio-browser-tests-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

from conftest import BROWSER_MARKS, CHROMIUM  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SCREENS = Path("/tmp/app_screens")

pytestmark = BROWSER_MARKS
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


CAT_QUESTION = "What animal is this and what is it doing?"
MD = "(s) => document.querySelector(s + ' [data-testid=markdown]')?.innerText.trim() ?? ''"
"""A Markdown component's text alone (its innerText also holds the progress overlay while it works)."""


def md(page, selector: str) -> str:
    return page.evaluate(MD, selector)


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text])


def wait_for_md_change(page, selector: str, old: str) -> str:
    """Until the Markdown ``selector`` says something else than ``old`` (and not nothing); its new text."""
    page.wait_for_function(f"([s, old]) => {{ const t = ({MD})(s); return t !== '' && t !== old; }}",
                           arg=[selector, old])
    return md(page, selector)


def pictures(page, selector: str = "#kept img") -> list[str]:
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.src)")


def wait_for_new_pictures(page, old: list[str], selector: str = "#kept img") -> None:
    page.wait_for_function("([s, old]) => { const now = [...document.querySelectorAll(s)].map(i => i.src);"
                           " return now.length > 0 && now.some(src => !old.includes(src)); }", arg=[selector, old])


def answers(page) -> tuple[str, str]:
    return page.input_value("#full-answer textarea"), page.input_value("#pruned-answer textarea")


def wait_for_answers(page) -> tuple[str, str]:
    page.wait_for_function("() => ['#full-answer', '#pruned-answer'].every("
                           "s => document.querySelector(s + ' textarea').value.length > 0)"
                           " && document.querySelector('#fidelity').innerText.includes('Fidelity')")
    return answers(page)


def land(page, app_url) -> None:
    """A new visitor opens the page: it lands on the first example (the cat), analysed at K = 64."""
    page.goto(app_url)
    page.wait_for_selector("#run")
    page.wait_for_function(f"() => ({MD})('#summary').startsWith('64 tokens kept')")
    page.wait_for_selector("#kept img")
    wait_idle(page)


def upload(page, path: Path) -> str:
    """Upload another picture: waits until the views are of it (new kept-tokens picture, new
    summary); returns the new summary."""
    old_pictures, old_summary = pictures(page), md(page, "#summary")
    page.set_input_files("#image input[type=file]", str(path))
    wait_for_new_pictures(page, old_pictures)
    summary = wait_for_md_change(page, "#summary", old_summary)
    wait_idle(page)
    return summary


def test_a_new_visitor_lands_on_an_analysed_example(page, app_url, tmp_path):
    """The first screen (1400 × 1000, no scrolling) shows what the app is for: the cat example
    analysed at K = 64, its question asked, and Run in view; no answers before Run."""
    land(page, app_url)
    assert page.evaluate("() => window.scrollY") == 0
    assert "/cat.jpg" in page.eval_on_selector("#image img", "i => i.src")
    assert page.input_value("#question textarea") == CAT_QUESTION
    assert md(page, "#summary").startswith("64 tokens kept: CLS + 63 of 576 patches")
    assert "K = 64 → 64 of 576 visual tokens to the language model (11.1 %, 9.0× fewer)" in text_of(page, "#budget-label")
    assert "Press Run" in text_of(page, "#stale")
    assert answers(page) == ("", "")
    assert "64 visual tokens" in text_of(page, "#pruned-head")
    viewport = page.viewport_size
    for selector in ("#run", "#kept img", "#summary", "#examples"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["height"] > 0, selector
        assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], (selector, box)  # no scrolling
    assert page.locator(".toast-body.error").count() == 0
    path = tmp_path / "0-first-screen.png"
    page.screenshot(path=str(path))  # the viewport: what a visitor sees before scrolling
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)


def test_upload_run_slide_and_read_every_view(page, app_url, tmp_path):
    land(page, app_url)
    assert "not meaningful" in text_of(page, "#banner")  # the demo model says so

    # Another picture than the landing cat: new views, the same budget.
    summary = upload(page, ASSETS / "coffee.jpg")
    assert summary.startswith("64 tokens kept: CLS + 63 of 576 patches"), summary
    assert "/coffee.jpg" in page.eval_on_selector("#image img", "i => i.src")
    assert "K = 64 → 64 of 576 visual tokens" in text_of(page, "#budget-label")

    # A click on a patch of the kept-tokens picture explains it (504 px, 21 px per patch: the middle is row 13).
    assert "Click a patch" in md(page, "#patch-info")
    box = page.locator("#kept img").bounding_box()
    page.locator("#kept img").click(position={"x": box["width"] / 2, "y": box["height"] / 2})
    wait_for_text(page, "#patch-info", "Patch row 13, column 13 (patch 300)")
    info = md(page, "#patch-info")
    assert re.search(r"\b(kept|dropped)\b", info) and re.search(r"Group \d+ of \d+", info), info

    page.fill("#question textarea", "What is in the cup?")
    page.click("#run")
    full, pruned = wait_for_answers(page)
    assert "576 visual tokens" in text_of(page, "#full-head")
    assert "64 visual tokens" in text_of(page, "#pruned-head")
    assert re.search(r"× (faster|slower)", text_of(page, "#pruned-stats"))
    assert text_of(page, "#stale").strip() == ""
    # Where the answers differ, word by word (shown only when they do).
    # The answers and the diff come in one update, but the page draws them a moment apart.
    if full.split() != pruned.split():
        page.locator("#diff").wait_for(state="visible")
        assert "only with" in text_of(page, "#diff")
    else:
        wait_idle(page)
        assert not page.locator("#diff").is_visible()
    wait_idle(page)
    shot(page, tmp_path, "1-answers")

    # While the slider moves, the label says K as set; on release the views are selected again.
    page.fill("#budget input[type=number]", "128")
    wait_for_text(page, "#budget-label", "K = 128 (as the paper counts: per view, with the CLS where there is one) · release to select")
    assert md(page, "#summary").startswith("64 tokens kept")  # nothing selected before the release
    page.locator("#budget input[type=number]").press("Tab")  # blur = release
    page.wait_for_function(f"() => ({MD})('#summary').startsWith('128 tokens kept: CLS + 127 of 576 patches')")
    wait_for_text(page, "#budget-label",
                  "K = 128 → 128 of 576 visual tokens to the language model (22.2 %, 4.5× fewer)")
    assert re.search(r"Selected again from cached features in \d+ ms: 128 visual tokens handed over\.",
                     text_of(page, "#status")), text_of(page, "#status")
    wait_for_text(page, "#stale", "Not run for this setting")
    assert "made with 64 tokens" in text_of(page, "#stale")
    # The answer with all tokens does not depend on K: it stays. The pruned one stays, headed as 64 tokens'.
    assert answers(page) == (full, pruned)
    assert "576 visual tokens" in text_of(page, "#full-head")
    assert "PruneSID · ⚠ made with 64 visual tokens, not this setting's" in text_of(page, "#pruned-head")
    wait_idle(page)
    shot(page, tmp_path, "2-slider-128")

    # A preset button does the same.
    page.click("#preset-192")
    page.wait_for_function(f"() => ({MD})('#summary').startsWith('192 tokens kept')")
    assert "192 of 576 visual tokens" in text_of(page, "#budget-label")
    assert answers(page) == (full, pruned)

    # The before/after handle, folded under the kept tokens.
    page.get_by_text("Before / after: drag the handle").click()
    page.wait_for_selector("#kept-slider img")
    wait_idle(page)
    shot(page, tmp_path, "3-kept-tokens-before-after")

    for tab, selector in [("On the original", "#original img"), ("Semantic groups", "#groups img"),
                          ("NMS", "#nms img"), ("Importance", "#importance img"),
                          ("Per-group budget", "#group-chart img"), ("Dynamic ratio", "#dynamic-chart img")]:
        page.get_by_role("tab", name=tab, exact=True).click()
        page.wait_for_selector(selector)
        wait_idle(page)
        if tab == "NMS":  # τ = (192/32)·ρ is above 1 here: the view says NMS does nothing
            assert "NMS does nothing at this budget" in md(page, "#nms-note"), md(page, "#nms-note")
        shot(page, tmp_path, "3-" + tab.lower().replace(" ", "-"))
    assert "φ" in text_of(page, "#dynamic-text") and "192" in text_of(page, "#dynamic-text")
    assert md(page, "#summary").startswith("192 tokens kept")


def test_answers_and_labels_belong_to_what_is_on_screen(page, app_url, tmp_path):
    """An example thumbnail sets its picture and its question; after Run: the dynamic toggle
    relabels the budget and keeps both answers, headed as another setting's; another question
    empties them; another example clears them."""
    land(page, app_url)
    old_pictures, old_summary = pictures(page), md(page, "#summary")
    page.locator("#examples .gallery-item").nth(2).click()  # the coffee
    page.wait_for_function("() => document.querySelector('#question textarea').value === 'What drink is shown?'")
    wait_for_new_pictures(page, old_pictures)
    wait_for_md_change(page, "#summary", old_summary)
    assert "/coffee.jpg" in page.eval_on_selector("#image img", "i => i.src")
    wait_idle(page)
    page.click("#run")
    full, pruned = wait_for_answers(page)
    wait_idle(page)

    page.check("#dynamic input[type=checkbox]")
    wait_for_text(page, "#budget-label", "for this image")
    label = text_of(page, "#budget-label")
    given, handed = map(int, re.search(r"K = 64, dynamic ratio: (\d+) for this image → (\d+) of 576 visual tokens",
                                       label).groups())
    assert given == handed, label
    page.wait_for_function(f"(n) => ({MD})('#summary').startsWith(n + ' tokens kept')", arg=str(handed))
    wait_for_text(page, "#stale", "Not run for this setting")
    assert "made with 64 visual tokens, not this setting's" in text_of(page, "#pruned-head")
    assert answers(page) == (full, pruned)  # both kept, the pruned one headed as 64 tokens'
    page.uncheck("#dynamic input[type=checkbox]")
    page.wait_for_function("() => document.querySelector('#stale').innerText.trim() === ''")
    assert "PruneSID · 64 visual tokens" in text_of(page, "#pruned-head") and answers(page) == (full, pruned)

    # Another question: neither answer is passed off as its answer.
    page.fill("#question textarea", "Something else entirely?")
    wait_for_text(page, "#stale", "Not run for this question")
    assert answers(page) == ("", "")

    # Answers for that question, then another example: its picture and question, no answers.
    page.click("#run")
    wait_for_answers(page)
    wait_idle(page)
    old_pictures, old_summary = pictures(page), md(page, "#summary")
    page.locator("#examples .gallery-item").nth(1).click()  # the astronaut
    page.wait_for_function("() => document.querySelector('#question textarea').value === 'What is the person wearing?'")
    wait_for_new_pictures(page, old_pictures)
    wait_for_md_change(page, "#summary", old_summary)
    wait_for_text(page, "#stale", "Press Run")
    page.wait_for_function("() => ['#full-answer', '#pruned-answer'].every("
                           "s => document.querySelector(s + ' textarea').value === '')")
    page.locator("#diff").wait_for(state="hidden")
    wait_idle(page)
    shot(page, tmp_path, "6-new-example-clears-answers")


def test_bad_upload_shows_a_message_not_a_traceback(page, app_url, tmp_path):
    land(page, app_url)
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    page.set_input_files("#image input[type=file]", str(fake))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('not an image format')")
    body = page.inner_text("body")
    assert "Traceback" not in body
    shot(page, tmp_path, "4-bad-upload")


def test_a_tiny_picture_is_warned_and_a_removed_one_clears_the_page(page, app_url, tmp_path):
    """A 20 × 20 px picture is analysed with a warning that the model sees it enlarged about 17×;
    removing the picture empties every view and answer (nothing may belong to a picture that is gone)."""
    from PIL import Image

    tiny = tmp_path / "tiny.png"
    Image.open(ASSETS / "coffee.jpg").convert("RGB").resize((20, 20)).save(tiny)
    land(page, app_url)
    upload(page, tiny)
    wait_for_text(page, "#status", "enlarged about 17×")
    status = text_of(page, "#status")
    assert status.startswith("⚠") and "20×20 px" in status, status
    assert md(page, "#summary").startswith("64 tokens kept")
    page.click("#run")
    wait_for_answers(page)
    wait_idle(page)
    shot(page, tmp_path, "4-tiny-picture")

    page.click("#image button[aria-label='Remove Image']")
    wait_for_text(page, "#status", "The image was removed")
    page.wait_for_function(f"() => ({MD})('#summary').includes('Upload an image or pick an example')")
    page.wait_for_function("() => document.querySelectorAll('#kept img').length === 0")
    assert answers(page) == ("", "")
    assert "Press Run" in text_of(page, "#stale")
    assert text_of(page, "#budget-label").startswith("K = 64")  # the slider is left as it was
    wait_idle(page)
    shot(page, tmp_path, "4-picture-removed")


@pytest.mark.skipif(not (ASSETS / "pan_zoom.mp4").exists(), reason="assets/pan_zoom.mp4 is not in the checkout")
def test_video_shows_per_frame_overlays_and_budgets(page, app_url, tmp_path):
    land(page, app_url)
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
    assert page.eval_on_selector("#video video", "v => v.src").endswith(".mp4")  # H.264 plays as it is
    shot(page, tmp_path, "5-video")


def test_a_clip_browsers_cannot_play_gets_a_playable_preview(page, app_url, tmp_path):
    """An MPEG-4 Part 2 ('mp4v') clip: the model reads its frames, the player gets a VP8 WebM
    preview (browsers show mp4v as 'Video not playable'), and the status says so."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    clip = tmp_path / "mp4v.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for i in range(20):
        frame = np.zeros((120, 160, 3), np.uint8)
        frame[:, : 8 * i] = (40, 160, 220)
        writer.write(frame)
    writer.release()
    land(page, app_url)
    page.get_by_role("tab", name="Video", exact=True).click()
    page.set_input_files("#video input[type=file]", str(clip))
    wait_for_text(page, "#status", "frames sampled")
    assert "cannot play this clip's codec" in text_of(page, "#status")  # OpenCV tags mp4v clips 'FMP4'
    page.wait_for_function("() => { const v = document.querySelector('#video video');"
                           " return v && v.src.endsWith('.webm') && v.readyState >= 1 && v.videoWidth > 0; }")
    page.wait_for_selector("#gallery img")
    wait_idle(page)
    shot(page, tmp_path, "5-video-mp4v-preview")


@pytest.mark.skipif(not (ASSETS / "pan_zoom.mp4").exists(), reason="assets/pan_zoom.mp4 is not in the checkout")
def test_compare_tab_compares_what_explore_shows(page, app_url, tmp_path):
    """An image was loaded first, then a video: Compare runs on the video's frames and says so."""
    land(page, app_url)
    upload(page, ASSETS / "coffee.jpg")
    page.get_by_role("tab", name="Video", exact=True).click()
    page.set_input_files("#video input[type=file]", str(ASSETS / "pan_zoom.mp4"))
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('frames sampled')")
    page.get_by_role("tab", name="Compare methods").click()
    page.uncheck("#compare-answers input[type=checkbox]")
    page.click("#compare-run")
    page.wait_for_function("() => document.querySelector('#compare-status').innerText.includes('Compared on')")
    status = text_of(page, "#compare-status")
    assert "frames sampled from pan_zoom.mp4" in status and "coffee.jpg" not in status
    wait_idle(page)
    shot(page, tmp_path, "7-compare-follows-video")


def test_the_part_of_the_picture_the_model_sees_is_shown_and_said(page, app_url, tmp_path):
    """A tall picture: LLaVA-1.5's processor keeps its middle square. The status line says so in
    words, and the 'On the original' view draws the cut on the whole picture."""
    from PIL import Image

    tall = tmp_path / "tall.png"
    Image.open(ASSETS / "cat.jpg").convert("RGB").resize((500, 3000)).save(tall)
    land(page, app_url)  # the landing cat is cut too (its middle square, 67% of its width)
    upload(page, tall)
    wait_for_text(page, "#status", "100% of its width × 17% of its height")
    assert "middle square" in text_of(page, "#status")
    page.get_by_role("tab", name="On the original").click()
    page.wait_for_selector("#original img")
    # the whole tall picture, not the square the tower sees
    page.wait_for_function("() => { const i = document.querySelector('#original img');"
                           " return i && i.complete && i.naturalHeight > i.naturalWidth; }")
    wait_idle(page)
    shot(page, tmp_path, "8-on-the-original-tall")


def test_a_failed_model_switch_is_told_only_to_the_visitor_who_asked(page, app_url, tmp_path):
    """Two visitors: one types a model that cannot load; only that visitor's banner says why."""
    context, other = new_visitor(page.context.browser)
    try:
        land(page, app_url)
        box = page.locator("#model input")
        box.fill("no-such-org/no-such-model-xyz")
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#banner').innerText.includes('no-such-model-xyz')")
        land(other, app_url)
        assert "no-such-model-xyz" not in other.inner_text("#banner")
        shot(page, tmp_path, "9-failed-switch-asker")
        shot(other, tmp_path, "9-failed-switch-other")
    finally:
        context.close()


def test_a_switch_by_one_visitor_is_seen_by_the_other_and_nothing_mixes(page, app_url, tmp_path, llava_pipeline):
    """Visitor B has a picture analysed; visitor A switches the model in the picker. B's page then
    names the new model, and B's next Run analyses the picture again with it and says so."""
    from prunesid_vlm.serving import MANAGER

    context, other = new_visitor(page.context.browser)
    try:
        land(other, app_url)
        upload(other, ASSETS / "coffee.jpg")
        land(page, app_url)
        box = page.locator("#model input")
        box.fill("demo/tiny-llava-next")
        box.press("Enter")
        page.wait_for_function("() => document.querySelector('#banner').innerText.includes('demo/tiny-llava-next')")
        other.click("#run")
        other.wait_for_function("() => document.querySelector('#status').innerText.includes('encoded again')")
        other.wait_for_function("() => document.querySelector('#banner').innerText.includes('demo/tiny-llava-next')")
        other.wait_for_function("() => document.querySelector('#pruned-answer textarea').value.length > 0")
        assert "crops" in text_of(other, "#pruned-head")  # answered by the NeXT model, its counts
        assert "/coffee.jpg" in other.eval_on_selector("#image img", "i => i.src")  # B's own picture
        other.wait_for_function("() => document.querySelector('#model input').value.includes('LLaVA-NeXT')")
        wait_idle(other)
        shot(other, tmp_path, "10-other-visitor-after-a-switch")
    finally:
        context.close()
        MANAGER.install(llava_pipeline)


def test_a_closed_tab_frees_its_analysis(page, app_url):
    """A visitor uploads a picture and closes the tab: the analysis (picture, features) is freed
    at once, not kept for an hour in case the tab is reopened. Only this visitor's analyses are
    followed (by weak reference): another tab's job finishing meanwhile makes analyses of its own."""
    import gc
    import weakref

    from studio.session import Analysis

    def analyses() -> list:
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, Analysis)]

    context, visitor = new_visitor(page.context.browser)
    before = {id(o) for o in analyses()}
    land(visitor, app_url)  # the landing example is analysed for this visitor too
    upload(visitor, ASSETS / "coffee.jpg")
    mine = [weakref.ref(o) for o in analyses()
            if id(o) not in before and Path(str(o.source)).name in ("coffee.jpg", "cat.jpg")]
    assert any(Path(str(r().source)).name == "coffee.jpg" for r in mine)
    context.close()
    for _ in range(50):
        gc.collect()
        if all(r() is None for r in mine):
            break
        page.wait_for_timeout(200)
    assert all(r() is None for r in mine), [r().source for r in mine if r() is not None]


@pytest.mark.parametrize("model_id", ["demo/tiny-qwen2-vl", "demo/tiny-qwen2.5-vl"])
def test_qwen_demo_models_in_the_page(page, app_url, tmp_path, llava_pipeline, model_id):
    """Each Qwen demo from the picker: a wide picture on its own grid, answers with the kept count,
    then the video example as temporal patches."""
    from PIL import Image

    from prunesid_vlm.serving import MANAGER

    wide = tmp_path / "wide.png"
    Image.open(ASSETS / "coffee.jpg").convert("RGB").resize((700, 300)).save(wide)
    try:
        land(page, app_url)
        box = page.locator("#model input")
        box.fill(model_id)
        box.press("Enter")
        page.wait_for_function(f"() => document.querySelector('#banner').innerText.includes('{model_id}')")
        # The switch analyses the landing cat again with the new model, on its own grid.
        page.wait_for_function(f"() => ({MD})('#summary').includes('merged tokens kept')")
        wait_idle(page)
        cat_grid = re.search(r"\((\d+) × (\d+) grid", md(page, "#summary")).groups()
        summary = upload(page, wide)
        grid = re.search(r"\((\d+) × (\d+) grid", summary).groups()
        assert grid != cat_grid and int(grid[1]) > int(grid[0]), (cat_grid, grid)  # wide: more columns than rows
        assert "per 576 tokens" in text_of(page, "#budget-label")
        page.click("#run")
        wait_for_answers(page)
        kept = int(re.search(r"(\d+) of (\d+) merged tokens kept", md(page, "#summary")).group(1))
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
    land(page, app_url)
    upload(page, ASSETS / "coffee.jpg")
    text, table = run_inside_the_llm(page, "64, 16")
    assert "coffee.jpg" in text and "2 decoder layers" in text
    assert "PruneSID + PyramidDrop 16" in table and "64 → 32 (after layer 1)" in table
    assert page.locator("#inllm-plot img, #inllm-plot canvas, #inllm-plot svg").count() > 0
    shot(page, tmp_path, "12-inside-the-llm")
