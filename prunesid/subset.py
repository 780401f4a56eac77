"""Selections made on part of a view's patches, written back on the view's whole patch axis.

Some views hold patches the language model never receives: a LLaVA-NeXT crop that reaches
into the padding around the image loses those patches when the map is unpadded. A rule run
on all of the view's patches would spend budget (and PSCA components, and the redundancy ρ)
on padding; run on the received patches only and written back here, it spends its whole
budget on what the model sees. Patches outside the subset get neutral values: group −1,
NMS rank −1, importance 0.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .result import Selection


def subset_inputs(hidden_states: torch.Tensor, cls_attention: torch.Tensor, patches: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``[B, 1+n, D]`` states (CLS first) and ``[B, n]`` attention of the ``patches`` (long ``[n]``
    patch indices, ascending) of every row."""
    tower = torch.cat([patches.new_zeros(1), patches + 1])
    return hidden_states[:, tower], cls_attention[:, patches]


def expand_selection(selection: Selection, patches: torch.Tensor, num_patches: int) -> Selection:
    """``selection`` (made on :func:`subset_inputs` of ``patches``) with its indices and per-patch
    fields on the full axis of ``num_patches`` patches."""
    device = selection.keep.device
    patches = patches.to(device)
    tower = torch.cat([patches.new_zeros(1), patches + 1])  # subset tower index → full tower index

    def spread(values: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((values.shape[0], num_patches), fill, dtype=values.dtype, device=device)
        out[:, patches] = values
        return out

    def patch_ids(values: torch.Tensor) -> torch.Tensor:  # subset patch index → full, −1 kept
        return torch.where(values >= 0, patches[values.clamp(min=0)], values)

    keep = torch.where(selection.keep >= 0, tower[selection.keep.clamp(min=0)], selection.keep)
    merged_into = None if selection.merged_into is None else spread(selection.merged_into, -1)
    return replace(selection, keep=keep, group=spread(selection.group, -1), nms_rank=spread(selection.nms_rank, -1),
                   suppressed_by=spread(patch_ids(selection.suppressed_by), -1),
                   importance=spread(selection.importance, 0.0), merged_into=merged_into)


def concat_selections(selections: list[Selection]) -> Selection:
    """One selection whose rows are the rows of ``selections`` in order (same N; keep, group-level
    fields and merged tokens padded to the widest)."""
    if len(selections) == 1:
        return selections[0]

    def cat(name: str, fill) -> torch.Tensor:
        parts = [getattr(s, name) for s in selections]
        width = max(p.shape[1] for p in parts)
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in parts])

    merged = None
    if any(s.merged_tokens is not None for s in selections):
        like = next(s.merged_tokens for s in selections if s.merged_tokens is not None)
        width = max(s.merged_tokens.shape[1] if s.merged_tokens is not None else 0 for s in selections)
        merged = torch.cat([
            torch.nn.functional.pad(s.merged_tokens, (0, 0, 0, width - s.merged_tokens.shape[1]))
            if s.merged_tokens is not None else
            like.new_zeros(s.batch_size, width, like.shape[-1])
            for s in selections])
    merged_into = None
    if any(s.merged_into is not None for s in selections):
        merged_into = torch.cat([s.merged_into if s.merged_into is not None else torch.full_like(s.group, -1)
                                 for s in selections])
    first = selections[0]
    flat = {name: torch.cat([getattr(s, name) for s in selections])
            for name in ("num_tokens", "group", "num_groups", "nms_rank", "suppressed_by", "importance",
                         "rho", "tau", "phi")}
    return replace(first, keep=cat("keep", -1), group_size=cat("group_size", 0),
                   group_survivors=cat("group_survivors", 0), group_budget=cat("group_budget", 0),
                   merged_tokens=merged, merged_into=merged_into, **flat)
