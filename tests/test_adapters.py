"""Adapters on the tiny random-weight LLaVA-1.5 demo model (CPU, offline)."""
from __future__ import annotations

import json

import pytest
import torch

from prunesid import select_tokens
from prunesid_vlm.features import encode_views
from prunesid_vlm.fidelity import first_token_kl
from prunesid_vlm.generation import resize_placeholders
from prunesid_vlm.pipeline import ModelLoadError, list_models, load_pipeline

QUESTION = "What is in the picture?"


def _lm_inputs(model):
    """Context: records (input_ids, inputs_embeds) of every language-model call."""
    calls = []

    def pre(module, args, kwargs):
        calls.append(kwargs["inputs_embeds"].detach().clone())

    return calls, model.model.language_model.register_forward_pre_hook(pre, with_kwargs=True)


def test_exactly_k_visual_tokens_reach_the_language_model(llava_pipeline, images):
    pipe, k = llava_pipeline, 64
    feats = pipe.encode(images[:1])
    sel = select_tokens(feats.hidden_states, feats.cls_attention, k)
    pipe.clear_caches()  # both answers must really run here, whatever earlier tests asked
    calls, handle = _lm_inputs(pipe.model)
    try:
        result = pipe.compare(images[:1], QUESTION, k, max_new_tokens=3)
    finally:
        handle.remove()
    full_prompt = pipe.prompt_inputs(images[:1], QUESTION)["input_ids"].shape[1]
    assert result.visual_tokens_full == 576 and result.visual_tokens_pruned == k
    assert result.prompt_tokens == {"full": full_prompt, "pruned": full_prompt - 576 + k}
    prefills = [c for c in calls if c.shape[1] > 1]
    lengths = [c.shape[1] for c in prefills]
    assert lengths[:2] == [full_prompt, full_prompt - 576 + k]  # the two generations
    # then the timing passes (full and pruned alternating, after a one-off warm-up), on the same two prompts
    from prunesid_vlm.pipeline import PREFILL_REPEATS

    assert set(lengths[2:]) == {full_prompt, full_prompt - 576 + k}
    assert len(lengths) - 2 in (2 * PREFILL_REPEATS, 2 * PREFILL_REPEATS + 1)
    # The K image slots of the pruned prefill hold the projected kept rows, in selection order (CLS first).
    ids = pipe.prompt_inputs(images[:1], QUESTION)["input_ids"]
    start = int((ids[0] == pipe.adapter.image_token_id).nonzero()[0])
    expected = pipe.model.model.multi_modal_projector(feats.hidden_states[0, sel.keep_row(0)])
    torch.testing.assert_close(prefills[1][0, start:start + k], expected)
    assert sel.keep_row(0)[0] == 0 and torch.equal(result.selection.keep, sel.keep)


