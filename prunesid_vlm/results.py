"""What the pipeline hands out: encoded media, one generation, and a full-vs-pruned comparison.

All tensors here are CPU tensors, so the objects can live in a visitor's session state and
be deep-copied without touching the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prunesid.result import Selection

from .adapters.base import ViewInfo


@dataclass
class EncodedImages:
    """Vision-tower outputs of a list of images, one row per tower view, with everything the
    selection needs besides them (φ of each view, the calibration φ_ref, which views drop CLS).

    ``V`` views: one per image for LLaVA-1.5, base + crops per image for LLaVA-NeXT, one per
    frame for LLaVA-NeXT-Video (all frames form one clip, ``image`` 0).
    """

    hidden_states: torch.Tensor
    """``[V, 1+N, D]`` layer −2 states (CPU, model dtype), CLS first. N = 576 for LLaVA-1.5 and
    NeXT views; for NeXT-Video the 2×2-pooled frame tokens (N = 144, the tower's CLS in front)."""
    cls_attention: torch.Tensor
    """Float32 ``[V, N]``: CLS → patch attention of that layer, heads summed."""
    views: list[ViewInfo]
    """Per view: which image it belongs to, its kind and the pixel box it covers."""
    image_sizes: list[tuple[int, int]]
    """``(height, width)`` of each original image."""
    vision_s: float
    """Seconds of tower work for the views that were not cached (0 when all were)."""
    cached: list[bool]
    """Per image: its features came from the cache."""
    tower_s: list[float]
    """Per image: seconds its tower pass took when it ran (a share of the batch's pass)."""
    media_key: str = ""
    """Content hash of the images, in order (what answers are cached by)."""
    phi: torch.Tensor | None = None
    """Float32 ``[V]``: information score φ = 1 − ρ of each view."""
    phi_ref: float = 0.0
    """Mean φ of the model's calibration images (the single-image dynamic ratio's reference)."""
    drops_cls: tuple[bool, ...] = ()
    """Per view: its CLS is dropped after selection (LLaVA-NeXT crops), so it is selected with one more."""
    sources: tuple[int, ...] = ()
    """Per view: the index of the image it was cut from. Unlike ``views[i].image`` (the media item
    it is answered with), this tells a clip's frames apart."""

    map_rows: torch.Tensor | None = None
    """Long ``[V, N]`` (see ``Adapter.map_rows``): per patch, its LLaVA-NeXT crop-map row (unique
    across the images), ``RECEIVED`` (−1) outside the map, ``NOT_RECEIVED`` (−2) in the padding;
    None when every patch is received and nothing is added between them."""

    grid: tuple[int, int] | None = None
    """``(rows, cols)`` of every view's token grid when it is not the model's fixed one (Qwen's
    merged tokens follow the image's aspect ratio)."""
    rule: str = "llava"
    """Which PruneSID rule these tokens take: ``"llava"`` (CLS attention) or ``"qwen"`` (no CLS)."""
    layout: tuple = ()
    """CLS-free families: what the family's prompt needs to rebuild its placeholders and positions
    (Qwen: each media item's ``(t, h, w)`` patch grid; see ``backends.base.EncodedMedia``)."""
    clip: bool = False
    """CLS-free families: the views are the parts of one clip (else one view per image)."""
    token_noun: str = "patches"
    """What the page calls the selectable tokens (CLS-free families: ``"merged tokens"``, ``"tokens"``…)."""
    token_px: int = 0
    """CLS-free families: side, in the model's input pixels, of the square one token covers (0: not said)."""
    layers: tuple[torch.Tensor, ...] = ()
    """CLS-free families: per-token features injected past the input (Qwen3-VL's DeepStack), ``[V, N, D]`` each."""

    @property
    def visible(self) -> torch.Tensor | None:
        """Bool ``[V, N]``: the patches the language model receives on the full path (a LLaVA-NeXT
        crop loses those in the padding); None when it receives all. The selection runs on these
        patches only, and φ is measured on them."""
        return None if self.map_rows is None else self.map_rows >= -1

    @property
    def num_views(self) -> int:
        return int(self.hidden_states.shape[0])

    @property
    def num_patches(self) -> int:
        return int(self.hidden_states.shape[1]) - 1

    def view_rows(self, image: int) -> torch.Tensor:
        """Long: the view rows of one image, in order (base first for NeXT)."""
        return torch.tensor([i for i, v in enumerate(self.views) if v.image == image], dtype=torch.long)


@dataclass(frozen=True)
class TokenCounts:
    """The visual tokens one prompt hands to the language model, counted where they come from.

    ``handed[v]``: tokens of tower view ``v`` (kept patches, its CLS where it keeps one, merged
    tokens); ``newlines``: tokens of no view (LLaVA-NeXT's row ends on the crop map). Their sum
    is the number of visual placeholders in the prompt."""

    handed: tuple[int, ...]
    newlines: int = 0
    kinds: tuple[str, ...] = ()
    """Per view: ``"image"``, ``"base"``, ``"crop"``, ``"frame"`` or (a Qwen clip's two frames)
    ``"temporal patch"``."""

    @property
    def total(self) -> int:
        return sum(self.handed) + self.newlines

    def to_dict(self) -> dict:
        return {"per_view": list(self.handed), "newlines": self.newlines, "total": self.total}

    def breakdown(self) -> str:
        """E.g. ``"64 (base) + 63+64+64+64 (4 crops) + 20 newlines"``; ``""`` for a single view."""
        if len(self.handed) == 1 and not self.newlines:
            return ""
        parts, kinds = [], self.kinds or ("view",) * len(self.handed)
        for kind in dict.fromkeys(kinds):  # in order of first appearance
            counts = [str(n) for n, k in zip(self.handed, kinds) if k == kind]
            plural = kind.replace("patch", "patches") if kind.endswith("patch") else kind + "s"
            label = kind if len(counts) == 1 else f"{len(counts)} {plural}"
            parts.append(f"{'+'.join(counts)} ({label})")
        if self.newlines:
            parts.append(f"{self.newlines} newline{'s' if self.newlines != 1 else ''}")
        return " + ".join(parts)


@dataclass(frozen=True)
class Answer:
    """One greedy generation with the visual tokens of all views (full) or of a selection (pruned)."""

    text: str
    tokens: tuple[int, ...]
    first_logits: torch.Tensor
    """Float32 ``[vocab]``: logits of the first answer token (from the prefill)."""
    visual_tokens: int
    prompt_tokens: int
    project_s: float
    prefill_s: float
    decode_s: float
    cached: bool = False
    """True when this object came from the pipeline's answer cache (its timings are those of the
    run that made it)."""
    image_tokens_per_layer: tuple[int, ...] = ()
    """With in-LLM stages: the image tokens each decoder layer saw (empty without)."""


RESULT_SCHEMA = "prunesid-result/1"
"""The name and version of the JSON shape every result takes (``docs/result-schema.md``)."""


@dataclass
class CompareResult:
    """Both answers of one question, with token counts, timings and fidelity.

    Timings (seconds) per run (``"full"``, ``"pruned"``): ``vision_s`` the tower pass
    (measured when it ran, even if the features were cached since: both runs share it),
    ``selection_s`` choosing the tokens (0 for the full run), ``project_s`` the projector,
    ``prefill_s`` the first language-model forward, ``decode_s`` the remaining greedy steps,
    ``total_s`` their sum. GPU timings are taken after ``cuda.synchronize``.

    ``fidelity``: KL(p_full ‖ p_pruned) of the first answer token in nats (0 = the pruned
    prompt leaves the first-token distribution unchanged; see ``prunesid_vlm/fidelity.py``).
    """

    full_answer: str
    pruned_answer: str
    visual_tokens_full: int
    visual_tokens_pruned: int
    prompt_tokens: dict[str, int]
    timings: dict[str, dict[str, float]]
    fidelity: float
    first_token_agrees: bool
    same_answer: bool
    budgets: list[int]
    """Per view: the budget asked of the selection (CLS included)."""
    selection: Selection
    model_id: str
    family: str
    features_cached: bool
    full_tokens: list[int] = field(default_factory=list)
    pruned_tokens: list[int] = field(default_factory=list)
    answers_cached: dict[str, bool] = field(default_factory=dict)
    """Per run: the answer came from the pipeline's cache (timed when it ran)."""
    device: str = "cpu"
    """Where the model ran (``"cpu"`` or ``"cuda"``)."""
    prefill_repeats: int = 1
    """Prefill-only passes behind each prefill time (their median; 1: the generation's own)."""
    counts: dict[str, TokenCounts] = field(default_factory=dict)
    """Per run (``"full"``, ``"pruned"``): where its visual tokens come from (sums to ``visual_tokens_*``)."""
    positions: str = "compact"
    """Where the pruned prompt put its kept tokens (``pipeline.POSITION_MODES``)."""

    @property
    def prefill_speedup(self) -> float:
        """Measured full / pruned prefill time (below 1: pruning made the prefill slower)."""
        return self.timings["full"]["prefill_s"] / max(self.timings["pruned"]["prefill_s"], 1e-12)

    @property
    def prefill_bound(self) -> float:
        """Full / pruned prompt length: the speed-up a prefill whose cost grew linearly with the
        sequence would show. Attention grows faster, so a measured speed-up can exceed it somewhat;
        far above it means the timing is wrong."""
        return self.prompt_tokens["full"] / max(self.prompt_tokens["pruned"], 1)

    def run_dict(self, run: str) -> dict:
        """One run (``"full"`` or ``"pruned"``) as the result schema names it (docs/result-schema.md)."""
        return {"answer": self.full_answer if run == "full" else self.pruned_answer,
                "tokens": list(self.full_tokens if run == "full" else self.pruned_tokens),
                "visual_tokens": self.visual_tokens_full if run == "full" else self.visual_tokens_pruned,
                "prompt_tokens": self.prompt_tokens[run],
                "timings": dict(self.timings[run])}

    def to_dict(self) -> dict:
        """JSON-ready, in the one result schema of the project (``docs/result-schema.md``): the model,
        the selection per view, each run's answer, token counts and timings, the fidelity, the prefill."""
        return {
            "schema": RESULT_SCHEMA,
            "model": {"id": self.model_id, "family": self.family, "device": self.device},
            "selection": [self.selection.to_dict(row) for row in range(self.selection.batch_size)],
            "budgets": list(self.budgets),
            "positions": self.positions,
            "token_counts": {run: counts.to_dict() for run, counts in self.counts.items()},
            "full": self.run_dict("full"),
            "pruned": self.run_dict("pruned"),
            "fidelity": {"first_token_kl_nats": self.fidelity, "first_token_agrees": self.first_token_agrees,
                         "same_answer": self.same_answer},
            "prefill": {"speedup": self.prefill_speedup, "bound": self.prefill_bound, "repeats": self.prefill_repeats},
        }
