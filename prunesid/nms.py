"""Redundancy and intra-group non-maximum suppression.

Reference (``batch_similarity_nms``): inside each PSCA group, repeatedly take the alive
member with the largest importance, record it, and kill the alive members of the same
group whose cosine similarity to it exceeds tau. The reference runs one Python iteration
per pick on a ``[B, G, N, N]`` tensor.

Here the same greedy result is computed as the fixed point of a matrix iteration
(Cluster-NMS, Zheng et al. 2021): order all patches by importance; let ``M[i, j]`` say
"i comes before j, is in j's group and is more similar than tau". A patch survives iff
no *surviving* earlier patch suppresses it. Iterating ``alive = not any(alive_i & M_ij)``
from "all alive" fixes one more rank of the order per step and stops changing exactly at
the greedy answer, which is unique — so a converged iteration *is* greedy NMS, usually
after a handful of steps instead of one step per pick.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Cosine similarities of unit vectors computed in float32 exceed 1 by at most ~1e-6;
# a threshold above this cannot suppress anything, so the N×N matrix is not needed.
_SIMILARITY_CEILING = 1.0 + 1e-3
# On CUDA, test convergence every few steps to avoid a host sync per step.
_STEPS_PER_CHECK_CUDA = 4


def unit_patches(hidden_states: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B, N, D]``: L2-normalised patch states (CLS dropped)."""
    return F.normalize(hidden_states[:, 1:].float(), p=2, dim=-1)


def redundancy_from_units(units: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B]``: rho, the mean cosine similarity over patch pairs i < j, in O(N·D).

    Uses Σ_{i<j} S_ij = (‖Σ_i u_i‖² − Σ_i ‖u_i‖²) / 2 instead of forming S.
    """
    n = units.shape[1]
    total = units.sum(dim=1).pow(2).sum(dim=-1)
    diagonal = units.pow(2).sum(dim=(1, 2))
    pairs = n * (n - 1) / 2
    return (total - diagonal) / 2 / max(pairs, 1)


def redundancy_from_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B]``: rho from a full ``[B, N, N]`` similarity matrix (mean of the pairs i < j).

    Summed exactly as the reference sums it (the strict upper triangle, zeros elsewhere):
    a different order moves rho in its last bit, which can flip an ``S > tau`` near-tie.
    """
    n = similarity.shape[-1]
    return torch.triu(similarity, diagonal=1).sum(dim=(-1, -2)) / max(n * (n - 1) // 2, 1)


def needs_similarity(tau: torch.Tensor) -> torch.Tensor:
    """Bool ``[B]``: rows whose threshold can suppress something (tau below the ceiling)."""
    return tau <= _SIMILARITY_CEILING


@dataclass(frozen=True)
class NmsResult:
    survives: torch.Tensor
    """Bool ``[B, N]``: True for NMS picks."""
    suppressed_by: torch.Tensor
    """Long ``[B, N]``: patch index of the pick that suppressed the patch, -1 for picks."""
    importance_order: torch.Tensor
    """Long ``[B, N]``: rank of each patch by importance (0 = most important; ties → lower index)."""


def importance_ranks(importance: torch.Tensor) -> torch.Tensor:
    """Long ``[B, N]``: rank of each patch by descending importance, ties broken by index.

    This matches the reference's ``max`` (first index wins among equal scores).
    """
    order = torch.sort(importance, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def intra_group_nms(
    similarity: torch.Tensor | None,
    importance: torch.Tensor,
    group: torch.Tensor,
    tau: torch.Tensor,
) -> NmsResult:
    """Greedy NMS inside each group, for all groups and batch rows at once.

    similarity: float ``[B, N, N]`` cosine similarities, or None when no row can suppress
    anything (every ``tau`` above 1); importance: float ``[B, N]``; group: long ``[B, N]``;
    tau: float ``[B]``. Suppression is ``similarity > tau`` (strict, as in the reference).
    """
    b, n = importance.shape
    ranks = importance_ranks(importance)
    no_suppressor = torch.full((b, n), -1, dtype=torch.long, device=importance.device)
    if similarity is None:
        return NmsResult(torch.ones(b, n, dtype=torch.bool, device=importance.device), no_suppressor, ranks)

    same_group = group[:, :, None] == group[:, None, :]  # (B, N, N)
    earlier = ranks[:, :, None] < ranks[:, None, :]  # i before j
    can_suppress = same_group & earlier & (similarity > tau[:, None, None])  # M[i, j]
    edges = can_suppress.to(torch.float32)

    alive = torch.ones(b, n, dtype=torch.bool, device=importance.device)
    steps_per_check = _STEPS_PER_CHECK_CUDA if importance.is_cuda else 1
    for _ in range(n):  # converges in at most n steps (one rank fixed per step)
        previous = alive
        for _ in range(steps_per_check):
            hit = torch.bmm(alive.to(torch.float32)[:, None, :], edges)[:, 0]  # (B, N) suppressors alive
            alive = hit == 0
        if torch.equal(alive, previous):
            break

    # The suppressor of j is the earliest (by rank) pick i with M[i, j].
    by_pick = can_suppress & alive[:, :, None]
    rank_if_pick = torch.where(by_pick, ranks[:, :, None], n)  # (B, N, N)
    best_rank, suppressor = rank_if_pick.min(dim=1)
    suppressed_by = torch.where(alive | (best_rank == n), no_suppressor, suppressor)
    return NmsResult(alive, suppressed_by, ranks)
