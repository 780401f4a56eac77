"""Qwen2-VL / Qwen2.5-VL: the facts the shared pipeline code reads of a model family.

The token work is :class:`~prunesid_vlm.qwen_pipeline.QwenPipeline`'s (merged tokens on a
grid that follows each image, M-RoPE positions); this adapter only names the family and its
placeholder tokens.
"""
from __future__ import annotations

import torch


class QwenAdapter:
    """What the pipeline asks of every family, for Qwen's models."""

    modality = "image"
    one_clip = False
    frame_views_differ = False
    grid = None
    num_patches = 0

    def __init__(self, model: torch.nn.Module, processor):
        self.model = model
        self.processor = processor
        self.family = model.config.model_type
        self.image_token_id = model.config.image_token_id
        self.video_token_id = model.config.video_token_id

    def drops_cls(self, view) -> bool:
        return False
