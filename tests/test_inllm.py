"""Pruning inside the language model (FastV, PyramidDrop) after a pre-LLM selection: the image tokens
each layer sees, the ranking row, the unpruned path unchanged, the decoding cache consistent."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prunesid_vlm.generation import next_token
from tests.generate_reference import greedy_generate
from prunesid_vlm.inllm import (
    NO_STAGES,
    InLLMSchedule,
    _embed,
    language_model_layers,
    last_query_attention,
    prefill_flops,
    stage_keeps,
    staged_generate,
)
from prunesid_vlm.pipeline import Frames, load_pipeline
from tests.conftest import make_image
from tests.replicas import TEXT_MODELS, save_replica

QUESTION = "What is in the picture?"


def _prompt(pipe, image, selection=None):
    feats = pipe.encode([image])
    ids, features, visual = pipe._prompt([image], feats, QUESTION, selection)[:3]
    return ids, features, torch.cat(list(features))


# --- schedules -------------------------------------------------------------------------------
def test_schedules_follow_the_published_settings_and_scale_to_depth():
    assert InLLMSchedule.fastv().after == (2,) and InLLMSchedule.fastv().keep == (0.5,)
    assert InLLMSchedule.pyramiddrop().after == (8, 16, 24)
    assert InLLMSchedule.pyramiddrop_for(32).after == (8, 16, 24)
    assert InLLMSchedule.fastv_for(32).after == (2,)
    assert InLLMSchedule.fastv_for(2).after == (1,)  # the demo's two layers: after the first
    assert InLLMSchedule.pyramiddrop_for(8).after == (2, 4, 6)
    assert InLLMSchedule.pyramiddrop_for(2).after == (1,)
    assert not NO_STAGES.active and InLLMSchedule.fastv().active


@pytest.mark.parametrize("bad", [dict(after=(2,), keep=()), dict(after=(2,), keep=(0.0,)), dict(after=(2,), keep=(1.5,)),
                                 dict(after=(4, 2), keep=(0.5, 0.5)), dict(after=(0,), keep=(0.5,))])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        InLLMSchedule(**bad)


def test_stage_keeps_rounds_as_fastv_and_keeps_one():
    assert stage_keeps(576, 0.5) == 288
    assert stage_keeps(3, 0.5) == 2  # round(1.5) = 2 (banker's rounding, as Python's round in FastV's code)
    assert stage_keeps(1, 0.1) == 1
    assert stage_keeps(0, 0.5) == 0
    assert InLLMSchedule.pyramiddrop((2, 4, 6)).image_tokens_per_layer(64, 8) == [64, 64, 32, 32, 16, 16, 8, 8]


# --- the ranking row -------------------------------------------------------------------------
def _eager_rows(pipe, hidden):
    lm = pipe.model.model.language_model
    saved = lm.config._attn_implementation
    lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            out = lm(inputs_embeds=hidden, output_attentions=True)
    finally:
        lm.config._attn_implementation = saved
    return [a[0, :, -1].mean(0) for a in out.attentions]


@pytest.mark.parametrize("which", ["demo", "deep"])
def test_the_ranking_row_is_eager_attention_of_the_last_token(which, llava_pipeline, deep_llava_pipeline):
    pipe = llava_pipeline if which == "demo" else deep_llava_pipeline
    ids, _, flat = _prompt(pipe, make_image(3))
    lm = pipe.model.model.language_model
    hidden = _embed(pipe.model, ids, flat, pipe.adapter.image_token_id)
    cos, sin = lm.rotary_emb(hidden, torch.arange(ids.shape[1])[None])
    reference = _eager_rows(pipe, hidden)
    with torch.no_grad():
        state = hidden
        for layer, expected in zip(lm.layers, reference):
            mine = last_query_attention(layer, state, cos, sin)
            torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-6)
            state = layer(state, position_ids=torch.arange(ids.shape[1])[None], position_embeddings=(cos, sin))


# --- the unpruned path and K = last layer ------------------------------------------------------
@pytest.mark.parametrize("budget", [None, 64])
def test_no_stages_is_the_models_own_generation(budget, llava_pipeline):
    pipe, image = llava_pipeline, make_image(4)
    selection = None if budget is None else pipe.select(pipe.encode([image]), budget)
    ids, features, flat = _prompt(pipe, image, selection)
    plain = greedy_generate(pipe.model, ids, features, max_new_tokens=10)
    staged = staged_generate(pipe.model, ids, flat, pipe.adapter.image_token_id, NO_STAGES, max_new_tokens=10)
    assert staged.tokens.tolist() == plain.tokens.tolist()
    torch.testing.assert_close(staged.first_logits, plain.first_logits, rtol=1e-5, atol=1e-5)
    assert staged.image_tokens_per_layer == [576 if budget is None else 64] * 2


def test_a_stage_after_the_last_layer_is_the_pre_llm_method_alone(deep_llava_pipeline):
    pipe, image = deep_llava_pipeline, make_image(5)
    selection = pipe.select(pipe.encode([image]), 64)
    alone = pipe.answer([image], QUESTION, selection, max_new_tokens=8)
    last = InLLMSchedule.fastv(pipe.in_llm_layers(), 0.25)
    combined = pipe.answer([image], QUESTION, selection, max_new_tokens=8, in_llm=last)
    assert combined.tokens == alone.tokens
    torch.testing.assert_close(combined.first_logits, alone.first_logits, rtol=1e-5, atol=1e-5)
    assert combined.image_tokens_per_layer == (64,) * 8


# --- token counts per layer --------------------------------------------------------------------
def test_pyramiddrop_after_prunesid_counts_per_layer(deep_llava_pipeline):
    pipe, image = deep_llava_pipeline, make_image(6)
    selection = pipe.select(pipe.encode([image]), 64)
    schedule = InLLMSchedule.pyramiddrop_for(8)
    run = pipe.staged_prefill([image], QUESTION, selection, schedule)
    assert run.image_tokens_per_layer == [64, 64, 32, 32, 16, 16, 8, 8]
    text = run.prompt_tokens - 64
    assert run.tokens_per_layer == [text + n for n in run.image_tokens_per_layer]
    assert sorted(run.kept_after) == [2, 4, 6]
    # Every text token stays; each stage keeps a subset of the one before.
    image_positions = set((pipe._prompt([image], pipe.encode([image]), QUESTION, selection)[0][0]
                           == pipe.adapter.image_token_id).nonzero().flatten().tolist())
    previous = set(range(run.prompt_tokens))
    for layer in (2, 4, 6):
        kept = set(run.kept_after[layer])
        assert kept <= previous and kept - image_positions == previous - image_positions
        previous = kept


def test_fastv_alone_on_every_token_and_on_the_next_demo(llava_next_pipeline):
    pipe, image = llava_next_pipeline, make_image(7, 300, 500)
    feats = pipe.encode([image])
    run = pipe.staged_prefill([image], QUESTION, None, InLLMSchedule.fastv(1, 0.25))
    full = pipe.token_counts(feats).total
    assert run.image_tokens_per_layer == [full, stage_keeps(full, 0.25)]
    selection = pipe.select(feats, 32)
    pruned = pipe.token_counts(feats, selection).total
    run = pipe.staged_prefill([image], QUESTION, selection, InLLMSchedule.fastv(1, 0.5))
    assert run.image_tokens_per_layer == [pruned, stage_keeps(pruned, 0.5)]


def test_video_model_stages_its_frames(llava_next_video_pipeline):
    pipe = llava_next_video_pipeline
    frames = [make_image(s) for s in range(4)]
    selection = pipe.select(pipe.encode(frames), 16)
    run = pipe.staged_prefill(frames, QUESTION, selection, InLLMSchedule.fastv(1, 0.5))
    handed = pipe.token_counts(pipe.encode(frames), selection).total
    assert run.image_tokens_per_layer == [handed, stage_keeps(handed, 0.5)]


# --- the cache: decoding after the drops ----------------------------------------------------------
def _masked_reference_logits(pipe, ids, flat, generated, kept_after, renumber: bool):
    """Logits at every position of prompt + generated, recomputed without any cache: every layer sees
    the whole sequence, a stage's dropped prompt tokens are masked out as keys for later layers, and
    (``renumber``, PyramidDrop) each layer numbers the tokens it keeps from 0."""
    lm = pipe.model.model.language_model
    full_ids = torch.cat([ids, torch.tensor([generated[:-1]])], dim=1) if len(generated) > 1 else ids
    hidden = _embed(pipe.model, full_ids, flat, pipe.adapter.image_token_id)
    length = full_ids.shape[1]
    causal = torch.full((length, length), torch.finfo(hidden.dtype).min).triu(1)
    allowed = torch.ones(length, dtype=torch.bool)
    with torch.no_grad():
        for index, layer in enumerate(lm.layers):
            if index in kept_after:
                allowed = torch.zeros(length, dtype=torch.bool)
                allowed[kept_after[index]] = True
                allowed[ids.shape[1]:] = True  # generated tokens are never dropped
            positions = (allowed.cumsum(0) - 1) if renumber else torch.arange(length)
            cos, sin = lm.rotary_emb(hidden, positions[None])
            mask = causal.masked_fill(~allowed[None, :], torch.finfo(hidden.dtype).min)
            hidden = layer(hidden, attention_mask=mask[None, None], position_ids=positions[None],
                           position_embeddings=(cos, sin))
        return pipe.model.lm_head(lm.norm(hidden))[0].float()


@pytest.mark.parametrize("schedule", [InLLMSchedule.pyramiddrop_for(8), InLLMSchedule((2, 4, 6), (0.5,) * 3)],
                         ids=["pyramiddrop", "fastv-three-stages"])
def test_decoding_after_the_stages_matches_a_masked_recompute(deep_llava_pipeline, schedule):
    pipe, image = deep_llava_pipeline, make_image(8)
    selection = pipe.select(pipe.encode([image]), 64)
    ids, _, flat = _prompt(pipe, image, selection)
    run = staged_generate(pipe.model, ids, flat, pipe.adapter.image_token_id, schedule, max_new_tokens=6,
                          keep_logits=True)
    generated = run.tokens.tolist()
    assert len(generated) == 6 and sorted(run.kept_after) == [2, 4, 6]
    reference = _masked_reference_logits(pipe, ids, flat, generated, run.kept_after,
                                         renumber=schedule.style == "pyramiddrop")
    start = ids.shape[1] - 1
    torch.testing.assert_close(reference[start], run.first_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reference[start:start + len(generated)], torch.stack(run.step_logits),
                               rtol=1e-4, atol=1e-4)
    assert reference[start:start + len(generated)].argmax(-1).tolist() == generated


# --- scoring a continuation (multiple-choice benchmarks) through the stages ------------------------------
def test_scoring_without_stages_is_the_plain_score(llava_pipeline):
    pipe, image = llava_pipeline, make_image(14)
    selection = pipe.select(pipe.encode([image]), 64)
    plain = pipe.loglikelihood([image], QUESTION, "a cat", selection)
    last = pipe.loglikelihood([image], QUESTION, "a cat", selection, in_llm=InLLMSchedule.fastv(2, 0.25))
    assert last[1] == plain[1] and last[0] == pytest.approx(plain[0], abs=1e-4)


@pytest.mark.parametrize("schedule", [InLLMSchedule.pyramiddrop_for(8), InLLMSchedule.fastv(2, 0.5)],
                         ids=["pyramiddrop", "fastv"])
def test_scoring_with_stages_matches_a_masked_recompute(deep_llava_pipeline, schedule):
    """Σ log p(continuation) through the stages equals the cache-free recompute with the dropped
    prompt tokens masked, and differs from the score without stages."""
    pipe, image = deep_llava_pipeline, make_image(15)
    selection = pipe.select(pipe.encode([image]), 64)
    continuation = pipe.processor.tokenizer("two cats", add_special_tokens=False)["input_ids"]
    score, greedy = pipe.loglikelihood([image], QUESTION, continuation, selection, in_llm=schedule)
    ids, _, flat = _prompt(pipe, image, selection)
    run = staged_generate(pipe.model, ids, flat, pipe.adapter.image_token_id, schedule, forced=continuation)
    assert run.tokens.tolist() == continuation and len(run.step_logits) == len(continuation)
    reference = _masked_reference_logits(pipe, ids, flat, continuation, run.kept_after,
                                         renumber=schedule.style == "pyramiddrop")
    start = ids.shape[1] - 1
    expected = reference[start:start + len(continuation)].log_softmax(-1)
    assert score == pytest.approx(float(expected[range(len(continuation)), continuation].sum()), abs=1e-3)
    assert greedy == ([next_token(pipe.model, row[None]) for row in reference[start:start + len(continuation)]]
                      == continuation)
    plain, _ = pipe.loglikelihood([image], QUESTION, continuation, selection)
    assert abs(plain - score) > 1e-4


def test_qwen_scoring_through_fastv(demo_cache):
    qwen, image = load_pipeline("demo/tiny-qwen2-vl"), make_image(16, 280, 420)
    selection = qwen.select(qwen.encode([image]), 64)
    plain = qwen.loglikelihood([image], QUESTION, "a cat", selection)
    last = qwen.loglikelihood([image], QUESTION, "a cat", selection, in_llm=InLLMSchedule.fastv(2, 0.5))
    assert last[1] == plain[1] and last[0] == pytest.approx(plain[0], abs=1e-4)
    staged = qwen.loglikelihood([image], QUESTION, "a cat", selection, in_llm=InLLMSchedule.fastv(1, 0.5))
    assert abs(staged[0] - plain[0]) > 1e-5
    with pytest.raises(ValueError, match="PyramidDrop"):
        qwen.loglikelihood([image], QUESTION, "a cat", selection, in_llm=InLLMSchedule.pyramiddrop((1,)))


@pytest.mark.parametrize("style", ["fastv", "pyramiddrop"])
def test_each_rule_ranks_with_the_layer_its_code_uses(deep_llava_pipeline, style):
    """FastV: the attention of the layer just run (layer K − 1 counting from 0); PyramidDrop: the
    next layer's projections on the states entering it (layer K)."""
    pipe, image = deep_llava_pipeline, make_image(12)
    selection = pipe.select(pipe.encode([image]), 64)
    ids, _, flat = _prompt(pipe, image, selection)
    schedule = InLLMSchedule((3,), (0.25,), style=style)
    run = staged_generate(pipe.model, ids, flat, pipe.adapter.image_token_id, schedule, prefill_only=True)
    lm = pipe.model.model.language_model
    hidden = _embed(pipe.model, ids, flat, pipe.adapter.image_token_id)
    positions = torch.arange(ids.shape[1])[None]
    cos, sin = lm.rotary_emb(hidden, positions)
    states = [hidden]
    with torch.no_grad():
        for layer in lm.layers[:3]:
            states.append(layer(states[-1], position_ids=positions, position_embeddings=(cos, sin)))
    ranking_layer = 2 if style == "fastv" else 3
    row = last_query_attention(lm.layers[ranking_layer], states[ranking_layer], cos, sin)
    images = (ids[0] == pipe.adapter.image_token_id).nonzero().flatten()
    top = set(images[row[images].argsort(descending=True, stable=True)[:16]].tolist())
    assert set(run.kept_after[3]) & set(images.tolist()) == top


