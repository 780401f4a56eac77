"""DivPrune (Alvar et al., CVPR 2025; github.com/vbdi/divprune, ``LLaVA/llava/model/llava_arch.py``
``DivPrune``): the subset of visual tokens that greedily maximises the minimum pairwise
distance (a max-min diversity problem), with cosine distance ``1 − cos``.

The rule as its code runs: distance matrix ``D = 1 − cos`` among the image's tokens. First
pick: the token whose nearest *other* token is farthest (``topk(D, 2, largest=False)[1]``,
the second-smallest distance of each column, the smallest being the token itself). Each next
pick: the token whose distance to the already-picked set (``min`` over picked rows) is
largest (``argmax``: first index on ties). The picks are then sorted into their original
order (``keep_indexs.sort()``). No CLS: LLaVA feeds only patches to the LLM, so DivPrune
chooses ``num_tokens`` patches.

Deviations (also in the registry):

* **Features.** The code prunes the *projected* visual tokens (the LLM's input embeddings,
  after ``mm_projector``). The cached features here are the tower's layer −2 patch states
  (the projector's input); pass ``features=`` (``[B, N, D']``, e.g. the projected rows) to
  run on the code's features.
* **Budget.** The code takes a ratio (``SUBSET_RATIO``; 0.098 ≈ 56/576 … 0.1 in its
  scripts, ``round(ratio · 576)`` tokens); here the count is given directly.
* **Self-distance.** The first pick masks the diagonal (nearest other token) instead of
  taking the second-smallest entry, and picked tokens are masked out of later picks; both
  only differ from the code when tokens are exact duplicates (where float noise in the
  self-distance could make the code re-pick a token).
* Batched over images; the greedy loop runs ``num_tokens`` steps of ``[B, N]`` work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prunesid.result import Selection
from ._common import Budget, Picked, run_rule, with_cls


def max_min_greedy(distance: torch.Tensor, k: int) -> torch.Tensor:
    """Long ``[B, k]``: DivPrune's greedy picks, in pick order, from a ``[B, N, N]`` distance matrix."""
    b, n, _ = distance.shape
    rows = torch.arange(b, device=distance.device)
    eye = torch.eye(n, dtype=torch.bool, device=distance.device)
    nearest = distance.masked_fill(eye, float("inf")).amin(dim=1) if n > 1 else distance.new_zeros((b, n))  # (B, N)
    picks = torch.empty((b, k), dtype=torch.long, device=distance.device)
    picked = torch.zeros((b, n), dtype=torch.bool, device=distance.device)
    closest = nearest  # first step: distance to the nearest other token
    for i in range(k):
        pick = closest.masked_fill(picked, float("-inf")).argmax(dim=1)  # (B,)
        picks[:, i] = pick
        picked[rows, pick] = True
        step = distance[rows, pick]  # (B, N): distance of every token to the new pick
        closest = step if i == 0 else torch.minimum(closest, step)
    return picks


def _core(hidden_states, cls_attention, k, *, features, native_dtype):
    n = cls_attention.shape[1]
    source = hidden_states[:, 1:] if features is None else features.to(hidden_states.device)
    units = F.normalize(source if native_dtype else source.float(), dim=-1)  # (B, N, D)
    distance = 1.0 - units @ units.transpose(1, 2)  # (B, N, N)
    picks = max_min_greedy(distance, min(k, n))
    return Picked(with_cls(picks, keep_cls=False))


def divprune_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    features: torch.Tensor | None = None,
    native_dtype: bool = False,
) -> Selection:
    """``num_tokens`` patches (no CLS) by greedy max-min cosine distance; ``generator`` unused.

    ``features``: ``[B, N, D']`` per-patch features to measure distance on (default: the
    tower's patch states ``hidden_states[:, 1:]``). ``native_dtype``: compute the distances in
    the features' own dtype (bf16/fp16 on a GPU), as the authors' code does, instead of float32."""
    n = cls_attention.shape[-1]
    if features is not None and features.shape[:2] != cls_attention.shape:
        raise ValueError(f"features must be [B, N, D'] with N = {n}, got {tuple(features.shape)}")
    return run_rule("divprune", _core, hidden_states, cls_attention, num_tokens, max_tokens=n, features=features,
                    native_dtype=native_dtype)
