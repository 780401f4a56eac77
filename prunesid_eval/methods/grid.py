"""Uniform-grid baseline: patches spread evenly over the patch grid, ignoring content.

For ``m`` patches on an ``R × C`` grid: ``r = min(R, ceil(sqrt(m·R/C)))`` lattice rows at
evenly spaced grid rows (cell centres: ``floor((i + ½)·R / r)``), the ``m`` patches split
over them as evenly as possible (counts differ by at most one: row ``i`` gets
``floor((i+1)·m/r) − floor(i·m/r)``), and within a lattice row evenly spaced columns
``floor((j + ½)·C / count)``. When ``m = s²`` and ``s`` divides the grid side this is the
regular ``s × s`` lattice of cell centres (64 → 8 × 8 on 24 × 24, every 3rd cell).

CLS: not kept by default (``keep_cls=False``): the grid is a purely spatial baseline, and
filling all ``num_tokens`` slots with patches makes 64, 144, 576 full square lattices.
"""
from __future__ import annotations

import math

import torch

from prunesid.result import Selection
from ._common import Budget, Picked, patch_count, run_rule, with_cls


def grid_patches(m: int, rows: int, cols: int) -> torch.Tensor:
    """Long ``[m]``: patch indices (raster order) of ``m`` evenly spaced cells of a ``rows × cols`` grid."""
    if not 0 <= m <= rows * cols:
        raise ValueError(f"cannot place {m} patches on a {rows}x{cols} grid")
    if m == 0:
        return torch.zeros(0, dtype=torch.long)
    r = min(rows, max(1, math.ceil(math.sqrt(m * rows / cols))))
    while -(-m // r) > cols:  # a lattice row cannot hold more than `cols` patches
        r += 1
    out = []
    for i in range(r):
        count = (i + 1) * m // r - i * m // r
        y = int((i + 0.5) * rows / r)
        out += [y * cols + int((j + 0.5) * cols / count) for j in range(count)]
    return torch.tensor(out, dtype=torch.long)


def _core(hidden_states, cls_attention, k, *, keep_cls, grid_shape):
    b, n = cls_attention.shape
    rows, cols = grid_shape or _square(n)
    if rows * cols != n:
        raise ValueError(f"grid_shape {rows}x{cols} does not match {n} patches")
    patches = grid_patches(patch_count(k, n, keep_cls), rows, cols).to(cls_attention.device)
    return Picked(with_cls(patches.expand(b, -1), keep_cls))


def _square(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patches do not form a square grid; pass grid_shape=(rows, cols)")
    return side, side


def grid_select(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: Budget,
    *,
    generator: torch.Generator | None = None,
    keep_cls: bool = False,
    grid_shape: tuple[int, int] | None = None,
) -> Selection:
    """``num_tokens`` evenly spaced patches (plus CLS in the count when ``keep_cls``); ``generator`` unused."""
    n = cls_attention.shape[-1]
    return run_rule("grid", _core, hidden_states, cls_attention, num_tokens,
                    max_tokens=n + 1 if keep_cls else n, keep_cls=keep_cls, grid_shape=grid_shape)