def test_pyramiddrop_counts_from_what_entered():
    """int(n₀ · λ^s) of the n₀ that entered, as PyramidDrop's ratio list; FastV rounds stage by stage."""
    assert InLLMSchedule.pyramiddrop((1, 2, 3)).image_tokens_per_layer(118, 4) == [118, 59, 29, 14]
    assert InLLMSchedule((1, 2, 3), (0.5,) * 3).image_tokens_per_layer(118, 4) == [118, 59, 30, 15]


# --- the pipeline's door -----------------------------------------------------------------------------
def test_answers_with_stages_are_cached_apart_from_plain_ones(llava_pipeline):
    pipe, image = llava_pipeline, make_image(9)
    selection = pipe.select(pipe.encode([image]), 32)
    plain = pipe.answer([image], QUESTION, selection, max_new_tokens=6)
    staged = pipe.answer([image], QUESTION, selection, max_new_tokens=6, in_llm=InLLMSchedule.fastv(1, 0.25))
    again = pipe.answer([image], QUESTION, selection, max_new_tokens=6, in_llm=InLLMSchedule.fastv(1, 0.25))
    assert not staged.cached and again.cached and again.tokens == staged.tokens
    assert staged.image_tokens_per_layer == (32, 8) and plain.image_tokens_per_layer == ()
    # The first-token logits of the plain prompt are still the plain answer's, not the staged one's.
    (logits,) = pipe.first_token_logits([image], QUESTION, [selection])
    torch.testing.assert_close(logits, plain.first_logits)
    with_no_stage = pipe.answer([image], QUESTION, selection, max_new_tokens=6, in_llm=NO_STAGES)
    assert with_no_stage.cached and with_no_stage.tokens == plain.tokens


