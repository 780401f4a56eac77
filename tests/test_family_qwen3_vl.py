"""Qwen3-VL (issue 27): one backend file on the shared CLS-free pipeline. The unpruned path is the
model's own ``generate``; a pruned prompt hands over exactly the kept tokens at their original
M-RoPE positions, with the *same rows* of every DeepStack feature; clips go in as timestamped
temporal patches; a replica at Qwen3-VL-2B's published widths loads through ``from_pretrained``."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.conftest import make_image
from prunesid_vlm.pipeline import Frames, load_pipeline
from prunesid_vlm.registry import DEMO_QWEN3_ID

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def qwen3(demo_cache):
    return load_pipeline(DEMO_QWEN3_ID, device="cpu")


def picture(seed: int = 0, height: int = 300, width: int = 460) -> Image.Image:
    return make_image(seed, height, width)


def clip(frames: int = 4) -> Frames:
    return Frames([picture(s, 200, 260) for s in range(frames)])


def test_the_demo_loads_as_its_transformers_class(qwen3):
    assert type(qwen3.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert qwen3.family == "qwen3_vl" and qwen3.is_demo


@pytest.mark.parametrize("media", [[picture()], clip()], ids=["picture", "clip"])
def test_the_unpruned_answer_is_the_models_own_generate(qwen3, media):
    result = qwen3.compare(media, QUESTION, 64, max_new_tokens=5)
    inputs = qwen3.prompt_inputs(media, QUESTION)
    with torch.inference_mode():
        plain = qwen3.model.generate(**inputs, do_sample=False, max_new_tokens=5, output_logits=True,
                                     return_dict_in_generate=True)
    assert result.full_tokens == plain.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    full = qwen3.answer(media, QUESTION, None, max_new_tokens=5)
    torch.testing.assert_close(full.first_logits, plain.logits[0][0].float(), rtol=1e-4, atol=1e-4)
    assert result.visual_tokens_full == int((inputs["mm_token_type_ids"] > 0).sum())
    assert result.visual_tokens_pruned < result.visual_tokens_full


def test_a_pruned_prompt_carries_the_kept_tokens_and_their_deepstack_rows_at_their_positions(qwen3):
    image = picture(3, 320, 480)
    feats = qwen3.encode([image])
    n = feats.num_patches
    selection = qwen3.select(feats, 64)
    kept = selection.keep_row(0) - 1
    assert 0 < kept.numel() < n
    full, pruned = qwen3.token_prompt(feats, QUESTION, None), qwen3.token_prompt(feats, QUESTION, selection)
    # The same tokens the tower gives, and the same rows of each DeepStack layer.
    inputs = qwen3.prompt_inputs([image], QUESTION)
    with torch.inference_mode():
        own = qwen3.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    torch.testing.assert_close(pruned.features["image"][0], own.pooler_output[0][kept])
    layers = pruned.encoder_extra["deepstack_features"]
    assert len(layers) == len(qwen3.model.config.vision_config.deepstack_visual_indexes)
    for layer, reference in zip(layers, own.deepstack_features):
        torch.testing.assert_close(layer[0], reference[0][kept])
    # Exactly one placeholder per kept token; every other token and every position as in the full prompt.
    token = qwen3.model.config.image_token_id
    assert int((pruned.input_ids == token).sum()) == kept.numel() == pruned.visual_tokens
    start = int((full.input_ids[0] == token).nonzero()[0])
    index = torch.cat([torch.arange(start), start + kept, torch.arange(start + n, full.input_ids.shape[1])])
    assert torch.equal(pruned.input_ids[0], full.input_ids[0, index])
    assert torch.equal(pruned.positions, full.positions[:, :, index])
    assert pruned.next_position == full.next_position


def test_deepstack_rows_matter_and_follow_the_kept_tokens(qwen3):
    """The language model uses the DeepStack rows (dropping them changes the answer's logits), and the
    pruned prompt's logits equal a forward pass given the kept rows by hand."""
    from prunesid_vlm.positioned_generation import first_logits_with_positions

    image = picture(4)
    feats = qwen3.encode([image])
    selection = qwen3.select(feats, 64)
    prompt = qwen3.token_prompt(feats, QUESTION, selection)
    logits = first_logits_with_positions(qwen3.model, prompt)
    zeroed = [[torch.zeros_like(part) for part in layer] for layer in prompt.encoder_extra["deepstack_features"]]
    prompt.encoder_extra["deepstack_features"] = zeroed
    assert not torch.allclose(first_logits_with_positions(qwen3.model, prompt), logits, atol=1e-4)
    shuffled = qwen3.token_prompt(feats, QUESTION, selection)
    layers = shuffled.encoder_extra["deepstack_features"]
    shuffled.encoder_extra["deepstack_features"] = [[part.flip(0) for part in layer] for layer in layers]
    assert not torch.allclose(first_logits_with_positions(qwen3.model, shuffled), logits, atol=1e-4)


def test_a_clip_is_one_timestamped_run_per_temporal_patch_and_prunes_each(qwen3):
    media = clip(4)
    feats = qwen3.encode(media)
    assert feats.clip and feats.num_views == 2  # 4 frames, 2 per temporal patch
    selection = qwen3.select(feats, 64)
    full, pruned = qwen3.token_prompt(feats, QUESTION, None), qwen3.token_prompt(feats, QUESTION, selection)
    text = qwen3.processor.tokenizer.decode(full.input_ids[0])
    assert "<0.2 seconds>" in text and "<1.2 seconds>" in text  # frames 0-1 and 2-3 at 2 fps: mean times 0.25, 1.25
    assert len(pruned.features["video"]) == 2
    assert [int(f.shape[0]) for f in pruned.features["video"]] == [int((selection.keep_row(v) > 0).sum())
                                                                  for v in range(2)]
    result = qwen3.compare(media, QUESTION, 64, max_new_tokens=3)
    assert result.visual_tokens_pruned == pruned.visual_tokens < result.visual_tokens_full


def test_reruns_are_identical(qwen3):
    image = picture(5)
    first = qwen3.compare([image], QUESTION, 64, max_new_tokens=4)
    qwen3.clear_caches()
    again = qwen3.compare([image], QUESTION, 64, max_new_tokens=4)
    assert first.pruned_tokens == again.pruned_tokens and first.full_tokens == again.full_tokens
    assert torch.equal(first.selection.keep, again.selection.keep)


QWEN3_VL_2B_VISION = dict(depth=2, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                          num_position_embeddings=2304, deepstack_visual_indexes=[0, 1])
QWEN3_VL_2B_TEXT = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=1, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, max_position_embeddings=8192)
"""Qwen/Qwen3-VL-2B-Instruct's published widths (config.json): vision hidden 1024, 16 heads, MLP 4096,
patch 16, merge 2, out 2048, 2,304 position embeddings; text hidden 2048, MLP 6144, 16 heads, 8 KV
heads, head_dim 128, M-RoPE sections 24/20/20 interleaved. Depth cut to 2 vision blocks (DeepStack from
both) and 1 decoder layer; the demo's tokenizer."""


def test_a_replica_at_qwen3_vl_2b_widths_loads_and_prunes(tmp_path, demo_cache):
    from prunesid_vlm.demos.qwen3_vl import save_qwen3_vl

    save_qwen3_vl(tmp_path, QWEN3_VL_2B_VISION, QWEN3_VL_2B_TEXT, [24, 20, 20], 256 * 32 * 32, max_shard_size="100MB")
    pipe = load_pipeline(str(tmp_path), device="cpu")
    assert type(pipe.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert pipe.model.config.text_config.hidden_size == 2048
    image = picture(6, 320, 480)
    result = pipe.compare([image], QUESTION, 64, max_new_tokens=2)
    feats = pipe.encode([image])
    assert feats.hidden_states.shape[-1] == 2048 and len(feats.layers) == 2
    assert result.visual_tokens_pruned < result.visual_tokens_full == feats.num_patches
