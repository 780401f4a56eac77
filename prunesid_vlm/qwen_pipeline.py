"""The pipeline for Qwen2-VL and Qwen2.5-VL: the same public API as :class:`Pipeline`, over
Qwen's own way of seeing.

* **Tokens.** PruneSID runs on the merged tokens the language model receives (the vision
  merger's output, one token per 2 × 2 patches = 28 × 28 pixels), on a rectangular grid that
  follows the image's aspect ratio (the processor's dynamic resolution). An image is one view;
  a clip is one view per temporal patch (two frames), and the dynamic ratio shares the budget
  across them. Features are held as ``[V, 1+N, D]`` with a zero row in front, where other
  models have their CLS: no selection ever keeps it, and the Qwen rule ignores it.
* **Rule.** PruneSID is the reference's Qwen rule (:func:`prunesid.select_tokens_qwen`): the
  budget K is per 576 tokens and scales with the image (K′ = max(round(N·K/576), 16)).
* **Positions.** Kept tokens keep their original M-RoPE positions, in the prefill and for every
  generated token (:mod:`prunesid_vlm.qwen_generation`).
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

import prunesid.config
from prunesid.result import Selection

from .adapters.base import ViewInfo
from .generation import continuation_logprob, synchronize
from .pipeline import Answer, EncodedImages, Pipeline, TOWER_VIEW_SIDE, _image_key, device_action
from .qwen_generation import first_logits_with_positions, greedy_with_positions
from .rules import Frames, check_images, information_score, keeps_everything

VISION_FPS = 2.0
"""Frames per second assumed for a clip's temporal positions (Qwen2.5-VL scales them by time)."""


