"""Encode once, then select and answer many times: a picture (or a clip) bound to a pipeline.

    media = pipe.media([image])                      # one tower pass (cached by content)
    kept = media.select(64)                          # pure, any thread
    media.answer("What is this?", kept).text
    media.compare("What is this?", 64).fidelity

segment-anything's ``SamPredictor`` (``set_image`` once, ``predict`` many times) is the model. The
object holds the pictures and their features only; every call goes to the pipeline, so its
caches, lock and GPU boundary apply as to a direct call, and two predictors on one pipeline share
nothing but the pipeline's caches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from prunesid.result import Selection

from .results import Answer, CompareResult, EncodedImages, TokenCounts


class _Pipeline(Protocol):
    """What a predictor calls: :class:`~prunesid_vlm.pipeline.Pipeline`'s public methods (named
    here, not imported: the pipeline imports this module)."""

    def select(self, feats: EncodedImages, num_tokens: int, **options: Any) -> Selection: ...
    def budgets(self, feats: EncodedImages, num_tokens: int, dynamic: bool = ..., mode: str = ...) -> list[int]: ...
    def token_counts(self, feats: EncodedImages, selection: Selection | None = ...) -> TokenCounts: ...
    def view_pixels(self, images: Sequence[Image.Image], feats: EncodedImages) -> list[np.ndarray]: ...
    def available_methods(self, feats: EncodedImages) -> list[str]: ...
    def answer(self, images: Sequence[Image.Image], question: str, selection: Selection | None = ...,
               **options: Any) -> Answer: ...
    def compare(self, images: Sequence[Image.Image], question: str, num_tokens: int = ...,
                **options: Any) -> CompareResult: ...
    def first_token_logits(self, images: Sequence[Image.Image], question: str,
                           selections: Sequence[Selection | None], **options: Any) -> list[torch.Tensor]: ...
    def loglikelihood(self, images: Sequence[Image.Image], question: str, continuation: str | Sequence[int],
                      selection: Selection | None = ..., **options: Any) -> tuple[float, bool]: ...


@dataclass(frozen=True)
class MediaPredictor:
    """``images`` (a list of pictures, or ``Frames`` of one clip) and their ``features`` on ``pipeline``."""

    pipeline: _Pipeline
    images: Sequence[Image.Image]
    features: EncodedImages

    def select(self, num_tokens: int, **options: Any) -> Selection:
        """See :meth:`Pipeline.select` (``dynamic``, ``method``, ``seed``, ``mode``, ``question``, ``options``)."""
        return self.pipeline.select(self.features, num_tokens, **options)

    def budgets(self, num_tokens: int, dynamic: bool = False, mode: str = "per_view") -> list[int]:
        return self.pipeline.budgets(self.features, num_tokens, dynamic, mode)

    def token_counts(self, selection: Selection | None = None) -> TokenCounts:
        return self.pipeline.token_counts(self.features, selection)

    def view_pixels(self) -> list[np.ndarray]:
        """Per tower view, the pixels its tokens cover (what the pictures are drawn on)."""
        return self.pipeline.view_pixels(self.images, self.features)

    def available_methods(self) -> list[str]:
        return self.pipeline.available_methods(self.features)

    def answer(self, question: str, selection: Selection | None = None, **options: Any) -> Answer:
        """See :meth:`Pipeline.answer` (``max_new_tokens``, ``in_llm``, ``positions``)."""
        return self.pipeline.answer(self.images, question, selection, **options)

    def compare(self, question: str, num_tokens: int = 64, **options: Any) -> CompareResult:
        """See :meth:`Pipeline.compare`."""
        return self.pipeline.compare(self.images, question, num_tokens, **options)

    def first_token_logits(self, question: str, selections: Sequence[Selection | None], **options: Any
                           ) -> list[torch.Tensor]:
        return self.pipeline.first_token_logits(self.images, question, selections, **options)

    def loglikelihood(self, question: str, continuation: str | Sequence[int], selection: Selection | None = None,
                      **options: Any) -> tuple[float, bool]:
        return self.pipeline.loglikelihood(self.images, question, continuation, selection, **options)
