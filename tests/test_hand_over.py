"""One hand-over object for every family: first-token logits of several prompts in one batched
forward pass equal each prompt's own prefill, whatever its positions (LLaVA compact or original,
Qwen's M-RoPE), and the pass count says what was batched."""
from __future__ import annotations

import pytest
import torch

from conftest import make_image
from prunesid_vlm.pipeline import load_pipeline
from prunesid_vlm.positioned_generation import batchable, first_logits_with_positions
from prunesid_vlm.registry import DEMO_QWEN2_ID

QUESTION = "What is in the picture?"


def _batched_equals_single(pipe, image, positions):
    feats = pipe.encode([image])
    selections = [None, pipe.select(feats, 64), pipe.select(feats, 16, method="random", seed=3)]
    prompts = [pipe._hand_over([image], feats, QUESTION, s, positions or pipe.positions_default)[0] for s in selections]
    assert batchable(prompts)
    assert len({p.input_ids.shape[1] for p in prompts}) == 3  # different lengths: left padding is exercised
    before = pipe.stats["prefill_batches"]
    batched = pipe.first_token_logits([image], QUESTION, selections, positions=positions)
    assert pipe.stats["prefill_batches"] - before == 1
    for prompt, row in zip(prompts, batched):
        torch.testing.assert_close(row, first_logits_with_positions(pipe.model, prompt), rtol=1e-4, atol=1e-4)
    return prompts


@pytest.mark.parametrize("positions", ["compact", "original"])
def test_llava_prompts_batch_with_either_positions(llava_pipeline, positions):
    prompts = _batched_equals_single(llava_pipeline, make_image(21), positions)
    gaps = [bool((p.positions[0].diff() > 1).any()) for p in prompts[1:]]
    assert gaps == [positions == "original"] * 2  # original positions skip the dropped patches


def test_qwen_prompts_batch_with_their_mrope_positions(demo_cache):
    qwen = load_pipeline(DEMO_QWEN2_ID, device="cpu")
    prompts = _batched_equals_single(qwen, make_image(22, 280, 420), None)
    assert prompts[0].positions.dim() == 3  # [3, 1, L]


@pytest.mark.parametrize("model_id", ["llava", DEMO_QWEN2_ID])
def test_the_checkpoints_generation_settings_act_as_in_generate(model_id, llava_pipeline, demo_cache):
    """A repetition penalty and n-gram blocking in the generation config change the answer, and the
    pipeline's decoding applies them exactly as the model's own greedy ``generate``."""
    pipe = llava_pipeline if model_id == "llava" else load_pipeline(model_id, device="cpu")
    image, question = make_image(23, 280, 420), "Which settings shape this answer?"
    inputs = pipe.prompt_inputs([image], question)
    config = pipe.model.generation_config
    saved = (config.repetition_penalty, config.no_repeat_ngram_size)
    plain = pipe.model.generate(**inputs, do_sample=False, max_new_tokens=12)[0, inputs["input_ids"].shape[1]:]
    try:
        config.repetition_penalty, config.no_repeat_ngram_size = 3.0, 1
        expected = pipe.model.generate(**inputs, do_sample=False, max_new_tokens=12)[0, inputs["input_ids"].shape[1]:]
        answer = pipe.answer([image], question, None, max_new_tokens=12)
    finally:
        config.repetition_penalty, config.no_repeat_ngram_size = saved
        pipe.clear_caches()
    assert expected.tolist() != plain.tolist()  # the settings matter for this prompt
    assert list(answer.tokens) == expected.tolist()
    assert len(set(answer.tokens)) == len(answer.tokens)  # no token twice (n-gram size 1)


def test_the_processor_runs_once_per_media_and_question(llava_pipeline, monkeypatch):
    pipe, image = llava_pipeline, make_image(24)
    feats = pipe.encode([image])
    calls = []
    own = pipe.prompt_inputs
    monkeypatch.setattr(pipe, "prompt_inputs", lambda images, question: calls.append(question) or own(images, question))
    selections = [None, pipe.select(feats, 64), pipe.select(feats, 16)]
    expected = [first_logits_with_positions(pipe.model, pipe._hand_over([image], feats, "Once?", s, "compact")[0])
                for s in selections]
    batched = pipe.first_token_logits([image], "Once?", selections)
    pipe.answer([image], "Once?", pipe.select(feats, 32), max_new_tokens=2, positions="original")
    assert calls == ["Once?"]  # three prompts, a batch and an answer: the ids were made once
    for row, single in zip(batched, expected):
        torch.testing.assert_close(row, single, rtol=1e-4, atol=1e-4)
    pipe.first_token_logits([image], "Twice?", [selections[1]])
    assert calls == ["Once?", "Twice?"]