def test_stages_beyond_the_model_and_uncovered_models_are_refused(llava_pipeline):
    with pytest.raises(ValueError, match="beyond this model's 2 layers"):
        llava_pipeline.answer([make_image(1)], QUESTION, in_llm=InLLMSchedule.fastv(3))
    gemma = SimpleNamespace(model=SimpleNamespace(language_model=SimpleNamespace(
        config=SimpleNamespace(model_type="gemma", num_hidden_layers=18), layers=[])))
    with pytest.raises(ValueError, match="'gemma'"):
        language_model_layers(gemma)


# --- Qwen2-VL / Qwen2.5-VL: FastV with 3-D positions ---------------------------------------------------
@pytest.fixture(scope="module", params=["demo/tiny-qwen2-vl", "demo/tiny-qwen2.5-vl"])
def qwen(request, demo_cache):
    return load_pipeline(request.param)


def _qwen_flat(pipe, media, selection):
    feats = pipe.encode(media)
    prompt = pipe.token_prompt(feats, QUESTION, selection)
    parts = next(iter(prompt.features.values()))
    return prompt.input_ids, torch.cat(parts), prompt.token_id, prompt.positions, prompt.next_position


def _qwen_masked_reference(pipe, ids, flat, token_id, positions, next_position, generated, kept_after):
    """Logits at every position of prompt + generated without any cache: each layer sees the whole
    sequence at its M-RoPE positions (generated tokens at next_position + i on all three axes), and a
    stage's dropped prompt tokens are masked out as keys for every later layer."""
    lm = pipe.model.model.language_model
    extra = torch.tensor([generated[:-1]], dtype=torch.long)
    full_ids = torch.cat([ids, extra], dim=1)
    steps = torch.arange(extra.shape[1]) + next_position
    full_positions = torch.cat([positions, steps.expand(3, 1, -1)], dim=2)
    hidden = _embed(pipe.model, full_ids, flat, token_id)
    length = full_ids.shape[1]
    causal = torch.full((length, length), torch.finfo(hidden.dtype).min).triu(1)
    allowed = torch.ones(length, dtype=torch.bool)
    cos, sin = lm.rotary_emb(hidden, full_positions)
    with torch.no_grad():
        for index, layer in enumerate(lm.layers):
            if index in kept_after:
                allowed = torch.zeros(length, dtype=torch.bool)
                allowed[kept_after[index]] = True
                allowed[ids.shape[1]:] = True
            mask = causal.masked_fill(~allowed[None, :], torch.finfo(hidden.dtype).min)
            hidden = layer(hidden, attention_mask=mask[None, None], position_embeddings=(cos, sin))
        return pipe.model.lm_head(lm.norm(hidden))[0].float()


