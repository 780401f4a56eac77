"""Greedy decoding with explicit M-RoPE positions (Qwen2-VL / Qwen2.5-VL).

A pruned Qwen prompt keeps each kept visual token's **original** 3-D position (time, row,
column), as the reference does; ``generate`` would recompute positions from the shortened
sequence instead. So the prefill gets the positions of the full prompt at the kept indices, and
every generated token the next position of the *full* sequence (its largest position + 1, + 1
per step), which is where the unpruned model would put it. With every token kept this is
exactly ``generate``'s greedy path (tested).
"""
from __future__ import annotations

import time

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .generation import GenerationRun, eos_ids, next_token, synchronize


def _step(model, input_ids, positions, cache, mm_outputs=None):
    """One forward pass: the last position's raw logits (as ``generate(output_logits=True)``
    reports them) and the cache."""
    kwargs = {"mm_encoder_outputs": mm_outputs} if mm_outputs else {}
    out = model(input_ids=input_ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1].float(), out.cache


@torch.inference_mode()
def greedy_with_positions(model: torch.nn.Module, input_ids: torch.Tensor, mm_outputs: dict[str, list[torch.Tensor]],
                          positions: torch.Tensor, next_position: int, max_new_tokens: int = 64) -> GenerationRun:
    """Greedy answer to ``input_ids`` ``[1, L]`` whose placeholders take the features of
    ``mm_outputs`` (``{"image": [per image]}`` or ``{"video": [one clip]}``), at ``positions``
    ``[3, 1, L]``; generated tokens go at ``next_position``, ``next_position + 1``, …"""
    device = model.device
    outputs = {k: BaseModelOutputWithPooling(pooler_output=v) for k, v in mm_outputs.items()}
    synchronize(device)
    start = time.perf_counter()
    logits, cache = _step(model, input_ids.to(device), positions.to(device), None, outputs)
    synchronize(device)
    prefill_end = time.perf_counter()
    first = logits[0].cpu()
    tokens, eos = [], eos_ids(model)
    for step in range(max_new_tokens):
        token = next_token(model, logits)
        tokens.append(token)
        if token in eos or step == max_new_tokens - 1:
            break
        position = torch.full((3, 1, 1), next_position + step, dtype=torch.long, device=device)
        logits, cache = _step(model, torch.tensor([[token]], device=device), position, cache)
    synchronize(device)
    end = time.perf_counter()
    return GenerationRun(tokens=torch.tensor(tokens, dtype=torch.long), first_logits=first,
                         prompt_tokens=int(input_ids.shape[1]), prefill_s=prefill_end - start, decode_s=end - prefill_end)


@torch.inference_mode()
def first_logits_with_positions(model: torch.nn.Module, input_ids: torch.Tensor, mm_outputs: dict[str, list],
                                positions: torch.Tensor) -> torch.Tensor:
    """Float32 ``[vocab]``: the first answer token's logits (a prefill-only forward pass)."""
    outputs = {k: BaseModelOutputWithPooling(pooler_output=v) for k, v in mm_outputs.items()}
    logits, _ = _step(model, input_ids.to(model.device), positions.to(model.device), None, outputs)
    return logits[0].cpu()
