"""LLaVA-NeXT (AnyRes) adapter on the tiny random-weight demo model: full-path parity and
the restoration of kept crop tokens in raster order on the unpadded map with newlines."""
from __future__ import annotations

import pytest
import torch

from prunesid import select_tokens
from tests.conftest import make_image

QUESTION = "Describe the image."


def _prefill_embeds(pipe, images, k, **kwargs):
    calls = []
    handle = pipe.model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    try:
        result = pipe.compare(images, QUESTION, k, max_new_tokens=2, **kwargs)
    finally:
        handle.remove()
    return result, [c for c in calls if c.shape[1] > 1]


def test_full_path_equals_plain_generate(llava_next_pipeline):
    pipe, image = llava_next_pipeline, make_image(5, 300, 500)
    result = pipe.compare([image], QUESTION, 64, max_new_tokens=8)
    inputs = pipe.prompt_inputs([image], QUESTION)
    plain = pipe.model.generate(**inputs, do_sample=False, max_new_tokens=8)
    assert result.full_tokens == plain[0, inputs["input_ids"].shape[1]:].tolist()
    assert result.visual_tokens_full == int((inputs["input_ids"] == pipe.adapter.image_token_id).sum())


def test_kept_crop_tokens_are_restored_in_raster_order_with_newlines(llava_next_pipeline):
    pipe, k = llava_next_pipeline, 48
    image = make_image(6, 600, 600)  # best resolution 672×672: 2×2 crops, nothing to unpad
    feats = pipe.encode([image])
    assert [v.kind for v in feats.views] == ["base", "crop", "crop", "crop", "crop"]
    result, prefills = _prefill_embeds(pipe, [image], k)
    sel = select_tokens(feats.hidden_states, feats.cls_attention, [k, k + 1, k + 1, k + 1, k + 1])
    assert torch.equal(result.selection.keep, sel.keep)

    # Expected, built independently of transformers' packer: a 48×48 map of (crop, patch).
    side = 24
    kept = sel.kept_patches[1:].view(2, 2, side, side).permute(0, 2, 1, 3).reshape(2 * side, 2 * side)
    crop = (torch.arange(2 * side)[:, None] // side) * 2 + torch.arange(2 * side)[None] // side
    patch = (torch.arange(2 * side)[:, None] % side) * side + torch.arange(2 * side)[None] % side
    project = pipe.model.model.multi_modal_projector
    rows = []
    for y in range(2 * side):  # 48 map rows
        if kept[y].any():
            rows.append(project(feats.hidden_states[1 + crop[y, kept[y]], 1 + patch[y, kept[y]]]))
            rows.append(pipe.model.model.image_newline[None])
    expected = torch.cat([project(feats.hidden_states[0, sel.keep_row(0)])] + rows)

    full_ids = pipe.prompt_inputs([image], QUESTION)["input_ids"][0]
    start = int((full_ids == pipe.adapter.image_token_id).nonzero()[0])
    assert result.visual_tokens_pruned == expected.shape[0] == k + 4 * k + int(kept.any(1).sum())
    torch.testing.assert_close(prefills[1][0, start:start + expected.shape[0]], expected)
    assert prefills[1].shape[1] == result.prompt_tokens["pruned"] == len(full_ids) - 5 * 576 - 48 + expected.shape[0]


def test_padded_image_keeps_raster_order_and_drops_padding(llava_next_pipeline):
    pipe, k = llava_next_pipeline, 64
    image = make_image(7, 300, 500)  # 336×672 canvas, padded left and right
    feats = pipe.encode([image])
    result = pipe.compare([image], QUESTION, k, max_new_tokens=2)
    full = pipe.adapter.full_features([feats.hidden_states], feats.image_sizes)[0]
    keep = [result.selection.keep_row(i) for i in range(len(feats.views))]
    pruned = pipe.adapter.pruned_features([feats.hidden_states], [keep], feats.image_sizes, [full])[0]
    crops_full, crops_pruned = full[576:], pruned[k:]
    # Every restored crop token is a token of the full crop map, found in increasing order,
    # and each map row that keeps a patch ends with the newline.
    newline = (crops_pruned == pipe.model.model.image_newline).all(-1)
    match = (crops_pruned[:, None, :] == crops_full[None]).all(-1)  # [T', T]
    position = match.float().argmax(1)[~newline]
    assert match.any(1).all() and (position.diff() > 0).all()
    assert newline[-1] and not (newline[1:] & newline[:-1]).any() and 0 < int(newline.sum()) <= 24
    assert result.visual_tokens_pruned == pruned.shape[0] <= k + 2 * k + 24


def test_dynamic_ratio_shares_the_total_across_base_and_crops(llava_next_pipeline):
    pipe, k = llava_next_pipeline, 40
    image = make_image(8, 600, 600)
    result = pipe.compare([image], QUESTION, k, dynamic=True, max_new_tokens=2)
    assert len(result.budgets) == 5 and sum(result.budgets) == 5 * k
    assert result.selection.num_tokens.tolist() == [result.budgets[0]] + [b + 1 for b in result.budgets[1:]]


def test_a_padded_crop_spends_its_budget_on_received_patches_only(llava_next_pipeline):
    """A very wide image: its crops reach into the padding that unpadding drops. Every kept crop
    patch is one the language model receives, so each crop hands over its whole budget."""
    pipe, k = llava_next_pipeline, 64
    image = make_image(7, 60, 1500)
    feats = pipe.encode([image])
    assert feats.visible is not None and not bool(feats.visible[1:].all())  # partly padded crops
    sel = pipe.select(feats, k)
    for view in range(1, feats.num_views):
        kept = sel.kept_patches[view]
        assert not bool((kept & ~feats.visible[view]).any())
        assert int(kept.sum()) == min(k, int(feats.visible[view].sum()))
    # PruneSID's groups live on the received patches only.
    assert bool((sel.group[1:][~feats.visible[1:]] == -1).all())


def test_token_counts_add_up_to_what_the_model_receives(llava_next_pipeline):
    """The per-view counts plus the newlines are exactly the visual placeholders of each prompt."""
    pipe = llava_next_pipeline
    for image, mode, k in ((make_image(7, 60, 1500), "per_view", 64), (make_image(5, 300, 500), "per_view", 48),
                           (make_image(5, 300, 500), "total", 160)):
        feats = pipe.encode([image])
        sel = pipe.select(feats, k, mode=mode)
        result = pipe.compare([image], QUESTION, k, max_new_tokens=1, selection=sel)
        full, pruned = result.counts["full"], result.counts["pruned"]
        assert full.total == result.visual_tokens_full and pruned.total == result.visual_tokens_pruned
        assert full.newlines > 0 and 0 < pruned.newlines <= full.newlines
        assert list(pruned.handed) == result.budgets
        if mode == "total":
            assert sum(pruned.handed) == k
        else:
            assert all(h <= k for h in pruned.handed)
        assert str(pruned.newlines) in pruned.breakdown() and "crops" in pruned.breakdown()


def test_total_budget_mode_splits_the_papers_totals_over_the_views(llava_next_pipeline):
    pipe = llava_next_pipeline
    feats = pipe.encode([make_image(5, 300, 500)])
    for total in (160, 320, 640):
        budgets = pipe.budgets(feats, total, mode="total")
        assert len(budgets) == feats.num_views and sum(budgets) == total
        assert max(budgets) - min(budgets) <= 1 or any(b == c for b, c in zip(budgets, pipe.budgets(feats, 577)))
        dynamic = pipe.budgets(feats, total, dynamic=True, mode="total")
        assert sum(dynamic) == total
    with pytest.raises(ValueError, match="total budget"):
        pipe.budgets(feats, 3, mode="total")
    with pytest.raises(ValueError, match="budget mode"):
        pipe.budgets(feats, 64, mode="sum")


def test_video_frames_on_an_anyres_model_go_in_as_base_views(llava_next_pipeline):
    """A clip on a LLaVA-NeXT image model: one 576-token base view per frame, no crops, so six
    frames stay within a 4k context; the same pictures as still images still get AnyRes."""
    from prunesid_vlm.pipeline import Frames

    pipe = llava_next_pipeline
    frames = Frames([make_image(s, 240, 320) for s in (1, 2, 3)])
    feats = pipe.encode(frames)
    assert [v.kind for v in feats.views] == ["frame"] * 3 and feats.map_rows is None
    assert pipe.encode(list(frames)).num_views > 3  # as images: base + crops each
    result = pipe.compare(frames, QUESTION, 64, max_new_tokens=2)
    assert result.visual_tokens_full == 3 * pipe.num_patches and result.counts["full"].newlines == 0
    assert result.visual_tokens_pruned == 3 * 64 == result.counts["pruned"].total
    assert result.prompt_tokens["full"] - result.prompt_tokens["pruned"] == 3 * (pipe.num_patches - 64)
    # The full path hands over exactly each frame's projected base-view patches.
    _, prefills = _prefill_embeds(pipe, frames, 64)
    full_ids = pipe.prompt_inputs(frames, QUESTION)["input_ids"][0]
    assert prefills[0].shape[1] == result.prompt_tokens["full"] < len(full_ids)
    assert any("base view alone" in n for n in pipe.media_notes(feats))
    assert not any("base view alone" in n for n in pipe.media_notes(pipe.encode(list(frames))))


def test_question_methods_run_on_padded_crops(llava_next_pipeline):
    """CDPruner's per-view relevance is cut to a padded crop's received patches, as its projected
    features are (the Compare tab on a NeXT model warned 'relevance must match the (1, 576)
    patches, got (3, 576)' and left CDPruner out)."""
    pipe, k = llava_next_pipeline, 64
    image = make_image(7, 60, 1500)
    feats = pipe.encode([image])
    assert feats.visible is not None and not bool(feats.visible[1:].all())
    if "cdpruner" not in pipe.available_methods(feats):
        pytest.skip(pipe.unavailable_methods(feats).get("cdpruner", "CDPruner unavailable"))
    for method in ("cdpruner", "divprune"):
        sel = pipe.select(feats, k, method=method, question=QUESTION)
        for view in range(1, feats.num_views):
            kept = sel.kept_patches[view]
            assert not bool((kept & ~feats.visible[view]).any()), method
            assert int(kept.sum()) == min(k, int(feats.visible[view].sum())), method
