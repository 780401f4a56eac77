"""The calibration set behind the single-image dynamic ratio: φ = 1 − ρ of a few fixed
images, per model, and their mean φ_ref.

The images are synthetic and deterministic (no data set can be downloaded): a smooth
gradient, stripes, blocks, a textured scene and noise, spanning flat to busy. Their φ is
computed by the pipeline through exactly the path a user's image takes (preprocessing,
tower, the family's postprocessing), so a user's φ and the calibration φ are comparable;
the values are kept per model in ``calibration.json`` in the cache folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .demo_model import cache_root

CACHE_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """φ of every calibration view (an image, or each AnyRes view of it) for one model."""

    phis: tuple[float, ...]

    @property
    def phi_ref(self) -> float:
        """The mean φ: the single-image dynamic ratio scales a budget by φ / φ_ref."""
        return float(np.mean(self.phis))


def calibration_images(size: int = 336) -> list[Image.Image]:
    """Five deterministic RGB images from flat to busy."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    gradient = np.stack([x, y, 1 - x], -1)
    stripes = np.repeat(((np.sin(x * 40) > 0) * 1.0)[..., None], 3, -1)
    blocks = rng.random((8, 8, 3)).repeat(size // 8, 0).repeat(size // 8, 1)
    scene = 0.5 * gradient + 0.3 * blocks + 0.2 * rng.random((size, size, 3))
    noise = rng.random((size, size, 3))
    return [Image.fromarray((a.clip(0, 1) * 255).astype(np.uint8)) for a in (gradient, stripes, blocks, scene, noise)]


def load_or_compute(key: str, compute: Callable[[list[Image.Image]], torch.Tensor]) -> Calibration:
    """The calibration of ``key`` (model path and dtype) from the cache file, or ``compute``'s
    φ of the calibration images (a ``[V]`` tensor) written there."""
    path = cache_root() / CACHE_FILE
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):  # a damaged cache is recomputed, not fatal
        table = {}
    if key not in table:
        table[key] = [float(v) for v in compute(calibration_images()).float()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # write then rename: readers never see half a file
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return Calibration(tuple(table[key]))
