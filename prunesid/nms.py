"""Intra-group non-maximum suppression.

Reference (``batch_similarity_nms``): inside each PSCA group, repeatedly take the alive
member with the largest importance, record it, and kill the alive members of the same
group whose cosine similarity to it exceeds tau. The reference runs one Python iteration
per pick on a ``[B, G, N, N]`` tensor.

Here the same greedy result is computed as the fixed point of a matrix iteration
(Cluster-NMS, Zheng et al. 2021). Lay the patches out group by group, by importance
inside a group; let ``M[i, j]`` say "i comes before j in the same group and is more
similar than tau" (M is strictly upper triangular in that layout). A patch survives iff
no *surviving* earlier patch suppresses it. Iterating ``alive = not any(alive_i & M_ij)``
from "all alive" fixes one more position per step and stops changing exactly at the
greedy answer, which is unique — so a converged iteration *is* greedy NMS, usually
after a handful of steps instead of one step per pick.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .similarity import within_group_similarity

# Cosine similarities of unit vectors computed in float32 exceed 1 by at most ~1e-6;
# a threshold above this cannot suppress anything, so no similarity is needed.
_SIMILARITY_CEILING = 1.0 + 1e-3
# On CUDA, test convergence every few steps to avoid a host sync per step.
_STEPS_PER_CHECK_CUDA = 4


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


def greedy_survivors(edges: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, N]``: greedy NMS survivors for a strictly upper-triangular suppression
    relation ``edges[b, i, j]`` ("i, if it survives, suppresses the later j")."""
    b, n, _ = edges.shape
    weights = edges.to(torch.float32)
    alive = torch.ones(b, n, dtype=torch.bool, device=edges.device)
    steps_per_check = _STEPS_PER_CHECK_CUDA if edges.is_cuda else 1
    for _ in range(n):  # converges in at most n steps (one position fixed per step)
        previous = alive
        for _ in range(steps_per_check):
            hit = torch.bmm(alive.to(torch.float32)[:, None, :], weights)[:, 0]  # alive suppressors
            alive = hit == 0
        if torch.equal(alive, previous):
            break
    return alive


def intra_group_nms(
    units: torch.Tensor,
    importance: torch.Tensor,
    group: torch.Tensor,
    tau: torch.Tensor,
) -> NmsResult:
    """Greedy NMS inside each group, for all groups and batch rows at once.

    units: float ``[B, N, D]`` unit patch vectors (cosine similarity = dot product);
    importance: float ``[B, N]``; group: long ``[B, N]``; tau: float ``[B]``.
    Suppression is ``similarity > tau`` (strict, as in the reference).
    """
    b, n = importance.shape
    device = importance.device
    ranks = importance_ranks(importance)
    no_suppressor = torch.full((b, n), -1, dtype=torch.long, device=device)
    if not bool(needs_similarity(tau).any()):
        return NmsResult(torch.ones(b, n, dtype=torch.bool, device=device), no_suppressor, ranks)

    grouped = within_group_similarity(units, group, ranks)
    later = torch.ones(n, n, dtype=torch.bool, device=device).triu(diagonal=1)  # layout i < j
    edges = grouped.same_group() & later & (grouped.similarity > tau[:, None, None])
    alive = greedy_survivors(edges)  # layout coordinates

    # The suppressor of j is its earliest surviving neighbour (layout = importance order).
    by_pick = edges & alive[:, :, None]
    suppressed = by_pick.any(dim=1)
    first_pick = by_pick.to(torch.uint8).argmax(dim=1)  # first True along i
    suppressor = torch.where(suppressed, grouped.order.gather(1, first_pick), no_suppressor)

    survives = torch.empty_like(alive).scatter_(1, grouped.order, alive)
    suppressed_by = torch.empty_like(suppressor).scatter_(1, grouped.order, suppressor)
    return NmsResult(survives, suppressed_by, ranks)
