"""``select_tokens``: PruneSID's token selection for LLaVA-1.5-style CLIP towers.

Tensors in, one :class:`Selection` out; no model or UI code. The steps are the named
functions of :mod:`psca`, :mod:`similarity`, :mod:`nms` and :mod:`budget` (described in
docs/algorithm.md); this module validates the inputs and wires them together for a whole batch at once.
"""
from __future__ import annotations

import torch

from .budget import fill_budget, group_bounds, group_counts, pick_tokens, split_budget
from .config import DEFAULT_CONFIG, PruneSIDConfig
from .nms import intra_group_nms
from .psca import assign_groups, principal_components
from .result import Selection
from .similarity import patch_lengths, redundancy
from .validation import Budget, budget_tensor, check_features, check_finite


def select_tokens(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    config: PruneSIDConfig = DEFAULT_CONFIG,
    pca: str | None = None,
    generator: torch.Generator | None = None,
) -> Selection:
    """Choose which visual tokens to hand to the language model.

    Args:
        hidden_states: ``[B, 1+N, D]`` penultimate-layer states of the vision tower, CLS
            first; any float dtype, CPU or CUDA (computed in float32).
        cls_attention: ``[B, N]`` CLS row of the same layer's attention, summed over heads.
        num_tokens: tokens handed to the LLM, **CLS included** (as the reference counts);
            an int, or one budget per batch row (dynamic ratio). A budget ≥ 1+N keeps all.
        config: the rule's constants (defaults = the reference code).
        pca: ``"exact"`` (default, deterministic) or ``"randomized"`` (the reference's
            ``pca_lowrank`` scheme, drawn from ``generator``); overrides ``config.pca``.
        generator: random source for ``pca="randomized"``.

    Returns:
        A :class:`Selection`; ``keep`` is ``[B, max budget]`` tower indices in the
        reference's order (CLS, then group by group), padded with -1 where a row's budget
        is smaller.

    Raises:
        ValueError: on malformed inputs (ranks, shapes, mismatched B or N, non-finite
            values, an empty batch, budgets that are not integers ≥ 2).
    """
    check_features(hidden_states, cls_attention, scan_values=False)
    b, n = cls_attention.shape
    device = hidden_states.device
    budget = budget_tensor(num_tokens, b, device)
    # The patch norms are needed anyway; a NaN or inf in a patch shows up in them.
    lengths = patch_lengths(hidden_states)
    if not bool(torch.isfinite(lengths.sum())):
        check_finite("hidden_states", hidden_states)
        raise ValueError("hidden_states has values too large to normalise in float32 (|x| above ~1e19)")
    check_finite("hidden_states (CLS row)", hidden_states[:, 0])
    method = pca or config.pca

    keeps_all = budget >= n + 1
    effective = budget.clamp(max=n + 1)  # what is actually kept
    groups_per_row = torch.div(effective, config.tokens_per_group, rounding_mode="floor")
    groups_per_row = groups_per_row.clamp(min=config.min_groups, max=n)
    g_max = int(groups_per_row.max())

    importance = cls_attention.float()

    # 1. PSCA groups.
    components = principal_components(
        hidden_states, g_max, method=method, generator=generator, niter=config.randomized_niter
    )
    group = assign_groups(components, groups_per_row)  # (B, N)

    # 2. Redundancy and threshold (rho without forming the N×N similarity).
    rho = redundancy(hidden_states, lengths)
    tau = effective.float() / config.threshold_budget_scale * rho

    # 3. Intra-group NMS (similarities only inside groups, only where tau can suppress).
    nms = intra_group_nms(hidden_states, importance, group, tau, lengths)

    # 4. Budget per group.
    sizes = group_counts(group, g_max)
    survivors = group_counts(group, g_max, where=nms.survives)
    capped_budget = torch.where(keeps_all, torch.full_like(budget, n), effective)
    lower, upper = group_bounds(capped_budget, sizes, survivors, config.group_cap_per_64)
    tokens = split_budget(effective, lower, upper, survivors)
    target = (effective - 1 - lower.sum(dim=1)).clamp(min=0) + lower.sum(dim=1)
    tokens = fill_budget(tokens, upper, survivors, target)
    tokens = torch.where(keeps_all[:, None], sizes, tokens)

    # 5. Pick and emit.
    picked = pick_tokens(group, nms.survives, nms.importance_order, sizes, tokens, effective)
    return Selection(
        keep=picked.keep,
        num_tokens=effective,
        group=group,
        num_groups=groups_per_row,
        nms_rank=picked.nms_rank,
        suppressed_by=nms.suppressed_by,
        group_size=sizes,
        group_survivors=survivors,
        group_budget=tokens,
        importance=importance,
        rho=rho,
        tau=tau,
        phi=1.0 - rho,
        method="prunesid" if method == "exact" else "prunesid-randomized",
    )
