"""Cosine similarity of the patches: the redundancy rho, and the pairs NMS compares
(docs/algorithm.md#redundancy, #nms).

The reference forms the full N×N similarity S (and a [B, G, N, N] copy of it per group),
but only two things are ever read from it:

* rho, the mean of S over the pairs i < j — which needs no S at all:
  Σ_{i<j} S_ij = (‖Σ_i u_i‖² − Σ_i ‖u_i‖²) / 2 for unit vectors u_i (O(N·D));
* S_ij for i and j in the *same* PSCA group (NMS never compares across groups) — about a
  tenth of the N² pairs at G = 16.

So the patches are laid out group by group and S is computed only on the square tiles of
that layout that hold a pair of the same group: one batched matrix product over the
tiles near the block diagonal instead of a full N×N×D product.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_NORM_EPS = 1e-12  # F.normalize's default

SIMILARITY_TILE = 32
"""Side of the similarity tiles. Smaller tiles waste fewer products on pairs from
different groups but make more, smaller matrix products. Measured for N = 576, G = 16 on
the CPU (tiles 16, 24, 32, 48): 32 and 48 equal within noise, 16 and 24 slower."""


def patch_lengths(hidden_states: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B, N]``: the L2 norm of every patch state (CLS excluded).

    Non-finite iff the patch holds a NaN or an infinity (or overflows float32 when squared).
    """
    return torch.linalg.vector_norm(hidden_states[:, 1:].float(), dim=-1)


def redundancy(hidden_states: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 ``[B]``: rho, the mean cosine similarity over patch pairs i < j, in O(N·D).

    ``hidden_states`` is ``[B, 1+N, D]`` with CLS first (CLS is excluded); ``lengths`` are
    its :func:`patch_lengths`, if already at hand. Uses
    Σ_{i<j} S_ij = (‖Σ_i u_i‖² − Σ_i ‖u_i‖²) / 2 for the unit vectors u_i = x_i / ‖x_i‖,
    and Σ_i u_i as one matrix-vector product (weights 1/‖x_i‖), so neither S nor the
    unit vectors are formed. Evaluated in float32 like the reference's own sum (in
    float64 the threshold moves by a last bit and one reference case flips an
    ``S > tau`` near-tie; measured 169 vs 168 of 170).
    """
    patches = hidden_states[:, 1:].float()
    n = patches.shape[1]
    lengths = torch.linalg.vector_norm(patches, dim=-1) if lengths is None else lengths  # = patch_lengths
    clamped = lengths.clamp_min(_NORM_EPS)  # as F.normalize
    unit_sum = torch.bmm(clamped.reciprocal()[:, None, :], patches)[:, 0]  # (B, D) = Σ_i u_i
    total = unit_sum.pow(2).sum(dim=-1)
    diagonal = (lengths / clamped).pow(2).sum(dim=-1)  # Σ_i ‖u_i‖² (= N unless a patch is 0)
    pairs = n * (n - 1) / 2
    return (total - diagonal) / 2 / max(pairs, 1)


@dataclass(frozen=True)
class BandedSimilarity:
    """Cosine similarities of same-group pairs, with the patches laid out group by group.

    The layout puts each batch row's patches in (group, rank) order and cuts it into
    tiles of ``tile`` positions (the last tile of a row is padded). Tiles are numbered
    flat over the batch: tile ``m`` is tile ``m % tiles_per_row`` of row ``m // tiles_per_row``.
    Every same-group pair lies in a tile pair (m, m + k) with ``0 ≤ k < width``.
    """

    order: torch.Tensor
    """Long ``[B, N]``: patch index at each layout position of a row."""
    tile_group: torch.Tensor
    """Long ``[M, tile]``: group label of every layout position, unique across batch rows
    (padding positions get a label of their own), non-decreasing in flat order."""
    band: torch.Tensor
    """Float ``[width, M, tile, tile]``: ``band[k, m, i, j]`` = similarity of position i of
    tile m and position j of tile m + k (exact wherever the two share a group; meaningless
    elsewhere, and zero past the last tile)."""
    tiles_per_row: int

    @property
    def tile(self) -> int:
        return self.tile_group.shape[1]

    @property
    def width(self) -> int:
        return self.band.shape[0]

    def same_group(self) -> torch.Tensor:
        """Bool ``[width, M, tile, tile]``: the two positions of a band entry share a group."""
        return self.tile_group[None, :, :, None] == shift_tiles(self.tile_group, self.width)[:, :, None, :]


def shift_tiles(per_tile: torch.Tensor, width: int, fill: int = -1) -> torch.Tensor:
    """``[width, M, ...]``: entry ``[k, m]`` is ``per_tile[m + k]`` (``fill`` past the end)."""
    m = per_tile.shape[0]
    padded = torch.cat([per_tile, per_tile.new_full((width - 1, *per_tile.shape[1:]), fill)])
    return torch.stack([padded[k : k + m] for k in range(width)])


def group_major_order(group: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Long ``[B, N]``: patches sorted by (group, rank); ``rank`` is a permutation per row."""
    n = group.shape[1]
    return torch.sort(group * n + rank, dim=1).indices


