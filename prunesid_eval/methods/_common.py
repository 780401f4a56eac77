"""Shared plumbing of the baseline selection rules: budgets, validation, the neutral
:class:`~prunesid.result.Selection` fields, and per-row budgets.

Every baseline core is a function ``core(hidden_states, cls_attention, k, **options)`` for
one budget ``k`` shared by the whole batch, returning a :class:`Picked`. :func:`run_rule`
validates the inputs, groups batch rows by budget (rows with equal budgets run in one
batched call), pads the rows to one ``[B, K]`` keep tensor and fills the Selection.

Neutral values of the PruneSID-only fields (baselines have no PSCA groups and no NMS):
``group`` all 0, ``num_groups`` 1, ``nms_rank`` and ``suppressed_by`` all −1,
``group_size`` = ``group_survivors`` = ``[N]``, ``group_budget`` = ``[kept patches]``,
``importance`` = the CLS attention given (whether or not the rule used it), ``rho`` and
``phi = 1 − rho`` computed as for PruneSID, ``tau`` NaN (no threshold).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from prunesid.similarity import redundancy
from prunesid.result import Selection
from prunesid.validation import Budget, budget_tensor, check_features

DEFAULT_SEED = 0
"""Seed of the generator a randomised rule uses when the caller passes none."""


@dataclass(frozen=True)
class Picked:
    """What one baseline core chose for a batch sharing one budget.

    ``keep``: long ``[B, k]`` tower indices (CLS = 0 first when the rule keeps it, then
    patches + 1), no padding. ``merged_tokens``: optional ``[B, M, D]`` tokens built from
    dropped patches; ``merged_into``: long ``[B, N]`` merged token of each patch, −1 if none.
    """

    keep: torch.Tensor
    merged_tokens: torch.Tensor | None = None
    merged_into: torch.Tensor | None = None


Core = Callable[..., Picked]


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fresh CPU one seeded with :data:`DEFAULT_SEED`."""
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(DEFAULT_SEED)


def run_rule(
    method: str,
    core: Core,
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    max_tokens: int | None = None,
    **options,
) -> Selection:
    """Validate, run ``core`` once per distinct budget, assemble a :class:`Selection`.

    ``max_tokens``: the most tokens the rule can hand over (``1 + N`` if it keeps CLS,
    ``N`` if not); larger budgets are clamped to it, as PruneSID clamps to ``1 + N``.
    """
    check_features(hidden_states, cls_attention)
    b, n = cls_attention.shape
    device = hidden_states.device
    budget = budget_tensor(num_tokens, b, device).clamp(max=max_tokens or n + 1)

    picks: list[Picked | None] = [None] * b
    values = budget.tolist()
    for k in sorted(set(values)):
        rows = [i for i, v in enumerate(values) if v == k]
        index = torch.tensor(rows, device=device)
        whole = len(rows) == b
        subset = (lambda t: t) if whole else (lambda t: t[index])
        row_options = {key: subset(v) if _per_row(v, b) else v for key, v in options.items()}
        picked = core(subset(hidden_states), subset(cls_attention), int(k), **row_options)
        for j, i in enumerate(rows):
            picks[i] = Picked(
                picked.keep[j],
                None if picked.merged_tokens is None else picked.merged_tokens[j],
                None if picked.merged_into is None else picked.merged_into[j],
            )
    return assemble(method, picks, hidden_states, cls_attention)


def _per_row(value, batch: int) -> bool:
    """Whether an option is a per-row tensor (``[B, ...]``) to split with the batch."""
    return isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == batch


def assemble(method: str, picks: list[Picked], hidden_states: torch.Tensor, cls_attention: torch.Tensor) -> Selection:
    """One Selection from per-row picks (``keep`` ``[k_i]``, merged ``[M_i, D]``), padded."""
    b, n = cls_attention.shape
    device = hidden_states.device
    width = max(p.keep.numel() for p in picks)
    keep = torch.full((b, width), -1, dtype=torch.long, device=device)
    for i, p in enumerate(picks):
        keep[i, : p.keep.numel()] = p.keep
    merged_tokens = merged_into = None
    merged_counts = torch.zeros(b, dtype=torch.long, device=device)
    if any(p.merged_tokens is not None for p in picks):
        m = max(0 if p.merged_tokens is None else p.merged_tokens.shape[0] for p in picks)
        merged_tokens = hidden_states.new_zeros((b, m, hidden_states.shape[-1]))
        merged_into = torch.full((b, n), -1, dtype=torch.long, device=device)
        for i, p in enumerate(picks):
            if p.merged_tokens is not None:
                merged_tokens[i, : p.merged_tokens.shape[0]] = p.merged_tokens
                merged_into[i] = p.merged_into
                merged_counts[i] = p.merged_tokens.shape[0]
    kept = (keep >= 0).sum(dim=1)
    patches_kept = (keep > 0).sum(dim=1)
    rho = redundancy(hidden_states)
    return Selection(
        keep=keep,
        num_tokens=kept + merged_counts,
        group=torch.zeros((b, n), dtype=torch.long, device=device),
        num_groups=torch.ones(b, dtype=torch.long, device=device),
        nms_rank=torch.full((b, n), -1, dtype=torch.long, device=device),
        suppressed_by=torch.full((b, n), -1, dtype=torch.long, device=device),
        group_size=torch.full((b, 1), n, dtype=torch.long, device=device),
        group_survivors=torch.full((b, 1), n, dtype=torch.long, device=device),
        group_budget=patches_kept[:, None],
        importance=cls_attention.float(),
        rho=rho,
        tau=torch.full((b,), float("nan"), device=device),
        phi=1.0 - rho,
        method=method,
        merged_tokens=merged_tokens,
        merged_into=merged_into,
    )


def with_cls(patches: torch.Tensor, keep_cls: bool) -> torch.Tensor:
    """Long ``[B, k]`` tower indices: patch indices ``[B, m]`` sorted into raster order, + 1,
    with CLS (0) in front when ``keep_cls``."""
    tower = patches.sort(dim=1).values + 1
    if not keep_cls:
        return tower
    return torch.cat([tower.new_zeros((tower.shape[0], 1)), tower], dim=1)


def patch_count(k: int, n: int, keep_cls: bool) -> int:
    """Patches a rule keeping ``k`` tokens selects (one slot is CLS when ``keep_cls``)."""
    return max(0, min(k - 1 if keep_cls else k, n))


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Long ``[B, N]``: indices by descending score, ties → lower index (deterministic)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices
