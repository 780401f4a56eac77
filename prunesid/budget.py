"""How many tokens each PSCA group gets, and which ones (docs/algorithm.md#budget: bounds,
split, fill, pick and emit).

Every function works on a whole batch at once; per-group tensors are ``[B, G]`` with
groups beyond a row's own count padded as empty (size 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def group_counts(labels: torch.Tensor, num_groups: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """Long ``[B, num_groups]``: how many patches carry each label (only where ``where`` is True)."""
    ones = torch.ones_like(labels) if where is None else where.long()
    counts = torch.zeros(labels.shape[0], num_groups, dtype=torch.long, device=labels.device)
    return counts.scatter_add_(1, labels, ones)


def group_bounds(
    budget: torch.Tensor, sizes: torch.Tensor, survivors: torch.Tensor, cap_per_64: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds per group, ``([B, G], [B, G])`` (step 6).

    lo_g = min(1, c_g); up_g = min(cap·⌈K/64⌉, c_g, n_g), then — as the reference's
    ``while`` loop does — every up_g is raised by the same t (capped at c_g), with t the
    smallest integer that makes Σ up_g ≥ K. Here t is found for all rows at once, by
    bisection (Σ min(up_g + t, c_g) grows with t): O(G · log K) work and [B, G] memory.
    Requires Σ c_g ≥ K (budgets that keep everything are handled by the caller).
    """
    lower = sizes.clamp(max=1)
    cap = cap_per_64 * torch.div(budget + 63, 64, rounding_mode="floor")  # 5·⌈K/64⌉
    upper = torch.minimum(torch.minimum(cap[:, None], sizes), survivors)

    def enough(t: torch.Tensor) -> torch.Tensor:
        return torch.minimum(upper + t[:, None], sizes).sum(dim=1) >= budget

    # t = 0 may already suffice; t = K always does (every up_g reaches c_g, and Σ c_g ≥ K).
    low = torch.full_like(budget, -1)  # invariant: low does not suffice (or is -1), high does
    high = budget.clone()
    for _ in range(max(int(budget.max()), 1).bit_length() + 1):
        middle = torch.div(low + high, 2, rounding_mode="floor")
        fits = enough(middle.clamp(min=0))
        high = torch.where(fits, middle, high)
        low = torch.where(fits, low, middle)
    t = high.clamp(min=0)
    upper = torch.minimum(upper + t[:, None], sizes)
    return lower, upper


def split_budget(
    budget: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, survivors: torch.Tensor, reserved: int = 1
) -> torch.Tensor:
    """Long ``[B, G]``: tokens per group before filling (step 7).

    R = max(K − reserved − Σ lo, 0) slots are shared in proportion to n_g by rounding the
    cumulative share (fp32, round half to even, as the reference does). ``reserved`` is the CLS
    slot of the LLaVA rule (1); the Qwen rule has none (0).
    """
    remaining = (budget - reserved - lower.sum(dim=1)).clamp(min=0)  # R
    share = survivors / survivors.sum(dim=1, keepdim=True)  # float32, as in the reference
    cumulative = torch.round(torch.cumsum(share, dim=1) * remaining[:, None]).long()
    portion = cumulative - torch.nn.functional.pad(cumulative[:, :-1], (1, 0))
    return torch.minimum(portion + lower, upper)


def fill_budget(
    tokens: torch.Tensor, upper: torch.Tensor, survivors: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Long ``[B, G]``: top up groups, most NMS survivors first, until Σ = target (step 8).

    The reference visits groups one by one adding ``min(up_g − k_g, still needed)``; that
    greedy order equals ``min(room_g, max(need − room of the groups before, 0))``.
    """
    order = torch.argsort(survivors, dim=1, descending=True)  # the reference's (unstable) tie order
    room = (upper - tokens).gather(1, order)
    need = (target - tokens.sum(dim=1)).clamp(min=0)
    room_before = torch.cumsum(room, dim=1) - room
    extra_sorted = torch.minimum(room, (need[:, None] - room_before).clamp(min=0))
    extra = torch.zeros_like(tokens).scatter_(1, order, extra_sorted)
    return tokens + extra


@dataclass(frozen=True)
class Picked:
    keep: torch.Tensor
    """Long ``[B, Kmax]``: tower indices, CLS then group by group (or patch indices alone), -1 padded."""
    nms_rank: torch.Tensor
    """Long ``[B, N]``: position in the group's pick list, -1 for suppressed patches."""


def pick_tokens(
    group: torch.Tensor,
    survives: torch.Tensor,
    ranks: torch.Tensor,
    sizes: torch.Tensor,
    tokens: torch.Tensor,
    num_tokens: torch.Tensor,
    with_cls: bool = True,
) -> Picked:
    """Keep the first k_g members of every group and emit them in the reference order (steps 9–10).

    Inside a group the priority is: NMS picks in pick order (= importance order), then the
    suppressed members by importance. One sort by the key (group, suppressed, rank) lays out
    every group's members in that priority; a patch's priority is its offset in its group.
    ``with_cls``: emit tower indices after a CLS slot (the LLaVA rule); else patch indices alone.
    """
    b, n = group.shape
    key = group * (2 * n) + (~survives).long() * n + ranks  # unique per patch
    order = torch.sort(key, dim=1).indices  # (B, N): patches by (group, priority)
    sorted_group = group.gather(1, order)
    group_start = torch.cumsum(sizes, dim=1) - sizes  # first sorted slot of each group
    position = torch.arange(n, device=group.device).expand(b, n)
    priority_sorted = position - group_start.gather(1, sorted_group)
    kept_sorted = priority_sorted < tokens.gather(1, sorted_group)

    priority = torch.empty_like(priority_sorted).scatter_(1, order, priority_sorted)
    nms_rank = torch.where(survives, priority, torch.full_like(priority, -1))

    # Kept patches keep their sorted order; the rest go to the end.
    emit_key = torch.where(kept_sorted, position, position + n)
    emit = order.gather(1, torch.sort(emit_key, dim=1).indices)  # patch indices
    k_max = int(num_tokens.max())
    if with_cls:
        keep = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=group.device), emit + 1], dim=1)[:, :k_max]
    else:
        keep = emit[:, :k_max]
    slot = torch.arange(k_max, device=group.device)[None, :]
    keep = torch.where(slot < num_tokens[:, None], keep, torch.full_like(keep, -1))
    return Picked(keep, nms_rank)
