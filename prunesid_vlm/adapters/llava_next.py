"""LLaVA-NeXT (AnyRes) family: a 336 px base view plus a grid of 336 px crops per image.

Full path: transformers' own packing — base 24×24 in raster order, then the crop grid
merged into one ``(rows·24) × (cols·24)`` map, unpadded to the image's aspect, with one
``image_newline`` token after every map row.

Pruned path (docs/algorithm.md, "LLaVA-NeXT"): every view gets its own budget, spent only
on the patches the language model receives (:meth:`LlavaNextAdapter.map_rows`).
* base view: its kept tower rows, CLS included, in the selection's order (as LLaVA-1.5);
* crops: a crop has no place for its CLS on the map, so a crop with budget K is selected
  with K + 1 (CLS + K patches) and the CLS dropped; its kept patches are restored **in
  raster order on the unpadded map**, each map row that keeps a token ending with the
  newline token. (The reference code puts crop tokens at the wrong positions and drops the
  newlines; this is the intended behaviour.) The selection runs on the crop's patches that
  survive unpadding only, so none of its budget goes to padding.
"""
from __future__ import annotations

import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution

from .base import NOT_RECEIVED, RECEIVED, ViewInfo
from .llava import LlavaAdapter

NEWLINE = -1
"""Marker of a newline slot in a packed layout (real slots hold ``crop · N + patch``)."""


