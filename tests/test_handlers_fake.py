"""The UI's handlers on a fake pipeline (no model): what they ask the pipeline for, and what they
show. A redraw must not touch the pipeline at all; Run must answer with the selection on screen."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fake_pipeline import FakePipeline, fake_image  # noqa: E402
from studio import handlers as H  # noqa: E402
from studio.errors import GENERIC_ERROR  # noqa: E402
from prunesid_vlm.serving import MANAGER  # noqa: E402


@pytest.fixture
def fake(tmp_path):
    previous = MANAGER.loaded
    pipe = FakePipeline()
    MANAGER.install(pipe)
    yield pipe
    if previous is not None:
        MANAGER.install(previous)


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "fake.png"
    fake_image(1).save(path)
    return str(path)


def prepared(image_path, budget=64, dynamic=False):
    out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", image_path, None, budget, dynamic, 1, None,
                                             progress=H._no_progress)))
    assert out["state"] is not None, out["status"]
    return out


def test_upload_encodes_once_and_draws(fake, image_path):
    out = prepared(image_path)
    assert [c[0] for c in fake.calls].count("encode") == 1
    assert "**64 tokens kept**" in out["summary"]
    state = out["state"]
    assert state.reference_phis == [0.2, 0.3, 0.4] and state.phi_ref == 0.3
    assert state.view_pixels[0].shape == (336, 336, 3)


def test_redraws_do_not_touch_the_pipeline(fake, image_path):
    state = prepared(image_path)["state"]
    fake.calls.clear()
    for k, dynamic, part in [(128, False, "kept"), (32, True, "dynamic"), (200, False, "groups"), (16, False, "nms")]:
        out = dict(zip(H.VIEW_KEYS, H.on_reselect(state, k, dynamic, 1, "image", image_path, None, part)))
        assert out["state"].budget == k and out["status"].startswith("✓"), out["status"]
        state = out["state"]
    H.on_view(state, 1, "importance")
    H.on_tab("group_chart")(state, 1)
    assert fake.calls == []


def test_run_answers_with_exactly_the_selection_drawn(fake, image_path):
    state = prepared(image_path, budget=48)["state"]
    fake.calls.clear()
    out = dict(zip(H.ANSWER_KEYS, H.on_answer(state, "What is this?", 48, False, 8, progress=H._no_progress)))
    compares = [c for c in fake.calls if c[0] == "compare"]
    assert len(compares) == 1 and compares[0][1] is state.selection  # no second selection
    assert out["pruned_head"] == "#### PruneSID · 48 visual tokens"
    answered = out["state"].answered
    assert (answered["budget"], answered["dynamic"], answered["question"], answered["tokens"]) == (
        48, False, "What is this?", 48)


def test_dynamic_run_answers_the_dynamic_selection(fake, image_path):
    state = prepared(image_path, budget=64, dynamic=True)["state"]
    out = dict(zip(H.ANSWER_KEYS, H.on_answer(state, "What?", 64, True, 8, progress=H._no_progress)))
    k = int(state.selection.num_tokens[0])
    assert state.budgets == [k] and out["pruned_head"] == f"#### PruneSID · {k} visual tokens"
    assert "made with" not in out["stale"]


def test_pipeline_errors_become_messages(tmp_path, image_path):
    previous = MANAGER.loaded
    try:
        MANAGER.install(FakePipeline(fail_with=ValueError("the tower refused this image")))
        out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", image_path, None, 64, False, 1, None,
                                                 progress=H._no_progress)))
        assert out["state"] is None and out["status"] == "⚠ The tower refused this image"
        MANAGER.install(FakePipeline(fail_with=RuntimeError("CUDA error: device-side assert")))
        out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", image_path, None, 64, False, 1, None,
                                                 progress=H._no_progress)))
        assert out["status"] == "⚠ " + GENERIC_ERROR and "CUDA" not in out["status"]
    finally:
        if previous is not None:
            MANAGER.install(previous)


@pytest.mark.parametrize("budget", [1, 578, "lots", None])
def test_bad_budgets_on_a_redraw_are_messages_and_keep_the_session(fake, image_path, budget):
    state = prepared(image_path)["state"]
    out = dict(zip(H.VIEW_KEYS, H.on_reselect(state, budget, False, 1, "image", image_path, None, "kept")))
    assert out["status"].startswith("⚠") and "budget" in out["status"]
    kept = {k: v for k, v in out.items() if k != "status"}
    assert all(isinstance(v, dict) and v.get("__type__") == "update" and "value" not in v for v in kept.values())


@pytest.mark.parametrize("dynamic", [False, True])
def test_dynamic_chart_marks_the_budget_its_own_axis_gives(fake, image_path, monkeypatch, dynamic):
    """The marker's token count is the dynamic ratio's budget for this φ (what the chart's token axis
    reads there), whether the toggle is on or off; the text says which one is in use."""
    from prunesid import dynamic_budget
    from studio import views as V

    drawn = {}
    real = V.viz.plot_dynamic_ratio

    def spy(phi, refs, budget, **kwargs):
        drawn.update(phi=phi, budget=budget, **kwargs)
        return real(phi, refs, budget, **kwargs)

    monkeypatch.setattr(V.viz, "plot_dynamic_ratio", spy)
    state = prepared(image_path, budget=64)["state"]
    out = dict(zip(H.VIEW_KEYS, H.on_reselect(state, 64, dynamic, 1, "image", image_path, None, "dynamic")))
    expected = dynamic_budget(drawn["phi"], 64, state.phi_ref, ceiling=577)
    assert drawn["budget"] == expected and drawn["mean_budget"] == 64
    assert f"**{expected}" in out["dynamic_text"]
    assert ("with the dynamic ratio" in drawn["label"]) is (not dynamic)


def test_answers_follow_the_setting_on_screen(fake, image_path):
    """Answers belong to one (media, budget, dynamic, question); any change hides them with a note, and
    going back to the answered setting shows them again."""
    state = prepared(image_path, budget=64)["state"]
    answered = dict(zip(H.ANSWER_KEYS, H.on_answer(state, "What?", 64, False, 8, progress=H._no_progress)))
    state = answered["state"]
    moved = dict(zip(H.VIEW_KEYS, H.on_reselect(state, 100, False, 1, "image", image_path, None, "kept")))
    # The pruned answer stays, headed as made with another budget; no fidelity for a setting not run.
    assert moved["pruned_answer"] == answered["pruned_answer"] and moved["fidelity"] == ""
    assert "Not run for this setting" in moved["stale"] and "made with 64 tokens" in moved["stale"]
    assert moved["pruned_head"] == "#### PruneSID · ⚠ made with 64 visual tokens, not this setting's"
    dyn = dict(zip(H.VIEW_KEYS, H.on_reselect(state, 64, True, 1, "image", image_path, None, "kept")))
    k = int(dyn["state"].budgets[0])
    assert "Not run for this setting" in dyn["stale"] and f"dynamic ratio: {k} for this image" in dyn["budget_label"]
    back = dict(zip(H.VIEW_KEYS, H.on_reselect(moved["state"], 64, False, 1, "image", image_path, None,
                                               "kept")))
    assert back["pruned_answer"] == answered["pruned_answer"] and back["stale"] == ""
    other = dict(zip(H.ANSWER_PANEL + ("stale",), H.on_question(back["state"], "Something else?")))
    assert other["pruned_answer"] == "" and "Not run for this question" in other["stale"]
    same = dict(zip(H.ANSWER_PANEL + ("stale",), H.on_question(back["state"], "What?")))
    assert same["pruned_answer"] == answered["pruned_answer"]


def test_new_media_clears_the_answers(fake, image_path, tmp_path):
    state = prepared(image_path)["state"]
    state = dict(zip(H.ANSWER_KEYS, H.on_answer(state, "What?", 64, False, 8, progress=H._no_progress)))["state"]
    second = tmp_path / "second.png"
    fake_image(7).save(second)
    out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", str(second), None, 64, False, 1, state,
                                             progress=H._no_progress)))
    assert out["state"].answered is None and out["pruned_answer"] == "" and "Press **Run**" in out["stale"]


def test_the_status_says_when_the_model_sees_only_the_middle_square(fake, tmp_path):
    tall = tmp_path / "tall.png"
    fake_image(3, size=(300, 1800)).save(tall)
    out = prepared(str(tall))
    assert "sees only the middle square of this image: 100% of its width × 17% of its height (17% of it)" in out["status"]
    square = tmp_path / "square.png"
    fake_image(4, size=(400, 400)).save(square)
    assert "sees only" not in prepared(str(square))["status"]


def test_the_page_says_the_selection_does_not_depend_on_the_question(fake, image_path):
    from studio.views import KEPT_CAPTION

    assert "whatever the question" in KEPT_CAPTION
    state = prepared(image_path)["state"]
    a = H.answer(state, "What colour is it?", fake, 4)
    b = H.answer(state, "How many are there?", fake, 4)
    assert a.selection is b.selection is state.selection  # one selection, whatever is asked


def test_nms_view_shows_one_group_in_full_and_can_show_all(fake, image_path):
    import numpy as np
    from PIL import Image

    out = prepared(image_path, budget=64)
    update = out["nms_group"]
    choices = [v for _, v in update["choices"]]
    assert choices[0] == -1 and update["value"] in choices[1:]  # the busiest group by default
    state = out["state"]
    everything = dict(zip(H.VIEW_KEYS, H.on_nms_group(state, -1, 1)))
    assert everything["nms_group"]["value"] == -1
    side = 504  # the picture above the legend (whose height follows its text)
    focused = np.asarray(Image.open(out["nms"]).convert("RGB"), dtype=int)[:side]
    allg = np.asarray(Image.open(everything["nms"]).convert("RGB"), dtype=int)[:side]
    assert focused.shape == allg.shape and np.abs(focused - allg).sum() > 0
    # the focused picture is mostly grey: far fewer strongly coloured pixels than with every group in colour
    saturation = lambda a: int(((a.max(-1) - a.min(-1)) > 60).sum())  # noqa: E731
    assert saturation(focused) < saturation(allg)