def test_qwen_without_stages_is_its_own_greedy_answer(qwen):
    from prunesid_vlm.positioned_generation import greedy_with_positions

    image = make_image(21, 280, 420)
    selection = qwen.select(qwen.encode([image]), 64)
    ids, flat, token_id, positions, next_position = _qwen_flat(qwen, [image], selection)
    plain = greedy_with_positions(qwen.model, qwen.token_prompt(qwen.encode([image]), QUESTION, selection),
                                  max_new_tokens=8)
    staged = staged_generate(qwen.model, ids, flat, token_id, NO_STAGES, max_new_tokens=8, positions=positions,
                             next_position=next_position)
    assert staged.tokens.tolist() == plain.tokens.tolist()
    torch.testing.assert_close(staged.first_logits, plain.first_logits, rtol=1e-5, atol=1e-5)
    assert staged.image_tokens_per_layer == [flat.shape[0]] * 2


@pytest.mark.parametrize("media", ["image", "clip"])
def test_qwen_fastv_counts_and_decoding_match_a_masked_recompute(qwen, media):
    """FastV after layer 1 on a pruned Qwen prompt (an image, and a clip's temporal patches): the
    image tokens per layer, and every generated token's logits against a cache-free recompute at the
    original 3-D positions with the dropped tokens masked."""
    frames = [make_image(22, 280, 420)] if media == "image" else Frames([make_image(s, 240, 320) for s in range(4)])
    selection = qwen.select(qwen.encode(frames), 64)
    ids, flat, token_id, positions, next_position = _qwen_flat(qwen, frames, selection)
    handed = flat.shape[0]
    assert handed == qwen.token_counts(qwen.encode(frames), selection).total
    run = staged_generate(qwen.model, ids, flat, token_id, InLLMSchedule.fastv(1, 0.5), max_new_tokens=6,
                          keep_logits=True, positions=positions, next_position=next_position)
    assert run.image_tokens_per_layer == [handed, stage_keeps(handed, 0.5)]
    assert run.tokens_per_layer[1] == ids.shape[1] - handed + stage_keeps(handed, 0.5)
    generated = run.tokens.tolist()
    reference = _qwen_masked_reference(qwen, ids, flat, token_id, positions, next_position, generated, run.kept_after)
    start = ids.shape[1] - 1
    torch.testing.assert_close(reference[start:start + len(generated)], torch.stack(run.step_logits),
                               rtol=1e-4, atol=1e-4)
    # The greedy choice as generate makes it (the demo's generation config suppresses some tokens).
    assert [next_token(qwen.model, row[None]) for row in reference[start:start + len(generated)]] == generated


