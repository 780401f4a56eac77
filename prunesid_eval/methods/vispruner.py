"""VisPruner (Zhang et al., ICCV 2025; github.com/Theia-4869/VisPruner,
``llava/model/llava_arch.py`` ``encode_images``): important tokens by visual attention,
then duplicates removed among the rest until the diverse share is left.

The rule as its code runs on LLaVA-1.5 (``--important_ratio 0.5`` by default):

1. ``T_imp = int(T · important_ratio)`` patches with the largest CLS attention of layer −2
   (mean over heads in the code; the sum here ranks identically).
2. The other patches, *in attention order*, form the residual. While more than
   ``T_div = T − T_imp`` remain: split the residual alternately into ``a`` (even
   positions) and ``b`` (odd); score each ``a`` token by its largest cosine similarity to
   any ``b`` token (on the tower's patch states, before the projector); drop the
   ``r = min(8, R − T_div)`` highest-scoring ``a`` tokens; the new residual is the
   surviving ``a`` tokens (by descending score) followed by ``b``.
3. Keep important + residual; the LLM gets them in raster order (an index mask). No CLS
   (LLaVA's ``select_feature='patch'``), so ``T = num_tokens`` patches.

Deviations (also in the registry):

* **Odd residuals.** The code indexes with ``R // 2 − r`` rows, which fails when the
  residual has an odd length (``T_imp`` odd, e.g. 63 tokens at ratio 0.5); here ``a`` keeps
  all its ``ceil(R/2)`` tokens, so every budget works. Even lengths are unaffected.
* **Ties** (attention and duplicate scores) are broken by a stable sort (lower index /
  earlier position first); the code's ``argsort`` leaves them unspecified.
* The cosine similarities are computed once for all patches and gathered per round (same
  values as the code's per-round products, up to float rounding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prunesid.result import Selection
from ._common import Budget, Picked, descending_order, run_rule, with_cls

IMPORTANT_RATIO = 0.5
"""Share of important tokens (VisPruner's ``--important_ratio`` default)."""
TOKENS_PER_ROUND = 8
"""Duplicates removed per matching round (the code's ``min(8, R − T_div)``)."""


def remove_duplicates(similarity: torch.Tensor, residual: torch.Tensor, keep: int) -> torch.Tensor:
    """Long ``[B, keep]``: VisPruner's iterative matching-and-pruning of ``residual`` (``[B, R]``
    patch indices) down to ``keep`` tokens, given the ``[B, N, N]`` cosine similarities."""
    n = similarity.shape[-1]
    flat = similarity.flatten(1)  # (B, N·N): one gather per round instead of 3-way fancy indexing
    while keep > 0:
        r = min(TOKENS_PER_ROUND, residual.shape[1] - keep)
        if r <= 0:
            break
        a, other = residual[:, ::2], residual[:, 1::2]  # (B, ceil(R/2)), (B, floor(R/2))
        pairs = (a[:, :, None] * n + other[:, None, :]).flatten(1)  # (B, |a|·|b|)
        scores = flat.gather(1, pairs).view(a.shape[0], a.shape[1], other.shape[1]).amax(dim=-1)  # (B, |a|)
        distinct = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, r:]
        residual = torch.cat([a.gather(1, distinct), other], dim=1)  # (B, R − r)
    return residual


def _core(hidden_states, cls_attention, k, *, important_ratio, native_dtype):
    n = cls_attention.shape[1]
    t = min(k, n)
    important = int(t * important_ratio)
    diverse = t - important
    order = descending_order(cls_attention.float())  # (B, N)
    chosen = order[:, :important]
    if diverse > 0:
        states = hidden_states[:, 1:]
        units = F.normalize(states if native_dtype else states.float(), dim=-1)  # (B, N, D)
        similarity = units @ units.transpose(1, 2)  # (B, N, N)
        chosen = torch.cat([chosen, remove_duplicates(similarity, order[:, important:], diverse)], dim=1)
    return Picked(with_cls(chosen, keep_cls=False))


def vispruner_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    important_ratio: float = IMPORTANT_RATIO,
    native_dtype: bool = False,
) -> Selection:
    """``num_tokens`` patches (no CLS): important by CLS attention + diverse after duplicate
    removal; ``generator`` unused. ``native_dtype``: compare the states in their own dtype
    (bf16/fp16 on a GPU), as the authors' code does, instead of float32."""
    if not 0.0 <= important_ratio <= 1.0:
        raise ValueError(f"important_ratio must be in [0, 1], got {important_ratio}")
    n = cls_attention.shape[-1]
    return run_rule("vispruner", _core, hidden_states, cls_attention, num_tokens, max_tokens=n,
                    important_ratio=important_ratio, native_dtype=native_dtype)
