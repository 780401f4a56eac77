"""Gemma 3: one backend file on the shared CLS-free pipeline. The unpruned path is the model's own
``generate``; a pruned prompt hands over exactly the kept tokens (of the 256 pooled ones per
picture) at their original 1-D positions, and Gemma 3's bidirectional attention over a picture's
tokens covers exactly the kept ones; a replica at google/gemma-3-4b-it's published widths loads
through ``from_pretrained`` and answers pruned."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.conftest import make_image
from prunesid_vlm.pipeline import load_pipeline, select
from prunesid_vlm.registry import DEMO_GEMMA3_ID

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def gemma(demo_cache):
    return load_pipeline(DEMO_GEMMA3_ID, device="cpu")


def picture(seed: int = 0, height: int = 60, width: int = 90) -> Image.Image:
    return make_image(seed, height, width)


def _language_model_calls(pipe):
    """Every call of the language model: its inputs_embeds, position_ids and attention masks."""
    calls = []

    def record(module, args, kwargs):
        calls.append({"embeds": kwargs["inputs_embeds"].detach().clone(), "positions": kwargs["position_ids"].clone(),
                      "masks": kwargs["attention_mask"]})

    return calls, pipe.model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)


def _kept_index(ids: torch.Tensor, image_token: int, kept: list[torch.Tensor]) -> torch.Tensor:
    """The full prompt's indices a pruned prompt keeps: all text, and per picture its kept placeholders."""
    visual = (ids[0] == image_token).nonzero().flatten()
    n = len(visual) // len(kept)
    starts = [int(visual[v * n]) for v in range(len(kept))]
    pieces, cursor = [], 0
    for start, k in zip(starts, kept):
        pieces += [torch.arange(cursor, start), start + k]
        cursor = start + n
    return torch.cat(pieces + [torch.arange(cursor, ids.shape[1])])


def test_the_demo_loads_as_gemma3_through_from_pretrained(gemma):
    from prunesid_vlm.token_pipeline import TokenPipeline

    assert type(gemma.model).__name__ == "Gemma3ForConditionalGeneration"
    assert isinstance(gemma, TokenPipeline) and gemma.family == "gemma3" and gemma.is_demo
    config = gemma.model.config
    vision = config.vision_config
    assert vision.image_size // vision.patch_size > int(config.mm_tokens_per_image ** 0.5)  # the projector pools
    assert gemma.in_llm_styles == () and "scales its embeddings" in gemma.in_llm_limits
    assert type(gemma.processor.image_processor).__name__ == "Gemma3ImageProcessorPil"