def test_qwen_clip_through_the_pipeline_and_empty_schedules(qwen):
    """A clip's temporal patches through Pipeline.staged_prefill (the video placeholder chosen by the
    pipeline); a schedule with no stage, of either style, is the plain prefill on 3-D positions too."""
    frames = Frames([make_image(s, 240, 320) for s in range(4)])
    selection = qwen.select(qwen.encode(frames), 64)
    handed = qwen.token_counts(qwen.encode(frames), selection).total
    run = qwen.staged_prefill(frames, QUESTION, selection, InLLMSchedule.fastv(1, 0.5))
    assert run.image_tokens_per_layer == [handed, stage_keeps(handed, 0.5)]
    plain = qwen.answer(frames, QUESTION, selection, max_new_tokens=1)
    for empty in (NO_STAGES, InLLMSchedule.pyramiddrop(())):
        torch.testing.assert_close(qwen.staged_prefill(frames, QUESTION, selection, empty).first_logits,
                                   plain.first_logits, rtol=1e-5, atol=1e-5)


def test_qwen_answers_with_fastv_and_refuses_pyramiddrop_with_the_reason(qwen):
    image = make_image(23, 280, 420)
    selection = qwen.select(qwen.encode([image]), 64)
    alone = qwen.answer([image], QUESTION, selection, max_new_tokens=6)
    last = qwen.answer([image], QUESTION, selection, max_new_tokens=6, in_llm=InLLMSchedule.fastv(2, 0.25))
    assert last.tokens == alone.tokens and last.image_tokens_per_layer == (alone.visual_tokens,) * 2
    staged = qwen.answer([image], QUESTION, selection, max_new_tokens=6, in_llm=InLLMSchedule.fastv(1, 0.5))
    assert staged.image_tokens_per_layer == (alone.visual_tokens, stage_keeps(alone.visual_tokens, 0.5))
    with pytest.raises(ValueError, match="M-RoPE.*PyramidDrop|PyramidDrop.*M-RoPE"):
        qwen.answer([image], QUESTION, selection, in_llm=InLLMSchedule.pyramiddrop((1,)))
    assert qwen.in_llm_styles == ("fastv",)


