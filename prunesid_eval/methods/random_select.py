"""Random baseline: CLS plus ``num_tokens − 1`` patches drawn uniformly without replacement.

Randomness comes only from the ``generator`` passed in (a fresh one seeded with
``DEFAULT_SEED`` when none is), so the same generator state gives the same tokens.
Kept patches are emitted in raster order after CLS.
"""
from __future__ import annotations

import torch

from prunesid.result import Selection
from ._common import Budget, Picked, default_generator, patch_count, run_rule, with_cls


def _core(hidden_states, cls_attention, k, *, generator, keep_cls):
    b, n = cls_attention.shape
    m = patch_count(k, n, keep_cls)
    noise = torch.rand((b, n), generator=generator, device=generator.device).to(cls_attention.device)  # (B, N)
    patches = noise.topk(m, dim=1).indices  # m distinct patches per row, uniformly
    return Picked(with_cls(patches, keep_cls))


def random_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    keep_cls: bool = True,
) -> Selection:
    """``num_tokens`` tokens (CLS included when ``keep_cls``): uniformly random patches."""
    n = cls_attention.shape[-1]
    return run_rule("random", _core, hidden_states, cls_attention, num_tokens,
                    max_tokens=n + 1 if keep_cls else n, generator=default_generator(generator), keep_cls=keep_cls)
