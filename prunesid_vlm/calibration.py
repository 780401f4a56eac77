"""φ_ref: the mean information score φ = 1 − ρ of a fixed calibration set, per model.

The single-image dynamic ratio scales a budget by φ / φ_ref (ALGORITHM.md). The images
are synthetic and deterministic (no data set can be downloaded): a smooth gradient,
stripes, blocks, a textured scene and noise, spanning flat to busy. The value is computed
once per model and kept in ``phi_ref.json`` in the cache folder.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .demo_model import cache_root


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


def phi_reference(key: str, compute: Callable[[list[Image.Image]], torch.Tensor]) -> float:
    """Cached mean φ for ``key``; ``compute`` maps the calibration images to their φ (a tensor)."""
    path = cache_root() / "phi_ref.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    if key not in table:
        table[key] = float(compute(calibration_images()).float().mean())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # write then rename: readers never see half a file
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return table[key]
