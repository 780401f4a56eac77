"""Every constant PruneSID uses, named once, with where it comes from.

Sources: the paper (arXiv 2603.09480, ICLR 2026) and the reference code
(GitHub ZhengyaoFang/PruneSID, ``prunesid/prunesid_llava/clip_encoder.py``).
Where they differ, the reference code wins: the published numbers came from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PruneSIDConfig:
    """Knobs of the LLaVA-1.5 selection rule (defaults = the reference code)."""

    tokens_per_group: int = 4
    """G = floor(K / 4) PSCA groups (reference: ``min_components=int(need_token_num / 4)``)."""

    min_groups: int = 1
    """Budgets K < 4 would give G = 0 groups, which crashes the reference
    (``pca_lowrank(q=0)``); we use at least one group so every K >= 2 works
    (docs/algorithm.md#small-budgets)."""

    threshold_budget_scale: float = 32.0
    """NMS threshold tau = (K / 32) * rho (reference: ``ratio = need_token_num / 32``)."""

    group_cap_per_64: int = 5
    """Upper bound per group: 5 * ceil(K / 64) (reference: ``group_upper_bound``)."""

    pca: Literal["exact", "randomized"] = "exact"
    """``exact``: deterministic top-G eigenvectors (same semantics as the
    reference's PCA, reproducible). ``randomized``: the reference's
    ``torch.pca_lowrank(q=G, niter=2)`` scheme driven by an explicit generator
    (docs/algorithm.md#exact-pca)."""

    randomized_niter: int = 2
    """Power iterations of the randomized PCA (reference: ``niter=2``)."""


DEFAULT_CONFIG = PruneSIDConfig()

# Dynamic ratio (paper Eq. 7; absent from the reference code).
DEFAULT_MIN_TOKENS = 8
"""Floor on a dynamic per-image budget: below this the PSCA has one or two groups."""

# Views of thousands of tokens (docs/algorithm.md#at-scale).
MAX_TOKENS_PER_VIEW = 10_000
"""Largest view (tokens N of one image, crop or frame) the app selects on: seconds, not minutes,
on a small CPU (``benchmarks/selection_scale.py`` on a shared 2-core machine, PERFORMANCE.md,
"Selection at scale"). ``select_tokens`` and ``select_tokens_qwen`` do not enforce it (they
select for any N, in time and memory about linear in N for N > D); ``prunesid_vlm`` refuses a
larger view and scales Qwen pictures down to it (a Qwen checkpoint's default ``max_pixels``
allows ~16,000 merged tokens)."""
