"""Qwen2-VL and Qwen2.5-VL: merged tokens on a grid that follows each picture, M-RoPE positions.

* **Tokens.** PruneSID runs on the merged tokens the language model receives (the vision
  merger's output, one token per 2 × 2 patches = 28 × 28 pixels), on a rectangular grid that
  follows the picture's aspect ratio (the processor's dynamic resolution). A picture is one view;
  a clip is one view per temporal patch (two frames).
* **Positions.** Kept tokens keep their original 3-D positions (time, row, column), in the
  prefill and for every generated token, as the reference does.
* **Size.** A checkpoint's own ``max_pixels`` allows views of ~16,000 merged tokens, whose exact
  selection takes tens of seconds: larger pictures are scaled down to
  ``prunesid.MAX_TOKENS_PER_VIEW`` tokens (:attr:`QwenBackend.max_view_pixels`), and the notes
  say so.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

import prunesid.config

from ..adapters.base import ViewInfo
from ..load_errors import ModelLoadError
from .base import EncodedMedia, PromptInputs
from .prompt_index import kept_prompt_index, whole

VISION_FPS = 2.0
"""Frames per second assumed for a clip's temporal positions (Qwen2.5-VL scales them by time)."""


class QwenBackend:
    """Qwen2-VL / Qwen2.5-VL (see the module docstring)."""

    modality = "image"
    one_clip = False
    frame_views_differ = False
    grid = None
    num_patches = 0
    in_llm_styles = ("fastv",)
    in_llm_limits = ("its language model takes 3-D (M-RoPE) positions, and PyramidDrop renumbers the kept "
                     "tokens' positions from 0, which is defined for 1-D positions only.")

    def __init__(self, model: torch.nn.Module, processor):
        self.model = model
        self.processor = processor
        self.family = model.config.model_type
        self.image_token_id = model.config.image_token_id
        self.video_token_id = model.config.video_token_id
        size = processor.image_processor.size
        self.checkpoint_max_pixels = int(size["longest_edge"])
        if self.checkpoint_max_pixels > self.max_view_pixels:
            size["longest_edge"] = max(self.max_view_pixels, int(size["shortest_edge"]))

    @staticmethod
    def load_processor(path: str, name: str):
        """Qwen's tokenizer and image processor (its video processor needs torchvision: clips are
        patched by :class:`~prunesid_vlm.qwen_processing.QwenProcessor` itself)."""
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        from ..qwen_processing import QwenProcessor

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load the tokenizer and image processor of {name!r}: {err}") from err
        return QwenProcessor(tokenizer, image_processor)

    def drops_cls(self, view: ViewInfo) -> bool:
        return False

    # --- resolution ---------------------------------------------------------------------
    @property
    def token_side(self) -> int:
        """Pixels on the side of the square one merged token covers (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""
        return self.processor.patch_size * self.processor.merge_size

    @property
    def max_view_pixels(self) -> int:
        """The most pixels a view may have: ``prunesid.MAX_TOKENS_PER_VIEW`` merged tokens."""
        return prunesid.config.MAX_TOKENS_PER_VIEW * self.token_side ** 2

    def set_pixel_range(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Qwen's dynamic resolution: pictures are resized to between ``min_pixels`` and ``max_pixels``
        (multiples of a merged token's side). A ``max_pixels`` above :attr:`max_view_pixels` is refused."""
        processor = self.processor.image_processor
        low = int(min_pixels if min_pixels is not None else processor.size["shortest_edge"])
        high = int(max_pixels if max_pixels is not None else processor.size["longest_edge"])
        token = self.token_side ** 2
        if not token <= low <= high:
            raise ValueError(f"the pixel range must satisfy {token} <= min_pixels <= max_pixels, got {low} and {high}")
        if high > self.max_view_pixels:
            raise ValueError(f"max_pixels={high:,} gives views of up to {high // token:,} merged tokens; PruneSID selects "
                             f"in seconds up to {prunesid.config.MAX_TOKENS_PER_VIEW:,} per view "
                             f"(prunesid.MAX_TOKENS_PER_VIEW), so max_pixels may be at most {self.max_view_pixels:,}")
        processor.size = {"shortest_edge": low, "longest_edge": high}

    # --- tokens ---------------------------------------------------------------------------
    def _merged(self, images: Sequence[Image.Image], frames: bool):
        """Float ``[V, N, D]`` merged tokens, the ``(t, h, w)`` patch grid of one media item, and the
        encoder output (for a subclass's extra features)."""
        processor, model = self.processor, self.model.model
        with torch.inference_mode():
            if frames:
                inputs = processor.video(images)
                out = model.get_video_features(inputs["pixel_values_videos"].to(self.model.device),
                                               inputs["video_grid_thw"].to(self.model.device))
                grid = inputs["video_grid_thw"][0]
            else:
                inputs = processor.images(images)
                grids = inputs["image_grid_thw"]
                if bool((grids != grids[0]).any()):
                    raise ValueError("Qwen models take several images at once only when they have the same size here; "
                                     "pass one image (or a video's frames) at a time.")
                out = model.get_image_features(inputs["pixel_values"].to(self.model.device), grids.to(self.model.device))
                grid = grids[0]
        t, h, w = (int(v) for v in grid)
        merge = processor.merge_size
        views = t if frames else len(images)
        tokens = torch.cat(list(out.pooler_output)).reshape(views, (h // merge) * (w // merge), -1)
        return tokens, (t, h, w), out

    def extra_layers(self, out, views: int, n: int) -> tuple[torch.Tensor, ...]:
        """Per-token features the model injects past its input (none for Qwen2 / 2.5-VL)."""
        return ()

    def encode(self, images: Sequence[Image.Image], frames: bool) -> EncodedMedia:
        tokens, (t, h, w), out = self._merged(images, frames)
        views_count, n = tokens.shape[0], tokens.shape[1]
        merge = self.processor.merge_size
        if frames:  # temporal patch v covers frames 2v and 2v+1
            step = self.processor.temporal_patch_size
            sources = tuple(min(v * step, len(images) - 1) for v in range(views_count))
            views = [ViewInfo(0, "temporal patch", whole(images[s])) for s in sources]
        else:
            sources = tuple(range(views_count))
            views = [ViewInfo(i, "image", whole(im)) for i, im in enumerate(images)]
        layers = tuple(layer.float().cpu() for layer in self.extra_layers(out, views_count, n))
        return EncodedMedia(tokens=tokens.cpu(), grid=(h // merge, w // merge), views=views, sources=sources,
                            layout=((t, h, w),) * (1 if frames else len(images)), clip=frames, layers=layers,
                            token_noun="merged tokens", token_px=self.token_side)

    # --- prompts ------------------------------------------------------------------------------
    def _positions(self, prompt: dict, grids: torch.Tensor, clip: bool) -> torch.Tensor:
        extra = {"video_grid_thw": grids} if clip else {"image_grid_thw": grids}
        if clip and self.family == "qwen2_5_vl":  # its clips' temporal positions follow time
            extra["second_per_grid_ts"] = torch.tensor([self.processor.temporal_patch_size / VISION_FPS])
        with torch.inference_mode():
            positions, _ = self.model.model.get_rope_index(prompt["input_ids"], mm_token_type_ids=prompt["mm_token_type_ids"],
                                                            attention_mask=prompt["attention_mask"], **extra)
        return positions

    def prompt(self, question: str, media: EncodedMedia, kept: list[torch.Tensor] | None) -> PromptInputs:
        grids = torch.tensor([list(g) for g in media.layout])
        prompt = self.processor.prompt(question, grids, video=media.clip)
        ids, types = prompt["input_ids"], prompt["mm_token_type_ids"]
        positions = self._positions(prompt, grids, media.clip)
        index, order = kept_prompt_index(types[0] != 0, media, kept)
        device, dtype = self.model.device, self.model.dtype
        features = [media.tokens.reshape(-1, media.tokens.shape[-1])[o].to(device, dtype) for o in order]
        encoder_extra = self.encoder_extra(media, order)
        return PromptInputs(
            input_ids=ids[:, index], features={"video" if media.clip else "image": features},
            positions=positions[:, :, index], next_position=int(positions.max()) + 1,
            visual_tokens=sum(int(f.shape[0]) for f in features),
            token_id=self.video_token_id if media.clip else self.image_token_id, encoder_extra=encoder_extra)

    def encoder_extra(self, media: EncodedMedia, order: list[torch.Tensor]) -> dict:
        """More fields of the encoder output for the kept rows ``order`` (none here)."""
        return {}

    def model_inputs(self, images: Sequence[Image.Image], question: str, frames: bool) -> dict:
        vision = self.processor.video(images) if frames else self.processor.images(images)
        grids = vision["video_grid_thw" if frames else "image_grid_thw"]
        return dict(self.processor.prompt(question, grids, video=frames), **vision)

    def text_ids(self, question: str) -> torch.Tensor:
        return self.processor.prompt(question, torch.zeros((0, 3), dtype=torch.long))["input_ids"]

    def text_forward_extra(self, ids: torch.Tensor) -> dict:
        return {"mm_token_type_ids": torch.zeros_like(ids)}  # all text: M-RoPE's 1-D part

    def media_notes(self, model_id: str, media: EncodedMedia, image_sizes: list[tuple[int, int]]) -> list[str]:
        rows, cols = media.grid
        (h, w) = image_sizes[0]
        side = self.token_side
        what = "clip" if media.clip else "image"
        notes = [f"{model_id} sees the whole {what} ({w}×{h} px) resized to {cols * side}×{rows * side} px: "
                 f"{rows} × {cols} merged tokens of {side} × {side} px per "
                 f"{'temporal patch (2 frames)' if media.clip else 'image'}."]
        capped = self.processor.image_processor.size["longest_edge"] >= self.max_view_pixels  # not a lower setting
        if capped and min(w * h, self.checkpoint_max_pixels) > self.max_view_pixels:
            notes.append(f"Scaled down to at most {prunesid.config.MAX_TOKENS_PER_VIEW:,} merged tokens per view "
                         f"(the checkpoint allows {self.checkpoint_max_pixels // side ** 2:,}): PruneSID's selection of a "
                         f"larger view would take tens of seconds.")
        return notes
