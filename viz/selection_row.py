"""One batch row of a :class:`prunesid.Selection` as plain numpy arrays (what views draw)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prunesid.result import Selection


@dataclass(frozen=True)
class SelectionRow:
    """Per-patch and per-group arrays of one selection row, on the CPU.

    ``N`` patches (raster order), ``G`` groups of this row (padding columns dropped).
    """

    kept: np.ndarray  # bool [N]: patch kept
    group: np.ndarray  # int [N]: PSCA group (0 = largest component)
    nms_rank: np.ndarray  # int [N]: position in its group's pick list, -1 if suppressed
    suppressed_by: np.ndarray  # int [N]: patch index of the suppressing pick, -1 for picks
    importance: np.ndarray  # float [N]
    group_size: np.ndarray  # int [G]: c_g
    group_survivors: np.ndarray  # int [G]: n_g
    group_budget: np.ndarray  # int [G]: k_g
    num_tokens: int  # K, CLS included
    rho: float
    tau: float
    phi: float
    method: str

    @property
    def num_patches(self) -> int:
        return int(self.kept.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.group_size.shape[0])

    @property
    def is_pick(self) -> np.ndarray:
        """Bool [N]: the patch was an NMS pick (a group's representative)."""
        return self.nms_rank >= 0

    def grid_shape(self) -> tuple[int, int]:
        """The square ``(rows, cols)`` grid of ``N`` patches (24 x 24 for 576)."""
        side = math.isqrt(self.num_patches)
        if side * side != self.num_patches:
            raise ValueError(
                f"{self.num_patches} patches do not form a square grid; pass grid_shape=(rows, cols)"
            )
        return side, side


def selection_row(selection: Selection, row: int = 0) -> SelectionRow:
    """Extract batch row ``row`` of ``selection`` as numpy arrays."""
    if not 0 <= row < selection.batch_size:
        raise ValueError(f"row {row} is out of range for a batch of {selection.batch_size}")
    sel = selection.cpu()
    g = int(sel.num_groups[row])

    def np_(t):
        return t[row].numpy().copy()

    return SelectionRow(
        kept=np_(sel.kept_patches),
        group=np_(sel.group),
        nms_rank=np_(sel.nms_rank),
        suppressed_by=np_(sel.suppressed_by),
        importance=np_(sel.importance).astype(np.float64),
        group_size=np_(sel.group_size)[:g],
        group_survivors=np_(sel.group_survivors)[:g],
        group_budget=np_(sel.group_budget)[:g],
        num_tokens=int(sel.num_tokens[row]),
        rho=float(sel.rho[row]),
        tau=float(sel.tau[row]),
        phi=float(sel.phi[row]),
        method=sel.method,
    )