def within_group_similarity(
    hidden_states: torch.Tensor,
    group: torch.Tensor,
    rank: torch.Tensor,
    tile: int = SIMILARITY_TILE,
    lengths: torch.Tensor | None = None,
) -> BandedSimilarity:
    """Cosine similarities of every same-group pair, on a band of tiles (see the module doc).

    hidden_states: ``[B, 1+N, D]`` with CLS first (CLS is excluded); group: long ``[B, N]``
    labels ``0 ≤ g < N``; rank: long ``[B, N]``, a permutation per row that orders patches
    inside their group; lengths: the :func:`patch_lengths`, if already at hand.
    Similarities are computed in float32 on the unit vectors.
    """
    b, tokens, d = hidden_states.shape
    n = tokens - 1
    device = hidden_states.device
    order = group_major_order(group, rank)
    pad = (-n) % tile
    tiles = (n + pad) // tile
    # One copy of the patch rows in layout order (index_select on a flat view is much
    # faster than gather on [B, N, D]); padding rows copy a CLS row and are then zeroed.
    source = F.pad(order + 1 + torch.arange(b, device=device)[:, None] * tokens, (0, pad))
    laid_out = hidden_states.reshape(b * tokens, d).index_select(0, source.flatten()).view(b, n + pad, d)
    laid_out = laid_out.float()
    if lengths is None:
        laid_lengths = torch.linalg.vector_norm(laid_out[:, :n], dim=-1)
    else:  # a row's norm does not depend on where the row sits
        laid_lengths = lengths.gather(1, order)
    laid_out[:, :n].div_(laid_lengths.clamp_min(_NORM_EPS)[..., None])  # F.normalize
    laid_out[:, n:] = 0
    flat_tiles = laid_out.view(b * tiles, tile, d)

    # Labels unique across rows (row b uses b·(N+1) + g; N + 1 marks padding), so that
    # flat tiles can be paired across a row boundary without matching anything.
    row_base = torch.arange(b, device=device)[:, None] * (n + 1)
    labels = F.pad(group.gather(1, order) + row_base, (0, pad))
    labels[:, n:] = row_base + n
    tile_group = labels.reshape(b * tiles, tile)

    # How far each tile reaches: the farthest tile that starts with a group it ends with.
    first, last = tile_group[:, 0].contiguous(), tile_group[:, -1].contiguous()
    reach = torch.searchsorted(first, last, right=True) - 1  # last tile with first ≤ last[m]
    span = reach - torch.arange(b * tiles, device=device)  # diagonals tile m needs beyond 0
    width = int(span.max()) + 1

    # Diagonal k of the band: tile m against tile m + k, for the runs of tiles that reach
    # that far. Both operands are contiguous slices of one flat tensor: nothing is copied.
    band = flat_tiles.new_zeros(width, b * tiles, tile, tile)
    for k in range(width):  # a few diagonals, each a few runs of tiles: no loop over tokens
        for start, stop in _runs(span >= k):
            torch.bmm(flat_tiles[start:stop], flat_tiles[start + k : stop + k].transpose(1, 2), out=band[k, start:stop])
    return BandedSimilarity(order=order, tile_group=tile_group, band=band, tiles_per_row=tiles)


def _runs(wanted: torch.Tensor, bridge: int = 2) -> list[tuple[int, int]]:
    """``[(start, stop)]``: the runs of True in a bool vector, joining runs ``bridge`` or
    fewer places apart (a few wasted products cost less than another call)."""
    edges = torch.diff(F.pad(wanted.to(torch.int8), (1, 1)))
    starts = (edges == 1).nonzero().flatten().tolist()
    stops = (edges == -1).nonzero().flatten().tolist()
    runs: list[tuple[int, int]] = []
    for start, stop in zip(starts, stops):
        if runs and start - runs[-1][1] <= bridge:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs
