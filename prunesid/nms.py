"""Intra-group non-maximum suppression (docs/algorithm.md#nms).

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

Groups never interact, so a large view (thousands of Qwen tokens) is solved a block of
whole groups at a time (:data:`NMS_BLOCK_TOKENS`): same answer, and memory that follows the
largest group rather than N × the largest group.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .similarity import group_major_order, within_group_similarity

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


def _fold_band(per_diagonal: torch.Tensor, combine) -> torch.Tensor:
    """``[M, tile]``: ``combine`` (e.g. ``torch.add``, ``torch.minimum``) over k of
    ``per_diagonal[k, m − k]`` — each band diagonal's entries folded onto their target tile."""
    width, m, _ = per_diagonal.shape
    folded = per_diagonal[0].clone()
    for k in range(1, width):
        folded[k:] = combine(folded[k:], per_diagonal[k, : m - k])
    return folded


def greedy_survivors(edges: torch.Tensor) -> torch.Tensor:
    """Bool ``[M, tile]``: greedy NMS survivors of a banded suppression relation.

    ``edges[k, m, i, j]``: position i of tile m, if it survives, suppresses position j of
    tile m + k (a later position; for k = 0, only i < j).
    """
    width, m, tile, _ = edges.shape
    weights = edges.to(torch.float32)
    alive = torch.ones(m, tile, dtype=torch.bool, device=edges.device)
    steps_per_check = _STEPS_PER_CHECK_CUDA if edges.is_cuda else 1
    for _ in range(m * tile):  # converges in at most one step per position
        previous = alive
        for _ in range(steps_per_check):
            # hits[k, m] = alive(tile m) @ edges[k, m]: suppressors of tile m + k still alive.
            hits = torch.matmul(alive.to(torch.float32)[None, :, None, :], weights)[:, :, 0]
            alive = _fold_band(hits, torch.add) == 0
        if torch.equal(alive, previous):
            break
    return alive


NMS_BLOCK_TOKENS = 2048
"""Views with more patches than this run their NMS one block of whole groups at a time
(:func:`intra_group_nms`). A block holds consecutive groups of the group-major layout up to
this many patches (a larger group is a block alone), so the band of similarities held at once
is about ``NMS_BLOCK_TOKENS`` × the block's largest group, instead of N × the view's largest
group, and the fixed point iterates only as long as that block needs. 2048 covers every view
of the reference models' usual sizes (LLaVA's 576, a Qwen view of up to ~2k merged tokens),
which keep the one-call, whole-batch path."""


