"""The app's examples: the photos and one shapes-world scene per question kind."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prunesid_vlm.registry import SHAPES_DEMO_ID
from prunesid_vlm.serving import MANAGER
from prunesid_vlm.shapes_world import KINDS
from studio import layout

SHAPES = Path(__file__).resolve().parents[1] / "assets" / "shapes"


def test_one_scene_per_question_kind_with_its_reference_answer():
    listed = json.loads((SHAPES / "examples.json").read_text())
    assert sorted(e["kind"] for e in listed) == sorted(KINDS)
    for e in listed:
        picture = Image.open(SHAPES / e["file"])
        assert picture.size == (336, 336) and picture.mode == "RGB"


def test_the_scenes_are_the_worlds_own_drawings():
    """assets/make_shapes_examples.py's rule, replayed: the same seed draws the same pictures and
    asks the same questions, answered the same."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_shapes_examples", SHAPES.parent / "make_shapes_examples.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    listed = json.loads((SHAPES / "examples.json").read_text())
    for e, (scene, q) in zip(listed, maker.examples(), strict=True):
        assert (q.text, q.answer, q.kind) == (e["question"], e["answer"], e["kind"])
        assert np.array_equal(np.asarray(scene.image), np.asarray(Image.open(SHAPES / e["file"])))


def test_a_shapes_model_starts_on_its_scenes_and_any_other_on_the_photos(monkeypatch):
    from prunesid_vlm.registry import DEMO_MODEL_ID

    monkeypatch.setattr(MANAGER.state, "requested", DEMO_MODEL_ID)  # the offline default is the shapes model now
    first = layout._examples()
    assert first[0][0].endswith("cat.jpg") and sum("/shapes/" in path for path, _ in first) == len(KINDS)
    monkeypatch.setattr(MANAGER.state, "requested", SHAPES_DEMO_ID)
    shapes_first = layout._examples()
    assert "/shapes/" in shapes_first[0][0] and sorted(map(tuple, shapes_first)) == sorted(map(tuple, first))


# ---- the right answer of an example scene, shown beside the two answers ----------------------
def test_an_example_scene_is_recognised_by_its_pixels_and_question(tmp_path):
    from studio.references import reference_answer

    listed = json.loads((SHAPES / "examples.json").read_text())
    for e in listed:
        copy = tmp_path / f"upload_{e['file']}"  # the browser's copy, under another name
        Image.open(SHAPES / e["file"]).save(copy)
        picture = Image.open(copy)
        assert reference_answer([picture], e["question"]) == e["answer"]
        assert reference_answer([picture], "  " + e["question"].upper() + " ") == e["answer"]
        assert reference_answer([picture], e["question"] + " Answer in a sentence.") is None  # another question
        reshaped = np.asarray(picture).reshape(168, 672, 3)  # the same bytes, another picture
        assert reference_answer([Image.fromarray(reshaped)], e["question"]) is None
        touched = np.asarray(picture).copy()
        touched[0, 0] = 255 - touched[0, 0]
        assert reference_answer([Image.fromarray(touched)], e["question"]) is None  # another picture
        assert reference_answer([picture, picture], e["question"]) is None  # not one picture


def test_the_reference_line_marks_each_answer():
    from studio.references import reference_line

    line = reference_line("three", "Three.", "five", one_word_model=True)
    assert line.startswith("**Right answer: three**")
    assert "all tokens: **✓ right**" in line and "PruneSID: **✗ wrong**" in line
    sentence = reference_line("three", "There are three objects.", "3", one_word_model=False)
    assert sentence.startswith("**Right answer: three**") and "right**" not in sentence and "wrong" not in sentence


@pytest.mark.parametrize("shapes_model", [True, False], ids=["shapes-model", "other-model"])
def test_run_on_an_example_scene_says_the_right_answer(monkeypatch, shapes_model):
    """Through the handlers, on a fake pipeline whose answers are wrong words: the right answer is
    said for any model, the two answers are marked only for the shapes model (one-word answers)."""
    from fake_pipeline import FakePipeline
    from studio import handlers as H

    fake = FakePipeline()
    if shapes_model:
        fake.model_id = SHAPES_DEMO_ID
    previous, requested = MANAGER.loaded, MANAGER.state.requested
    MANAGER.install(fake)
    try:
        entry = json.loads((SHAPES / "examples.json").read_text())[0]
        views = dict(zip(H.VIEW_KEYS, H.on_prepare("image", str(SHAPES / entry["file"]), None, 64, False, 1, None,
                                                   progress=H._no_progress)))
        run = dict(zip(H.ANSWER_KEYS, H.on_answer(views["state"], entry["question"], 64, False, 8,
                                                  progress=H._no_progress)))
        assert f"**Right answer: {entry['answer']}**" in run["fidelity"] and "Fidelity" in run["fidelity"]
        assert run["fidelity"].count("✗ wrong") == (2 if shapes_model else 0)
        other = dict(zip(H.ANSWER_KEYS, H.on_answer(views["state"], "What is this?", 64, False, 8,
                                                    progress=H._no_progress)))
        assert "Right answer" not in other["fidelity"]
    finally:
        if previous is not None:
            MANAGER.install(previous)
        MANAGER.state.requested = requested


def test_compare_marks_each_methods_answer_on_an_example_scene(demo_cache):
    """The Compare tab on an example scene with the shapes model: the right word is said, and each
    method's one-word answer is marked by whether it is that word."""
    from prunesid_vlm.dinov2_demo import WHEEL, available
    from prunesid_vlm.pipeline import load_pipeline
    from studio.compare_tab import compare_view

    if not available():
        pytest.skip(f"demo/shapes-llava's tower comes from {WHEEL}, which is not installed")
    pipe = load_pipeline(SHAPES_DEMO_ID, device="cpu")
    entry = json.loads((SHAPES / "examples.json").read_text())[0]
    out = compare_view(str(SHAPES / entry["file"]), entry["question"], 64, ["prunesid", "grid", "random"],
                       lambda: pipe, max_new_tokens=4)
    assert f"**Right answer: {entry['answer']}**" in out["context"]
    assert out["json"]["reference_answer"] == entry["answer"]
    for row, method in zip(out["table"], out["json"]["methods"]):
        assert method["right"] == (method["answer"].strip().lower() == entry["answer"])
        assert row[2] == f"{method['answer']} {'✓' if method['right'] else '✗'}"
    other = compare_view(str(SHAPES / entry["file"]), "What is this?", 64, ["prunesid"], lambda: pipe, max_new_tokens=4)
    assert "Right answer" not in other["context"] and other["json"]["methods"][0]["right"] is None
