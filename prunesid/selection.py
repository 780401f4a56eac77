"""``select_tokens``: PruneSID's token selection for LLaVA-1.5-style CLIP towers.

Tensors in, one :class:`Selection` out; no model or UI code. The steps are the named
functions of :mod:`psca`, :mod:`nms` and :mod:`budget`; this module validates the
inputs and wires them together for a whole batch at once.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

from .budget import fill_budget, group_bounds, group_counts, pick_tokens, split_budget
from .config import DEFAULT_CONFIG, PruneSIDConfig
from .nms import (
    intra_group_nms,
    needs_similarity,
    redundancy_from_similarity,
    redundancy_from_units,
    unit_patches,
)
from .psca import assign_groups, principal_components
from .result import Selection

Budget = int | Sequence[int] | torch.Tensor


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
    _check_features(hidden_states, cls_attention)
    b, n = cls_attention.shape
    device = hidden_states.device
    budget = _budget_tensor(num_tokens, b, device)
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

    # 2. Redundancy and threshold; the N×N similarity only where it can suppress anything.
    units = unit_patches(hidden_states)  # (B, N, D)
    rho = redundancy_from_units(units)
    tau = effective.float() / config.threshold_budget_scale * rho
    similarity = None
    if bool(needs_similarity(tau).any()):
        similarity = units @ units.transpose(1, 2)  # (B, N, N)
        rho = redundancy_from_similarity(similarity)  # the reference's own summation
        tau = effective.float() / config.threshold_budget_scale * rho

    # 3. Intra-group NMS.
    nms = intra_group_nms(similarity, importance, group, tau)

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


def _check_features(hidden_states: torch.Tensor, cls_attention: torch.Tensor) -> None:
    for name, tensor, rank in (("hidden_states", hidden_states, 3), ("cls_attention", cls_attention, 2)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != rank:
            raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    b, tokens, width = hidden_states.shape
    if b == 0:
        raise ValueError("empty batch: hidden_states has 0 rows")
    if tokens < 2 or width < 1:
        raise ValueError(f"hidden_states must be [B, 1+N, D] with N >= 1 and D >= 1, got {tuple(hidden_states.shape)}")
    if cls_attention.shape[0] != b:
        raise ValueError(f"batch size mismatch: hidden_states has {b} rows, cls_attention has {cls_attention.shape[0]}")
    if cls_attention.shape[1] != tokens - 1:
        raise ValueError(
            f"patch count mismatch: hidden_states has 1+{tokens - 1} tokens (CLS first) but "
            f"cls_attention has {cls_attention.shape[1]} entries; expected {tokens - 1}"
        )
    if cls_attention.device != hidden_states.device:
        raise ValueError(f"hidden_states is on {hidden_states.device} but cls_attention is on {cls_attention.device}")
    for name, tensor in (("hidden_states", hidden_states), ("cls_attention", cls_attention)):
        if not bool(torch.isfinite(tensor.abs().amax())):  # one reduction; NaN propagates
            raise ValueError(f"{name} contains NaN or infinite values")


def _budget_tensor(num_tokens: Budget, batch: int, device: torch.device) -> torch.Tensor:
    """Long ``[B]`` budgets from an int, a sequence or a tensor, validated."""
    if isinstance(num_tokens, torch.Tensor):
        if num_tokens.is_floating_point() or num_tokens.dtype == torch.bool or num_tokens.is_complex():
            raise ValueError(f"num_tokens must hold integers, got dtype {num_tokens.dtype}")
        if num_tokens.dim() == 0:
            values = [int(num_tokens)] * batch
        else:
            values = num_tokens.flatten().tolist()
    elif isinstance(num_tokens, numbers.Integral) and not isinstance(num_tokens, bool):
        values = [int(num_tokens)] * batch
    elif isinstance(num_tokens, Sequence) and not isinstance(num_tokens, (str, bytes)):
        values = list(num_tokens)
        for value in values:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"num_tokens must be integers, got {value!r}")
    else:
        raise ValueError(f"num_tokens must be an int or one int per batch row, got {num_tokens!r}")
    if len(values) != batch:
        raise ValueError(f"got {len(values)} budgets for a batch of {batch} rows")
    low = min(int(v) for v in values)
    if low < 2:
        raise ValueError(f"num_tokens must be at least 2 (CLS plus one patch), got {low}")
    return torch.tensor([int(v) for v in values], dtype=torch.long, device=device)
