"""Greedy generation from precomputed visual features, with stage timings.

Visual tokens reach the language model through transformers' ``mm_encoder_outputs``: the
prompt holds exactly as many ``<image>`` placeholders as there are feature rows, and the
features replace them. With all features that is the model's ordinary path (token-identical
to ``model.generate(**processor_outputs)``); with K kept rows the model sees exactly K.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Times the first forward call of a model (prefill) apart from the later ones (decode)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.calls = 0
        self.prefill_s = 0.0
        self._start = 0.0
        self.prefill_end = 0.0

    def _pre(self, module, args, kwargs):
        if self.calls == 0:
            synchronize(self.device)
            self._start = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        if self.calls == 0:
            synchronize(self.device)
            self.prefill_end = time.perf_counter()
            self.prefill_s = self.prefill_end - self._start
        self.calls += 1


@contextmanager
def stage_clock(model: torch.nn.Module, device: torch.device) -> Iterator[StageClock]:
    """Forward hooks on ``model`` for the ``with`` block only."""
    clock = StageClock(device)
    handles = [model.register_forward_pre_hook(clock._pre, with_kwargs=True),
               model.register_forward_hook(clock._post, with_kwargs=True)]
    try:
        yield clock
    finally:
        for handle in handles:
            handle.remove()


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


@torch.inference_mode()
def greedy_generate(model: torch.nn.Module, input_ids: torch.Tensor, features: Sequence[torch.Tensor] | torch.Tensor,
                    *, modality: str = "image", max_new_tokens: int = 64, **model_kwargs) -> GenerationRun:
    """Greedy decoding with ``features`` in place of the prompt's placeholders.

    Args:
        input_ids: ``[1, L]`` with exactly as many placeholders as feature rows.
        features: a list of ``[T_i, D_text]`` per image (``modality="image"``) or a
            ``[1, T, D_text]`` tensor (``"video"``); projected, any dtype.
    """
    device = model.device
    input_ids = input_ids.to(device)
    outputs = BaseModelOutputWithPooling(pooler_output=features)
    with stage_clock(model, device) as clock:
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             mm_encoder_outputs={modality: outputs}, do_sample=False, num_beams=1,
                             max_new_tokens=max_new_tokens, output_logits=True, return_dict_in_generate=True,
                             **model_kwargs)
        synchronize(device)
        end = time.perf_counter()
    return GenerationRun(tokens=out.sequences[0, input_ids.shape[1]:].cpu(), first_logits=out.logits[0][0].float().cpu(),
                         prompt_tokens=input_ids.shape[1], prefill_s=clock.prefill_s,
                         decode_s=end - (clock.prefill_end or start))


@torch.inference_mode()
def batched_first_logits(model: torch.nn.Module, prompts: Sequence[tuple[torch.Tensor, object]], *,
                         modality: str = "image", pad_token_id: int = 0) -> torch.Tensor:
    """Float32 ``[P, vocab]``: the first answer token's logits of ``P`` prompts in one forward pass.

    Each prompt is ``(input_ids [1, L_i], features)`` as for :func:`greedy_generate`. Prompts are
    left-padded to the longest (masked, with positions counted from each prompt's first real
    token, as ``generate`` does), so each row's last position is its prompt's end; the model
    itself puts every prompt's features in its placeholders, in order.
    """
    device = model.device
    length = max(ids.shape[1] for ids, _ in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, (ids, _) in enumerate(prompts):
        input_ids[row, length - ids.shape[1]:] = ids[0]
        mask[row, length - ids.shape[1]:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if modality == "image":
        features = [f for _, per_image in prompts for f in per_image]
    else:  # one clip per prompt: all rows in prompt order
        features = torch.cat([f.reshape(-1, f.shape[-1]) for _, f in prompts])[None]
    out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                mm_encoder_outputs={modality: BaseModelOutputWithPooling(pooler_output=features)}, logits_to_keep=1)
    return out.logits[:, -1].float().cpu()


@torch.inference_mode()
def continuation_logprob(model: torch.nn.Module, input_ids: torch.Tensor, features, continuation: torch.Tensor, *,
                         modality: str = "image") -> tuple[float, bool]:
    """``(Σ log p(continuation tokens), whether each is the argmax)`` after the prompt ``input_ids``
    whose placeholders take ``features`` (as for :func:`greedy_generate`)."""
    device = model.device
    ids = torch.cat([input_ids, continuation], dim=1).to(device)
    if isinstance(features, dict):
        outputs = {k: BaseModelOutputWithPooling(pooler_output=v) for k, v in features.items()}
    else:
        outputs = {modality: BaseModelOutputWithPooling(pooler_output=features)}
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_encoder_outputs=outputs)
    start = input_ids.shape[1]
    return score_continuation(model, out.logits[0, start - 1: start - 1 + continuation.shape[1]], continuation[0])


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
