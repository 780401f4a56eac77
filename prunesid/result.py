"""The one result object of a token selection.

Index spaces (named the same everywhere in this project; docs/algorithm.md#index-spaces):

* **tower index** — position on the vision tower's ``1 + N`` axis, CLS = 0;
* **patch index** — position among the ``N`` patches (tower index − 1), raster order;
* **kept position** — position in the kept sequence handed to the language model.

Per-group arrays are padded to the largest group count in the batch; a batch row
with fewer groups has ``group_size == 0`` in its padding columns.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class Selection:
    """Everything one PruneSID (or baseline) selection decided, per batch row.

    Shapes: ``B`` batch rows, ``N`` patches, ``K`` = the largest budget in the
    batch (CLS included), ``G`` = the largest group count in the batch.
    All tensors live on the device of the inputs.
    """

    keep: torch.Tensor
    """Long ``[B, K]``: tower indices handed to the LLM, CLS first, then group by
    group in NMS-pick order (the reference's order). Rows with a smaller budget are
    padded with ``-1`` at the end."""
    num_tokens: torch.Tensor
    """Long ``[B]``: visual tokens handed to the LLM per row (CLS included) = valid
    entries of ``keep`` plus merged tokens (if any)."""
    group: torch.Tensor
    """Long ``[B, N]``: PSCA group of each patch (0 = the largest principal component)."""
    num_groups: torch.Tensor
    """Long ``[B]``: G of each row."""
    nms_rank: torch.Tensor
    """Long ``[B, N]``: position of the patch in its group's NMS pick list
    (0 = the group's first pick), ``-1`` if NMS suppressed it."""
    suppressed_by: torch.Tensor
    """Long ``[B, N]``: patch index of the pick that suppressed this patch, ``-1``
    for picks."""
    group_size: torch.Tensor
    """Long ``[B, G]``: c_g, patches in each group."""
    group_survivors: torch.Tensor
    """Long ``[B, G]``: n_g, NMS picks in each group."""
    group_budget: torch.Tensor
    """Long ``[B, G]``: k_g, tokens kept from each group (sum = num_tokens − 1)."""
    importance: torch.Tensor
    """Float32 ``[B, N]``: importance score of each patch (CLS attention for PruneSID)."""
    rho: torch.Tensor
    """Float32 ``[B]``: redundancy, mean pairwise cosine similarity of the patches."""
    tau: torch.Tensor
    """Float32 ``[B]``: NMS threshold (K / 32) · rho."""
    phi: torch.Tensor
    """Float32 ``[B]``: information score 1 − rho (drives the dynamic ratio)."""
    method: str = "prunesid"
    """Name of the rule that produced this selection."""
    merged_tokens: torch.Tensor | None = None
    """Optional float ``[B, M, D]``: extra tokens built from dropped patches (e.g.
    VisionZip's contextual tokens), in the tower's feature space, handed to the LLM after
    the kept rows. None for pure selection rules like PruneSID."""
    merged_into: torch.Tensor | None = None
    """Optional long ``[B, N]``: which merged token each patch was folded into, -1 if none."""
    cls_row: bool = True
    """Whether the token axis has a CLS row, so that ``keep`` holds tower indices (CLS = 0). False
    for the Qwen rule on merged tokens, which have no CLS: ``keep`` then holds patch indices."""

    @property
    def batch_size(self) -> int:
        return self.keep.shape[0]

    @property
    def num_patches(self) -> int:
        return self.group.shape[1]

    @property
    def kept_patches(self) -> torch.Tensor:
        """Bool ``[B, N]``: True where the patch is kept."""
        mask = torch.zeros(self.group.shape, dtype=torch.bool, device=self.keep.device)
        patch = self.keep - 1 if self.cls_row else self.keep
        valid = (patch >= 0) & (self.keep >= 0)
        rows = torch.arange(self.batch_size, device=self.keep.device)[:, None].expand_as(patch)
        mask[rows[valid], patch[valid]] = True
        return mask

    def keep_row(self, row: int) -> torch.Tensor:
        """Long: the valid (non-padding) tower indices of one row, in emission order."""
        indices = self.keep[row]
        return indices[indices >= 0]

    def on_tower_axis(self) -> "Selection":
        """This selection with ``keep`` as tower indices (a CLS row in front of the patches, never
        kept when there was none): how the app's pipeline holds every model's tokens."""
        if self.cls_row:
            return self
        return replace(self, keep=torch.where(self.keep >= 0, self.keep + 1, self.keep), cls_row=True)

    def cpu(self) -> "Selection":
        """A copy with every tensor on the CPU (cheap to cache and to draw)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Selection(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def to_dict(self, row: int = 0) -> dict:
        """JSON-ready summary of one row (plain Python lists and floats)."""
        groups = int(self.num_groups[row])
        return {
            "method": self.method,
            "num_tokens": int(self.num_tokens[row]),
            "keep": self.keep_row(row).tolist(),
            "num_groups": groups,
            "group": self.group[row].tolist(),
            "nms_rank": self.nms_rank[row].tolist(),
            "suppressed_by": self.suppressed_by[row].tolist(),
            "group_size": self.group_size[row, :groups].tolist(),
            "group_survivors": self.group_survivors[row, :groups].tolist(),
            "group_budget": self.group_budget[row, :groups].tolist(),
            "rho": float(self.rho[row]),
            "tau": float(self.tau[row]),
            "phi": float(self.phi[row]),
            "merged_tokens": 0 if self.merged_tokens is None else int(self.merged_tokens.shape[1]),
        }
