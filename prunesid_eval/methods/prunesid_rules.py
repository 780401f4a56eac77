"""PruneSID in the registry's signature: the fixed budget and the dynamic ratio.

Both wrap :func:`prunesid.select_tokens` (CLS kept; group-by-group emission order).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from prunesid.config import DEFAULT_MIN_TOKENS
from prunesid.dynamic import allocate_budgets, dynamic_budget, information_score
from prunesid.result import Selection
from prunesid.selection import select_tokens
from prunesid.validation import budget_tensor, check_features
from ._common import Budget


def prunesid_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    pca: str = "exact",
) -> Selection:
    """PruneSID with a fixed budget (``num_tokens`` counts CLS). ``pca="randomized"`` uses
    the reference's randomised PCA drawn from ``generator``."""
    return select_tokens(hidden_states, cls_attention, num_tokens, pca=pca, generator=generator)


def dynamic_budgets(
    hidden_states: torch.Tensor,
    num_tokens: Budget,
    *,
    phi_ref: float | None = None,
    floor: int = DEFAULT_MIN_TOKENS,
) -> list[int]:
    """Per-row budgets of the information-aware dynamic ratio (docs/algorithm.md#dynamic-ratio).

    With ``phi_ref`` (the model's calibration mean φ): each row gets
    ``round(K · φ / φ_ref)`` clamped to ``[floor, 1+N]``. Without it, the rows of the batch
    share ``Σ K`` in proportion to φ (a single row then keeps ``K``: there is nothing to
    compare its φ with).
    """
    b, tokens = hidden_states.shape[0], hidden_states.shape[1]
    budget = budget_tensor(num_tokens, b, hidden_states.device).clamp(max=tokens)
    phi = information_score(hidden_states)
    if phi_ref is not None:
        return [dynamic_budget(float(p), int(k), phi_ref, floor=floor, ceiling=tokens) for p, k in zip(phi, budget)]
    total = int(budget.sum())
    return [int(k) for k in allocate_budgets(phi, total, floor=min(floor, total // b), ceiling=tokens)]


def prunesid_dynamic_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    phi_ref: float | None = None,
    floor: int = DEFAULT_MIN_TOKENS,
    pca: str = "exact",
) -> Selection:
    """PruneSID-Dyn: PruneSID with each row's budget set by its information score φ = 1 − ρ.

    ``num_tokens`` is the *mean* budget K̄; the tokens handed over differ from it by design
    (``Selection.num_tokens`` has each row's). See :func:`dynamic_budgets` for ``phi_ref``.
    """
    check_features(hidden_states, cls_attention)
    budgets = dynamic_budgets(hidden_states, num_tokens, phi_ref=phi_ref, floor=floor)
    sel = select_tokens(hidden_states, cls_attention, budgets, pca=pca, generator=generator)
    return replace(sel, method="prunesid-dyn")
