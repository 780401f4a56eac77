"""``select_tokens_qwen``: PruneSID's rule for Qwen2-VL / Qwen2.5-VL (the reference's
``prunesid_qwen``), on the merged tokens the language model receives.

Qwen's vision tower has no CLS token, so the rule differs from the LLaVA one
(docs/algorithm.md#qwen):

* budget ``K′ = max(round(N · num_tokens / 576), 16)`` for ``N`` merged tokens (nothing is pruned
  when N ≤ 16), with no CLS slot;
* PSCA on ``sigmoid(tokens)`` with ``G = max(⌊K′/4⌋, 4)`` components; **importance is the token's
  loading on its own component**, |V_{i,g(i)}|, which also orders the NMS;
* ``ρ′`` is the mean of the cosine-similarity matrix's upper triangle *including the diagonal*
  over all N² entries, ``τ = max(18·K′/N, 1) · ρ′``;
* the same bounds, proportional split and fill as the LLaVA rule, tokens emitted group by group,
  sorted by position when more than 150 are kept.

The steps are the shared functions of :mod:`psca`, :mod:`similarity`, :mod:`nms` and :mod:`budget`,
run on the tokens with a zero row in front where those functions expect the CLS row (it is never
read: they skip row 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .budget import fill_budget, group_bounds, group_counts, pick_tokens, split_budget
from .nms import intra_group_nms
from .psca import assign_groups, principal_components
from .result import Selection
from .similarity import patch_lengths, redundancy
from .validation import Budget, budget_tensor, check_finite


@dataclass(frozen=True)
class QwenConfig:
    """Constants of the reference's Qwen rule (``prunesid_qwen/modeling_qwen2_vl.py``)."""

    reference_tokens: int = 576
    """``num_tokens`` is a budget for 576 tokens, scaled to the image's N (``round(N·K/576)``)."""
    min_tokens: int = 16
    """At least 16 tokens are kept; images of at most 16 merged tokens are not pruned."""
    tokens_per_group: int = 4
    min_groups: int = 4
    """G = max(⌊K′/4⌋, 4)."""
    threshold_tokens: float = 18.0
    """τ = max(K′ / (N / 18), 1) · ρ′."""
    group_cap_per_64: int = 5
    position_order_above: int = 150
    """More kept tokens than this are emitted in position order (the reference sorts them)."""
    randomized_niter: int = 2


QWEN_CONFIG = QwenConfig()


def qwen_budget(num_merged: int, num_tokens: int, config: QwenConfig = QWEN_CONFIG) -> int:
    """K′ for ``num_merged`` tokens: ``max(round(N · num_tokens / 576), 16)`` (round half to even,
    as Python's ``round``), or N itself when N ≤ 16 (nothing pruned)."""
    if num_merged <= config.min_tokens:
        return num_merged
    return min(num_merged, max(round(num_merged * num_tokens / config.reference_tokens), config.min_tokens))


def select_tokens_qwen(
    tokens: torch.Tensor,
    num_tokens: Budget,
    *,
    config: QwenConfig = QWEN_CONFIG,
    pca: str = "exact",
    generator: torch.Generator | None = None,
    scale: bool = True,
) -> Selection:
    """Choose which merged visual tokens a Qwen2-VL / Qwen2.5-VL language model receives.

    Args:
        tokens: ``[B, N, D]`` (or ``[N, D]``) merged tokens after the vision merger; one batch row
            per image or frame; any float dtype (computed in float32).
        num_tokens: the reference's ``need_token_num`` (a budget for 576 tokens, scaled to N), an
            int or one per row.
        pca: ``"exact"`` (deterministic) or ``"randomized"`` (the reference's ``pca_lowrank``
            scheme, from ``generator``).
        scale: ``False`` when ``num_tokens`` already is K′ per row (a caller that shared a budget
            across frames); it is then only capped at N.

    Returns:
        A :class:`Selection` with ``cls_row=False``: ``keep`` holds indices into N in the
        reference's order, ``-1`` padded; ``importance`` is each token's loading on its group's
        component; ``num_tokens`` is K′ per row.
    """
    if tokens.ndim == 2:
        tokens = tokens[None]
    if tokens.ndim != 3 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be [B, N, D] with B, N ≥ 1, got {tuple(tokens.shape)}")
    check_finite("tokens", tokens)
    b, n, _ = tokens.shape
    device = tokens.device
    asked = budget_tensor(num_tokens, b, device)
    need = torch.tensor([qwen_budget(n, int(k), config) if scale else min(int(k), n) for k in asked.tolist()],
                        device=device)
    keeps_all = need >= n
    groups_per_row = torch.div(need, config.tokens_per_group, rounding_mode="floor").clamp(min=config.min_groups, max=n)
    g_max = int(groups_per_row.max())

    padded = torch.nn.functional.pad(tokens, (0, 0, 1, 0))  # a zero row where the shared steps skip CLS
    components = principal_components(padded, g_max, method=pca, generator=generator, niter=config.randomized_niter)
    group = assign_groups(components, groups_per_row)
    importance = components.abs().gather(2, group[..., None])[..., 0].float()

    lengths = patch_lengths(padded)
    pairs = redundancy(padded, lengths)  # mean over i < j
    rho = (pairs * (n * (n - 1) / 2) + n) / (n * n)  # upper triangle with the diagonal, over N²
    ratio = (need.float() / (n / config.threshold_tokens)).clamp(min=1.0)
    tau = ratio * rho
    nms = intra_group_nms(padded, importance, group, tau, lengths)

    sizes = group_counts(group, g_max)
    survivors = group_counts(group, g_max, where=nms.survives)
    lower, upper = group_bounds(need, sizes, survivors, config.group_cap_per_64)
    shares = split_budget(need, lower, upper, survivors, reserved=0)
    target = (need - lower.sum(dim=1)).clamp(min=0) + lower.sum(dim=1)
    shares = fill_budget(shares, upper, survivors, target)
    shares = torch.where(keeps_all[:, None], sizes, shares)
    picked = pick_tokens(group, nms.survives, nms.importance_order, sizes, shares, need, with_cls=False)
    keep = picked.keep
    by_position = need > config.position_order_above
    if bool(by_position.any()):
        ordered = torch.sort(torch.where(keep >= 0, keep, n + 1), dim=1).values
        keep = torch.where(by_position[:, None], torch.where(ordered > n, -1, ordered), keep)
    if bool(keeps_all.any()):
        everything = torch.arange(keep.shape[1], device=device).expand(b, -1)
        keep = torch.where(keeps_all[:, None], torch.where(everything < n, everything, -1), keep)
    return Selection(
        keep=keep, num_tokens=need, group=group, num_groups=groups_per_row, nms_rank=picked.nms_rank,
        suppressed_by=nms.suppressed_by, group_size=sizes, group_survivors=survivors, group_budget=shares,
        importance=importance, rho=rho, tau=tau, phi=1.0 - pairs,
        method="prunesid" if pca == "exact" else "prunesid-randomized", cls_row=False)