def test_the_unpruned_answer_and_first_logits_are_generates(gemma):
    image = picture(0)
    result = gemma.compare([image], QUESTION, 64, max_new_tokens=4)
    inputs = gemma.prompt_inputs([image], QUESTION)
    assert set(inputs) >= {"input_ids", "pixel_values", "token_type_ids"}
    out = gemma.model.generate(**inputs, do_sample=False, max_new_tokens=4, output_logits=True,
                               return_dict_in_generate=True)
    assert result.full_tokens == out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    full = gemma.answer([image], QUESTION, None, max_new_tokens=4)
    torch.testing.assert_close(full.first_logits, out.logits[0][0].float(), rtol=1e-4, atol=1e-4)
    assert result.visual_tokens_full == int((inputs["token_type_ids"] == 1).sum()) == gemma.model.config.mm_tokens_per_image
    # The backend's full prompt is the processor's, token for token, with the same token types.
    feats = gemma.encode([image])
    prompt = gemma.token_prompt(feats, QUESTION, None)
    assert torch.equal(prompt.input_ids, inputs["input_ids"])
    assert torch.equal(prompt.forward_extra["token_type_ids"], inputs["token_type_ids"])
    assert torch.equal(prompt.positions, torch.arange(inputs["input_ids"].shape[1])[None])
    # The encoded tokens are what the model's own projector gives for the processor's pixels.
    with torch.inference_mode():
        own = gemma.model.model.get_image_features(inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(feats.hidden_states[0, 1:], own[0].float())
    assert feats.grid == (16, 16) and feats.views[0].box == (0.0, 0.0, image.width, image.height)
    assert feats.token_noun == "pooled tokens" and feats.token_px == gemma.model.config.vision_config.image_size // 16


def test_the_pruned_prompt_hands_over_exactly_the_kept_tokens_at_their_positions(gemma):
    image = picture(1, 70, 50)
    feats = gemma.encode([image])
    n = feats.num_patches
    sel = select(feats, 64)
    k = int(sel.num_tokens[0])
    assert n == gemma.model.config.mm_tokens_per_image and k == max(round(n * 64 / 576), 16) < n
    kept = sel.keep_row(0) - 1  # selection order, on the 256 tokens
    full = gemma.token_prompt(feats, QUESTION, None)
    pruned = gemma.token_prompt(feats, QUESTION, sel)
    image_token = gemma.backend.image_token_id
    index = _kept_index(full.input_ids, image_token, [kept])
    assert pruned.visual_tokens == k == int((pruned.input_ids == image_token).sum())
    assert torch.equal(pruned.input_ids, full.input_ids[:, index])
    assert pruned.input_ids.shape[1] == full.input_ids.shape[1] - n + k
    assert torch.equal(pruned.features["image"][0], feats.hidden_states[0, 1:][kept])
    assert pruned.features_form == "tensor"  # Gemma 3's forward takes one [T, D] tensor
    assert torch.equal(pruned.positions, full.positions[:, index]) and pruned.next_position == full.input_ids.shape[1]
    # What the language model receives: the kept features in the placeholders, in selection order,
    # at the full prompt's positions; decoding goes on where the full prompt ends.
    gemma.clear_caches()
    calls, handle = _language_model_calls(gemma)
    try:
        result = gemma.compare([image], QUESTION, 64, max_new_tokens=3, selection=sel)
    finally:
        handle.remove()
    assert result.visual_tokens_pruned == k
    assert result.prompt_tokens["pruned"] == result.prompt_tokens["full"] - n + k
    at = next(i for i, c in enumerate(calls) if c["embeds"].shape[1] == pruned.input_ids.shape[1])
    prefill = calls[at]
    assert torch.equal(prefill["positions"], pruned.positions)
    slots = (pruned.input_ids[0] == image_token).nonzero().flatten()
    torch.testing.assert_close(prefill["embeds"][0, slots], feats.hidden_states[0, 1:][kept])
    decode = [int(c["positions"].flatten()[0]) for c in calls[at + 1: at + 3]]
    assert decode == [pruned.next_position, pruned.next_position + 1]


def test_reruns_are_identical_and_the_demo_is_seeded(gemma, tmp_path):
    from safetensors.torch import load_file

    from prunesid_vlm.demo_model import demo_model_path
    from prunesid_vlm.demos.gemma3 import build

    image = picture(2)
    runs = []
    for _ in range(2):
        gemma.clear_caches()
        result = gemma.compare([image], QUESTION, 64, max_new_tokens=3)
        runs.append((result.selection.keep.clone(), result.full_tokens, result.pruned_tokens,
                     gemma.answer([image], QUESTION, result.selection, max_new_tokens=3).first_logits))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1:3] == runs[1][1:3]
    assert torch.equal(runs[0][3], runs[1][3])
    build(tmp_path)
    fresh, cached = load_file(tmp_path / "model.safetensors"), load_file(demo_model_path("gemma3") / "model.safetensors")
    assert fresh.keys() == cached.keys() and all(torch.equal(fresh[name], cached[name]) for name in fresh)


