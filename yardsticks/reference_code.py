"""Time the reference implementation itself, from a checkout you provide (nothing is vendored).

The reference (github.com/ZhengyaoFang/PruneSID) does its selection inside
``CLIPVisionTower_PruneSID.forward`` in ``prunesid/prunesid_llava/clip_encoder.py``; that
method reads the tower's outputs from ``self.vision_tower(...)``. Here the method is
called unchanged on a stand-in ``self`` whose "tower" hands back the given penultimate
states and CLS attention row, so exactly the reference's selection code runs (with its
randomised ``torch.pca_lowrank``, as published).

    python benchmarks/selection.py --reference-code /path/to/PruneSID
"""
from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Callable

import torch

ENCODER_FILE = Path("prunesid") / "prunesid_llava" / "clip_encoder.py"


def load_reference_select(path: str | Path) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """``select(hidden_states, cls_attention, budget) -> keep [B, budget]`` running the reference's code.

    ``path`` is a checkout of the reference repository or its ``clip_encoder.py``.
    """
    path = Path(path)
    source = path / ENCODER_FILE if path.is_dir() else path
    if not source.is_file():
        raise FileNotFoundError(f"no {ENCODER_FILE} under {path}")
    spec = importlib.util.spec_from_file_location("prunesid_reference_clip_encoder", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    forward = module.CLIPVisionTower_PruneSID.forward

    def select(hidden_states: torch.Tensor, cls_attention: torch.Tensor, budget: int) -> torch.Tensor:
        b, tokens, _ = hidden_states.shape
        attention = hidden_states.new_zeros(b, 1, 1, tokens)  # one head; only the CLS row is read
        attention[:, 0, 0, 1:] = cls_attention
        outputs = types.SimpleNamespace(hidden_states=[hidden_states, None], attentions=[attention, None])
        tower = types.SimpleNamespace(
            vision_tower=lambda images, **_: outputs,
            device=hidden_states.device,
            dtype=hidden_states.dtype,
            need_token_num=budget,
        )
        images = hidden_states.new_zeros(b, 3, 1, 1)  # ignored by the stand-in tower
        _, keep = forward(tower, images)
        return keep

    return select
