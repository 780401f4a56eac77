"""Greedy decoding, prefill and scoring of a :class:`~prunesid_vlm.backends.base.PromptInputs`,
with its explicit positions.

A pruned prompt keeps each kept visual token's **original** position (1-D, or Qwen's 3-D time,
row, column), as the reference does; ``generate`` would recompute positions from the shortened
sequence instead. So the prefill gets the positions of the full prompt at the kept indices, and
every generated token the next position of the *full* sequence (its largest position + 1, + 1
per step), which is where the unpruned model would put it. With every token kept this is
exactly ``generate``'s greedy path (tested per family).
"""
from __future__ import annotations

import copy
import time

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .backends.base import PromptInputs
from .generation import GenerationRun, eos_ids, next_token, score_continuation, synchronize


def encoder_outputs(prompt: PromptInputs) -> dict:
    """``mm_encoder_outputs`` for the model's forward: the kept features (and the family's extra fields)."""
    return {kind: _with_fields(_in_form(features, prompt.features_form), prompt.encoder_extra)
            for kind, features in prompt.features.items()}


def _in_form(features: list[torch.Tensor], form: str):
    if form == "list":
        return features
    joined = torch.cat(features)
    if form == "tensor":
        return joined
    if form == "batched":
        return joined[None]
    raise ValueError(f"unknown features form {form!r}")


def _with_fields(features, extra: dict):
    output = BaseModelOutputWithPooling(pooler_output=features)
    for name, value in extra.items():
        output[name] = value  # ModelOutput takes fields its class does not declare
    return output


def _positions_from(prompt: PromptInputs, start: int, count: int) -> torch.Tensor:
    """Positions ``start … start + count − 1`` shaped like the prompt's (``[1, T]`` or ``[3, 1, T]``)."""
    steps = torch.arange(start, start + count)
    return steps.view(*([1] * (prompt.positions.dim() - 1)), -1).expand(*prompt.positions.shape[:-1], -1)


def _step(model, input_ids, positions, cache, mm_outputs=None, extra=None):
    """One forward pass: the last position's raw logits (as ``generate(output_logits=True)``
    reports them) and the cache."""
    kwargs = dict(extra or {})
    if mm_outputs:
        kwargs["mm_encoder_outputs"] = mm_outputs
    if cache is None:  # a prefill is one sequence: without a mask or a cache, transformers reads the kept
        kwargs.setdefault("attention_mask", torch.ones_like(input_ids))  # positions' gaps as packed sequences
    out = model(input_ids=input_ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1].float(), out.cache


def _forward_extra(prompt: PromptInputs, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prompt.forward_extra.items()}


def greedy_processors(model: torch.nn.Module, input_ids: torch.Tensor):
    """The logits processors ``generate`` applies in a greedy search with the model's own generation
    config (repetition penalty, n-gram blocking, a minimum length, suppressed or biased tokens, …;
    the sampling-only ones never apply), built by ``generate``'s own helpers so that a checkpoint's
    settings act here as they do there."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample, config.num_beams = False, 1
    model._prepare_special_tokens(config, True, device=input_ids.device)
    return model._get_logits_processor(generation_config=config, input_ids_seq_length=input_ids.shape[1],
                                       encoder_input_ids=input_ids, device=input_ids.device, model_kwargs={})


@torch.inference_mode()
def greedy_with_positions(model: torch.nn.Module, prompt: PromptInputs, max_new_tokens: int = 64) -> GenerationRun:
    """Greedy answer to ``prompt``; generated tokens go at ``prompt.next_position``, + 1, …; the
    generation config's logits processors act on each choice (:func:`greedy_processors`), the first
    logits are reported raw (as ``generate(output_logits=True)`` does)."""
    device = model.device
    sequence = prompt.input_ids.to(device)
    processors = greedy_processors(model, sequence)
    synchronize(device)
    start = time.perf_counter()
    logits, cache = _step(model, sequence, prompt.positions.to(device), None,
                          encoder_outputs(prompt), _forward_extra(prompt, device))
    synchronize(device)
    prefill_end = time.perf_counter()
    first = logits[0].cpu()
    tokens, eos = [], eos_ids(model)
    for step in range(max_new_tokens):
        token = next_token(model, processors(sequence, logits) if processors else logits)
        tokens.append(token)
        if token in eos or step == max_new_tokens - 1:
            break
        sequence = torch.cat([sequence, sequence.new_tensor([[token]])], dim=1)
        position = _positions_from(prompt, prompt.next_position + step, 1).to(device)
        logits, cache = _step(model, sequence[:, -1:], position, cache)
    synchronize(device)
    end = time.perf_counter()
    return GenerationRun(tokens=torch.tensor(tokens, dtype=torch.long), first_logits=first,
                         prompt_tokens=int(prompt.input_ids.shape[1]), prefill_s=prefill_end - start,
                         decode_s=end - prefill_end)


@torch.inference_mode()
def first_logits_with_positions(model: torch.nn.Module, prompt: PromptInputs) -> torch.Tensor:
    """Float32 ``[vocab]``: the first answer token's logits (a prefill-only forward pass)."""
    device = model.device
    logits, _ = _step(model, prompt.input_ids.to(device), prompt.positions.to(device), None,
                      encoder_outputs(prompt), _forward_extra(prompt, device))
    return logits[0].cpu()


