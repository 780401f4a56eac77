"""Qwen2-VL and Qwen2.5-VL through the pipeline (issue 15): the unpruned path is the model's own,
the pruned prompt hands over exactly the kept tokens at their original M-RoPE positions (prefill
and decoding), video goes in as temporal patches, and the methods without a CLS token either run
or say they cannot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prunesid_vlm.pipeline import Frames, load_pipeline, select
from prunesid_vlm.registry import DEMO_QWEN2_ID, DEMO_QWEN25_ID

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module", params=[DEMO_QWEN2_ID, DEMO_QWEN25_ID])
def qwen(request, demo_cache):
    return load_pipeline(request.param, device="cpu")


def picture(seed: int = 0, height: int = 300, width: int = 500) -> Image.Image:
    rng = np.random.default_rng(seed)
    blocks = rng.random((5, 7, 3)).repeat(height // 5 + 1, 0).repeat(width // 7 + 1, 1)[:height, :width]
    return Image.fromarray(((0.8 * blocks + 0.2 * rng.random((height, width, 3))) * 255).astype(np.uint8))


def clip(frames: int = 5) -> Frames:
    return Frames([picture(s, 240, 320) for s in range(frames)])


def _language_model_calls(pipe):
    calls = []
    handle = pipe.model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["inputs_embeds"].shape[1], kw["position_ids"].clone())), with_kwargs=True)
    return calls, handle


def test_the_unpruned_path_is_the_models_own(qwen):
    for media, extra in (([picture()], {}), (clip(), {"second_per_grid_ts": torch.tensor([1.0])})):
        result = qwen.compare(media, QUESTION, 64, max_new_tokens=4)
        inputs = qwen.prompt_inputs(media, QUESTION)
        if qwen.family == "qwen2_vl":
            extra = {}
        plain = qwen.model.generate(**inputs, **extra, do_sample=False, max_new_tokens=4)
        assert result.full_tokens == plain[0, inputs["input_ids"].shape[1]:].tolist()
        assert result.visual_tokens_full == int((inputs["mm_token_type_ids"] > 0).sum())


def test_the_pruned_prompt_hands_over_exactly_the_kept_tokens_at_their_positions(qwen):
    image = picture(1, 280, 640)
    feats = qwen.encode([image])
    n = feats.num_patches
    sel = select(feats, 64)
    k = int(sel.num_tokens[0])
    assert k == max(round(n * 64 / 576), 16) and feats.grid[0] * feats.grid[1] == n
    qwen.clear_caches()
    calls, handle = _language_model_calls(qwen)
    try:
        result = qwen.compare([image], QUESTION, 64, max_new_tokens=3, selection=sel)
    finally:
        handle.remove()
    assert result.visual_tokens_pruned == k and result.prompt_tokens["pruned"] == result.prompt_tokens["full"] - n + k
    # Positions computed on the full sequence: the pruned prefill takes them at the kept indices.
    inputs = qwen.prompt_inputs([image], QUESTION)
    full_positions, _ = qwen.model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"])
    start = int((inputs["mm_token_type_ids"][0] == 1).nonzero()[0])
    kept = sel.keep_row(0) - 1  # selection order
    expected = torch.cat([torch.arange(start), start + kept, torch.arange(start + n, inputs["input_ids"].shape[1])])
    prefills = [(length, pos) for length, pos in calls if length > 1]
    pruned_prefill = next(pos for length, pos in prefills if length == result.prompt_tokens["pruned"])
    assert torch.equal(pruned_prefill[:, 0], full_positions[:, 0, expected])
    # Decoding continues where the full sequence ends (its largest position + 1, then + 1 a token),
    # not where the shorter pruned sequence does.
    at = next(i for i, (length, _) in enumerate(calls) if length == result.prompt_tokens["pruned"])
    decode = [pos for _, pos in calls[at + 1: at + 3]]
    nxt = int(full_positions.max()) + 1
    assert len(decode) == 2 and [int(p.flatten()[0]) for p in decode] == [nxt, nxt + 1]
    assert all(bool((p == p.flatten()[0]).all()) for p in decode)  # text tokens: same t, h and w


def test_keeping_everything_answers_like_the_full_model(qwen):
    image = picture(2)
    feats = qwen.encode([image])
    result = qwen.compare([image], QUESTION, 577, max_new_tokens=4)
    assert int(result.selection.num_tokens[0]) == feats.num_patches  # K′ = round(N·577/576) ≥ N: all
    assert result.pruned_tokens == result.full_tokens and result.fidelity == pytest.approx(0, abs=1e-5)


def test_a_clip_is_one_view_per_temporal_patch_with_the_dynamic_ratio(qwen):
    frames = clip(5)
    feats = qwen.encode(frames)
    assert feats.clip and feats.num_views == 3 and feats.sources == (0, 2, 4)  # 5 frames → 3 pairs
    result = qwen.compare(frames, "What happens?", 128, dynamic=True, max_new_tokens=2)
    assert result.visual_tokens_pruned == int(result.selection.num_tokens.sum()) == sum(result.budgets)
    assert result.prompt_tokens["pruned"] == result.prompt_tokens["full"] - 3 * feats.num_patches + sum(result.budgets)


def test_baselines_run_or_say_they_cannot(qwen):
    feats = qwen.encode([picture(3)])
    for method in ("random", "grid", "divprune", "prunesid-dyn"):
        sel = select(feats, 64, method=method)
        assert not bool((sel.keep_row(0) == 0).any())  # never the zero row where a CLS would be
        assert int(sel.kept_patches.sum()) == int(sel.num_tokens[0])
    for method in ("topk", "visionzip", "vispruner"):
        with pytest.raises(ValueError, match="not available for this model"):
            select(feats, 64, method=method)


def test_several_images_of_different_sizes_are_refused_clearly(qwen):
    with pytest.raises(ValueError, match="same size"):
        qwen.encode([picture(0, 300, 500), picture(1, 200, 200)])


def test_every_view_and_the_compare_tab_work_on_qwens_grid(qwen, tmp_path):
    """A rectangular grid of merged tokens, an image and a clip: every view draws; Compare runs the
    methods that can and names those that cannot; stability and the sweep run the Qwen rule."""
    from studio import handlers as H
    from studio import views as V
    from studio.compare_tab import compare_view, stability_view, sweep_view

    path = tmp_path / "wide.png"
    picture(4, 300, 700).save(path)
    images, notes, _, source = H.load_media("image", str(path), None)
    analysis = H.reselect(H.encode(qwen, "image", source, images, notes, None), 64, False)
    assert analysis.grid == analysis.feats.grid and analysis.grid[1] > analysis.grid[0]
    drawn = V.render(analysis, 0)
    assert drawn["kept"][1].shape[1] > drawn["kept"][1].shape[0]  # wide picture, wide overlay
    assert "merged tokens kept" in V.summary(analysis) and "per 576 tokens" in H.budget_text(analysis)
    frames = clip(4)
    video = H.reselect(H.encode(qwen, "video", "clip", frames, [], None), 64, True)
    assert video.num_views == 2 and V.render(video, 1)["frame_chart"] is not None
    # A clip's views are temporal patches, and they share the scaled K′, not K (64 per 576 tokens).
    shared = sum(video.budgets)
    text = V.render(video, 1)["dynamic_text"]
    assert f"2 temporal patches (two frames each) share K′ = {shared // 2} × 2 = {shared} tokens" in text, text
    assert "this temporal patch" in text and "64 × 2" not in text
    assert "(2 temporal patches)" in H.token_counts(video.feats, video.selection).breakdown()
    get = lambda: qwen  # noqa: E731
    # Opening the Compare tab offers only what runs on Qwen; no method chooses by the question here.
    from studio.compare_tab import on_availability
    methods, intro = on_availability(get)(["prunesid", "topk", "cdpruner"], analysis)
    offered = {name for _, name in methods["choices"]}
    assert offered == {"prunesid", "prunesid-dyn", "random", "grid", "divprune"}
    assert methods["value"] == ["prunesid"] and "CLS-attention top-k (" in methods["info"]
    assert intro["value"].startswith("**No method this model can run chooses by the question**: CDPruner")
    # Compare on the Explore tab's clip compares the clip (its temporal patches), not 4 pictures.
    on_clip = compare_view(None, None, 64, ["prunesid"], get, answers=False, media=video)["json"]
    assert on_clip["views"] == video.num_views == 2
    assert len(on_clip["methods"][0]["tokens_per_view"]) == 2
    out = compare_view(str(path), "What is it?", 64, None, get, answers=False)
    assert {r["method"] for r in out["json"]["methods"]} == {"prunesid", "prunesid-dyn", "random", "grid", "divprune"}
    assert "not available" in out["context"]
    stable = stability_view(str(path), 64, 3, get)["json"]
    assert stable["num_tokens"] == int(analysis.selection.num_tokens[0])
    swept = sweep_view(str(path), "What is it?", "32, 64", ["prunesid", "grid", "topk"], get)["json"]
    assert set(swept["methods"]) == {"prunesid", "grid"}


@pytest.mark.parametrize("checkpoint", ["Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"])
def test_replicas_of_the_small_qwen_checkpoints(checkpoint, tmp_path, demo_cache):
    """Real widths (reduced depth) through from_pretrained: the pruned prompt is K′ tokens shorter
    by exactly what was dropped, and the unpruned answer is generate's."""
    from prunesid_vlm.pipeline import list_models
    from tests.replicas import save_qwen_replica

    assert checkpoint in {s.model_id for s in list_models()}
    pipe = load_pipeline(str(save_qwen_replica(tmp_path / "replica", checkpoint)), device="cpu")
    image = picture(5, 224, 336)
    result = pipe.compare([image], QUESTION, 64, max_new_tokens=2)
    n = pipe.encode([image]).num_patches
    assert result.visual_tokens_full == n == 8 * 12 and result.visual_tokens_pruned == 16  # the floor of 16
    assert result.prompt_tokens["pruned"] == result.prompt_tokens["full"] - n + 16
    inputs = pipe.prompt_inputs([image], QUESTION)
    plain = pipe.model.generate(**inputs, do_sample=False, max_new_tokens=2)
    assert result.full_tokens == plain[0, inputs["input_ids"].shape[1]:].tolist()


def test_the_pixel_range_sets_how_many_tokens_an_image_gets(qwen):
    image = picture(6, 600, 900)
    before = qwen.encode([image]).num_patches
    try:
        qwen.set_pixel_range(max_pixels=64 * 28 * 28)
        assert qwen.encode([image]).num_patches <= 64 < before
        with pytest.raises(ValueError, match="pixel range"):
            qwen.set_pixel_range(min_pixels=10)
    finally:
        qwen.set_pixel_range(max_pixels=512 * 28 * 28)
    assert qwen.encode([image]).num_patches == before


def test_loglikelihood_keeps_the_positions_too(qwen):
    image = picture(7)
    sel = select(qwen.encode([image]), 64)
    answer = qwen.answer([image], QUESTION, sel, max_new_tokens=3)
    logprob, greedy = qwen.loglikelihood([image], QUESTION, answer.tokens, sel)
    assert greedy and logprob <= 0
