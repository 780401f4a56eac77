"""VisionZip (Yang et al., CVPR 2025; github.com/dvlab-research/VisionZip,
``visionzip/clip_encoder.py``): dominant tokens by CLS attention, the rest merged into a
few contextual tokens.

The rule as its code runs on LLaVA-1.5 (``visionzip(model, dominant=54, contextual=10)``
for 64 tokens; ``dominant`` counts CLS, ``dominant_num = dominant − 1`` patches):

1. **Dominant.** CLS plus the ``dominant − 1`` patches with the largest CLS attention of
   layer −2 (heads summed), emitted in tower order (CLS first, patches in raster order:
   the code's ``masked_select``).
2. **Contextual.** The remaining ``R`` patches, in raster order. Targets: every
   ``step = max(1, R // contextual)``-th of them, the first ``contextual``. Every other
   remaining patch goes to the target its (L2-normalised) metric is most similar to
   (``argmax``, first target on ties). Contextual token of a target =
   ``hidden[target] + mean(hidden[assigned])`` (the mean is 0 when nothing is assigned) —
   note: the target itself is *added* to its members' mean, it is not averaged with them.
3. Output: ``dominant`` kept rows (CLS first) then ``contextual`` merged tokens, so the
   LLM gets ``dominant + contextual = num_tokens`` tokens.

Deviations (also in the registry's ``deviations``):

* **Split for any budget.** The code takes ``dominant`` and ``contextual`` as arguments;
  the paper's LLaVA-1.5 settings are 54+10 (64), 108+20 (128), 162+30 (192), i.e.
  contextual = 10/64 of the budget. We use ``contextual = round(num_tokens · 10 / 64)``
  (Python rounding) unless ``contextual=`` is passed, capped so the rest fits.
* **Metric.** The code compares tokens by the *keys* of layer −2's self-attention
  (averaged over heads), captured with a patched ``CLIPAttention.forward``. The cached
  features here hold the layer −2 hidden states, not the keys, so by default the metric is
  the hidden states themselves; pass ``metric=`` (``[B, 1+N, D']``, e.g. the keys) to use
  the code's exact metric.
* **Ties** in the attention ranking go to the lower patch index (``topk`` in the code
  leaves them unspecified); the arithmetic runs in float32 and the merged tokens are cast
  back to the hidden states' dtype (the code runs in the model's dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prunesid.result import Selection
from ._common import Budget, Picked, descending_order, run_rule, with_cls

CONTEXTUAL_PER_64 = 10
"""Contextual tokens per 64 of budget (paper/README settings 54+10, 108+20, 162+30)."""


def contextual_count(num_tokens: int, num_patches: int) -> int:
    """Default contextual tokens for a budget (CLS included): round(K · 10/64), leaving room for CLS."""
    return max(0, min(round(num_tokens * CONTEXTUAL_PER_64 / 64), num_tokens - 1, num_patches))


def _core(hidden_states, cls_attention, k, *, contextual, metric):
    b, n = cls_attention.shape
    device = hidden_states.device
    c = contextual_count(k, n) if contextual is None else max(0, min(int(contextual), k - 1))
    d = min(k - 1 - c, n)  # dominant patches (CLS is the k-th dominant token)
    c = min(c, n - d)
    order = descending_order(cls_attention.float())
    dominant = order[:, :d]  # (B, d) patch indices
    keep = with_cls(dominant, keep_cls=True)  # (B, 1 + d): CLS, dominant in raster order
    if c == 0:
        return Picked(keep)

    is_dominant = torch.zeros((b, n), dtype=torch.bool, device=device).scatter_(1, dominant, True)
    rest = torch.sort(is_dominant.to(torch.int8), dim=1, stable=True).indices[:, : n - d]  # (B, R) raster order
    r = n - d
    step = max(1, r // c)
    targets = torch.arange(0, r, step, device=device)[:c]  # (c,) positions within `rest`
    is_target = torch.zeros(r, dtype=torch.bool, device=device)
    is_target[targets] = True
    others = (~is_target).nonzero().squeeze(1)  # (R − c,)

    source = hidden_states[:, 1:] if metric is None else metric[:, 1:].to(device)
    units = F.normalize(source.float().gather(1, rest[..., None].expand(-1, -1, source.shape[-1])), dim=-1)  # (B, R, D')
    assign = (units[:, others] @ units[:, targets].transpose(1, 2)).argmax(dim=-1)  # (B, R − c) target slot

    states = hidden_states[:, 1:].float().gather(1, rest[..., None].expand(-1, -1, hidden_states.shape[-1]))  # (B, R, D)
    sums = states.new_zeros((b, c, states.shape[-1])).scatter_add_(
        1, assign[..., None].expand(-1, -1, states.shape[-1]), states[:, others])  # (B, c, D)
    counts = torch.zeros((b, c), device=device).scatter_add_(1, assign, torch.ones_like(assign, dtype=torch.float32))
    merged = states[:, targets] + sums / counts.clamp(min=1)[..., None]  # (B, c, D)

    slot = torch.empty((b, r), dtype=torch.long, device=device)
    slot[:, targets] = torch.arange(c, device=device)
    slot[:, others] = assign
    merged_into = torch.full((b, n), -1, dtype=torch.long, device=device).scatter_(1, rest, slot)
    return Picked(keep, merged.to(hidden_states.dtype), merged_into)


def visionzip_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    contextual: int | None = None,
    metric: torch.Tensor | None = None,
) -> Selection:
    """``num_tokens`` tokens: CLS + dominant patches (kept rows) + contextual tokens (merged).

    ``generator`` unused. ``contextual``: number of contextual tokens (default 10/64 of the
    budget). ``metric``: ``[B, 1+N, D']`` features to compare tokens by (default: the hidden states).
    """
    if metric is not None and metric.shape[:2] != hidden_states.shape[:2]:
        raise ValueError(f"metric must be [B, 1+N, D'] like hidden_states, got {tuple(metric.shape)}")
    return run_rule("visionzip", _core, hidden_states, cls_attention, num_tokens,
                    contextual=contextual, metric=metric)
