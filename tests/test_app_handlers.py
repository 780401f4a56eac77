"""The app's handlers on the tiny offline demo model: views, answers, the /analyze JSON, and
that bad input gives a message, never an exception."""
from __future__ import annotations

import dataclasses
import json
import re
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio import handlers as H  # noqa: E402
from studio import views as V  # noqa: E402
from studio.errors import GENERIC_ERROR  # noqa: E402
from prunesid_vlm.serving import MANAGER, ModelManager  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CAT = str(ASSETS / "cat.jpg")
VIDEO = ASSETS / "pan_zoom.mp4"


@pytest.fixture(scope="module", autouse=True)
def demo_model(llava_pipeline):
    """The app's model holder uses the session's demo pipeline (no second load)."""
    MANAGER.install(llava_pipeline)
    return llava_pipeline


def prepare(path=CAT, budget=64, dynamic=False, kind="image"):
    image, video = (path, None) if kind == "image" else (None, path)
    out = H.on_prepare(kind, image, video, budget, dynamic, 1, None, progress=H._no_progress)
    return dict(zip(H.VIEW_KEYS, out))


@pytest.fixture(scope="module")
def cat():
    out = prepare()
    assert out["state"] is not None, out["status"]
    return out


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value


# ---- inputs are checked with readable messages --------------------------------------------------
@pytest.mark.parametrize("bad", [1, 578, 10_000, -5, 64.5, "abc", None, float("nan")])
def test_out_of_range_or_odd_budgets_are_refused_with_a_message(bad):
    with pytest.raises(ValueError, match="budget"):
        H.check_budget(bad)


@pytest.mark.parametrize("good, k", [(2, 2), (64, 64), (64.0, 64), ("128", 128), (577, 577)])
def test_budgets_in_range_are_accepted(good, k):
    assert H.check_budget(good) == k


@pytest.mark.parametrize("bad", ["", "   ", None, "x" * (H.MAX_QUESTION_CHARS + 1)])
def test_empty_or_huge_questions_are_refused(bad):
    with pytest.raises(ValueError, match="question"):
        H.check_question(bad)


def test_the_moving_slider_names_k_and_claims_no_count():
    """While the slider moves nothing is selected yet: the label says K, not what is handed over."""
    assert V.budget_label(64).startswith("K = 64 (as the paper counts") and "compression" not in V.budget_label(64)


def test_every_line_names_the_tokens_handed_over(cat):
    """The budget line, the status, the summary and the answers' headers give one count: what the
    selection on screen hands the language model (the dynamic ratio's, not the nominal K)."""
    for dynamic in (False, True):
        out = dict(zip(H.VIEW_KEYS, H.on_reselect(cat["state"], 64, dynamic, 1, "image", None, None, "kept")))
        handed = H.token_counts(out["state"].feats, out["state"].selection).total
        assert handed == int(out["state"].selection.num_tokens.sum())
        assert f"**{handed} of 576 visual tokens**" in out["budget_label"]
        assert f"{handed} visual tokens handed over" in out["status"]
        assert f"**{handed} tokens kept**" in out["summary"] and f"{handed - 1} of 576 patches" in out["summary"]
        assert out["pruned_head"] == f"#### PruneSID · {handed} visual tokens"
        ratio = 576 / handed
        assert f"{ratio:.1f}× fewer" in out["budget_label"]


# ---- views -------------------------------------------------------------------------------------
def test_upload_draws_every_view(cat):
    assert cat["status"].startswith("✓")
    assert "**64 tokens kept**: CLS + 63 of 576 patches" in cat["summary"]
    original, kept = cat["kept_slider"]
    assert Path(original).exists() and Path(kept).exists() and original != kept and cat["kept"] == kept
    assert Image.open(kept).size == (V.DISPLAY, V.DISPLAY)
    groups = cat["groups"]
    base, annotations, colors = groups["value"]
    assert len(annotations) == int(cat["state"].selection.num_groups[0]) - int(
        (cat["state"].selection.group_size[0] == 0).sum())
    assert set(colors) == {label for _, label in annotations} and groups["color_map"] == colors
    assert all(m.shape == (V.DISPLAY, V.DISPLAY) for m, _ in annotations)
    for key in ("nms", "importance"):
        assert Path(cat[key]).exists()
    assert cat["group_chart"] is not None and cat["dynamic_chart"] is not None
    assert "Dynamic ratio off" in cat["dynamic_text"]
    assert cat["gallery"]["visible"] is False and cat["frame"]["visible"] is False


