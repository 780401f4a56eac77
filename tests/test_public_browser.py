"""The app as a visitor of a public ZeroGPU Space sees it, in a real browser (Debian's chromium via
Playwright, offline).

``python app.py`` is started as a Hugging Face ZeroGPU Space starts it (``SPACE_ID``,
``SYSTEM=spaces``, ``SPACES_ZERO_GPU``; ``tests/zerogpu/spaces`` forks a process per GPU call and
logs each one), once with the tiny random demo model and once with the real-feature DINOv2 demo.
A new visitor at 1400 × 1000:

1. opens the page: it lands on the first example (the cat) analysed at K = 64 (one GPU call), with
   Run in view; the picker shows the owner's model and cannot be changed; the banner says what the
   demo model's pictures and answers mean;
2. uploads another picture (one GPU call), presses Run (one), moves the budget with a preset (none:
   the views follow, both answers stay, the pruned one headed as made with 64 tokens, and the
   answers are marked "not run for this setting");
3. opens every view tab (none) and runs the Compare methods tab (one);
4. (the GPU calls of steps 1 to 3 are counted from the stand-in's log);
5. a second visitor on the same server lands on the same example (no GPU call: its features are
   cached) and sees the owner's model and nothing of the first visitor's.

A phone-size visitor (390 × 844) repeats steps 1 and 2. Full-page screenshots of every step go to
pytest's tmp folder and are copied to /tmp/public_walk/ (``<model>-<step>.png``) for a person to
look at.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
from conftest import BROWSER_MARKS, CHROMIUM  # noqa: E402

SCREENS = Path("/tmp/public_walk")

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def _dinov2_missing() -> str | None:
    from prunesid_vlm.dinov2_demo import WHEEL, available

    return None if available() else f"the real-feature demo needs {WHEEL} (in requirements.txt)"


# (short name, PRUNESID_MODEL, what the disabled picker reads, what the banner must say)
MODELS = {
    "tiny": ("demo/tiny-llava-1.5", "Offline demo: tiny LLaVA-1.5, random weights",
             ("demo/tiny-llava-1.5", "not meaningful")),
    "dinov2": ("demo/dinov2-small-llava", "Offline demo: real DINOv2-small image features, random language model",
               ("demo/dinov2-small-llava", "groups, kept tokens, importance and φ are meaningful, answers are not")),
}
TABLE_ROWS = "Number(document.querySelector('#compare-table [role=grid]').getAttribute('aria-rowcount'))"
"""The Compare table's row count, header included (Gradio 6's Dataframe draws its rows virtually)."""
CAT_QUESTION = "What animal is this and what is it doing?"
QUESTION = "Which drink is in the cup?"
"""The first visitor's own question (the second visitor must not see it)."""
MD = "(s) => document.querySelector(s + ' [data-testid=markdown]')?.innerText.trim() ?? ''"
"""A Markdown component's text alone (its innerText also holds the progress overlay while it works)."""
VIEW_TABS = [("Kept tokens", "#kept img"), ("On the original", "#original img"), ("Semantic groups", "#groups img"),
             ("NMS", "#nms img"), ("Importance", "#importance img"), ("Per-group budget", "#group-chart img"),
             ("Dynamic ratio", "#dynamic-chart img")]


# ---- the Space ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=list(MODELS))
def space(request, tmp_path_factory, demo_cache):
    """``python app.py`` as a ZeroGPU Space runs it, on loopback, with one demo model; yields
    (short model name, url, GPU-call log path, server log path)."""

    name = request.param
    if name == "dinov2" and (why := _dinov2_missing()):
        pytest.skip(why)
    model = MODELS[name][0]
    for old in SCREENS.glob(f"{name}-*"):  # this walk's screenshots from an earlier run
        old.unlink()
    from tests.zerogpu_space import zerogpu_space

    with zerogpu_space(tmp_path_factory.mktemp(f"public-{name}"), model, demo_cache) as (url, log, server_log):
        yield name, url, log, server_log


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


# ---- helpers -----------------------------------------------------------------------------------
def new_visitor(browser, width: int = 1400, height: int = 1000):
    """A fresh browser context (its own cookies, its own Gradio session) and its page: one more
    visitor. Nothing may leave the machine; page errors are collected on ``page.problems``."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.problems = []
    page.console_errors = []

    def block(route):
        page.console_errors.append(f"(blocked, not local) {route.request.method} {route.request.url}")
        route.abort()

    context.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"), block)
    page.on("pageerror", lambda err: page.problems.append(f"page error: {err}"))
    page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
    return context, page


def gpu_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text])


def md(page, selector: str) -> str:
    return page.evaluate(MD, selector)


def answers(page) -> tuple[str, str]:
    return page.input_value("#full-answer textarea"), page.input_value("#pruned-answer textarea")


def wait_idle(page) -> None:
    """Until no component shows Gradio's "processing" overlay and the layout has settled."""
    page.wait_for_timeout(200)
    page.wait_for_function("() => !document.body.innerText.includes('processing |')")
    page.wait_for_timeout(150)


