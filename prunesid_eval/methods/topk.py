"""CLS-attention top-k baseline: CLS plus the ``num_tokens − 1`` patches the CLS token
attends to most (layer −2, heads summed — the importance PruneSID and VisionZip use).

This is the importance-only rule (VisionZip's dominant tokens without contextual tokens,
FasterVLM's [CLS]-attention ranking); ties go to the lower patch index. Kept patches are
emitted in raster order after CLS.
"""
from __future__ import annotations

import torch

from prunesid.result import Selection
from ._common import Budget, Picked, descending_order, patch_count, run_rule, with_cls


def _core(hidden_states, cls_attention, k, *, keep_cls):
    m = patch_count(k, cls_attention.shape[1], keep_cls)
    patches = descending_order(cls_attention.float())[:, :m]  # (B, m)
    return Picked(with_cls(patches, keep_cls))


def topk_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    keep_cls: bool = True,
) -> Selection:
    """``num_tokens`` tokens: CLS (when ``keep_cls``) and the most-attended patches; ``generator`` unused."""
    n = cls_attention.shape[-1]
    return run_rule("topk", _core, hidden_states, cls_attention, num_tokens,
                    max_tokens=n + 1 if keep_cls else n, keep_cls=keep_cls)
