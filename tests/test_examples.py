"""The app's examples: the photos and one shapes-world scene per question kind."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    first = layout._examples()
    assert first[0][0].endswith("cat.jpg") and sum("/shapes/" in path for path, _ in first) == len(KINDS)
    monkeypatch.setattr(MANAGER.state, "requested", SHAPES_DEMO_ID)
    shapes_first = layout._examples()
    assert "/shapes/" in shapes_first[0][0] and sorted(map(tuple, shapes_first)) == sorted(map(tuple, first))
