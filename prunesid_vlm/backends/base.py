"""What a CLS-free model family gives the pipeline: one Protocol, one implementation per family.

A *token backend* serves the families whose vision tower has no CLS token to read importance
from (SigLIP, Qwen's ViT, InternViT after its pixel shuffle): PruneSID then runs on the tokens
the language model receives, with the CLS-free rule (:func:`prunesid.select_tokens_qwen`,
docs/algorithm.md#qwen). The backend knows its family's transformers classes; the pipeline
(:class:`~prunesid_vlm.token_pipeline.TokenPipeline`) knows none of them and never asks which
family it runs.

Three calls make a backend:

* :meth:`TokenBackend.encode`: media → :class:`EncodedMedia` (the tokens per view, their grid,
  where each view comes from, and the family's own description of the media its prompt needs);
* :meth:`TokenBackend.prompt`: the question and the kept tokens → :class:`PromptInputs` (ids with
  one placeholder per kept token, the kept features, every token's position in the *full*
  prompt, and what else the model's forward takes);
* :meth:`TokenBackend.model_inputs`: the model's ordinary processor outputs, for ``generate``.

Add a family: one backend module here, a demo builder under :mod:`prunesid_vlm.demos`, a test,
and one :class:`~prunesid_vlm.families.Family` line (docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from PIL import Image

from ..adapters.base import ViewInfo


@dataclass(frozen=True)
class EncodedMedia:
    """One media item (a picture, several same-size pictures, or one clip) as a family sees it."""

    tokens: torch.Tensor
    """Float CPU ``[V, N, D]``: per view, the N tokens its language model would receive, in the
    model's order (raster order on ``grid``)."""
    grid: tuple[int, int]
    """``(rows, cols)`` of every view's tokens."""
    views: list[ViewInfo]
    sources: tuple[int, ...]
    """Per view, the index of the picture (or frame) it is drawn from."""
    layout: tuple = ()
    """What the family's prompt needs to rebuild its placeholders and positions (Qwen: each media
    item's ``(t, h, w)`` patch grid); opaque to the pipeline."""
    clip: bool = False
    """The views are the parts of one clip (frames or temporal patches), answered as one video."""
    map_rows: torch.Tensor | None = None
    """Long ``[V, N]`` or None (every token received, nothing between them): per token, the row of a
    crop canvas it lands on (each such row sent ends with a newline token), ``RECEIVED`` (−1) outside
    any canvas, ``NOT_RECEIVED`` (−2) in padding the model drops (see ``adapters.base``)."""
    token_noun: str = "tokens"
    """What the page calls these tokens (``"merged tokens"``, ``"pooled tokens"``)."""
    token_px: int = 0
    """Side, in the model's input pixels, of the square one token covers (0: not one square)."""
    layers: tuple[torch.Tensor, ...] = ()
    """Float CPU ``[V, N, D]`` each: per-token features the model injects elsewhere (Qwen3-VL's
    DeepStack features, one tensor per injected decoder layer), pruned with the same rows."""


@dataclass
class PromptInputs:
    """One prompt, ready for the language model: full or pruned, as the backend built it."""

    input_ids: torch.Tensor
    """Long ``[1, L]``: one placeholder per visual token handed over."""
    features: dict[str, list[torch.Tensor]]
    """``{"image": [...]}`` or ``{"video": [...]}``: the visual tokens of each placeholder run, in
    placeholder order, on the model's device and dtype."""
    positions: torch.Tensor
    """Long: every token's position in the *full* prompt (``[1, L]``, or ``[3, 1, L]`` for M-RoPE):
    kept tokens keep their original places."""
    next_position: int
    """Where the first generated token goes: the full prompt's largest position + 1."""
    visual_tokens: int
    token_id: int
    """The placeholder id the features replace."""
    features_form: str = "list"
    """How the family's ``mm_encoder_outputs`` takes them: ``"list"`` (one tensor per run),
    ``"tensor"`` (``[T, D]``, runs joined) or ``"batched"`` (``[1, T, D]``)."""
    encoder_extra: dict = field(default_factory=dict)
    """More fields of the ``mm_encoder_outputs`` entry (Qwen3-VL: ``deepstack_features``)."""
    forward_extra: dict = field(default_factory=dict)
    """More keyword arguments of the model's forward for the prefill (Gemma 3: ``token_type_ids``)."""


class TokenBackend(Protocol):
    """One CLS-free family's plumbing (see :mod:`prunesid_vlm.backends.qwen` for the reference one)."""

    family: str
    modality: str
    one_clip: bool
    frame_views_differ: bool
    grid: None
    """No fixed grid: it follows each picture (``EncodedImages.grid``)."""
    num_patches: int
    image_token_id: int
    in_llm_styles: tuple[str, ...]
    """The in-LLM stages this family's language model runs (``"fastv"``, ``"pyramiddrop"``)."""
    in_llm_limits: str
    """Why the others do not run (empty when all do)."""

    def encode(self, images: Sequence[Image.Image], frames: bool) -> EncodedMedia:
        """Run the vision side on ``images`` (``frames``: the frames of one clip)."""

    def prompt(self, question: str, media: EncodedMedia, kept: list[torch.Tensor] | None) -> PromptInputs:
        """The prompt with every token (``kept=None``) or, per view, the kept token indices in the
        order they are handed over."""

    def model_inputs(self, images: Sequence[Image.Image], question: str, frames: bool) -> dict:
        """The processor's outputs: what ``model.generate(**inputs)`` takes for the unpruned answer."""

    def text_ids(self, question: str) -> torch.Tensor:
        """``[1, L]``: one user turn holding ``question`` alone, in the model's chat format."""

    def text_forward_extra(self, ids: torch.Tensor) -> dict:
        """What else the forward takes for the text-only prompt ``ids`` (often nothing)."""

    def media_notes(self, model_id: str, media: EncodedMedia, image_sizes: list[tuple[int, int]]) -> list[str]:
        """Sentences on how the model sees these media (resizing, limits), for the page."""

    def drops_cls(self, view: ViewInfo) -> bool:
        """Always False: there is no CLS."""