def test_the_bidirectional_image_mask_covers_exactly_the_kept_tokens(gemma):
    """Two pictures: in the pruned prefill, each picture's kept tokens see each other both ways; every
    other pair is causal (a later picture sees an earlier one, not the reverse; text is causal)."""
    images = [picture(3), picture(4, 50, 50)]
    feats = gemma.encode(images)
    sel = select(feats, 64)
    pruned = gemma.token_prompt(feats, QUESTION, sel)
    image_token = gemma.backend.image_token_id
    ids = pruned.input_ids[0]
    types = pruned.forward_extra["token_type_ids"][0]
    assert torch.equal(types, (ids == image_token).long()) and int(types.sum()) == int(sel.num_tokens.sum())
    # One contiguous run of kept placeholders per picture, each exactly that picture's kept tokens.
    runs = torch.diff(torch.cat([torch.zeros(1, dtype=torch.long), types, torch.zeros(1, dtype=torch.long)]))
    starts, ends = (runs == 1).nonzero().flatten(), (runs == -1).nonzero().flatten()
    assert (ends - starts).tolist() == [int(t) for t in sel.num_tokens]
    picture_of = torch.full_like(ids, -1)
    for v, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        picture_of[s:e] = v
    length = ids.shape[0]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    block = (picture_of[:, None] == picture_of[None, :]) & (picture_of[:, None] >= 0)
    expected = causal | block
    calls, handle = _language_model_calls(gemma)
    try:
        from prunesid_vlm.positioned_generation import first_logits_with_positions

        first_logits_with_positions(gemma.model, pruned)
    finally:
        handle.remove()
    masks = calls[0]["masks"]
    assert set(masks) == {"full_attention", "sliding_attention"} and set(gemma.model.config.text_config.layer_types) == set(masks)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape[-2:] == (length, length), name
        assert torch.equal(mask[0, 0], expected), name  # the prompt is shorter than the sliding window
    above = masks["full_attention"][0, 0] & ~causal  # what attends forwards: exactly the pairs inside a picture's kept tokens
    assert torch.equal(above, block & ~causal)
    assert int(above.sum()) == sum(int(t) * (int(t) - 1) // 2 for t in sel.num_tokens)


REPLICA_VISION = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=896, patch_size=14,
                      num_hidden_layers=1, vision_use_head=False, layer_norm_eps=1e-6)
"""google/gemma-3-4b-it's SigLIP (so400m at 896 px, patch 14, no pooling head), 1 of its 27 layers."""
REPLICA_TEXT = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                    query_pre_attn_scalar=256, sliding_window=1024, rms_norm_eps=1e-6,
                    max_position_embeddings=131072, layer_types=["sliding_attention", "full_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})
"""Its Gemma 3 decoder's widths, 2 of its 34 layers (a local one, 1,024-token window, and a global one
with its 8× linear RoPE scaling); the demos' small vocabulary instead of its 262,208 tokens."""


def test_a_replica_of_gemma_3_4b_selects_and_answers(tmp_path, demo_cache, monkeypatch):
    from prunesid_vlm import calibration
    from prunesid_vlm.demos.gemma3 import save_gemma3
    from prunesid_vlm.pipeline import list_models

    # φ_ref from one calibration photo, not all: each is a pass of the 896 px tower on the CPU.
    photos = calibration.calibration_files()
    monkeypatch.setattr(calibration, "calibration_files", lambda folder=None: photos[:1])
    assert "google/gemma-3-4b-it" in {s.model_id for s in list_models()}
    save_gemma3(tmp_path / "replica", REPLICA_VISION, REPLICA_TEXT)
    pipe = load_pipeline(str(tmp_path / "replica"), device="cpu")
    assert type(pipe.model).__name__ == "Gemma3ForConditionalGeneration"
    assert pipe.model.model.multi_modal_projector.kernel_size == 4  # 64 × 64 patches pooled to 16 × 16
    image = picture(5)
    feats = pipe.encode([image])
    assert feats.grid == (16, 16) and feats.hidden_states.shape[-1] == 2560
    sel = pipe.select(feats, 64)
    assert int(sel.num_tokens[0]) == 28  # K' = round(256 · 64 / 576)
    full = pipe.answer([image], QUESTION, None, max_new_tokens=2)
    pruned = pipe.answer([image], QUESTION, sel, max_new_tokens=2)
    assert full.visual_tokens == 256 and pruned.visual_tokens == 28
    assert pruned.prompt_tokens == full.prompt_tokens - 256 + 28 and len(pruned.tokens) >= 1
    assert torch.isfinite(pruned.first_logits).all()
    assert any("896×896" in note for note in pipe.media_notes(feats))