class QwenPipeline(Pipeline):
    """A loaded Qwen2-VL / Qwen2.5-VL model plus PruneSID (see the module docstring)."""

    @property
    def grid(self) -> tuple[int, int] | None:
        """No fixed grid: it follows each image (``EncodedImages.grid``)."""
        return None

    @property
    def num_patches(self) -> int:
        return 0

    def __init__(self, loaded):
        super().__init__(loaded)
        # A checkpoint's own max_pixels allows views of ~16,000 merged tokens, whose selection takes
        # tens of seconds: larger pictures are scaled down to the view limit instead (media_notes says so).
        size = self.processor.image_processor.size
        self.checkpoint_max_pixels = int(size["longest_edge"])
        if self.checkpoint_max_pixels > self.max_view_pixels:
            size["longest_edge"] = max(self.max_view_pixels, int(size["shortest_edge"]))

    @property
    def max_view_pixels(self) -> int:
        """The most pixels a view may have: ``prunesid.MAX_TOKENS_PER_VIEW`` merged tokens of 28 × 28 px."""
        side = self.processor.patch_size * self.processor.merge_size
        return prunesid.config.MAX_TOKENS_PER_VIEW * side * side

    def set_pixel_range(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Qwen's dynamic resolution: images are resized to between ``min_pixels`` and ``max_pixels``
        (multiples of 28 px; one merged token per 28 × 28 px). Cached features are dropped. A
        ``max_pixels`` above :attr:`max_view_pixels` is refused (see ``prunesid.MAX_TOKENS_PER_VIEW``)."""
        processor = self.processor.image_processor
        low = int(min_pixels if min_pixels is not None else processor.size["shortest_edge"])
        high = int(max_pixels if max_pixels is not None else processor.size["longest_edge"])
        if not 28 * 28 <= low <= high:
            raise ValueError(f"the pixel range must satisfy 784 <= min_pixels <= max_pixels, got {low} and {high}")
        if high > self.max_view_pixels:
            raise ValueError(f"max_pixels={high:,} gives views of up to {high // 784:,} merged tokens; PruneSID selects "
                             f"in seconds up to {prunesid.config.MAX_TOKENS_PER_VIEW:,} per view "
                             f"(prunesid.MAX_TOKENS_PER_VIEW), so max_pixels may be at most {self.max_view_pixels:,}")
        with self._lock:
            processor.size = {"shortest_edge": low, "longest_edge": high}
            self._features.clear()
            self._answers.clear()
            self._first_logits.clear()

    # --- features ------------------------------------------------------------------------
    def _merged_tokens(self, images: list[Image.Image], frames: bool) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Float ``[V, N, D]`` merged tokens (one view per image, or per temporal patch of a clip)
        and the ``(t, h, w)`` patch grid of one media item."""
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
        tokens = torch.cat(list(out.pooler_output))
        t, h, w = (int(v) for v in grid)
        merge = processor.merge_size
        views = t if frames else len(images)
        return tokens.reshape(views, (h // merge) * (w // merge), -1), (t, h, w)

    def _phis_of(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.cat([information_score(_with_zero_row(self._merged_tokens([im], False)[0].float().cpu()))
                          for im in images])

    @staticmethod
    def _media_key(images: Sequence[Image.Image], frames: bool) -> str:
        return hashlib.sha1(("|".join(_image_key(im) for im in images) + f"|qwen|{frames}").encode()).hexdigest()

    def media_keys(self, media) -> set[str]:
        if isinstance(media, EncodedImages):
            return {media.media_key}
        try:
            images = list(media) if media is not None else []
        except TypeError:
            return set()
        if not images or not all(isinstance(im, Image.Image) for im in images):
            return set()
        return {self._media_key(images, frames) for frames in (False, True)}

    def _feature_keys(self, images: Sequence[Image.Image]) -> list[str]:
        return [self._media_key(images, isinstance(images, Frames))]  # one entry per media item

    @device_action(lambda self, images: self.encode_cost(images), needed=lambda self, images: self._needs_encoding(images))
    def encode(self, images: Sequence[Image.Image]) -> EncodedImages:
        """Merged tokens of ``images`` (a list of same-size images, or :class:`Frames` of one clip),
        cached by content."""
        images = check_images(images)
        frames = isinstance(images, Frames)
        phi_ref = self.phi_ref
        key = self._media_key(images, frames)
        with self._lock:
            hit = self._features.get_fresh(key)
            cached = hit is not None
            if not cached:
                hit = self._on_model(self._encode_media, images, frames)
                self._features.put(key, hit)
        tokens, grid, seconds = hit
        hidden = _with_zero_row(tokens)
        views_count, n = tokens.shape[0], tokens.shape[1]
        merge = self.processor.merge_size
        rows, cols = grid[1] // merge, grid[2] // merge
        if frames:  # temporal patch v covers frames 2v and 2v+1
            step = self.processor.temporal_patch_size
            sources = tuple(min(v * step, len(images) - 1) for v in range(views_count))
            views = [ViewInfo(0, "frame", _whole(images[s])) for s in sources]
        else:
            sources = tuple(range(views_count))
            views = [ViewInfo(i, "image", _whole(im)) for i, im in enumerate(images)]
        return EncodedImages(
            hidden_states=hidden, cls_attention=torch.full((views_count, n), 1.0 / n), views=views,
            image_sizes=[(im.height, im.width) for im in images], vision_s=0.0 if cached else seconds,
            cached=[cached] * len(images), tower_s=[seconds / len(images)] * len(images), media_key=key,
            phi=information_score(hidden.float()), phi_ref=phi_ref, drops_cls=(False,) * views_count,
            sources=sources, grid=(rows, cols), rule="qwen", grid_thw=(grid,) * (1 if frames else len(images)),
            clip=frames)

    def _encode_media(self, images: list[Image.Image], frames: bool):
        synchronize(self.loaded.device)
        start = time.perf_counter()
        tokens, grid = self._merged_tokens(images, frames)
        synchronize(self.loaded.device)
        self.stats["tower_images"] += len(images)
        return tokens.cpu(), grid, time.perf_counter() - start

    def view_pixels(self, images: Sequence[Image.Image], feats: EncodedImages,
                    side: int = TOWER_VIEW_SIDE) -> list[np.ndarray]:
        """Per view: the picture the tower sees (the whole image at the grid's aspect ratio)."""
        images = check_images(images)
        rows, cols = feats.grid
        scale = side / max(rows, cols)
        size = (max(cols, round(cols * scale)), max(rows, round(rows * scale)))
        return [np.asarray(images[s].convert("RGB").resize(size, Image.Resampling.BICUBIC)) for s in feats.sources]

    def media_notes(self, feats: EncodedImages) -> list[str]:
        rows, cols = feats.grid
        (h, w) = feats.image_sizes[0]
        what = "clip" if feats.clip else "image"
        notes = [f"{self.model_id} sees the whole {what} ({w}×{h} px) resized to {cols * 28}×{rows * 28} px: "
                 f"{rows} × {cols} merged tokens of 28 × 28 px per {'temporal patch (2 frames)' if feats.clip else 'image'}."]
        capped = self.processor.image_processor.size["longest_edge"] >= self.max_view_pixels  # not a lower setting
        if capped and min(w * h, self.checkpoint_max_pixels) > self.max_view_pixels:
            notes.append(f"Scaled down to at most {prunesid.config.MAX_TOKENS_PER_VIEW:,} merged tokens per view "
                         f"(the checkpoint allows {self.checkpoint_max_pixels // 784:,}): PruneSID's selection of a "
                         f"larger view would take tens of seconds.")
        return notes

    def _project_patches(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 1:].float()  # merged tokens are already the language model's inputs

    # --- prompts and answers ------------------------------------------------------------------
    def _qwen_prompt(self, images, feats: EncodedImages, question: str, selection: Selection | None):
        """``(input_ids, {modality: features}, positions [3, 1, L], next position, visual tokens)``."""
        grids = torch.tensor([list(g) for g in feats.grid_thw])
        prompt = self.processor.prompt(question, grids, video=feats.clip)
        ids, types = prompt["input_ids"], prompt["mm_token_type_ids"]
        kind = "video" if feats.clip else "image"
        extra = {"video_grid_thw": grids} if feats.clip else {"image_grid_thw": grids}
        if feats.clip and self.loaded.family == "qwen2_5_vl":
            extra["second_per_grid_ts"] = torch.tensor([self.processor.temporal_patch_size / VISION_FPS])
        with torch.inference_mode():
            positions, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types,
                                                            attention_mask=prompt["attention_mask"], **extra)
        next_position = int(positions.max()) + 1
        if selection is not None and keeps_everything(feats, selection):
            selection = None  # every token kept: the model's own order, not the selection's
        tokens = feats.hidden_states[:, 1:]  # [V, N, D]
        n = tokens.shape[1]
        kept = ([torch.arange(n)] * feats.num_views if selection is None
                else [selection.keep_row(v) - 1 for v in range(feats.num_views)])  # patch indices, selection order
        if feats.clip:
            offsets = [torch.cat([v * n + k for v, k in enumerate(kept)])]
            features = [torch.cat([tokens[v, k] for v, k in enumerate(kept)])]
        else:
            offsets = list(kept)
            features = [tokens[v, k] for v, k in enumerate(kept)]
        index = _kept_sequence(types[0] != 0, offsets)
        features = [f.to(self.model.device, self.model.dtype) for f in features]
        return (ids[:, index], {kind: features}, positions[:, :, index], next_position,
                sum(int(f.shape[0]) for f in features))

    in_llm_styles = ("fastv",)
    in_llm_limits = ("its language model takes 3-D (M-RoPE) positions, and PyramidDrop renumbers the kept "
                     "tokens' positions from 0, which is defined for 1-D positions only.")

    def _staged_inputs(self, images, feats: EncodedImages, question: str, selection: Selection | None
                       ) -> tuple[dict, int, float]:
        ids, features, positions, next_position, visual = self._qwen_prompt(images, feats, question, selection)
        kind, parts = next(iter(features.items()))
        token_id = self.adapter.video_token_id if kind == "video" else self.adapter.image_token_id
        return ({"input_ids": ids, "features": torch.cat(parts), "token_id": token_id, "positions": positions,
                 "next_position": next_position}, visual, 0.0)

    def _generate(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                  max_new_tokens: int) -> Answer:
        ids, features, positions, next_position, visual = self._qwen_prompt(images, feats, question, selection)
        run = greedy_with_positions(self.model, ids, features, positions, next_position, max_new_tokens)
        self.stats["full_generations" if selection is None else "pruned_generations"] += 1
        return self._answer(run, visual, 0.0)

    def _prefill_batch(self, images, feats: EncodedImages, question: str,
                       selections: list[Selection | None]) -> torch.Tensor:
        rows = []
        for selection in selections:  # one prompt per pass: each keeps its own positions
            ids, features, positions, _, _ = self._qwen_prompt(images, feats, question, selection)
            rows.append(first_logits_with_positions(self.model, ids, features, positions))
            self.stats["prefills"] += 1
            self.stats["prefill_batches"] += 1
        return torch.stack(rows)

    def _prefill_pass(self, images, feats: EncodedImages, question: str,
                      selection: Selection | None) -> Callable[[], torch.Tensor]:
        ids, features, positions, _, _ = self._qwen_prompt(images, feats, question, selection)
        return lambda: first_logits_with_positions(self.model, ids, features, positions)

    def _loglikelihood(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                       continuation: torch.Tensor) -> tuple[float, bool]:
        ids, features, positions, next_position, _ = self._qwen_prompt(images, feats, question, selection)
        return continuation_logprob(self.model, ids, features, continuation, position_ids=positions,
                                    next_position=next_position)

    def prompt_inputs(self, images: Sequence[Image.Image], question: str) -> dict:
        """The model's ordinary inputs (``input_ids``, pixels, grids, ``mm_token_type_ids``): what
        ``model.generate(**inputs)`` takes for the unpruned answer."""
        images = check_images(images)
        if isinstance(images, Frames):
            vision = self.processor.video(images)
            grids = vision["video_grid_thw"]
        else:
            vision = self.processor.images(images)
            grids = vision["image_grid_thw"]
        return dict(self.processor.prompt(question, grids, video=isinstance(images, Frames)), **vision)


def _with_zero_row(tokens: torch.Tensor) -> torch.Tensor:
    """``[V, 1+N, D]``: the tokens after a zero row (where other models keep their CLS)."""
    return torch.nn.functional.pad(tokens, (0, 0, 1, 0))


def _whole(image: Image.Image) -> tuple[float, float, float, float]:
    return (0.0, 0.0, float(image.width), float(image.height))


def _kept_sequence(is_visual: torch.Tensor, offsets: list[torch.Tensor]) -> torch.Tensor:
    """Long: the full prompt's indices that the pruned prompt keeps, in its order — every text
    token, and in each placeholder run only the kept ones, in the order given by ``offsets``
    (offsets into that run)."""
    position = torch.arange(is_visual.numel())
    starts = ((is_visual[1:] & ~is_visual[:-1]).nonzero().flatten() + 1).tolist()
    if bool(is_visual[0]):
        starts = [0] + starts
    if len(starts) != len(offsets):
        raise ValueError(f"the prompt has {len(starts)} placeholder runs for {len(offsets)} media items")
    pieces, cursor = [], 0
    for start, kept in zip(starts, offsets):
        end = start
        while end < is_visual.numel() and bool(is_visual[end]):
            end += 1
        pieces += [position[cursor:start], start + kept]
        cursor = end
    pieces.append(position[cursor:])
    return torch.cat(pieces)
