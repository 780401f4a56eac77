"""LLaVA-OneVision (issue 27): one backend file on the shared CLS-free pipeline. SigLIP has no CLS,
so PruneSID runs the CLS-free rule per view (base + AnyRes crops, or pooled frames); the unpruned
path is the model's own ``generate``; a pruned prompt hands over the base view's kept tokens, the
kept crop tokens in canvas order with their rows' newlines, all at their original positions; the
crops' padding is never chosen; a replica at llava-onevision-qwen2-0.5b's widths loads through
``from_pretrained``."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from prunesid_vlm.adapters.base import NOT_RECEIVED
from prunesid_vlm.backends.llava_onevision import MAX_CROPS, NEWLINE
from tests.conftest import make_image
from prunesid_vlm.pipeline import Frames, load_pipeline
from prunesid_vlm.registry import DEMO_ONEVISION_ID

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def onevision(demo_cache):
    return load_pipeline(DEMO_ONEVISION_ID, device="cpu")


def picture(seed: int = 0, height: int = 240, width: int = 520) -> Image.Image:
    return make_image(seed, height, width)


def clip(frames: int = 3) -> Frames:
    return Frames([picture(s, 200, 260) for s in range(frames)])


def test_the_demo_loads_as_its_transformers_class_with_capped_crops(onevision):
    assert type(onevision.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    pinpoints = onevision.model.config.image_grid_pinpoints
    assert pinpoints == onevision.processor.image_processor.image_grid_pinpoints
    assert max((h // 384) * (w // 384) for h, w in pinpoints) <= MAX_CROPS < len(onevision.backend.checkpoint_pinpoints)


@pytest.mark.parametrize("media", [[picture()], clip()], ids=["picture", "clip"])
def test_the_unpruned_answer_is_the_models_own_generate(onevision, media):
    result = onevision.compare(media, QUESTION, 64, max_new_tokens=5)
    inputs = onevision.prompt_inputs(media, QUESTION)
    with torch.inference_mode():
        plain = onevision.model.generate(**inputs, do_sample=False, max_new_tokens=5, output_logits=True,
                                         return_dict_in_generate=True)
    assert result.full_tokens == plain.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    full = onevision.answer(media, QUESTION, None, max_new_tokens=5)
    torch.testing.assert_close(full.first_logits, plain.logits[0][0].float(), rtol=1e-4, atol=1e-4)
    token = onevision.model.config.video_token_id if isinstance(media, Frames) else onevision.model.config.image_token_id
    assert result.visual_tokens_full == int((inputs["input_ids"] == token).sum())
    assert result.visual_tokens_pruned < result.visual_tokens_full
    assert result.counts["full"].total == result.visual_tokens_full
    assert result.counts["pruned"].total == result.visual_tokens_pruned


def test_a_pruned_picture_hands_over_kept_tokens_in_canvas_order_at_their_positions(onevision):
    image = picture(2, 300, 1000)  # wide: a 1 × 3 crop grid with padding above and below
    feats = onevision.encode([image])
    assert [v.kind for v in feats.views] == ["base"] + ["crop"] * (feats.num_views - 1)
    assert bool((feats.map_rows == NOT_RECEIVED).any())  # the crops' padding is not received
    selection = onevision.select(feats, 64)
    kept = [selection.keep_row(v) - 1 for v in range(feats.num_views)]
    for view in range(1, feats.num_views):  # no budget is spent on padding
        assert bool((feats.map_rows[view, kept[view]] >= 0).all())
    full, pruned = onevision.token_prompt(feats, QUESTION, None), onevision.token_prompt(feats, QUESTION, selection)
    backend, n = onevision.backend, feats.num_patches
    slots = backend.layout(feats.num_views, feats.image_sizes[0])
    token = onevision.model.config.image_token_id
    start = int((full.input_ids[0] == token).nonzero()[0])
    # Expected: the base view's kept tokens in the selection's order, then every crop slot whose token is
    # kept, plus the newline of each canvas row holding one, in canvas order.
    crop_slots = slots[n:]
    chosen = torch.zeros(feats.num_views * n, dtype=torch.bool)
    for view in range(1, feats.num_views):
        chosen[view * n + kept[view]] = True
    rows = torch.cumsum((crop_slots == NEWLINE).long(), 0) - (crop_slots == NEWLINE).long()
    kept_rows = {int(r) for r, s in zip(rows, crop_slots) if s >= 0 and chosen[s]}
    expected = [int(k) for k in kept[0]] + [n + i for i, (r, s) in enumerate(zip(rows, crop_slots))
                                           if (s >= 0 and chosen[s]) or (s == NEWLINE and int(r) in kept_rows)]
    visual = (pruned.input_ids[0] == token).nonzero().flatten()
    assert pruned.positions[0, visual].tolist() == [start + e for e in expected]
    torch.testing.assert_close(pruned.features["image"][0], full.features["image"][0][expected])
    assert pruned.visual_tokens == len(expected) == onevision.token_counts(feats, selection).total
    text = pruned.input_ids[0] != token
    assert pruned.input_ids[0, text].tolist() == full.input_ids[0, full.input_ids[0] != token].tolist()
    assert pruned.next_position == full.input_ids.shape[1]


def test_a_pruned_clip_keeps_each_frames_tokens_and_the_closing_newline(onevision):
    media = clip(3)
    feats = onevision.encode(media)
    assert feats.clip and feats.num_views == 3 and feats.grid == (14, 14)
    selection = onevision.select(feats, 64)
    pruned = onevision.token_prompt(feats, QUESTION, selection)
    (video,) = pruned.features["video"]
    assert video.shape[0] == sum(int((selection.keep_row(v) > 0).sum()) for v in range(3)) + 1
    newline = onevision.model.model.image_newline
    torch.testing.assert_close(video[-1], newline.to(video.dtype))


def test_reruns_are_identical(onevision):
    image = picture(5)
    first = onevision.compare([image], QUESTION, 64, max_new_tokens=4)
    onevision.clear_caches()
    again = onevision.compare([image], QUESTION, 64, max_new_tokens=4)
    assert first.pruned_tokens == again.pruned_tokens and first.full_tokens == again.full_tokens
    assert torch.equal(first.selection.keep, again.selection.keep)


ONEVISION_05B_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=1, num_attention_heads=16)
ONEVISION_05B_TEXT = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=1, num_attention_heads=14,
                          num_key_value_heads=2)
"""llava-hf/llava-onevision-qwen2-0.5b-ov-hf's published widths (config.json): SigLIP so400m (hidden 1152,
MLP 4304, 16 heads, 384 px, patch 14), Qwen2-0.5B (hidden 896, MLP 4864, 14 heads, 2 KV heads); depth
cut to 1 layer each; the demo's tokenizer."""


def test_a_replica_at_onevision_05b_widths_loads_and_prunes(tmp_path, demo_cache):
    from prunesid_vlm.demos.llava_onevision import save_onevision

    save_onevision(tmp_path, ONEVISION_05B_VISION, ONEVISION_05B_TEXT, max_shard_size="100MB")
    pipe = load_pipeline(str(tmp_path), device="cpu")
    assert type(pipe.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    image = picture(6, 200, 380)
    result = pipe.compare([image], QUESTION, 64, max_new_tokens=2)
    feats = pipe.encode([image])
    assert feats.hidden_states.shape[-1] == 896 and feats.grid == (27, 27)
    assert result.visual_tokens_pruned < result.visual_tokens_full