class LlavaNextAdapter(LlavaAdapter):
    """Pre-processing and feature packing for ``LlavaNextForConditionalGeneration``."""

    family = "llava_next"
    packs_from_full = True
    """The pruned path gathers crop tokens from the full path's packed map (see pruned_features)."""
    max_views_per_image = 5
    """The base view and up to four crops (sizes the GPU time asked on ZeroGPU)."""
    run_offsets = None
    positions_limit = ("LLaVA-NeXT packs the kept crop tokens onto its AnyRes canvas (crops merged, a newline "
                       "token per row), where a kept token has no single place of the full prompt")
    """Why pruned prompts keep compact positions only (said when original ones are asked for)."""

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, list[ViewInfo]]:
        """``[V, 3, S, S]`` views of one image (base first, then crops row-major) and where each sits."""
        out = self.processor.image_processor(images=[image], return_tensors="pt")
        rows, cols = self._crop_grid(image.height, image.width)
        pixels = out["pixel_values"][0, : 1 + rows * cols]
        views = [ViewInfo(0, "base", (0.0, 0.0, float(image.width), float(image.height)))]
        views += [ViewInfo(0, "crop", self._crop_box(image, r, c), r, c) for r in range(rows) for c in range(cols)]
        return pixels, views

    frame_views_differ = True

    def preprocess_frame(self, image: Image.Image) -> tuple[torch.Tensor, list[ViewInfo]]:
        """``[1, 3, S, S]``: a video frame's base view alone (the whole frame, resized). Every frame's
        AnyRes crops would take 3–5× the tokens: six frames would exceed a 4k context."""
        pixels, views = self.preprocess(image)
        return pixels[:1], [ViewInfo(0, "frame", views[0].box)]

    def _crop_grid(self, height: int, width: int) -> tuple[int, int]:
        size = self.model.config.vision_config.image_size
        best_h, best_w = select_best_resolution((height, width), self.model.config.image_grid_pinpoints)
        return best_h // size, best_w // size

    def _crop_box(self, image: Image.Image, row: int, col: int) -> tuple[float, float, float, float]:
        # The processor fits the image into the best resolution (aspect kept), pads it centred,
        # and cuts S×S crops; map the crop's canvas square back to image pixels.
        size = self.model.config.vision_config.image_size
        rows, cols = self._crop_grid(image.height, image.width)
        scale = min(cols * size / image.width, rows * size / image.height)
        pad_x = (cols * size - image.width * scale) / 2
        pad_y = (rows * size - image.height * scale) / 2
        x0, y0 = (col * size - pad_x) / scale, (row * size - pad_y) / scale
        return (x0, y0, x0 + size / scale, y0 + size / scale)

    def drops_cls(self, view: ViewInfo) -> bool:
        """A crop has no place for its CLS on the packed map: it is selected with one token more
        and its CLS dropped."""
        return view.kind == "crop"

    def _pack(self, per_view: torch.Tensor, image_size: tuple[int, int], newline: torch.Tensor) -> torch.Tensor:
        """transformers' packing of ``[V, N, C]`` per-view rows of one image → ``[T, C]``."""
        packed, _ = self.model.model.pack_image_features(
            [per_view], torch.tensor([image_size]), vision_feature_select_strategy="default", image_newline=newline)
        return packed[0]

    def layout(self, num_views: int, image_size: tuple[int, int]) -> torch.Tensor:
        """Long ``[T]``: for each packed slot of one image, ``view · N + patch`` or ``NEWLINE``.

        The first N slots are the base view (view 0); the crop slots follow the unpadded map.
        """
        ids = torch.arange(num_views * self.num_patches, dtype=torch.float64).view(num_views, self.num_patches, 1)
        return self._pack(ids, image_size, torch.tensor([float(NEWLINE)], dtype=torch.float64))[:, 0].long()

    def map_rows(self, num_views: int, image_size: tuple[int, int]) -> torch.Tensor:
        """Long ``[V, N]``: the base view's patches ``RECEIVED``; each crop patch its row on the
        unpadded crop map, or ``NOT_RECEIVED`` when it lies in the padding."""
        slots = self.layout(num_views, image_size)[self.num_patches:]
        is_newline = slots == NEWLINE
        row = torch.cumsum(is_newline.long(), 0) - is_newline.long()  # map row of every slot
        rows = torch.full((num_views * self.num_patches,), NOT_RECEIVED, dtype=torch.long)
        rows[: self.num_patches] = RECEIVED
        rows[slots[~is_newline]] = row[~is_newline]
        return rows.view(num_views, self.num_patches)

    def full_features(self, hidden: list[torch.Tensor], image_sizes) -> list[torch.Tensor]:
        """Per image ``[T_i, D_text]``: exactly what ``get_image_features`` returns."""
        newline = self.model.model.image_newline
        return [self.project(h[0, 1:]) if h.shape[0] == 1 else self._pack(self.project(h[:, 1:]), size, newline) for h, size in zip(hidden, image_sizes)]

    def pruned_features(self, hidden: list[torch.Tensor], keep: list[list[torch.Tensor]], image_sizes,
                        full: list[torch.Tensor], merged: list[list[torch.Tensor | None]] | None = None
                        ) -> list[torch.Tensor]:
        """Per image: base kept rows (selection order) + kept crop patches in map raster order with newlines.

        ``full`` are the full path's packed features: the crop part is gathered from them.
        Merged tokens of a merge-based baseline (no map position) follow the base view's
        kept rows for the base, and the crop map for the crops.
        """
        out = []
        for i, (h, kept, size, packed) in enumerate(zip(hidden, keep, image_sizes, full)):
            extra = merged[i] if merged else [None] * len(kept)
            base_rows = h[0, kept[0].to(h.device)]
            if extra[0] is not None:
                base_rows = torch.cat([base_rows, extra[0].to(base_rows)])
            if len(kept) == 1:  # a video frame's base view alone: no crop map
                out.append(self.project(base_rows))
                continue
            crops = packed[self.num_patches:]  # the crop map, newlines included
            parts = [self.project(base_rows), crops[self.crop_keep_mask(kept, size).to(crops.device)]]
            parts += [self.project(e) for e in extra[1:] if e is not None]
            out.append(torch.cat(parts))
        return out

    def crop_keep_mask(self, keep: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Bool ``[T_crops]`` over the full path's crop slots: kept patches, plus the newline of every
        map row that keeps at least one patch."""
        num_views = len(keep)
        kept = torch.zeros(num_views * self.num_patches, dtype=torch.bool)
        for view in range(1, num_views):  # a handful of crops, not tokens
            patches = keep[view].cpu()
            patches = patches[patches > 0] - 1  # drop CLS, tower → patch index
            kept[view * self.num_patches + patches] = True
        slots = self.layout(num_views, image_size)[self.num_patches:]
        is_newline = slots == NEWLINE
        mask = torch.where(is_newline, False, kept[slots.clamp(min=0)])
        row = torch.cumsum(is_newline.long(), 0) - is_newline.long()  # map row of every slot
        row_has_kept = torch.zeros(int(is_newline.sum()), dtype=torch.bool).index_put_((row[mask],), torch.tensor(True))
        return mask | (is_newline & row_has_kept[row])
