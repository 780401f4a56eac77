"""What the pipeline needs from a model family: one Protocol, implemented once per family.

An adapter turns images into tower views, tower outputs into the rows PruneSID selects
from, and kept rows back into the visual tokens the language model receives. It knows the
transformers classes of its family; nothing outside :mod:`prunesid_vlm` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from PIL import Image


RECEIVED = -1
"""In :meth:`Adapter.map_rows`: a patch the language model receives outside LLaVA-NeXT's crop map."""
NOT_RECEIVED = -2
"""In :meth:`Adapter.map_rows`: a patch in the padding that unpadding drops."""


@dataclass(frozen=True)
class ViewInfo:
    """Where one tower view (an image, an AnyRes base/crop, or a frame) comes from.

    ``box`` is ``(x0, y0, x1, y1)`` in the original image's pixels: the region the view's
    patch grid covers (for a crop, its part of the AnyRes canvas mapped back; it can reach
    past the image where the canvas is padded).
    """

    image: int
    kind: str  # "image" | "base" | "crop" | "frame" | "temporal patch" (a Qwen clip's two frames)
    box: tuple[float, float, float, float]
    crop_row: int = 0
    crop_col: int = 0


class Adapter(Protocol):
    """One model family's plumbing (see :mod:`prunesid_vlm.adapters.llava` for the reference one)."""

    family: str
    modality: str
    """Key of ``mm_encoder_outputs`` the features go to (``"image"`` or ``"video"``)."""
    one_clip: bool
    """True when all the images given are the frames of one clip (one placeholder run)."""
    grid: tuple[int, int]
    """Patch grid ``(rows, cols)`` of one view, after any pooling."""
    num_patches: int
    image_token_id: int
    """The placeholder id the visual features replace."""

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, list[ViewInfo]]:
        """``[V, 3, S, S]`` pixel values of one image's tower views, and where each view sits."""

    frame_views_differ: bool
    """True when a video frame gets other views than an image would (LLaVA-NeXT: its base view alone)."""

    def preprocess_frame(self, image: Image.Image) -> tuple[torch.Tensor, list[ViewInfo]]:
        """Like :meth:`preprocess`, for one frame of a video."""

    def postprocess(self, hidden: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tower outputs ``[V, 1+576, D]``, ``[V, 576]`` → the rows PruneSID selects from."""

    def prompt_inputs(self, images: list[Image.Image], question: str) -> dict:
        """The processor's outputs for the chat prompt (``input_ids`` with full placeholder runs)."""

    def drops_cls(self, view: ViewInfo) -> bool:
        """Whether a view's CLS is dropped after selection (it is then selected with one token
        more, so that it still hands over its budget)."""

    def map_rows(self, num_views: int, image_size: tuple[int, int]) -> torch.Tensor | None:
        """Long ``[V, N]`` for one image's views, or None when every patch is received and no
        token is added between them: per patch, the row of LLaVA-NeXT's crop map it lands on
        (each map row that is sent ends with one ``image_newline`` token), ``RECEIVED`` for a
        patch sent outside the map (the base view), ``NOT_RECEIVED`` for one that unpadding
        drops."""

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """``[T, D_vision]`` → ``[T, D_text]`` through the multimodal projector."""

    run_offsets: Callable[[torch.Tensor], torch.Tensor] | None
    """Kept tower rows of one view → their places in the picture's full placeholder run, for pruned
    prompts that keep original positions; None where the family hands kept tokens over at compact
    positions only."""

    def full_features(self, hidden: list[torch.Tensor], image_sizes) -> list[torch.Tensor]:
        """Per media item: the visual tokens of the model's ordinary path."""

    def pruned_features(self, hidden: list[torch.Tensor], keep: list[list[torch.Tensor]], image_sizes,
                        full: list[torch.Tensor], merged: list[list[torch.Tensor | None]] | None = None
                        ) -> list[torch.Tensor]:
        """Per media item: the visual tokens made of the kept rows (and merged tokens, if any)."""