def test_slider_reselects_from_cached_features_and_redraws_only_the_visible_view(cat):
    state = cat["state"]
    out = dict(zip(H.VIEW_KEYS, H.on_reselect(state, 128, False, 1, "image", None, None, "nms")))
    assert "**128 tokens kept**" in out["summary"]
    assert int(out["state"].selection.num_tokens[0]) == 128
    assert Path(out["nms"]).exists()
    assert is_skip(out["kept"]) and is_skip(out["groups"]) and is_skip(out["group_chart"])
    assert out["state"].drawn == {"nms": (128, False, False, 0)}
    assert out["state"].feats is state.feats  # no new tower pass
    # Opening another tab draws it for the new budget, once.
    tab = H.on_tab("kept")(out["state"], 1)
    assert tab[0] == "kept"
    drawn = dict(zip(H.VIEW_KEYS, tab[1:]))
    assert Path(drawn["kept"]).exists()
    again = H.on_tab("kept")(drawn["state"], 1)
    assert all(is_skip(v) for v in again[1:])


def test_many_groups_are_pooled_in_the_legend(cat):
    out = dict(zip(H.VIEW_KEYS, H.on_reselect(cat["state"], 577, False, 1, "image", None, None, "groups")))
    _, annotations, colors = out["groups"]["value"]
    assert len(annotations) == V.MAX_GROUP_ANNOTATIONS
    assert "smaller groups" in annotations[-1][1] and colors[annotations[-1][1]] == V.OTHER_GROUPS_HEX
    assert "pooled" in out["groups_note"]


def test_dynamic_ratio_changes_the_budget_and_says_why(cat):
    out = dict(zip(H.VIEW_KEYS, H.on_reselect(cat["state"], 64, True, 1, "image", None, None, "dynamic")))
    state = out["state"]
    assert state.dynamic and len(state.budgets) == 1
    assert int(state.selection.num_tokens[0]) == state.budgets[0]
    assert "Dynamic ratio on" in out["dynamic_text"] and "φ_ref" in out["dynamic_text"]


def test_slider_before_any_upload_does_nothing():
    out = H.on_reselect(None, 100, False, 1, "image", None, None, "kept")
    assert all(is_skip(v) for v in out)


# ---- answers -----------------------------------------------------------------------------------
def test_run_answers_twice_side_by_side(cat):
    out = dict(zip(H.ANSWER_KEYS, H.on_answer(cat["state"], "What is this?", 64, False, 8,
                                              progress=H._no_progress)))
    assert out["full_head"] == "#### Full · 576 visual tokens"
    assert out["pruned_head"] == "#### PruneSID · 64 visual tokens"
    assert out["full_answer"] and out["pruned_answer"]
    assert "prefill" in out["full_stats"] and re.search(r"\d\.\d× (faster|slower)", out["pruned_stats"])
    assert "shorter" in out["pruned_stats"] and "median of 3" in out["pruned_stats"]
    assert "Fidelity" in out["fidelity"] and "nats" in out["fidelity"] and "Demo model" in out["fidelity"]
    assert out["stale"] == ""
    # Moving the slider afterwards flags the answers as made with another budget; the answer with all
    # tokens does not depend on K and stays, the pruned one stays too, headed as another K's.
    moved = dict(zip(H.VIEW_KEYS, H.on_reselect(out["state"], 100, False, 1, "image", None, None, "kept")))
    assert "made with 64 tokens" in moved["stale"]
    assert moved["full_answer"] == out["full_answer"] and moved["full_stats"] == out["full_stats"]
    assert moved["pruned_answer"] == out["pruned_answer"] and "made with 64 visual tokens" in moved["pruned_head"]
    assert moved["fidelity"] == "" and moved["diff"]["visible"] is False
    # Another question: neither answer is this question's.
    asked = dict(zip(H.ANSWER_PANEL + ("stale",), H.on_question(out["state"], "Something else?")))
    assert asked["full_answer"] == "" and asked["pruned_answer"] == ""


