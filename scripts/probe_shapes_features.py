"""Can an object's colour and shape be read off the DINOv2-small rows that demo/shapes-llava gets?

A linear probe (ridge regression, closed form, standardised features) on the tower's layer −2 row
at each object's centre patch (for a triangle, lower, inside it), fit on the objects of 150 scenes
(seed 11) and scored on those of 100 others (seed 12). The rows come from the pipeline's own
``encode`` on the offline DINOv2 demo, as in training (``scripts/shapes_features.py``).

    PYTHONPATH=. python scripts/probe_shapes_features.py

If the probe reads a property well and the trained model still answers questions about it at
chance, what is missing is in the language model, not in the tower's features.
"""
from __future__ import annotations

import numpy as np
import torch

from prunesid_vlm.pipeline import DINOV2_DEMO_ID, load_pipeline
from prunesid_vlm.shapes_world import COLORS, SHAPES, draw_scenes

GRID, PATCH = 24, 14


def centre_rows(pipe, seed: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, colours, shapes = [], [], []
    names_c, names_s = list(COLORS), list(SHAPES)
    for scene in draw_scenes(seed, count):
        states = pipe.encode([scene.image]).hidden_states[0, 1:].float().numpy()  # [576, D], CLS dropped
        for obj in scene.objects:
            x = obj.x0 + obj.side / 2
            y = obj.y0 + obj.side * (0.65 if obj.shape == "triangle" else 0.5)  # inside a triangle too
            row, column = min(int(y // PATCH), GRID - 1), min(int(x // PATCH), GRID - 1)
            rows.append(states[row * GRID + column])
            colours.append(names_c.index(obj.color))
            shapes.append(names_s.index(obj.shape))
    return np.array(rows), np.array(colours), np.array(shapes)


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                   classes: int, ridge: float = 10.0) -> float:
    mean, scale = train.mean(0), train.std(0) + 1e-6
    a = np.c_[(train - mean) / scale, np.ones(len(train))]
    b = np.c_[(test - mean) / scale, np.ones(len(test))]
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ np.eye(classes)[train_labels])
    return float(((b @ weights).argmax(1) == test_labels).mean())


def main() -> None:
    torch.set_num_threads(2)
    pipe = load_pipeline(DINOV2_DEMO_ID, device="cpu")
    train, train_c, train_s = centre_rows(pipe, 11, 150)
    test, test_c, test_s = centre_rows(pipe, 12, 100)
    for name, labels, held_out, classes in (("colour", train_c, test_c, len(COLORS)),
                                            ("shape", train_s, test_s, len(SHAPES))):
        accuracy = probe_accuracy(train, labels, test, held_out, classes)
        print(f"{name}: {100 * accuracy:.1f} % of {len(held_out)} held-out objects (chance {100 / classes:.0f} %)")


if __name__ == "__main__":
    main()