def test_qwen_ranking_row_on_a_real_width_replica(tmp_path):
    """Qwen2.5-VL-3B's widths (2048, 16 heads over 2 KV heads, M-RoPE 16/24/24), 3 decoder layers: the
    ranking row equals eager attention at the prompt's 3-D positions, and FastV's counts per layer."""
    from tests.replicas import save_qwen_replica

    pipe = load_pipeline(str(save_qwen_replica(tmp_path / "q25", "Qwen/Qwen2.5-VL-3B-Instruct", text_layers=3)),
                         device="cpu")
    image = make_image(24, 224, 336)
    selection = pipe.select(pipe.encode([image]), 64)
    ids, flat, token_id, positions, _ = _qwen_flat(pipe, [image], selection)
    lm = pipe.model.model.language_model
    hidden = _embed(pipe.model, ids, flat, token_id)
    cos, sin = lm.rotary_emb(hidden, positions)
    layer = lm.layers[0]
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    q = attention.q_proj(normed).view(1, ids.shape[1], -1, attention.head_dim).transpose(1, 2)
    k = attention.k_proj(normed).view(1, ids.shape[1], -1, attention.head_dim).transpose(1, 2)
    q, k = (x * cos[:, None] + torch.cat([-x[..., x.shape[-1] // 2:], x[..., :x.shape[-1] // 2]], -1) * sin[:, None]
            for x in (q, k))
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    eager = ((q @ k.transpose(-1, -2)) * attention.scaling + torch.full((ids.shape[1],) * 2, -1e9).triu(1)).softmax(-1)
    torch.testing.assert_close(last_query_attention(layer, hidden, cos, sin), eager[0, :, -1].mean(0),
                               rtol=1e-4, atol=1e-6)
    run = pipe.staged_prefill([image], QUESTION, selection, InLLMSchedule.fastv(1, 0.5))
    handed = flat.shape[0]
    assert run.image_tokens_per_layer == [handed, stage_keeps(handed, 0.5), stage_keeps(handed, 0.5)]


def test_prefill_flops_shrink_with_the_tokens():
    config = SimpleNamespace(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
    full = prefill_flops([640] * 32, config)
    # 32 layers × 202.4 M weights = 6.48e9: 2 · 6.48e9 · 640 = 8.29e12, attention 4 · 640² · 4096 · 32 = 0.21e12.
    assert 8.4e12 < full < 8.6e12
    pruned = prefill_flops([128] * 32, config)
    assert pruned < full / 4.5


# --- a real-width replica -----------------------------------------------------------------------------
def test_real_width_replica_with_grouped_heads(tmp_path):
    """TinyLlama's published widths (2048, 32 heads over 4 KV heads) under a CLIP-L/336 tower, 4 layers."""
    folder = save_replica(tmp_path / "tinyllava", text=TEXT_MODELS["bczhou/tiny-llava-v1-hf"], text_layers=4,
                          max_shard_size="4GB")
    pipe = load_pipeline(str(folder))
    image = make_image(10)
    selection = pipe.select(pipe.encode([image]), 64)
    ids, _, flat = _prompt(pipe, image, selection)
    lm = pipe.model.model.language_model
    hidden = _embed(pipe.model, ids, flat, pipe.adapter.image_token_id)
    cos, sin = lm.rotary_emb(hidden, torch.arange(ids.shape[1])[None])
    torch.testing.assert_close(last_query_attention(lm.layers[0], hidden, cos, sin), _eager_rows(pipe, hidden)[0],
                               rtol=1e-4, atol=1e-6)
    run = pipe.staged_prefill([image], QUESTION, selection, InLLMSchedule.pyramiddrop_for(4))
    assert run.image_tokens_per_layer == [64, 32, 16, 8]
    alone = pipe.staged_prefill([image], QUESTION, selection, NO_STAGES)
    assert run.tokens_per_layer[-1] < alone.tokens_per_layer[-1]


def test_phi3_fused_projections_and_mistral_windows(tmp_path):
    """Phi-3's fused qkv_proj gives the same ranking row as eager attention and no stage is the model's
    own generation; a Mistral whose window is shorter than the prompt is refused, not run wrongly."""
    small = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    phi3 = load_pipeline(str(save_replica(tmp_path / "phi3", text=("phi3", small), text_layers=3)))
    image = make_image(13)
    ids, features, flat = _prompt(phi3, image)
    lm = phi3.model.model.language_model
    assert hasattr(lm.layers[0].self_attn, "qkv_proj")
    hidden = _embed(phi3.model, ids, flat, phi3.adapter.image_token_id)
    cos, sin = lm.rotary_emb(hidden, torch.arange(ids.shape[1])[None])
    torch.testing.assert_close(last_query_attention(lm.layers[0], hidden, cos, sin), _eager_rows(phi3, hidden)[0],
                               rtol=1e-4, atol=1e-6)
    plain = greedy_generate(phi3.model, ids, features, max_new_tokens=5)
    staged = staged_generate(phi3.model, ids, flat, phi3.adapter.image_token_id, NO_STAGES, max_new_tokens=5)
    assert staged.tokens.tolist() == plain.tokens.tolist()

    mistral = load_pipeline(str(save_replica(tmp_path / "mistral", text=("mistral", dict(small, sliding_window=64)),
                                             text_layers=2)))
    with pytest.raises(ValueError, match="window of 64 tokens"):
        mistral.answer([image], QUESTION, in_llm=InLLMSchedule.fastv(1))
    wide = load_pipeline(str(save_replica(tmp_path / "mistral-wide", text=("mistral", dict(small, sliding_window=4096)),
                                          text_layers=2)))
    ids, features, flat = _prompt(wide, image)
    plain = greedy_generate(wide.model, ids, features, max_new_tokens=5)
    staged = staged_generate(wide.model, ids, flat, wide.adapter.image_token_id, NO_STAGES, max_new_tokens=5)
    assert staged.tokens.tolist() == plain.tokens.tolist()
