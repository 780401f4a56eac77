"""Which tokens of a full prompt a pruned prompt keeps, for every backend: all text tokens, and
in each placeholder run the kept visual tokens, in the order they are handed over, so that each
keeps its position in the full prompt."""
from __future__ import annotations

import torch
from PIL import Image

from .base import EncodedMedia


def whole(image: Image.Image) -> tuple[float, float, float, float]:
    """The box of the whole picture: what a dynamic-resolution view covers."""
    return (0.0, 0.0, float(image.width), float(image.height))


def kept_prompt_index(is_visual: torch.Tensor, media: EncodedMedia, kept: list[torch.Tensor] | None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(index, order)``: the full prompt's indices the pruned prompt keeps (every text token; in
    each placeholder run the kept tokens, in the order given), and per placeholder run the rows of
    ``media.tokens`` flattened over views that fill it, in that order.

    One run per view, or one for a whole clip (its views' tokens one after another) when the
    prompt has a single run for it."""
    v, n = media.tokens.shape[:2]
    kept = [torch.arange(n)] * v if kept is None else kept
    flat = [view * n + k for view, k in enumerate(kept)]
    if media.clip and len(_run_starts(is_visual)) == 1:
        return kept_sequence(is_visual, [torch.cat(flat)]), [torch.cat(flat)]
    return kept_sequence(is_visual, list(kept)), flat


def _run_starts(is_visual: torch.Tensor) -> list[int]:
    starts = ((is_visual[1:] & ~is_visual[:-1]).nonzero().flatten() + 1).tolist()
    return [0] + starts if bool(is_visual[0]) else starts


def kept_sequence(is_visual: torch.Tensor, offsets: list[torch.Tensor]) -> torch.Tensor:
    """Long: the full prompt's indices that the pruned prompt keeps, in its order — every text
    token, and in each placeholder run only the kept ones, in the order given by ``offsets``
    (offsets into that run)."""
    position = torch.arange(is_visual.numel())
    starts = _run_starts(is_visual)
    if len(starts) != len(offsets):
        raise ValueError(f"the prompt has {len(starts)} placeholder runs for {len(offsets)} media items")
    ends = ((is_visual[:-1] & ~is_visual[1:]).nonzero().flatten() + 1).tolist()
    if bool(is_visual[-1]):
        ends.append(is_visual.numel())
    pieces, cursor = [], 0
    for start, end, kept in zip(starts, ends, offsets):
        pieces += [position[cursor:start], start + kept]
        cursor = end
    pieces.append(position[cursor:])
    return torch.cat(pieces)
