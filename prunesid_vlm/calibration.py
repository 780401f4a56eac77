"""The calibration set behind the single-image dynamic ratio: φ = 1 − ρ of a few natural
photographs, per model, and their mean φ_ref.

A single image gets round(K · φ / φ_ref) tokens, so φ_ref must be the φ of an ordinary photo
for the average budget over photos to stay K (the paper's rule). The photos are files in the
repository (``assets/calibration/``: public-domain and CC0 photographs from scikit-image's
sample data, written by ``assets/make_calibration.py``; sources in ``assets/LICENSES.md``), so
the app needs no download and no scikit-image. The app's example pictures are not among them:
they are the held-out check (``benchmarks/dynamic_calibration.py``).

Their φ is computed by the pipeline through exactly the path a user's image takes
(preprocessing, tower, the family's postprocessing, φ on the patches the language model
receives), so a user's φ and the calibration φ are comparable. The values are kept per model in
``calibration.json`` in the cache folder, under a key that also names the φ definition
(:data:`PHI_VERSION`) and a content hash of the photos: changing either recomputes them.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .demo_model import cache_root

CACHE_FILE = "calibration.json"

CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "assets" / "calibration"
"""The calibration photographs (every ``.jpg``/``.png`` here, in name order)."""

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")

PHI_VERSION = "phi = 1 - rho on received patches, v2"
"""The φ definition the cached values were computed with. Bump it whenever what φ measures
changes (``prunesid.dynamic.information_score``, the pipeline's ``view_phis`` / received rows, a
family's postprocessing): every model is then calibrated again."""


@dataclass(frozen=True)
class Calibration:
    """φ of every calibration view (a photo, or each AnyRes view of it) for one model."""

    phis: tuple[float, ...]

    @property
    def phi_ref(self) -> float:
        """The mean φ: the single-image dynamic ratio scales a budget by φ / φ_ref."""
        return float(np.mean(self.phis))


def calibration_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """The calibration photos in ``folder`` (default :data:`CALIBRATION_DIR`), in name order."""
    folder = Path(folder) if folder is not None else CALIBRATION_DIR
    files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES) \
        if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no calibration photos in {folder} (regenerate them with assets/make_calibration.py)")
    return files


def calibration_images(files: Sequence[str | os.PathLike] | None = None) -> list[Image.Image]:
    """The calibration photos as RGB images (``files``: default :func:`calibration_files`)."""
    images = []
    for path in files if files is not None else calibration_files():
        with Image.open(path) as im:
            images.append(im.convert("RGB"))  # greyscale photos as RGB, as an upload is
    return images


def set_hash(files: Sequence[str | os.PathLike] | None = None) -> str:
    """A content hash of the calibration photos (names and bytes), 16 hex digits."""
    digest = hashlib.sha256()
    for path in files if files is not None else calibration_files():
        path = Path(path)
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def calibration_key(model_key: str, files: Sequence[str | os.PathLike] | None = None,
                    phi_version: str | None = None) -> str:
    """The cache key of ``model_key`` (model path and dtype) calibrated on ``files`` with the φ
    definition ``phi_version`` (default :data:`PHI_VERSION`): it changes when a photo or the φ
    definition does."""
    return f"{model_key}|{phi_version or PHI_VERSION}|photos {set_hash(files)}"


def load_or_compute(key: str, compute: Callable[[list[Image.Image]], torch.Tensor],
                    files: Sequence[str | os.PathLike] | None = None) -> Calibration:
    """The calibration of ``key`` (model path and dtype) from the cache file, or ``compute``'s
    φ of the calibration photos (a ``[V]`` tensor) written there. The entry is stored under
    :func:`calibration_key` (the φ version and the photos' hash added); entries of the same model
    for other photos or an older φ are dropped when a new one is written."""
    files = list(files) if files is not None else calibration_files()
    full = calibration_key(key, files)
    path = cache_root() / CACHE_FILE
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):  # a damaged cache is recomputed, not fatal
        table = {}
    if not isinstance(table, dict):
        table = {}
    if full not in table:
        phis = [float(v) for v in compute(calibration_images(files)).float()]
        table = {k: v for k, v in table.items() if not k.startswith(f"{key}|")}  # this model's stale entries
        table[full] = phis
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # write then rename: readers never see half a file
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return Calibration(tuple(table[full]))