@torch.inference_mode()
def continuation_with_positions(model: torch.nn.Module, prompt: PromptInputs, continuation: torch.Tensor
                                ) -> tuple[float, bool]:
    """``(Σ log p(continuation tokens), whether each is the argmax)`` after ``prompt``; the
    continuation's positions follow ``prompt.next_position``."""
    device = model.device
    ids = torch.cat([prompt.input_ids, continuation], dim=1).to(device)
    positions = torch.cat([prompt.positions, _positions_from(prompt, prompt.next_position, continuation.shape[1])],
                          dim=-1).to(device)
    extra = _forward_extra(prompt, device)
    for name, value in list(extra.items()):  # per-token inputs (token types) run on over the continuation as text
        if isinstance(value, torch.Tensor) and value.shape[-1] == prompt.input_ids.shape[1]:
            extra[name] = torch.cat([value, value.new_zeros(*value.shape[:-1], continuation.shape[1])], dim=-1)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                mm_encoder_outputs=encoder_outputs(prompt), **extra)
    start = prompt.input_ids.shape[1]
    return score_continuation(model, out.logits[0, start - 1: start - 1 + continuation.shape[1]], continuation[0])


def batchable(prompts: list[PromptInputs]) -> bool:
    """Whether ``prompts`` can share one forward pass: the same kind of positions and features, and
    nothing per prompt beyond ids, features and positions (no extra encoder fields or forward
    arguments, which have no batched form here)."""
    first = prompts[0]
    return all(not p.encoder_extra and not p.forward_extra and p.features_form == first.features_form
               and p.positions.dim() == first.positions.dim() and list(p.features) == list(first.features)
               for p in prompts)


@torch.inference_mode()
def first_logits_of(model: torch.nn.Module, prompts: list[PromptInputs], pad_token_id: int = 0
                    ) -> tuple[torch.Tensor, int]:
    """Float32 ``[P, vocab]``: each prompt's first answer token's logits, and the forward passes
    taken — one for all when :func:`batchable`, else one per prompt.

    In one pass the prompts are left-padded to the longest (masked, padding at position 0), each
    keeping its own positions, so each row's last position is its prompt's end; the model puts
    the prompts' features into their placeholders in order."""
    if len(prompts) == 1 or not batchable(prompts):
        return torch.stack([first_logits_with_positions(model, p) for p in prompts]), len(prompts)
    device = model.device
    length = max(p.input_ids.shape[1] for p in prompts)
    lead = prompts[0].positions.shape[:-2]  # () for 1-D positions, (3,) for M-RoPE
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    positions = torch.zeros((*lead, len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        size = prompt.input_ids.shape[1]
        input_ids[row, length - size:] = prompt.input_ids[0]
        mask[row, length - size:] = 1
        positions[..., row, length - size:] = prompt.positions[..., 0, :]
    joined = PromptInputs(input_ids=input_ids, positions=positions, next_position=0, token_id=prompts[0].token_id,
                          visual_tokens=sum(p.visual_tokens for p in prompts), features_form=prompts[0].features_form,
                          features={kind: [f for p in prompts for f in p.features[kind]] for kind in prompts[0].features})
    out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                mm_encoder_outputs=encoder_outputs(joined), logits_to_keep=1)
    return out.logits[:, -1].float().cpu(), 1
