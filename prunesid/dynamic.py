"""Information-aware dynamic compression ratio (paper Eq. 7; absent from the reference code;
docs/algorithm.md#dynamic-ratio).

An image's information is φ = 1 − ρ, with ρ the mean pairwise cosine similarity of its
patches: a flat, repetitive image has ρ near 1 and little to say; a varied one has a
larger φ and gets more tokens.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

from .config import DEFAULT_MIN_TOKENS
from .similarity import redundancy


def information_score(hidden_states: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B]``: φ = 1 − ρ of each image (``hidden_states`` is ``[B, 1+N, D]``, CLS first)."""
    if hidden_states.dim() != 3 or hidden_states.shape[1] < 2:
        raise ValueError(f"hidden_states must be [B, 1+N, D] with N >= 1, got {tuple(hidden_states.shape)}")
    return 1.0 - redundancy(hidden_states)


def allocate_budgets(
    phi: torch.Tensor | Sequence[float],
    total: int,
    floor: int = DEFAULT_MIN_TOKENS,
    ceiling: int | Sequence[int] | torch.Tensor = 577,
) -> torch.Tensor:
    """Long ``[F]``: per-image budgets ∝ φ that sum exactly to ``total``, each in [floor, ceiling].

    ``ceiling`` is one bound for all images or one per image (a view with fewer tokens to
    give, e.g. a LLaVA-NeXT crop that is partly padding). For a set of images, crops or
    video frames sharing ``total`` tokens. Budgets are found
    by water-filling (``clamp(λ·φ, floor, ceiling)`` with λ set so the shares sum to
    ``total``); the integer parts are then completed by largest remainder (ties → earlier
    image), so the sum is exact and deterministic.
    """
    phi_t = torch.as_tensor(phi, dtype=torch.float64).flatten()
    count = phi_t.numel()
    if count == 0:
        raise ValueError("allocate_budgets needs at least one image")
    if not torch.isfinite(phi_t).all():
        raise ValueError("information scores must be finite")
    if not isinstance(total, numbers.Integral) or isinstance(total, bool):
        raise ValueError(f"total must be an int, got {type(total).__name__}")
    ceilings = torch.as_tensor(ceiling, dtype=torch.float64).flatten()
    ceilings = ceilings.expand(count) if ceilings.numel() == 1 else ceilings
    if ceilings.numel() != count or bool((ceilings < floor).any()):
        raise ValueError(f"ceiling must be one bound or one per image, each at least floor ({floor}); got {ceiling}")
    most = int(ceilings.sum())
    if not count * floor <= total <= most:
        bounds = f"{int(ceilings[0])}" if bool((ceilings == ceilings[0]).all()) else "their own most"
        raise ValueError(
            f"a total of {total} tokens cannot be split over {count} images with {floor} to "
            f"{bounds} tokens each (allowed total: {count * floor} to {most})"
        )
    weight = phi_t.clamp(min=1e-6)  # φ ≤ 0 (all patches identical) still gets the floor
    # Water-filling: share_i = clamp(λ·φ_i, floor, ceiling_i), with λ such that Σ share = total.
    # Σ share is monotone in λ, so bisection finds it (to float64 precision in ~100 halvings).
    low, high = 0.0, float(ceilings.max()) / float(weight.min())
    for _ in range(200):
        middle = (low + high) / 2
        if float((middle * weight).clamp(min=floor).minimum(ceilings).sum()) < total:
            low = middle
        else:
            high = middle
    share = (high * weight).clamp(min=floor).minimum(ceilings)
    budgets = share.floor().long().clamp(min=floor).minimum(ceilings.long())
    short = max(total - int(budgets.sum()), 0)
    remainder = share - share.floor()
    remainder[budgets >= ceilings.long()] = -1.0  # never push past the ceiling
    order = torch.sort(remainder, descending=True, stable=True).indices
    budgets[order[:short]] += 1
    return budgets


def dynamic_budget(
    phi: float,
    mean_budget: int,
    phi_ref: float,
    floor: int = DEFAULT_MIN_TOKENS,
    ceiling: int = 577,
) -> int:
    """Budget of a single image against a reference φ: round(K̄ · φ / φ_ref) in [floor, ceiling].

    ``phi_ref`` is the mean φ of a calibration set for the model, so that over images like
    the calibration set the average budget stays ``mean_budget``.
    """
    if not (phi_ref > 0 and float(phi_ref) < float("inf")):
        raise ValueError(f"phi_ref must be a positive number, got {phi_ref}")
    if mean_budget < 1:
        raise ValueError(f"mean_budget must be positive, got {mean_budget}")
    if phi != phi:  # NaN
        raise ValueError("phi is NaN")
    raw = round(mean_budget * max(float(phi), 0.0) / float(phi_ref))
    return int(min(max(raw, floor), ceiling))
