"""Prompts for Qwen2-VL / Qwen2.5-VL from a tokenizer and the Qwen image processor.

transformers' ``Qwen2VLProcessor`` needs a video processor, which needs torchvision (not a
dependency here); everything it does for this app is small and done here instead:

* **images**: the Qwen image processor resizes each image to multiples of 28 px within
  ``[min_pixels, max_pixels]`` (its "dynamic resolution") and cuts 14 px patches;
* **video frames**: the same resize for every frame (the first frame's size), then pairs of
  frames form one temporal patch (``temporal_patch_size = 2``; an odd last frame is repeated),
  patches laid out as the image processor lays them out;
* the chat template's single ``<|image_pad|>`` / ``<|video_pad|>`` is expanded to one token per
  merged token, and ``mm_token_type_ids`` marks them (text 0, image 1, video 2) for M-RoPE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's chat format for one user turn (the system prompt of the released templates omitted)."""


@dataclass
class QwenProcessor:
    """Tokenizer + ``Qwen2VLImageProcessorPil``: what the pipeline needs of Qwen's processor."""

    tokenizer: object
    image_processor: object
    chat_template: str | None = None
    frame_timestamps: bool = False
    """Qwen3-VL: a clip's temporal patches are separate placeholder runs, each after its time
    (``<0.5 seconds><|vision_start|><|video_pad|>…<|vision_end|>``), as its processor writes them."""
    frames_per_second: float = 2.0
    """The frame rate a clip's timestamps assume."""

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    @property
    def patch_size(self) -> int:
        return int(self.image_processor.patch_size)

    @property
    def temporal_patch_size(self) -> int:
        return int(self.image_processor.temporal_patch_size)

    def images(self, images: Sequence[Image.Image]) -> dict:
        """``pixel_values`` ``[Σ patches, C·T·14·14]`` and ``image_grid_thw`` ``[I, 3]``."""
        out = self.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def video(self, frames: Sequence[Image.Image]) -> dict:
        """``pixel_values_videos`` ``[T·h·w, C·2·14·14]`` and ``video_grid_thw`` ``[1, 3]`` for one clip."""
        first = self.image_processor(images=[frames[0]], return_tensors="pt")["image_grid_thw"][0]
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        height, width = int(first[1]) * p, int(first[2]) * p
        arrays = []
        for frame in frames:
            resized = frame.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
            pixels = np.asarray(resized, dtype=np.float32) / 255.0
            mean = np.asarray(self.image_processor.image_mean, dtype=np.float32)
            std = np.asarray(self.image_processor.image_std, dtype=np.float32)
            arrays.append(((pixels - mean) / std).transpose(2, 0, 1))  # C, H, W
        if len(arrays) % t:
            arrays += [arrays[-1]] * (t - len(arrays) % t)
        clip = np.stack(arrays)  # F, C, H, W
        grid_t, grid_h, grid_w = clip.shape[0] // t, height // p, width // p
        patches = clip.reshape(grid_t, t, clip.shape[1], grid_h // m, m, p, grid_w // m, m, p)
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # T, h/m, w/m, m, m, C, t, p, p
        flat = patches.reshape(grid_t * grid_h * grid_w, clip.shape[1] * t * p * p)
        return {"pixel_values_videos": torch.from_numpy(np.ascontiguousarray(flat)),
                "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]])}

    def prompt(self, question: str, grids: torch.Tensor, video: bool = False) -> dict:
        """``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` ``[1, L]`` for one user turn
        with one placeholder run per grid (images) or one for the clip (video)."""
        kind = "video" if video else "image"
        content = [{"type": kind}] * (1 if video else len(grids)) + [{"type": "text", "text": question}]
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None) or QWEN_CHAT_TEMPLATE
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                                  add_generation_prompt=True, tokenize=False)
        pad = VIDEO_PAD if video else IMAGE_PAD
        counts = [int(g.prod()) // self.merge_size ** 2 for g in grids]
        if video and self.frame_timestamps:
            text, counts = self._timestamped(text, grids[0]), [int(grids[0][1:].prod()) // self.merge_size ** 2] * int(grids[0][0])
        pieces = text.split(pad)
        if len(pieces) != len(counts) + 1:
            raise ValueError(f"the chat template made {len(pieces) - 1} {pad} placeholders for {len(counts)} {kind}s")
        text = "".join(piece + pad * count for piece, count in zip(pieces, counts + [0]))
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        pad_id = self.tokenizer.convert_tokens_to_ids(pad)
        types = torch.where(ids == pad_id, 2 if video else 1, 0)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types}

    def _timestamped(self, text: str, grid: torch.Tensor) -> str:
        """The clip's one wrapped placeholder, as one timestamped run per temporal patch (each patch's
        time is the mean of its frames' times)."""
        step = self.temporal_patch_size
        times = [(2 * t * step + step - 1) / 2 / self.frames_per_second for t in range(int(grid[0]))]
        runs = "".join(f"<{time:.1f} seconds>{VISION_START}{VIDEO_PAD}{VISION_END}" for time in times)
        wrapped = VISION_START + VIDEO_PAD + VISION_END
        if wrapped not in text:
            raise ValueError(f"the chat template has no {wrapped} for the clip")
        return text.replace(wrapped, runs, 1)

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
