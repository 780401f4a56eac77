"""The pipeline of the CLS-free families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision,
InternVL3, Gemma 3): the same public API as :class:`Pipeline`, over a
:class:`~prunesid_vlm.backends.base.TokenBackend`.

* **Tokens.** PruneSID runs on the tokens the language model receives, per view, on a grid the
  backend reports (it can follow each picture's aspect ratio). Features are held as
  ``[V, 1+N, D]`` with a zero row in front, where other models have their CLS: no selection ever
  keeps it, and the CLS-free rule ignores it.
* **Rule.** PruneSID is the reference's CLS-free rule (:func:`prunesid.select_tokens_qwen`): the
  budget K is per 576 tokens and scales with the view (K′ = max(round(N·K/576), 16)).
* **Positions.** Kept tokens keep their original positions (1-D or M-RoPE), in the prefill and
  for every generated token (:mod:`prunesid_vlm.positioned_generation`).

Nothing here names a family: what differs lives in the backend.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from prunesid.result import Selection

from .backends.base import EncodedMedia, PromptInputs, TokenBackend
from .timing import clocked
from .base_pipeline import Pipeline, TOWER_VIEW_SIDE, _image_key, device_action
from .results import EncodedImages
from .rules import Frames, check_images, information_score, keeps_everything, view_phis


class TokenPipeline(Pipeline):
    """A loaded CLS-free model plus PruneSID (see the module docstring)."""

    @property
    def grid(self) -> tuple[int, int] | None:
        """No fixed grid: it follows each image (``EncodedImages.grid``)."""
        return None

    @property
    def num_patches(self) -> int:
        return 0

    @property
    def backend(self) -> TokenBackend:
        return self.adapter  # the family's backend is the pipeline's adapter

    @property
    def in_llm_styles(self) -> tuple[str, ...]:
        return self.backend.in_llm_styles

    @property
    def in_llm_limits(self) -> str:
        return self.backend.in_llm_limits

    # --- resolution (families whose views follow the picture's size) ---------------------------
    @property
    def max_view_pixels(self) -> int:
        """The most pixels a view may have (``prunesid.MAX_TOKENS_PER_VIEW`` tokens)."""
        return self._resolution().max_view_pixels

    @property
    def checkpoint_max_pixels(self) -> int:
        """The most pixels the checkpoint's own processor allows a view."""
        return self._resolution().checkpoint_max_pixels

    def set_pixel_range(self, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Dynamic resolution: pictures are resized to between ``min_pixels`` and ``max_pixels``.
        Cached features and answers are dropped. A ``max_pixels`` above :attr:`max_view_pixels` is
        refused (see ``prunesid.MAX_TOKENS_PER_VIEW``)."""
        backend = self._resolution()
        with self._lock:
            backend.set_pixel_range(min_pixels, max_pixels)
            self._features.clear()
            self._answers.clear()
            self._first_logits.clear()

    def _resolution(self):
        if not hasattr(self.backend, "set_pixel_range"):
            raise ValueError(f"{self.model_id} sees pictures at a fixed size: it has no pixel range to set")
        return self.backend

    # --- features ------------------------------------------------------------------------
    def _phis_of(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.cat([information_score(_with_zero_row(self.backend.encode([im], False).tokens.float()))
                          for im in images])

    def _media_key(self, images: Sequence[Image.Image], frames: bool) -> str:
        return hashlib.sha1(("|".join(_image_key(im) for im in images) + f"|{self.family}|{frames}").encode()).hexdigest()

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
        """The tokens of ``images`` (a list of same-size images, or :class:`Frames` of one clip),
        cached by content."""
        images = check_images(images)
        frames = isinstance(images, Frames)
        phi_ref = self.phi_ref
        key = self._media_key(images, frames)
        with self._lock:
            hit = self._features.get(key)
            cached = hit is not None
            if not cached:
                hit = self._on_model(self._encode_media, images, frames)
                self._features.put(key, hit)
        media, seconds = hit
        hidden = _with_zero_row(media.tokens)
        views_count = media.tokens.shape[0]
        return EncodedImages(
            hidden_states=hidden, cls_attention=torch.full(media.tokens.shape[:2], 1.0 / media.tokens.shape[1]),
            views=list(media.views), image_sizes=[(im.height, im.width) for im in images],
            vision_s=0.0 if cached else seconds, cached=[cached] * len(images),
            tower_s=[seconds / len(images)] * len(images), media_key=key,
            phi=view_phis(hidden.float(), None if media.map_rows is None else media.map_rows >= -1),
            phi_ref=phi_ref, drops_cls=(False,) * views_count, sources=media.sources, grid=media.grid, rule="qwen",
            layout=media.layout, clip=media.clip, layers=media.layers, map_rows=media.map_rows,
            token_noun=media.token_noun, token_px=media.token_px)

    def _encode_media(self, images: list[Image.Image], frames: bool) -> tuple[EncodedMedia, float]:
        media, seconds = clocked(lambda: self.backend.encode(images, frames), self.loaded.device)
        self.stats["tower_images"] += len(images)
        return media, seconds

    def view_pixels(self, images: Sequence[Image.Image], feats: EncodedImages,
                    side: int = TOWER_VIEW_SIDE) -> list[np.ndarray]:
        """Per view: the picture its tokens cover (the view's box), at the grid's aspect ratio."""
        images = check_images(images)
        rows, cols = feats.grid
        scale = side / max(rows, cols)
        size = (max(cols, round(cols * scale)), max(rows, round(rows * scale)))
        out = []
        for source, view in zip(feats.sources, feats.views):
            picture = images[source].convert("RGB")
            box = tuple(round(c) for c in view.box)
            if box != (0, 0, picture.width, picture.height):
                picture = picture.crop(box)
            out.append(np.asarray(picture.resize(size, Image.Resampling.BICUBIC)))
        return out

    def media_notes(self, feats: EncodedImages) -> list[str]:
        return self.backend.media_notes(self.model_id, _media_of(feats), feats.image_sizes)

    def _project_patches(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 1:].float()  # the tokens are already the language model's inputs

    # --- prompts and answers ------------------------------------------------------------------
    def token_prompt(self, feats: EncodedImages, question: str, selection: Selection | None) -> PromptInputs:
        """The prompt with every token, or with ``selection``'s kept tokens at their original positions."""
        if selection is not None and keeps_everything(feats, selection):
            selection = None  # every token kept: the model's own order, not the selection's
        kept = None if selection is None else [selection.keep_row(v) - 1 for v in range(feats.num_views)]
        return self.backend.prompt(question, _media_of(feats), kept)

    positions_default = "original"
    """Kept tokens keep their original positions (1-D or M-RoPE), as the reference's Qwen path does:
    the pipeline's positioned path answers, prefills and scores every prompt (:class:`Pipeline`)."""

    def _hand_over(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                   positions: str) -> tuple[PromptInputs, float]:
        return self.token_prompt(feats, question, selection), 0.0  # original positions; no projection

    def prompt_inputs(self, images: Sequence[Image.Image], question: str) -> dict:
        """The model's ordinary inputs: what ``model.generate(**inputs)`` takes for the unpruned answer."""
        images = check_images(images)
        return self.backend.model_inputs(images, question, isinstance(images, Frames))


def _media_of(feats: EncodedImages) -> EncodedMedia:
    """The backend's view of encoded features."""
    return EncodedMedia(tokens=feats.hidden_states[:, 1:], grid=feats.grid, views=feats.views, sources=feats.sources,
                        layout=feats.layout, clip=feats.clip, layers=feats.layers, map_rows=feats.map_rows,
                        token_noun=feats.token_noun, token_px=feats.token_px)


def _with_zero_row(tokens: torch.Tensor) -> torch.Tensor:
    """``[V, 1+N, D]``: the tokens after a zero row (where other models keep their CLS)."""
    return torch.nn.functional.pad(tokens, (0, 0, 1, 0))
