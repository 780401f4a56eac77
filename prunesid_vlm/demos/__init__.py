"""Offline demo checkpoints of the CLS-free families, one module per family.

Each module ``prunesid_vlm.demos.<family>`` has ``build(folder)``: it saves a tiny random-weight
model of the family's real architecture (its transformers class, built from a config) and the
files its backend's ``load_processor`` reads, so that the demo loads through ``from_pretrained``
like a hub checkpoint. :func:`prunesid_vlm.demo_model.demo_model_path` builds it once into the cache.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable


def demo_builder(family: str) -> Callable[[Path], None]:
    """``build(folder)`` of ``family``'s demo module; ValueError if it has none."""
    try:
        module = importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{family}":
            raise
        raise ValueError(f"no demo model for family {family!r}") from err
    return module.build
