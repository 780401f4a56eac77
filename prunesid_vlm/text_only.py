"""Questions without a picture, answered by the language model alone (what a benchmark's text-only
samples need: ScienceQA-FULL has rows without an image).

    from prunesid_vlm.text_only import answer_text, loglikelihood_text
    answer = answer_text(pipe, "Which is a mammal?\\nA. frog\\nB. whale", max_new_tokens=8)
    total, greedy, n = loglikelihood_text(pipe, "Which is a mammal?", " whale")

The prompt is the model's own chat turn with no image placeholder, through the model's own
``generate`` / forward (no visual tokens, so nothing to prune); one crossing onto the GPU per
call, holding the pipeline's model lock, as the pipeline's own methods do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .device import Cost
from .families import FAMILIES
from .generation import score_continuation
from .pipeline import NoAnswers, Pipeline, check_max_new_tokens

__all__ = ["TextAnswer", "answer_text", "loglikelihood_text", "text_prompt_ids"]


@dataclass(frozen=True)
class TextAnswer:
    """A greedy answer to a question without a picture."""

    text: str
    tokens: tuple[int, ...]
    prompt_tokens: int
    """Tokens of the prompt the language model read (no visual tokens)."""


def text_prompt_ids(pipe: Pipeline, question: str) -> torch.Tensor:
    """``[1, L]``: one user turn holding ``question`` alone, in the model's chat format (the
    pictured prompt's format without its placeholders)."""
    processor = pipe.processor
    if FAMILIES[pipe.family].cls_free:
        return pipe.backend.text_ids(question)
    tokenizer = processor.tokenizer
    if getattr(processor, "chat_template", None):
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": question}]}],
                                             add_generation_prompt=True)
    else:  # LLaVA-1.5's and NeXT-Video's format, as their adapters write it
        text = f"USER: {question} ASSISTANT:"
    return tokenizer(text, return_tensors="pt")["input_ids"]


def answer_text(pipe: Pipeline, question: str, max_new_tokens: int = 64) -> TextAnswer:
    """The greedy answer to ``question`` with no picture (as the pipeline decodes: greedy, the
    generation config's suppressed tokens never chosen)."""
    _check_answers(pipe)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    return pipe.run(_answer, None, str(question), max_new_tokens,
                    cost=Cost(generations=1, new_tokens=max_new_tokens))


def loglikelihood_text(pipe: Pipeline, question: str, continuation: str | list[int]) -> tuple[float, bool, int]:
    """``(Σ log p(continuation tokens), whether greedy decoding gives them, number of tokens)`` after
    the picture-less prompt of ``question``; ``continuation`` is text (tokenised without special
    tokens, as :meth:`Pipeline.loglikelihood` does) or token ids."""
    _check_answers(pipe)
    if isinstance(continuation, str):
        ids = pipe.processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    else:
        ids = [int(i) for i in continuation]
    if not ids:
        raise ValueError("the continuation is empty")
    return pipe.run(_loglikelihood, None, str(question), list(ids), cost=Cost(prefills=1))


def _answer(pipe: Pipeline, _media, question: str, max_new_tokens: int) -> TextAnswer:
    with pipe.model_work():
        model = pipe.model
        ids = text_prompt_ids(pipe, question).to(model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **_text_kwargs(pipe, ids),
                                 do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        tokens = out[0, ids.shape[1]:].cpu()
        text = pipe.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return TextAnswer(text=text, tokens=tuple(tokens.tolist()), prompt_tokens=int(ids.shape[1]))


def _loglikelihood(pipe: Pipeline, _media, question: str, continuation: list[int]) -> tuple[float, bool, int]:
    with pipe.model_work():
        model = pipe.model
        prompt = text_prompt_ids(pipe, question)
        target = torch.tensor([continuation], dtype=torch.long)
        ids = torch.cat([prompt, target], dim=1).to(model.device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **_text_kwargs(pipe, ids)).logits
        start = prompt.shape[1]
        total, greedy = score_continuation(model, logits[0, start - 1: start - 1 + len(continuation)], target[0])
        return total, greedy, len(continuation)


def _text_kwargs(pipe: Pipeline, ids: torch.Tensor) -> dict:
    """What else the family's forward takes for a text-only prompt (Qwen: the token types M-RoPE follows)."""
    return pipe.backend.text_forward_extra(ids) if FAMILIES[pipe.family].cls_free else {}


def _check_answers(pipe: Pipeline) -> None:
    if pipe.answers == "none":
        raise NoAnswers(f"{pipe.model_id} is a vision tower alone: {pipe.meaning}.")
