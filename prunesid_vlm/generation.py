"""What every generation path shares: placeholder runs and their resizing, greedy choice as
``generate`` makes it (suppressed tokens), scoring a continuation, one greedy run's record.

Visual tokens reach the language model through transformers' ``mm_encoder_outputs``: the
prompt holds exactly as many ``<image>`` placeholders as there are feature rows, and the
features replace them (the decoding itself is :mod:`.positioned_generation`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def placeholder_runs(input_ids: torch.Tensor, token_id: int) -> list[int]:
    """Lengths of the runs of ``token_id`` in a ``[1, L]`` prompt, in order (one run per image;
    a video's frames share one run)."""
    is_placeholder = (input_ids[0] == token_id).long()
    edges = torch.diff(is_placeholder, prepend=is_placeholder.new_zeros(1), append=is_placeholder.new_zeros(1))
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    return (ends - starts).tolist()


def resize_placeholders(input_ids: torch.Tensor, token_id: int, full_counts: Sequence[int],
                        kept_counts: Sequence[int]) -> torch.Tensor:
    """Give each image's placeholder run ``kept_counts[i]`` tokens; the rest of the prompt is unchanged.

    A run shrinks to its first placeholders, or grows by repeating its last one: a method that
    keeps CLS and merges the dropped patches into extra tokens (VisionZip at K = 1+N) hands over
    one token more than the model's own path, which drops CLS.

    Args:
        input_ids: ``[1, L]`` prompt whose ``token_id`` runs have ``full_counts[i]`` tokens per image, in order.

    Returns:
        ``[1, L − Σ(full − kept)]``.
    """
    ids = input_ids[0]
    is_placeholder = ids == token_id
    full = torch.as_tensor(list(full_counts), dtype=torch.long, device=ids.device)
    kept = torch.as_tensor(list(kept_counts), dtype=torch.long, device=ids.device)
    if int(is_placeholder.sum()) != int(full.sum()):
        raise ValueError(f"the prompt holds {int(is_placeholder.sum())} placeholders, the images need {int(full.sum())}")
    ordinal = torch.cumsum(is_placeholder.long(), 0) - 1  # index among all placeholders
    starts = torch.cumsum(full, 0) - full
    image = torch.searchsorted(torch.cumsum(full, 0), ordinal.clamp(min=0), right=True).clamp(max=len(full) - 1)
    within = ordinal - starts[image]
    repeats = torch.where(is_placeholder, (within < kept[image]).long(), torch.ones_like(ids))
    last = is_placeholder & (within == full[image] - 1)
    repeats = repeats + torch.where(last, (kept[image] - full[image]).clamp(min=0), torch.zeros_like(ids))
    return ids.repeat_interleave(repeats)[None]


@dataclass
class GenerationRun:
    """One greedy run: new token ids, first-step logits and timings."""

    tokens: torch.Tensor
    """Long ``[T_new]``: generated ids (prompt excluded)."""
    first_logits: torch.Tensor
    """Float32 ``[vocab]``: logits of the first answer token (from the prefill)."""
    prompt_tokens: int
    prefill_s: float
    decode_s: float


def score_continuation(model: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> tuple[float, bool]:
    """``(Σ log p(target), whether each target token is the greedy choice)`` from the logits
    ``[T, vocab]`` that predict the ``T`` target tokens (greedy as ``generate`` decodes: the
    generation config's suppressed tokens never win)."""
    logits = logits.float().log_softmax(-1)
    target = target.to(logits.device)
    picked = logits.gather(1, target[:, None])[:, 0]
    return float(picked.sum()), bool((without_suppressed(model, logits).argmax(-1) == target).all())


def suppressed_tokens(model) -> list[int]:
    return list(getattr(model.generation_config, "suppress_tokens", None) or [])


def eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


def without_suppressed(model, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` (``[..., vocab]``) with the generation config's suppressed tokens at −inf (a copy;
    ``logits`` itself when there are none): what ``generate``'s greedy choice is made on."""
    suppress = suppressed_tokens(model)
    if not suppress:
        return logits
    return logits.index_fill(-1, torch.tensor(suppress, device=logits.device), float("-inf"))


def next_token(model, logits: torch.Tensor) -> int:
    """Greedy choice after the generation config's suppressed tokens, as ``generate`` makes it."""
    return int(without_suppressed(model, logits)[0].argmax())
