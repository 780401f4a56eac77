"""LLaVA-NeXT-Video family: a clip's frames through the CLIP tower, each 24×24 map
average-pooled 2×2 to 12×12 = 144 tokens, all frames in one ``<video>`` placeholder run.

PruneSID runs on what the language model would see: per frame, the pooled patch rows
(``vision_resampler`` applied to the layer −2 states) with the tower's CLS in front, and
the CLS attention summed over each 2×2 window (the attention mass of the pooled token).
A frame with budget K hands over its CLS and K − 1 pooled tokens, in selection order;
frames follow each other in time. The dynamic ratio shares the total across frames ∝ φ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .base import ViewInfo
from .llava import LlavaAdapter, _center_crop_box


class LlavaNextVideoAdapter(LlavaAdapter):
    """Pre-processing and feature packing for ``LlavaNextVideoForConditionalGeneration``."""

    family = "llava_next_video"
    modality = "video"
    one_clip = True
    run_offsets = None
    positions_limit = "LLaVA-NeXT-Video hands over pooled frame tokens as one clip run"
    """Why pruned prompts keep compact positions only (said when original ones are asked for)."""

    def __init__(self, model: torch.nn.Module, processor):
        super().__init__(model, processor)
        self.stride = model.config.spatial_pool_stride
        side = self.grid[0] // self.stride
        self.grid = (side, side)
        self.num_patches = side * side
        self.image_token_id = model.config.video_token_id

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, list[ViewInfo]]:
        """``[1, 3, S, S]``: one frame, resized and centre-cropped as the video processor does."""
        pixels = self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        return pixels, [ViewInfo(image=0, kind="frame", box=_center_crop_box(*image.size))]

    def postprocess(self, hidden: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[F, 1+576, D]``, ``[F, 576]`` → pooled ``[F, 1+144, D]`` (CLS first) and ``[F, 144]``."""
        with torch.inference_mode():
            pooled = self.model.model.vision_resampler(hidden[:, 1:])  # exactly the model's pooling
        side = int(cls.shape[1] ** 0.5)
        mass = F.avg_pool2d(cls.view(-1, 1, side, side), self.stride) * self.stride**2  # sum over each window
        return torch.cat([hidden[:, :1], pooled.to(hidden.dtype)], 1), mass.flatten(1)

    def full_features(self, hidden: list[torch.Tensor], image_sizes) -> list[torch.Tensor]:
        """One ``[F·144, D_text]``: what ``get_video_features`` returns, frames in time order."""
        return [self.project(h[:, 1:].flatten(0, 1)) for h in hidden]

    def pruned_features(self, hidden, keep, image_sizes, full, merged=None) -> list[torch.Tensor]:
        """One ``[Σ K_f, D_text]``: each frame's kept rows in selection order, frames in time order."""
        rows = []
        for i, (h, kept) in enumerate(zip(hidden, keep)):
            for frame, k in enumerate(kept):  # frames, not tokens
                rows.append(h[frame, k.to(h.device)])
                if merged and merged[i][frame] is not None:
                    rows.append(merged[i][frame].to(h))
        return [self.project(torch.cat(rows))]

    def prompt_inputs(self, images: list[Image.Image], question: str) -> dict:
        """``input_ids`` with one ``<video>`` run of F·144 placeholders, and ``pixel_values_videos``."""
        tokenizer = self.processor.tokenizer
        text = f"USER: <video>\n{question} ASSISTANT:"  # the llava-hf NeXT-Video chat format
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        run = torch.where(ids == self.image_token_id, len(images) * self.num_patches, 1)
        pixels = torch.cat([self.preprocess(im)[0] for im in images])[None]  # [1, F, 3, S, S]
        return {"input_ids": ids.repeat_interleave(run)[None], "pixel_values_videos": pixels}