def intra_group_nms(
    hidden_states: torch.Tensor,
    importance: torch.Tensor,
    group: torch.Tensor,
    tau: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> NmsResult:
    """Greedy NMS inside each group, for all groups and batch rows at once.

    hidden_states: ``[B, 1+N, D]`` with CLS first (similarity = cosine of the patch states);
    importance: float ``[B, N]``; group: long ``[B, N]``; tau: float ``[B]``.
    Suppression is ``similarity > tau`` (strict, as in the reference). ``lengths``: the
    patch norms (:func:`similarity.patch_lengths`), if already at hand.

    Groups never interact, so a view of more than :data:`NMS_BLOCK_TOKENS` patches is
    solved block by block (whole groups each, :func:`group_blocks`); the answer is the same.
    Memory: O(N·D) for the patch rows plus the band of one block (one group's block of
    similarities when a group is larger than a block).
    """
    b, n = importance.shape
    device = importance.device
    ranks = importance_ranks(importance)
    no_suppressor = torch.full((b, n), -1, dtype=torch.long, device=device)
    active = needs_similarity(tau)
    if not bool(active.any()):
        return NmsResult(torch.ones(b, n, dtype=torch.bool, device=device), no_suppressor, ranks)
    if n <= NMS_BLOCK_TOKENS:
        survives, suppressed_by = _banded_nms(hidden_states, group, ranks, tau, lengths)
        return NmsResult(survives, suppressed_by, ranks)

    survives, suppressed_by = torch.ones(b, n, dtype=torch.bool, device=device), no_suppressor
    order = group_major_order(group, ranks)  # (B, N): patches by (group, rank)
    for row in torch.nonzero(active).flatten().tolist():  # a row whose tau suppresses nothing keeps all
        sorted_group = group[row].gather(0, order[row])
        for start, stop in group_blocks(sorted_group, NMS_BLOCK_TOKENS):
            members = order[row, start:stop]  # patch indices, group by group, by rank inside a group
            states = F.pad(hidden_states[row, 1 + members], (0, 0, 1, 0))[None]  # (1, 1+n_block, D)
            block_lengths = None if lengths is None else lengths[row, members][None]
            labels = torch.unique_consecutive(sorted_group[start:stop], return_inverse=True)[1]  # 0, 1, ... in the block
            in_block = torch.arange(stop - start, device=device)[None]  # already in rank order
            alive, by = _banded_nms(states, labels[None], in_block, tau[row : row + 1], block_lengths)
            survives[row, members] = alive[0]
            suppressed_by[row, members] = torch.where(by[0] >= 0, members[by[0].clamp(min=0)], -1)
    return NmsResult(survives, suppressed_by, ranks)


def group_blocks(sorted_group: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """``[(start, stop)]``: the group-major layout of one row (its labels, non-decreasing) cut
    into runs of whole groups of at most ``limit`` patches (a larger group is a run alone)."""
    sizes = torch.unique_consecutive(sorted_group, return_counts=True)[1]
    blocks: list[tuple[int, int]] = []
    start = stop = 0
    for size in sizes.tolist():
        if stop > start and stop - start + size > limit:
            blocks.append((start, stop))
            start = stop
        stop += size
    blocks.append((start, stop))
    return blocks


def _banded_nms(
    hidden_states: torch.Tensor, group: torch.Tensor, ranks: torch.Tensor, tau: torch.Tensor, lengths: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(survives, suppressed_by)``, bool and long ``[B, N]``: greedy NMS on the band of
    same-group similarities (:func:`similarity.within_group_similarity`), all rows at once."""
    b, n = ranks.shape
    device = ranks.device
    sim = within_group_similarity(hidden_states, group, ranks, lengths=lengths)
    width, tile, per_row = sim.width, sim.tile, sim.tiles_per_row
    tile_tau = tau.repeat_interleave(per_row)  # (M,)
    later = torch.ones(width, 1, tile, tile, dtype=torch.bool, device=device)
    later[0, 0] = later[0, 0].triu(diagonal=1)  # same tile: only i < j
    edges = sim.band > tile_tau[None, :, None, None]
    edges &= sim.same_group()
    edges &= later
    order = sim.order
    del sim, later  # the similarities themselves are not needed past this point
    alive = greedy_survivors(edges)  # (M, tile), layout order

    # The suppressor of j is its earliest surviving neighbour (layout = importance order).
    edges &= alive[None, :, :, None]  # (width, M, tile_i, tile_j): suppressions by picks
    flat_m = edges.shape[1]
    source = torch.arange(flat_m, device=device)[:, None] * tile  # first flat position of tile m
    position_i = torch.arange(tile, dtype=torch.int16, device=device)[:, None]
    first_i = torch.where(edges, position_i, tile).amin(dim=2)  # (width, M, tile_j); tile = none
    del edges
    candidate = torch.where(first_i < tile, source + first_i, flat_m * tile)
    suppressor_position = _fold_band(candidate, torch.minimum)  # (M, tile): flat layout position or "none"

    layout_index = F.pad(order, (0, per_row * tile - n)).reshape(-1)  # flat position -> patch
    alive_rows = alive.reshape(b, per_row * tile)[:, :n]
    suppressed = suppressor_position.reshape(b, per_row * tile)[:, :n] < flat_m * tile
    position = suppressor_position.reshape(b, per_row * tile)[:, :n].clamp(max=flat_m * tile - 1)
    suppressor = torch.where(suppressed, layout_index[position], torch.full_like(position, -1))

    survives = torch.empty_like(alive_rows).scatter_(1, order, alive_rows)
    suppressed_by = torch.empty_like(suppressor).scatter_(1, order, suppressor)
    return survives, suppressed_by