def no_error_on_screen(page) -> None:
    """No error toast, no traceback, no page error."""
    errors = page.locator(".toast-body.error").all_inner_texts()
    assert not errors, f"error toasts: {errors}"
    assert "Traceback" not in page.inner_text("body")
    assert not page.problems, page.problems


def shot(page, tmp_path: Path, model: str, step: str) -> Path:
    """A full-page screenshot of ``step``, also copied to /tmp/public_walk/; the browser console's
    errors so far go beside it (``<model>-console.txt``), for a person to read."""
    no_error_on_screen(page)
    path = tmp_path / f"{model}-{step}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / path.name)
    if page.console_errors:
        with open(SCREENS / f"{model}-console.txt", "a") as f:
            f.writelines(f"{step}: {line}\n" for line in page.console_errors)
        page.console_errors.clear()
    return path


def open_page_as_owner_set_it(page, url: str, model: str) -> None:
    """Step 1: the page lands on the cat example analysed at K = 64 (no answers yet); the picker
    names the owner's model and cannot be changed; the banner says what it means."""
    page.goto(url)
    page.wait_for_selector("#run")
    page.wait_for_function(f"() => ({MD})('#summary').startsWith('64 tokens kept: CLS + 63 of 576 patches')")
    page.wait_for_selector("#kept img")
    assert "/cat.jpg" in page.eval_on_selector("#image img", "i => i.src")
    assert page.input_value("#question textarea") == CAT_QUESTION
    assert "K = 64 → 64 of 576 visual tokens" in text_of(page, "#budget-label")
    assert answers(page) == ("", "") and "Press Run" in text_of(page, "#stale")
    picker = page.locator("#model input")
    _, label, banner_says = MODELS[model]
    page.wait_for_function("(v) => document.querySelector('#model input').value === v", arg=label)
    assert picker.is_disabled() and not picker.is_editable()
    assert "chosen by this Space's owner" in text_of(page, "#model")
    banner = text_of(page, "#banner")
    for words in banner_says:
        assert words in banner, banner


def first_screen_shows_run(page) -> None:
    """At 1400 × 1000 the analysed example and Run are on the first screen, without scrolling."""
    height = page.viewport_size["height"]
    for selector in ("#run", "#kept img", "#summary"):
        box = page.locator(selector).bounding_box()
        assert box is not None and 0 <= box["y"] and box["y"] + box["height"] <= height, (selector, box)


def upload_run_and_preset(page, log: Path) -> dict[str, int]:
    """Step 2 (after step 1): upload another picture than the landing cat, ask, Run. Returns the
    GPU calls of each."""
    calls = {}
    before = len(gpu_calls(log))
    old_pictures, old_summary = kept_pictures(page), md(page, "#summary")
    page.set_input_files("#image input[type=file]", str(ASSETS / "coffee.jpg"))
    page.wait_for_function("(old) => { const now = [...document.querySelectorAll('#kept img')].map(i => i.src);"
                           " return now.length > 0 && now.some(src => !old.includes(src)); }", arg=old_pictures)
    page.wait_for_function(f"(old) => {{ const t = ({MD})('#summary'); return t !== '' && t !== old; }}",
                           arg=old_summary)
    assert md(page, "#summary").startswith("64 tokens kept: CLS + 63 of 576 patches")
    wait_idle(page)
    calls["upload"] = len(gpu_calls(log)) - before

    before = len(gpu_calls(log))
    page.fill("#question textarea", QUESTION)
    page.click("#run")
    page.wait_for_function("() => ['#full-answer', '#pruned-answer'].every("
                           "s => document.querySelector(s + ' textarea').value.length > 0)"
                           " && document.querySelector('#fidelity').innerText.includes('Fidelity')")
    assert "576 visual tokens" in text_of(page, "#full-head") and "64 visual tokens" in text_of(page, "#pruned-head")
    assert text_of(page, "#stale").strip() == ""
    wait_idle(page)
    calls["run"] = len(gpu_calls(log)) - before
    return calls


def kept_pictures(page) -> list[str]:
    return page.eval_on_selector_all("#kept img", "imgs => imgs.map(i => i.src)")


def move_to_preset_128(page, log: Path) -> int:
    """Step 2, the budget: the views follow (a new kept-tokens picture); the answer with all tokens
    stays (it does not depend on K), the pruned one stays headed as made with 64 tokens, not passed
    off as the answer for 128. Returns the GPU calls it made."""
    before, pictures, said = len(gpu_calls(log)), kept_pictures(page), answers(page)
    page.click("#preset-128")
    page.wait_for_function(f"() => ({MD})('#summary').startsWith('128 tokens kept: CLS + 127 of 576 patches')")
    page.wait_for_function("(old) => { const now = [...document.querySelectorAll('#kept img')].map(i => i.src);"
                           " return now.length > 0 && now.some(src => !old.includes(src)); }", arg=pictures)
    wait_for_text(page, "#budget-label", "K = 128 → 128 of 576 visual tokens to the language model (22.2 %, 4.5× fewer)")
    wait_for_text(page, "#status", "Selected again from cached features")
    assert "128 visual tokens handed over" in text_of(page, "#status")
    wait_for_text(page, "#stale", "Not run for this setting")
    assert "made with 64 tokens" in text_of(page, "#stale")
    assert answers(page) == said
    assert "576 visual tokens" in text_of(page, "#full-head")
    assert "PruneSID · ⚠ made with 64 visual tokens, not this setting's" in text_of(page, "#pruned-head")
    wait_idle(page)
    return len(gpu_calls(log)) - before