def test_full_path_equals_plain_generate(llava_pipeline, images):
    pipe = llava_pipeline
    result = pipe.compare(images[:1], QUESTION, 64, max_new_tokens=12)
    inputs = pipe.prompt_inputs(images[:1], QUESTION)
    plain = pipe.model.generate(**inputs, do_sample=False, max_new_tokens=12)
    assert result.full_tokens == plain[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(result.full_tokens) > 0 and len(result.pruned_tokens) > 0


def test_keeping_every_patch_reproduces_the_full_answer(llava_pipeline, images):
    def keep_all(hidden, cls, budget):  # a selection rule of select_tokens's signature
        sel = select_tokens(hidden, cls, 64)
        patches = torch.arange(1, hidden.shape[1])[None].expand(hidden.shape[0], -1)
        return type(sel)(**{**sel.__dict__, "keep": patches, "num_tokens": torch.full((hidden.shape[0],), 576)})

    result = llava_pipeline.compare(images[:1], QUESTION, 64, max_new_tokens=8, selection=keep_all)
    assert result.pruned_tokens == result.full_tokens and result.same_answer
    assert result.fidelity == pytest.approx(0.0, abs=1e-6)


def test_one_tower_pass_gives_hidden_states_and_the_eager_cls_row(llava_pipeline, images):
    from transformers import LlavaForConditionalGeneration

    pipe = llava_pipeline
    pixels = pipe.adapter.preprocess(images[0])[0]
    hidden, cls = encode_views(pipe.model, pixels)
    tower = pipe.model.model.vision_tower
    assert tower.config._attn_implementation == "sdpa"
    assert not tower.encoder.layers[-2].self_attn.q_proj._forward_hooks  # hooks removed on exit
    eager = LlavaForConditionalGeneration.from_pretrained(pipe.loaded.path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager.model.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(hidden, out.hidden_states[-2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, out.attentions[-2][:, :, 0, 1:].sum(1), atol=1e-6, rtol=1e-5)
    assert hidden.shape == (1, 577, 64) and cls.shape == (1, 576)


def test_features_are_cached_per_image(llava_pipeline, images):
    pipe = llava_pipeline
    assert pipe.phi_ref > 0  # calibrated (once, outside the cache) before counting tower passes
    calls = []
    handle = pipe.model.model.vision_tower.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        first = pipe.encode([images[1]])
        again = pipe.encode([images[1]])
        pipe.compare([images[1]], QUESTION, 32, max_new_tokens=2)
        pipe.compare([images[1]], QUESTION, 128, dynamic=True, max_new_tokens=2)
        both = pipe.encode([images[1], images[2]])
    finally:
        handle.remove()
    assert torch.equal(first.hidden_states, again.hidden_states) and again.cached == [True] and again.vision_s == 0
    assert both.cached == [True, False] or both.cached == [True, True]
    assert sum(calls) <= 2  # one tower pass per new image, none for new budgets


def test_multiple_images_get_their_own_budgets(llava_pipeline, images):
    pipe, k = llava_pipeline, 48
    fixed = pipe.compare(images, QUESTION, k, max_new_tokens=2)
    assert fixed.visual_tokens_full == 3 * 576 and fixed.visual_tokens_pruned == 3 * k
    assert fixed.prompt_tokens["full"] - fixed.prompt_tokens["pruned"] == 3 * (576 - k)
    dynamic = pipe.compare(images, QUESTION, k, dynamic=True, max_new_tokens=2)
    assert sum(dynamic.budgets) == 3 * k and dynamic.visual_tokens_pruned == 3 * k
    assert dynamic.selection.num_tokens.tolist() == dynamic.budgets


def test_result_reports_timings_fidelity_and_serialises(llava_pipeline, images):
    result = llava_pipeline.compare(images[:1], QUESTION, 64, max_new_tokens=4)
    for run in ("full", "pruned"):
        t = result.timings[run]
        assert all(t[key] >= 0 for key in ("vision_s", "selection_s", "prefill_s", "decode_s"))
        assert t["total_s"] == pytest.approx(sum(v for key, v in t.items() if key != "total_s"))
    assert result.timings["full"]["selection_s"] == 0 < result.timings["pruned"]["selection_s"]
    assert result.fidelity >= 0
    blob = json.loads(json.dumps(result.to_dict()))
    assert blob["pruned"]["visual_tokens"] == 64 and len(blob["selection"][0]["keep"]) == 64


def test_single_image_dynamic_budget_follows_phi(llava_pipeline, images):
    pipe = llava_pipeline
    assert 0 < pipe.phi_ref < 1
    budgets = pipe.budgets(pipe.encode(images[:1]), 64, dynamic=True)
    assert len(budgets) == 1 and 8 <= budgets[0] <= 577


def test_resize_placeholders_keeps_the_rest_of_the_prompt():
    ids = torch.tensor([[1, 5, 9, 9, 9, 9, 6, 9, 9, 9, 7]])
    out = resize_placeholders(ids, 9, full_counts=[4, 3], kept_counts=[2, 1])
    assert out.tolist() == [[1, 5, 9, 9, 6, 9, 7]]
    with pytest.raises(ValueError, match="placeholders"):
        resize_placeholders(ids, 9, full_counts=[4, 4], kept_counts=[2, 1])


def test_resize_placeholders_grows_a_run_by_its_last_placeholder():
    ids = torch.tensor([[1, 5, 9, 9, 6, 9, 9, 9, 7]])
    out = resize_placeholders(ids, 9, full_counts=[2, 3], kept_counts=[3, 1])
    assert out.tolist() == [[1, 5, 9, 9, 9, 6, 9, 7]]


def test_first_token_kl():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert first_token_kl(logits, logits) == pytest.approx(0.0, abs=1e-7)
    assert first_token_kl(logits, logits.flip(0)) > 0.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(question="   "), "question is empty"),
    (dict(num_tokens=1), "between 2 and 577"),
    (dict(num_tokens=600), "between 2 and 577"),
    (dict(images=[]), "no image"),
    (dict(images=["not an image"]), "PIL"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_inputs_raise_value_error(llava_pipeline, images, kwargs, message):
    args = dict(images=images[:1], question=QUESTION, num_tokens=64) | kwargs
    with pytest.raises(ValueError, match=message):
        llava_pipeline.compare(args.pop("images"), args.pop("question"), args.pop("num_tokens"), **args)


def test_load_errors_say_what_to_do(tmp_path, demo_cache):
    with pytest.raises(ModelLoadError, match="demo"):
        load_pipeline("no-such-org/no-such-model")  # offline: cannot be fetched
    with pytest.raises(ModelLoadError, match="local folder"):
        load_pipeline(str(tmp_path))  # exists, but holds no model
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="supports LLaVA"):
        load_pipeline(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no model"):
        load_pipeline("")


def test_registry_lists_first_class_models():
    ids = {spec.model_id: spec.family for spec in list_models()}
    assert ids["llava-hf/llava-1.5-7b-hf"] == "llava"
    assert ids["llava-hf/llava-v1.6-vicuna-7b-hf"] == ids["llava-hf/llava-v1.6-mistral-7b-hf"] == "llava_next"
    assert any(spec.is_demo for spec in list_models())


def test_merged_tokens_of_a_baseline_follow_the_kept_rows(llava_pipeline, images):
    pipe, k = llava_pipeline, 32

    def keep_and_merge(hidden, cls, budget):  # VisionZip-like: K−2 kept rows + 2 merged tokens
        sel = select_tokens(hidden, cls, k - 2)
        merged = torch.stack([hidden[:, 1:289].mean(1), hidden[:, 289:].mean(1)], dim=1)  # [B, 2, D]
        return type(sel)(**{**sel.__dict__, "merged_tokens": merged, "num_tokens": sel.num_tokens + 2})

    feats = pipe.encode(images[:1])
    calls, handle = _lm_inputs(pipe.model)
    try:
        result = pipe.compare(images[:1], QUESTION, k, max_new_tokens=2, selection=keep_and_merge)
    finally:
        handle.remove()
    assert result.visual_tokens_pruned == k
    ids = pipe.prompt_inputs(images[:1], QUESTION)["input_ids"]
    end = int((ids[0] == pipe.adapter.image_token_id).nonzero()[0]) + k
    merged = torch.stack([feats.hidden_states[0, 1:289].mean(0), feats.hidden_states[0, 289:].mean(0)])
    prefill = [c for c in calls if c.shape[1] > 1][1]
    torch.testing.assert_close(prefill[0, end - 2:end], pipe.model.model.multi_modal_projector(merged))


def test_no_hooks_or_patches_are_left_behind(llava_pipeline, images):
    from transformers import LlavaForConditionalGeneration

    def hooks():  # transformers installs its own output-capturing hooks; ours must come and go
        return [(name, list(m._forward_hooks), list(m._forward_pre_hooks))
                for name, m in llava_pipeline.model.named_modules()]

    llava_pipeline.encode(images[:1])
    before_class, before_hooks = dict(vars(LlavaForConditionalGeneration)), hooks()
    from tests.conftest import make_image

    fresh = make_image(11)  # not cached: the tower and its CLS hooks run
    llava_pipeline.compare([images[0], fresh], QUESTION, 16, max_new_tokens=2)
    assert not llava_pipeline.encode([fresh]).vision_s
    assert dict(vars(LlavaForConditionalGeneration)) == before_class and hooks() == before_hooks


def test_demo_model_leaves_the_global_rng_alone(tmp_path):
    from prunesid_vlm.demo_model import save_demo_model

    state = torch.get_rng_state()
    save_demo_model("llava", tmp_path)
    assert torch.equal(torch.get_rng_state(), state)


def test_missing_folder_and_fallback_to_demo(demo_cache, tmp_path):
    from prunesid_vlm.pipeline import load_pipeline_or_demo, offline_default

    with pytest.raises(ModelLoadError, match="there is no folder"):
        load_pipeline(str(tmp_path / "missing"))
    pipe, note = load_pipeline_or_demo(str(tmp_path / "missing"), device="cpu")
    assert pipe.is_demo and pipe.model_id == offline_default() and "demo" in note


def test_dtype_and_device_resolution():
    from prunesid_vlm.loading import resolve_dtype, resolve_device

    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu and resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        resolve_dtype(torch.float16, cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA"):
            resolve_device("cuda")
