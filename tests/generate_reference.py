"""The model's own ``generate`` fed precomputed visual features: what the pipeline's answers are
held to (tests only; the pipeline decodes through ``prunesid_vlm.positioned_generation``)."""
from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from prunesid_vlm.generation import GenerationRun


@torch.inference_mode()
def greedy_generate(model: torch.nn.Module, input_ids: torch.Tensor, features, *, modality: str = "image",
                    max_new_tokens: int = 64) -> GenerationRun:
    """``model.generate``'s greedy answer with ``features`` in place of the prompt's placeholders
    (a list of ``[T_i, D]`` per image, or a clip's ``[1, T, D]``); no timings."""
    input_ids = input_ids.to(model.device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         mm_encoder_outputs={modality: BaseModelOutputWithPooling(pooler_output=features)},
                         do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, output_logits=True,
                         return_dict_in_generate=True)
    return GenerationRun(tokens=out.sequences[0, input_ids.shape[1]:].cpu(), first_logits=out.logits[0][0].float().cpu(),
                         prompt_tokens=int(input_ids.shape[1]), prefill_s=0.0, decode_s=0.0)