def test_the_first_token_rule_is_the_one_the_answers_were_decoded_with(cat):
    """'Same first token' is the answers' own first token (generation skips suppressed tokens), so it
    can never say 'no' beside 'whole answers: identical'."""
    out = dict(zip(H.ANSWER_KEYS, H.on_answer(cat["state"], "What is this?", 64, False, 8,
                                              progress=H._no_progress)))
    first_token_agrees = "Same first token: **yes**" in out["fidelity"]
    if "whole answers: **identical**" in out["fidelity"]:
        assert first_token_agrees
    pipe = MANAGER.current()
    result = H.answer(out["state"], "What is this?", pipe, 8)
    assert result.first_token_agrees == (result.full_tokens[:1] == result.pruned_tokens[:1])
    assert result.timings["pruned"]["selection_s"] > 0  # the selection on screen, timed when it was made


def test_answer_differences_are_marked_word_by_word():
    items = H.answer_diff("a red cat on a mat", "a black cat on a mat")
    assert ("red ", H.DIFF_LABELS["-"]) in items and ("black ", H.DIFF_LABELS["+"]) in items
    assert "".join(t for t, label in items if label != H.DIFF_LABELS["+"]).split() == "a red cat on a mat".split()


def test_clicking_a_patch_tells_what_became_of_it(cat):
    state = cat["state"]
    sel = state.selection
    cell = V.DISPLAY / 24
    dropped = int((~sel.kept_patches[0]).nonzero()[0])
    suppressed = (sel.suppressed_by[0] >= 0).nonzero().flatten()
    for p in [dropped] + ([int(suppressed[0])] if len(suppressed) else []):
        evt = type("Evt", (), {"index": [(p % 24 + 0.5) * cell, (p // 24 + 0.5) * cell]})()
        text = H.on_patch(state, 1, evt)
        assert f"(patch {p})" in text and "dropped" in text and f"Group {int(sel.group[0, p]) + 1}" in text
        if int(sel.suppressed_by[0, p]) >= 0:
            by = int(sel.suppressed_by[0, p])
            assert f"near-duplicate of patch row {by // 24 + 1}, column {by % 24 + 1}" in text


def test_the_nms_view_says_when_nms_does_nothing(cat):
    low = dict(zip(H.VIEW_KEYS, H.on_reselect(cat["state"], 16, False, 1, "image", None, None, "nms")))
    high = dict(zip(H.VIEW_KEYS, H.on_reselect(cat["state"], 577, False, 1, "image", None, None, "nms")))
    assert float(high["state"].selection.tau[0]) >= 1 and "NMS does nothing at this budget" in high["nms_note"]
    if int((low["state"].selection.suppressed_by[0] >= 0).sum()):
        assert "near-duplicates" in low["nms_note"] and "does nothing" not in low["nms_note"]


def test_removing_the_picture_clears_every_view_and_answer(cat):
    out = dict(zip(("kind",) + H.VIEW_KEYS, H.on_media("image")(None, 64, False, cat["state"])))
    assert out["state"] is None and out["kept"] is None and out["full_answer"] == "" and "removed" in out["status"]


def test_a_tiny_picture_is_said_to_be_enlarged(tmp_path, demo_model):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(path)
    out = dict(zip(("kind",) + H.VIEW_KEYS, H.on_media("image")(str(path), 64, False, None)))
    assert out["status"].startswith("⚠") and "enlarged about 17×" in out["status"]


def test_the_slider_and_the_all_preset_follow_the_model(cat):
    assert cat["budget"]["maximum"] == 577 and cat["preset_all"]["value"] == "all 577"
    assert H.all_tokens(cat["state"])[0] == 577 and H.all_tokens(None)[0] == 577


@pytest.mark.parametrize("question", ["", "q" * 5000])
def test_bad_questions_give_a_message_not_an_exception(cat, question):
    out = dict(zip(H.ANSWER_KEYS, H.on_answer(cat["state"], question, 64, False, 8, progress=H._no_progress)))
    assert out["fidelity"].startswith("⚠") and "question" in out["fidelity"].lower()


def test_answer_without_upload_says_what_to_do():
    out = dict(zip(H.ANSWER_KEYS, H.on_answer(None, "What?", 64, False, 8, progress=H._no_progress)))
    assert "upload" in out["fidelity"]


def test_analyze_returns_json_with_selection_and_both_answers():
    result = H.analyze(CAT, "What is this?", 64, max_new_tokens=4)
    json.dumps(result)  # plain JSON types only
    assert result["model"]["id"] == "demo/tiny-llava-1.5" and result["model"]["is_demo"] is True
    assert result["budget"] == 64 and result["selection"][0]["num_tokens"] == 64
    assert len(result["selection"][0]["keep"]) == 64 and result["schema"] == "prunesid-result/1"
    assert result["full"]["visual_tokens"] == 576 and result["pruned"]["visual_tokens"] == 64
    assert {"first_token_kl_nats", "first_token_agrees", "same_answer"} <= set(result["fidelity"])
    assert any("not meaningful" in n for n in result["notes"])


# ---- bad media ---------------------------------------------------------------------------------
def _save(tmp_path, name, array=None, mode=None, **kw):
    path = tmp_path / name
    img = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    img.save(path, **kw)
    return str(path)


def test_corrupt_and_non_image_files_give_messages(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(Path(CAT).read_bytes()[:2000])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (text, truncated, empty, tmp_path / "missing.png"):
        out = prepare(str(path))
        assert out["state"] is None and out["status"].startswith("⚠"), path
        assert "Traceback" not in out["status"]


def test_awkward_images_are_converted_with_notes(tmp_path):
    rng = np.random.default_rng(0)
    gray = _save(tmp_path, "gray.png", (rng.random((200, 300)) * 255).astype(np.uint8))
    rgba_arr = (rng.random((200, 300, 4)) * 255).astype(np.uint8)
    rgba = _save(tmp_path, "rgba.png", rgba_arr)
    deep = tmp_path / "deep.png"
    Image.fromarray((rng.random((200, 300)) * 65535).astype(np.uint16)).save(deep)
    huge = _save(tmp_path, "huge.png", (rng.random((300, 4200, 3)) * 255).astype(np.uint8))
    rotated = tmp_path / "rotated.jpg"
    img = Image.open(CAT)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(rotated, exif=exif)
    expected = {gray: None, rgba: "Transparent", str(deep): "16-bit", huge: "reduced to", str(rotated): "EXIF"}
    for path, note in expected.items():
        out = prepare(path)
        assert out["state"] is not None, (path, out["status"])
        if note:
            assert note in out["status"], (path, out["status"])


def test_tiny_image_is_refused_politely(tmp_path):
    out = prepare(_save(tmp_path, "tiny.png", np.zeros((4, 4, 3), np.uint8)))
    assert out["state"] is None and "at least" in out["status"]


# ---- video -------------------------------------------------------------------------------------
@pytest.mark.skipif(not VIDEO.exists(), reason="assets/pan_zoom.mp4 is not in the checkout")
def test_video_samples_frames_and_shares_the_budget():
    out = prepare(str(VIDEO), budget=64, dynamic=True, kind="video")
    state = out["state"]
    assert state is not None, out["status"]
    assert 2 <= state.num_views <= H.MAX_FRAMES and "frames sampled" in out["status"]
    assert sum(state.budgets) == 64 * state.num_views
    assert out["gallery"]["visible"] and len(out["gallery"]["value"]) == state.num_views
    assert out["frame"]["visible"] and out["frame_chart"]["visible"]
    shown = dict(zip(H.VIEW_KEYS, H.on_view(state, 3, "kept")))
    assert "frame 3" in shown["summary"]
    chart = V.render(state, 0)["dynamic_chart"]
    assert chart.axes[0].get_title() == "How complex is this frame? Varied ones get more tokens"


def test_a_clip_browsers_cannot_play_gets_a_playable_preview_and_is_analysed_from_the_original(tmp_path,
                                                                                                 demo_model):
    import cv2

    path = tmp_path / "phone.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for t in range(20):
        writer.write(np.full((240, 320, 3), (t * 12, 80, 160), np.uint8))
    writer.release()
    out = H.on_media("video")(str(path), 64, False, None, progress=H._no_progress)
    views, preview = dict(zip(H.VIEW_KEYS, out[1:-1])), out[-1]
    codec = H.video_codec(str(path))  # MPEG-4 Part 2: OpenCV names it mp4v or fmp4
    assert codec in ("mp4v", "fmp4") and f"cannot play this clip's codec ({codec})" in views["status"]
    assert views["state"].source == str(path)
    assert preview.endswith(".webm") and H.video_codec(preview) in ("vp80", "vp08")
    # The player now holds the preview: its change event leaves the analysis alone, and Run
    # answers about the original.
    again = H.on_media("video")(preview, 64, False, views["state"], progress=H._no_progress)
    assert all(is_skip(v) for v in again[1:])
    rerun = dict(zip(H.VIEW_KEYS, H.on_prepare("video", None, preview, 64, False, 1, views["state"],
                                               progress=H._no_progress)))
    assert rerun["state"] is views["state"] or rerun["state"].source == str(path)
    # A clip browsers play gets no preview.
    if VIDEO.exists():
        assert H.on_media("video")(str(VIDEO), 64, False, None, progress=H._no_progress)[-1] is not None
        assert H.browser_preview(str(VIDEO), tmp_path) == (None, None)


def test_empty_video_gives_a_message(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    out = prepare(str(path), kind="video")
    assert out["state"] is None and "empty" in out["status"]


def test_media_cleared_before_any_analysis_keeps_the_page():
    out = H.on_media("image")(None, 64, False, None, progress=H._no_progress)
    assert out[0] == "image" and all(is_skip(v) for v in out[1:])


# ---- models and errors ----------------------------------------------------------------------------
def test_unloadable_model_falls_back_to_the_demo_with_a_banner(demo_cache):
    manager = ModelManager("no-such-org/no-such-model")
    pipe = manager.current()
    assert pipe.is_demo and manager.state.fallback_reason
    banner = H.banner_text(manager)
    assert pipe.meaning and pipe.meaning in banner and "no-such-org/no-such-model" in banner


def test_demo_banner_is_shown_for_the_demo_model():
    assert "not meaningful" in H.banner_text(MANAGER)


def test_before_a_demo_loads_the_banner_says_what_that_demo_means():
    """Not every demo is random: before first use the banner already says what its pictures and
    answers mean (it called every demo tiny and random, the real-feature one included)."""
    from prunesid_vlm.registry import DINOV2_DEMO_MEANING, DINOV2_DEMO_ID, RANDOM_DEMO_MEANING

    manager = ModelManager(DINOV2_DEMO_ID)
    assert manager.state.active is None
    banner = H.banner_text(manager)
    assert DINOV2_DEMO_MEANING in banner and "tiny, random" not in banner and "loads on first use" in banner
    assert RANDOM_DEMO_MEANING in H.banner_text(ModelManager("demo/tiny-llava-1.5"))


def test_unexpected_errors_become_a_short_generic_message(cat, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(H, "reselect", boom)
    out = dict(zip(H.VIEW_KEYS, H.on_reselect(cat["state"], 100, False, 1, "image", None, None, "kept")))
    assert out["status"] == "⚠ " + GENERIC_ERROR and "internal detail" not in out["status"]


def test_model_work_is_a_plain_call_in_this_process_without_spaces(llava_pipeline, monkeypatch):
    """Off ZeroGPU the GPU boundary is the identity: a crossing runs in the caller's thread and
    process, with the caller's progress callback, and nothing comes back to apply."""
    from prunesid_vlm import device

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert device.gpu_decorator(30)(len) is len
    seen = []
    value = device.cross(llava_pipeline, lambda pipe, x, progress=None: (progress(0.5, "half"), x + 1)[1], (1,),
                         {"progress": lambda *a: seen.append(a)}, cost=device.Cost())
    assert value == 2 and seen == [(0.5, "half")]


def test_a_failed_switch_keeps_the_model_in_use_and_says_why(demo_model, cat):
    banner, model, *views = H.on_model_change("no-such-org/picked-model", cat["state"], progress=H._no_progress)
    views = dict(zip(H.VIEW_KEYS, views))
    state, stale = views["state"], views["stale"]
    assert "did not happen" in banner and "no-such-org/picked-model" in banner
    assert model["value"] == "demo/tiny-llava-1.5" and MANAGER.current() is demo_model
    assert is_skip(state) and is_skip(stale)  # the visitor's analysis still belongs to the model in use


def test_a_switch_redraws_the_visitors_views_with_the_new_model(demo_model, cat, monkeypatch):
    """Nothing on the page stays the old model's: the visitor's picture is analysed again."""
    from prunesid_vlm.registry import DEMO_NEXT_MODEL_ID

    monkeypatch.setattr(MANAGER, "policy", type(MANAGER.policy)())  # a local server: switching allowed
    try:
        banner, model, *views = H.on_model_change(DEMO_NEXT_MODEL_ID, cat["state"], progress=H._no_progress)
        views = dict(zip(H.VIEW_KEYS, views))
        state = views["state"]
        assert model["value"] == DEMO_NEXT_MODEL_ID and state.model_id == DEMO_NEXT_MODEL_ID
        assert state.num_views > 1 and state.budget == cat["state"].budget  # NeXT's base view and crops
        assert "Analysed again with" in views["status"] and views["full_answer"] == ""
        # Another visitor's page still holds the old model's views: a redraw says so.
        other = dict(zip(H.VIEW_KEYS, H.on_reselect(cat["state"], 32, False, 1, "image", None, None, "kept")))
        assert "belong to demo/tiny-llava-1.5" in other["status"]
    finally:
        MANAGER.install(demo_model)


def test_a_failed_switch_is_told_to_that_visitor_only(demo_model):
    typed = "evil/[click](http://example.invalid) ![px](http://example.invalid/p.png)"
    banner, *_ = H.on_model_change(typed, progress=H._no_progress)
    assert "evil" in banner and "](http" not in banner and "\\[click\\]" in banner  # shown as text
    others = H.banner_text(MANAGER)
    assert "evil" not in others and "not meaningful" in others  # the model in use, no one else's typo
    assert not any("evil" in n for n in H.analyze(CAT, "What?", 64, max_new_tokens=2)["notes"])
    MANAGER.install(demo_model)


def test_group_image_layers_decode_to_the_mask_colours(tmp_path):
    """GroupImage writes each annotation as a palette PNG; decoded, it is the RGBA layer
    "group colour where the mask is > 0, alpha = mask × 255" (black and clear elsewhere)."""
    from studio.components import GroupImage

    rng = np.random.default_rng(0)
    h, w = 40, 56
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = [np.where(rng.random((h, w)) < 0.3, rng.random((h, w)), 0).astype(np.float32),
             np.clip(rng.normal(0.5, 0.6, (h, w)), -0.2, 1.3).astype(np.float32)]  # out of range: clipped
    before = [m.copy() for m in masks]
    colors = {"a": "#12ab34", "b": "#ff8800"}
    comp = GroupImage()
    comp.GRADIO_CACHE = str(tmp_path)
    data = comp.postprocess((base, [(masks[0], "a"), (masks[1], "b")], colors))
    assert [a.label for a in data.annotations] == ["a", "b"]
    for mask, ann, hex_ in zip(masks, data.annotations, colors.values()):
        alpha = np.clip(mask * np.float32(255), 0, 255).astype(np.uint8)
        want = np.zeros((h, w, 4), np.uint8)
        want[..., 3] = alpha
        want[alpha > 0, :3] = [int(hex_[i:i + 2], 16) for i in (1, 3, 5)]
        got = np.asarray(Image.open(ann.image.path).convert("RGBA"))
        assert np.array_equal(got, want)
    assert all(np.array_equal(m, b) for m, b in zip(masks, before))  # the value is not modified


def test_llava_next_shared_budget_and_headers_that_add_up(llava_next_pipeline):
    """On LLaVA-NeXT: K per view or K × views shared over all views; the header's counts add up to
    its total, and answers made per view are not shown as the shared setting's."""
    pipe = llava_next_pipeline
    images, notes, _, source = H.load_media("image", CAT, None)
    analysis = H.reselect(H.encode(pipe, "image", source, images, notes, None), 64, False)
    views = analysis.num_views
    assert views > 1 and analysis.setting == (64, False, False)
    head = H.answer_panel(analysis)["pruned_head"]
    total = int(re.search(r"· (\d+) visual tokens", head).group(1))
    parts = re.search(r"= (.*)$", head).group(1)
    assert total == sum(int(n) for n in re.findall(r"\d+", parts.replace(f"{views - 1} crops", "")))
    result = H.answer(analysis, "What is it?", pipe, max_new_tokens=1)
    assert result.visual_tokens_pruned == total
    answered = dataclasses.replace(analysis, answered={"setting": analysis.setting, "budget": 64, "dynamic": False,
                                             "question": "What is it?", "tokens": total, "texts": {}})
    shared = H.reselect(answered, 64, False, shared=True)
    assert shared.setting == (64, False, True) and sum(shared.budgets) == 64 * views
    assert f"64 × {views} views shared" in H.budget_text(shared) and "Not run for this setting" in H.stale_note(shared)
    assert H.reselect(shared, 64, False).shared  # shared=None keeps the session's setting


def test_a_tower_alone_shows_every_view_and_says_why_there_are_no_answers(demo_model):
    from prunesid_vlm.pipeline import Pipeline
    from prunesid_vlm.registry import tower_only_spec

    tower = Pipeline(dataclasses.replace(demo_model.loaded, model_id="tower/org/llava-x",
                                         spec=tower_only_spec("org/llava-x", "llava", "LLaVA-X")))
    MANAGER.install(tower)
    try:
        out = prepare()
        assert out["state"] is not None and out["state"].answers == "none"
        assert "no language model" in out["stale"] and "pick org/llava-x on a GPU" in out["stale"]
        answered = dict(zip(H.ANSWER_KEYS, H.on_answer(out["state"], "What?", 64, False, 4, progress=H._no_progress)))
        assert answered["pruned_answer"] == "" and "no answers" in answered["stale"]
        api = H.analyze(CAT, "What?", 64)
        assert api["model"]["answers"] == "none" and api["full"] is None and len(api["selection"][0]["keep"]) == 64
        assert any("no language model" in n for n in api["notes"])
        assert "LLaVA-X" in H.banner_text(MANAGER)
    finally:
        MANAGER.install(demo_model)


def test_every_view_of_llava_next_names_the_tokens_each_view_hands_over(llava_next_pipeline):
    """A crop's CLS is dropped after selection: its count is K − 1. The gallery captions, the
    per-view chart, the budget line and the answers' header all use what is handed over, and the
    prompt the model gets holds exactly that many visual tokens."""
    pipe = llava_next_pipeline
    images, notes, _, source = H.load_media("image", CAT, None)
    for dynamic in (False, True):
        analysis = H.reselect(H.encode(pipe, "image", source, images, notes, None), 64, dynamic)
        counts = H.token_counts(analysis.feats, analysis.selection)
        assert any(analysis.feats.drops_cls)  # the crops
        captions = [c for _, c in V.gallery(analysis)]
        assert [int(re.search(r"· (\d+) tokens", c).group(1)) for c in captions] == list(counts.handed)
        figure = V.frame_chart(analysis)
        heights = [round(p.get_height()) for p in figure.axes[0].patches]
        assert heights == list(counts.handed)
        assert f"**{counts.total} of {H.token_counts(analysis.feats).total} visual tokens**" in H.budget_text(analysis)
        assert f"· {counts.total} visual tokens" in H.answer_panel(analysis)["pruned_head"]
    result = H.answer(analysis, "What is it?", pipe, max_new_tokens=1)
    assert result.visual_tokens_pruned == counts.total