# ---- the walks ---------------------------------------------------------------------------------
def test_a_visitor_walks_the_public_space(space, browser, tmp_path):
    model, url, log, server_log = space
    context, page = new_visitor(browser)
    try:
        # 1. The page as it opens: the landing example analysed (one crossing), Run in view.
        open_page_as_owner_set_it(page, url, model)
        wait_idle(page)
        first_screen_shows_run(page)
        calls = {"landing": len(gpu_calls(log))}
        shot(page, tmp_path, model, "1-open")

        # 2. Upload, Run, then the 128 preset.
        calls.update(upload_run_and_preset(page, log))
        shot(page, tmp_path, model, "2a-answers")
        full, pruned = answers(page)
        calls["preset"] = move_to_preset_128(page, log)
        shot(page, tmp_path, model, "2b-preset-128")

        # 3. Every view tab (drawn from the visitor's own analysis), then Compare methods.
        before = len(gpu_calls(log))
        for tab, selector in VIEW_TABS:
            page.get_by_role("tab", name=tab, exact=True).click()
            page.wait_for_selector(selector)
            wait_idle(page)
            assert md(page, "#summary").startswith("128 tokens kept")
            shot(page, tmp_path, model, "3-view-" + tab.lower().replace(" ", "-"))
        assert "φ" in text_of(page, "#dynamic-text")
        calls["views"] = len(gpu_calls(log)) - before

        before = len(gpu_calls(log))
        page.get_by_role("tab", name="Compare methods").click()
        page.click("#compare-run")
        wait_for_text(page, "#compare-status", "Compared on")
        page.wait_for_function(f"() => {TABLE_ROWS} >= 9")  # the header and 8 methods or more
        page.wait_for_selector("#compare-gallery img")
        wait_idle(page)
        table = text_of(page, "#compare-table")
        assert "PruneSID" in table and "DivPrune" in table, table
        assert "coffee.jpg" in text_of(page, "#compare-status")
        calls["compare"] = len(gpu_calls(log)) - before
        shot(page, tmp_path, model, "3-compare")

        # 4. What crossed onto the (stand-in) GPU, per action.
        assert calls == {"landing": 1, "upload": 1, "run": 1, "preset": 0, "views": 0, "compare": 1}, calls
        assert all(c["ok"] for c in gpu_calls(log)), gpu_calls(log)

        # 5. A second visitor on the same server: the landing example (its features cached: no
        # crossing), the owner's model, nothing of the first visitor's.
        other_context, other = new_visitor(browser)
        try:
            open_page_as_owner_set_it(other, url, model)
            wait_idle(other)
            assert other.locator("#compare-gallery img").count() == 0
            body = other.inner_text("body")
            assert "coffee.jpg" not in body and QUESTION not in body
            for answer in (full, pruned):
                assert answer.strip() not in body
            shot(other, tmp_path, model, "5-second-visitor")
            other.get_by_role("tab", name="Compare methods").click()
            wait_idle(other)
            assert other.evaluate(f"() => {TABLE_ROWS}") == 1  # the header row alone
            status = text_of(other, "#compare-status")  # empty, or a line saying how to start
            assert "Compared on" not in status and "coffee.jpg" not in status, status
            shot(other, tmp_path, model, "5-second-visitor-compare")
        finally:
            other_context.close()
        assert len(gpu_calls(log)) == 4  # the second visitor cost nothing
        assert "Traceback" not in page.inner_text("body")
        printed = server_log.read_text()
        assert "Traceback" not in printed, printed[-4000:]  # the server printed no traceback
        assert "ZeroGPU worker error" not in printed
    finally:
        context.close()


def test_a_phone_visitor_uploads_runs_and_moves_the_budget(space, browser, tmp_path):
    model, url, log, _ = space
    context, page = new_visitor(browser, 390, 844)
    try:
        before = len(gpu_calls(log))
        open_page_as_owner_set_it(page, url, model)
        wait_idle(page)
        shot(page, tmp_path, model, "phone-1-open")
        landing = len(gpu_calls(log)) - before
        calls = upload_run_and_preset(page, log)
        shot(page, tmp_path, model, "phone-2a-answers")
        calls["preset"] = move_to_preset_128(page, log)
        shot(page, tmp_path, model, "phone-2b-preset-128")
        # Run crosses once, the preset never. The landing and the upload cross once each, or not at
        # all when the server already holds the picture's features (the desktop walk came first).
        assert calls["run"] == 1 and calls["preset"] == 0 and calls["upload"] <= 1 and landing <= 1, (calls, landing)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px wide)"
    finally:
        context.close()
