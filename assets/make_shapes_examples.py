"""Regenerate the shapes-world examples of the app (``assets/shapes/``): scenes drawn by the
world's exact rules (:mod:`prunesid_vlm.shapes_world`) from a seed used neither in training nor in
the evaluations, each with one question of a different kind and its reference answer.

    .venv/bin/python assets/make_shapes_examples.py

Writes ``shapes/scene_<n>.png`` and ``shapes/examples.json`` (file, question, answer, kind).
Deterministic: same seed, same files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from prunesid_vlm.shapes_world import draw_scene, questions  # noqa: E402

SEED = 31337
"""Not the training seed, nor the benchmark's or the tests'."""
WANTED = ("count_objects", "color_of_shape", "left_right", "count_shape", "exists", "shape_of_color")
"""One example per kind, in this order (the first is where a new visitor lands)."""


def examples(seed: int = SEED) -> list:
    """Per kind of :data:`WANTED`: ``(scene, question)``, the next scene of ``seed`` with at least three
    objects that can be asked that kind, and its first such question."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in WANTED:
        while True:
            scene = draw_scene(rng)
            asked = [q for q in questions(scene, rng) if q.kind == kind]
            if len(scene.objects) >= 3 and asked:
                break
        out.append((scene, asked[0]))
    return out


def main() -> int:
    out = HERE / "shapes"
    out.mkdir(exist_ok=True)
    listed = []
    for number, (scene, q) in enumerate(examples(), start=1):
        name = f"scene_{number}.png"
        scene.image.save(out / name, optimize=True)
        listed.append({"file": name, "question": q.text, "answer": q.answer, "kind": q.kind})
    (out / "examples.json").write_text(json.dumps(listed, indent=1) + "\n")
    for e in listed:
        print(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
