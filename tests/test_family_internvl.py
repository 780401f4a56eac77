"""InternVL3 through the pipeline: tiles as views, one placeholder run per picture, the unpruned path
is the model's own, the pruned prompt hands over exactly the kept tokens at their original 1-D
positions, and the CLS attention maps onto the pixel-shuffled tokens as the shuffle lays them out."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from prunesid_vlm.backends.internvl import InternVLBackend, cls_attention_on_shuffled, tokens_per_tile
from tests.conftest import make_image
from prunesid_vlm.pipeline import Frames, load_pipeline, select
from prunesid_vlm.positioned_generation import first_logits_with_positions
from prunesid_vlm.registry import DEMO_INTERNVL3_ID

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def internvl(demo_cache):
    return load_pipeline(DEMO_INTERNVL3_ID, device="cpu")


def picture(seed: int = 0, height: int = 300, width: int = 700) -> Image.Image:
    return make_image(seed, height, width)


def _runs(ids: torch.Tensor, token_id: int) -> int:
    visual = (ids[0] == token_id).int()
    return int((visual[1:] > visual[:-1]).sum()) + int(visual[0])


def test_the_demo_loads_as_internvl_through_the_pipeline(internvl):
    assert type(internvl.model).__name__ == "InternVLForConditionalGeneration"
    assert isinstance(internvl.backend, InternVLBackend) and internvl.family == "internvl"
    config = internvl.model.config
    assert tuple(config.vision_config.image_size) == (448, 448) and tuple(config.vision_config.patch_size) == (14, 14)
    assert tokens_per_tile(config) == (16, 16) and config.downsample_ratio == 0.5  # 32 × 32 patches, shuffled


def test_the_unpruned_path_is_the_models_own(internvl):
    """Tokens and first-token logits equal ``generate`` on the processor's inputs, for a tiled picture
    and for a clip (one tile per frame)."""
    for media in ([picture()], Frames([picture(s, 240, 320) for s in range(2)])):
        internvl.clear_caches()
        result = internvl.compare(media, QUESTION, 64, max_new_tokens=4)
        inputs = internvl.prompt_inputs(media, QUESTION)
        plain = internvl.model.generate(**inputs, do_sample=False, max_new_tokens=4, output_logits=True,
                                        return_dict_in_generate=True)
        length = inputs["input_ids"].shape[1]
        assert result.full_tokens == plain.sequences[0, length:].tolist()
        token_id = internvl.model.config.image_token_id
        assert result.visual_tokens_full == int((inputs["input_ids"] == token_id).sum())
        full = internvl.token_prompt(internvl.encode(media), QUESTION, None)
        assert torch.equal(full.input_ids, inputs["input_ids"]) and full.next_position == length
        assert torch.equal(full.positions, torch.arange(length)[None])
        torch.testing.assert_close(first_logits_with_positions(internvl.model, full), plain.logits[0][0].float(),
                                   atol=1e-4, rtol=1e-4)
        assert _runs(inputs["input_ids"], token_id) == (2 if isinstance(media, Frames) else 1)  # a frame a run


def _language_model_calls(pipe):
    calls = []
    handle = pipe.model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["inputs_embeds"].shape[1], kw["position_ids"].clone())), with_kwargs=True)
    return calls, handle


def test_the_pruned_prompt_hands_over_exactly_the_kept_tokens_at_their_positions(internvl):
    image = picture(1, 280, 900)
    feats = internvl.encode([image])
    views, n = feats.num_views, feats.num_patches
    assert views > 1 and n == 256
    sel = select(feats, 64)
    full = internvl.token_prompt(feats, QUESTION, None)
    pruned = internvl.token_prompt(feats, QUESTION, sel)
    token_id = internvl.model.config.image_token_id
    kept = [sel.keep_row(v) - 1 for v in range(views)]  # selection order, per tile
    k = sum(int(x.numel()) for x in kept)
    assert k == int(sel.num_tokens.sum()) == views * max(round(n * 64 / 576), 16) < views * n
    assert pruned.visual_tokens == k < full.visual_tokens == views * n
    assert int((pruned.input_ids == token_id).sum()) == k  # one placeholder per kept token
    assert _runs(full.input_ids, token_id) == _runs(pruned.input_ids, token_id) == 1  # the picture's tiles: one run
    # Features: the full features' kept rows, tile after tile, in the selection's order.
    rows = torch.cat([v * n + kept[v] for v in range(views)])
    (full_features,), (pruned_features,) = full.features["image"], pruned.features["image"]
    assert torch.equal(pruned_features, full_features[rows])
    assert torch.equal(pruned_features, torch.cat([feats.hidden_states[v, 1:][kept[v]] for v in range(views)]))
    # Positions: the full prompt's at the kept indices; decoding goes on at the full length.
    start = int((full.input_ids[0] == token_id).nonzero()[0])
    index = torch.cat([torch.arange(start), start + rows, torch.arange(start + views * n, full.input_ids.shape[1])])
    assert torch.equal(pruned.input_ids, full.input_ids[:, index])
    assert torch.equal(pruned.positions, full.positions[:, index]) and pruned.next_position == full.input_ids.shape[1]
    # The model's own prefill and decoding see those positions.
    internvl.clear_caches()
    calls, handle = _language_model_calls(internvl)
    try:
        result = internvl.compare([image], QUESTION, 64, max_new_tokens=3, selection=sel)
    finally:
        handle.remove()
    assert result.visual_tokens_pruned == k and result.prompt_tokens["pruned"] == result.prompt_tokens["full"] - views * n + k
    at = next(i for i, (length, _) in enumerate(calls) if length == result.prompt_tokens["pruned"])
    assert torch.equal(calls[at][1].cpu(), pruned.positions)
    nxt = full.input_ids.shape[1]
    assert [int(p.flatten()[0]) for _, p in calls[at + 1: at + 3]] == [nxt, nxt + 1]


def test_several_pictures_are_one_run_each(internvl):
    images = [picture(2, 300, 700), picture(3, 200, 200)]  # different sizes: 3 tiles and 1
    feats = internvl.encode(images)
    assert feats.layout == (3, 1) and feats.sources == (0, 0, 0, 1)
    sel = select(feats, 64)
    pruned = internvl.token_prompt(feats, QUESTION, sel)
    assert _runs(pruned.input_ids, internvl.model.config.image_token_id) == 2
    assert [int(f.shape[0]) for f in pruned.features["image"]] == [int(sel.num_tokens[:3].sum()), int(sel.num_tokens[3])]


def test_reruns_are_identical(internvl, tmp_path):
    image = picture(4)
    runs = []
    for _ in range(2):
        internvl.clear_caches()
        result = internvl.compare([image], QUESTION, 64, max_new_tokens=3)
        runs.append((result.full_tokens, result.pruned_tokens, [internvl.select(internvl.encode([image]), 64).keep_row(v)
                                                              for v in range(3)]))
    assert runs[0][:2] == runs[1][:2] and all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))
    # The demo's weights are drawn from a fixed seed: a rebuild is the same checkpoint.
    from safetensors.torch import load_file

    from prunesid_vlm.demos.internvl import build

    build(tmp_path)
    again = load_file(str(tmp_path / "model.safetensors"))
    own = internvl.model.state_dict()
    assert all(torch.equal(again[name], own[name]) for name in again if name in own) and len(again) > 50


def test_cls_attention_maps_onto_the_shuffled_tokens_as_the_pixel_shuffle_lays_them_out(internvl):
    """The model's pixel_shuffle applied to a map of patch indices (as ``get_image_features`` shapes the
    patches) says which 2 × 2 patches each token holds; the mapping sums the CLS attention over them."""
    config = internvl.model.config
    side = config.vision_config.image_size[0] // config.vision_config.patch_size[0]
    scale = round(1 / config.downsample_ratio)
    index = torch.arange(side * side, dtype=torch.float32).reshape(1, side, side, 1)
    shuffled = internvl.model.model.pixel_shuffle(index, scale_factor=config.downsample_ratio)
    members = shuffled.reshape(-1, scale * scale).long()  # per token, its patches
    assert members.shape == (tokens_per_tile(config)[0] * tokens_per_tile(config)[1], scale * scale)
    assert torch.equal(members.flatten().sort().values, torch.arange(side * side))  # each patch in one token
    attn = torch.softmax(torch.randn(3, side * side, generator=torch.Generator().manual_seed(0)), dim=-1)
    mapped = cls_attention_on_shuffled(attn, scale)
    torch.testing.assert_close(mapped, attn[:, members].sum(-1))
    torch.testing.assert_close(mapped.sum(-1), torch.ones(3))
    # Token (i, j) holds patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1).
    assert members[1].tolist() == [2, 3, side + 2, side + 3]
    with pytest.raises(ValueError):
        cls_attention_on_shuffled(torch.ones(1, 30))


def test_tiles_boxes_cover_the_picture(internvl):
    """A wide picture gives several tiles, each one view whose box is the part of the picture its
    pixels come from; the thumbnail covers the whole picture; a square picture is one view."""
    processor = internvl.backend.processor
    height, width = 300, 1000
    image = picture(5, height, width)
    feats = internvl.encode([image])
    tiles = processor.image_processor.get_number_of_image_patches(height, width, {"crop_to_patches": True})
    assert feats.num_views == tiles == 4  # 3 × 1 tiles + the thumbnail
    crops = [v for v in feats.views if v.kind == "tile"]
    assert [v.kind for v in feats.views] == ["tile"] * 3 + ["thumbnail"] and feats.sources == (0,) * 4
    assert feats.views[-1].box == (0.0, 0.0, float(width), float(height))
    assert crops[0].box[0] == 0 and crops[-1].box[2] == width
    assert all(a.box[2] == pytest.approx(b.box[0]) for a, b in zip(crops, crops[1:]))  # side by side
    assert sum((v.box[2] - v.box[0]) * (v.box[3] - v.box[1]) for v in crops) == pytest.approx(width * height)
    # Each tile's pixels are its box's part of the picture (resized to the tile): far closer than any other box.
    pixels = processor.images([image])["pixel_values"]
    side = processor.tile_size
    def distance(tile, box):
        crop = image.crop(tuple(round(c) for c in box)).resize(side[::-1], Image.Resampling.BICUBIC)
        ref = processor.image_processor(images=[crop], crop_to_patches=False, return_tensors="pt")["pixel_values"][0]
        return float((ref - pixels[tile]).abs().mean())
    for t, view in enumerate(feats.views):
        own = distance(t, view.box)
        assert own < 0.1 and all(own < distance(t, other.box) / 3 for other in feats.views if other.box != view.box)
    drawn = internvl.view_pixels([image], feats)
    assert len(drawn) == 4 and drawn[0].shape[:2] == drawn[-1].shape[:2]
    square = internvl.encode([picture(6, 256, 256)])
    assert [v.kind for v in square.views] == ["image"] and square.views[0].box == (0, 0, 256, 256)
    assert any("3 × 1 tiles" in note for note in internvl.media_notes(feats))


# Published widths of OpenGVLab/InternVL3-1B-hf (config.json): InternViT-300M-448px-V2.5 and Qwen2.5-0.5B.
REPLICA_VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=1,
                      image_size=448, patch_size=14, attention_bias=True, norm_type="layer_norm",
                      layer_scale_init_value=0.1)
REPLICA_TEXT = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                    num_hidden_layers=1, max_position_embeddings=32768,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def test_a_replica_at_the_published_widths_selects_and_answers(demo_cache, tmp_path):
    """InternVL3-1B's widths (depth 1 + 1, the demos' small vocabulary), saved and loaded by its folder."""
    from prunesid_vlm.demos.internvl import build_model, internvl_tokenizer

    model, processor = build_model(internvl_tokenizer(), REPLICA_VISION, REPLICA_TEXT, max_patches=2)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    del model
    pipe = load_pipeline(str(tmp_path), device="cpu")
    config = pipe.model.config
    assert type(pipe.model).__name__ == "InternVLForConditionalGeneration"
    assert (config.vision_config.hidden_size, config.text_config.hidden_size) == (1024, 896)
    assert pipe.model.model.multi_modal_projector.linear_1.in_features == 4 * 1024  # 2 × 2 patches concatenated
    image = picture(7, 320, 320)
    result = pipe.compare([image], QUESTION, 64, max_new_tokens=2)
    n = tokens_per_tile(config)[0] * tokens_per_tile(config)[1]
    assert result.visual_tokens_full == n == 256 and result.visual_tokens_pruned == max(round(n * 64 / 576), 16)
    assert len(result.full_tokens) == 2 and len(result.pruned_tokens) == 2
