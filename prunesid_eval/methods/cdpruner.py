"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for
Token Pruning in MLLMs", NeurIPS 2025; github.com/Theia-4869/CDPruner, ``llava/model/llava_arch.py``
``encode_images``): the visual tokens that maximise a determinantal point process conditioned on
the instruction.

The rule as its code runs on LLaVA-1.5:

1. **Similarity** ``S``: cosine between the projected visual tokens (the language model's input).
2. **Instruction relevance** ``r``: each patch's CLIP image embedding (the tower's layer −2 state
   through CLIP's ``post_layernorm`` and ``visual_projection``) against the CLIP text embedding
   of the instruction (in 77-token segments): ``r = mean over segments of −cos``, then scaled to
   ``(r − min + 1e-6) / (max − min)``. (The minus sign is the code's.) The relevance is computed
   by the model plumbing (it needs CLIP's text tower) and passed in here.
3. **Kernel** ``L = diag(r) · S · diag(r)``; the greedy MAP of the DPP picks ``T`` tokens, each time
   the one with the largest remaining marginal gain ``d_j²``, updated by incremental Cholesky steps
   (Chen et al., 2018), exactly as the code's loop.
4. The picks are sorted into raster order; no CLS (LLaVA's ``select_feature='patch'``).

Deviations (also in the registry):

* **Batched relevance scaling.** The code scales ``r`` by the minimum and maximum of the whole
  batch; here each image by its own (the same for one image, the code's case).
* **No instruction** (``relevance=None``): ``r = 1``, a DPP on similarity alone — reported as such.
* **Past the kernel's rank** (more picks than the features' width), the code picks the same tokens
  again; here the rest are the unpicked tokens by relevance (:func:`dpp_greedy_map`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prunesid.result import Selection
from ._common import Budget, Picked, run_rule, with_cls

RELEVANCE_EPS = 1e-6


def scale_relevance(relevance: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B, N]``: the code's ``(r − min + 1e-6) / (max − min)``, per image."""
    r = relevance.float()
    low, high = r.min(dim=1, keepdim=True).values, r.max(dim=1, keepdim=True).values
    return (r - low + RELEVANCE_EPS) / (high - low).clamp(min=RELEVANCE_EPS)


RANK_EPS = 1e-6
"""A remaining gain at or below ``RANK_EPS`` × the largest diagonal entry means the kernel's rank
is used up: no candidate adds a new direction."""


def dpp_greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Long ``[B, k]``: greedy MAP of the DPP with ``kernel`` ``[B, N, N]``, in pick order (the
    code's incremental Cholesky loop, batched).

    Once the kernel's rank is used up (every remaining gain ``<= RANK_EPS · max diag``, which
    happens when ``k`` exceeds the features' width), the code's loop takes the square root of
    negative round-off and picks the same tokens again. Here the remaining picks are the unpicked
    tokens by their diagonal entry (their relevance): ``k`` distinct tokens, and the same picks as
    the code's wherever its picks are distinct."""
    b, n, _ = kernel.shape
    rows = torch.arange(b, device=kernel.device)
    cis = torch.zeros((k, b, n), dtype=kernel.dtype, device=kernel.device)
    diagonal = torch.diagonal(kernel, dim1=1, dim2=2)
    gains = diagonal.clone()
    floor = RANK_EPS * diagonal.amax(dim=-1)
    picked = torch.zeros((b, n), dtype=torch.bool, device=kernel.device)
    picks = torch.empty((k, b), dtype=torch.long, device=kernel.device)
    for i in range(k):  # k picks, each one [B, N] update
        j = torch.argmax(gains, dim=-1)
        best = gains[rows, j]
        exhausted = ~(best > floor)  # NaN included
        if exhausted.any():
            by_diagonal = torch.argmax(diagonal.masked_fill(picked, -float("inf")), dim=-1)
            j = torch.where(exhausted, by_diagonal, j)
            best = gains[rows, j]
        picks[i] = j
        update = (kernel[rows, j] - torch.einsum("tb,tbn->bn", cis[:i, rows, j], cis[:i])) / \
            torch.sqrt(best.clamp(min=1e-30)).unsqueeze(-1)
        update = update.masked_fill(exhausted.unsqueeze(-1), 0.0)
        cis[i] = update
        gains -= torch.square(update)
        picked[rows, j] = True
        gains[rows, j] = -float("inf")
    return picks.t()


def _core(hidden_states, cls_attention, k, *, features, relevance):
    n = cls_attention.shape[1]
    source = hidden_states[:, 1:] if features is None else features.to(hidden_states.device)
    units = F.normalize(source.float(), dim=-1)
    similarity = units @ units.transpose(1, 2)
    r = torch.ones_like(cls_attention, dtype=torch.float32) if relevance is None else scale_relevance(relevance)
    kernel = r.unsqueeze(2) * similarity * r.unsqueeze(1)
    picks = dpp_greedy_map(kernel, min(k, n))
    return Picked(with_cls(picks, keep_cls=False))


def cdpruner_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    features: torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
) -> Selection:
    """``num_tokens`` patches (no CLS) by the conditional DPP; ``generator`` unused.

    ``features``: ``[B, N, D']`` tokens to measure similarity on (the code: the projected ones;
    default the tower's patch states). ``relevance``: ``[B, N]`` raw instruction relevance
    (``mean −cos`` of CLIP image and text embeddings), scaled here; None: no instruction."""
    n = cls_attention.shape[-1]
    for name, value, shape in (("features", features, None), ("relevance", relevance, cls_attention.shape)):
        if value is not None and (value.shape[:2] != cls_attention.shape if shape is None else value.shape != shape):
            raise ValueError(f"{name} must match the {tuple(cls_attention.shape)} patches, got {tuple(value.shape)}")
    return run_rule("cdpruner", _core, hidden_states, cls_attention, num_tokens, max_tokens=n, features=features,
                    relevance=relevance)
