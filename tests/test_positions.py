"""Where a pruned prompt puts the kept tokens: LLaVA's compact positions (as published) or each
kept patch's position in the full prompt (``positions="original"``)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_image
from prunesid_vlm.inllm import InLLMSchedule
from prunesid_vlm.pipeline import POSITION_MODES

QUESTION = "What is in the picture?"


def _without_cls_in_raster_order(selection):
    """The selection's kept patches without the CLS row, in raster order (one view)."""
    patches = selection.keep_row(0)
    patches = patches[patches > 0].sort().values
    return dataclasses.replace(selection, keep=patches[None], num_tokens=torch.tensor([patches.numel()]))


def test_original_positions_equal_the_full_prompt_with_the_dropped_patches_masked(llava_pipeline):
    """The model's own forward on the full prompt (its pixels, its placeholders, its positions), with
    the dropped patches masked out of attention, is what the positioned pruned prompt computes."""
    pipe, image = llava_pipeline, make_image(11)
    feats = pipe.encode([image])
    selection = _without_cls_in_raster_order(pipe.select(feats, 64))
    kept = selection.keep_row(0) - 1  # offsets into the placeholder run
    assert 0 < kept.numel() < 576

    inputs = pipe.prompt_inputs([image], QUESTION)
    ids = inputs["input_ids"]
    run = (ids[0] == pipe.adapter.image_token_id).nonzero().flatten()
    mask = torch.ones_like(ids)
    dropped = torch.ones(run.numel(), dtype=torch.bool)
    dropped[kept] = False
    mask[0, run[dropped]] = 0
    with torch.inference_mode():
        reference = pipe.model(**{**inputs, "attention_mask": mask}, position_ids=torch.arange(ids.shape[1])[None],
                               logits_to_keep=1).logits[0, -1].float()

    original, compact = pipe.first_token_logits([image], QUESTION, [selection], positions="original")[0], \
        pipe.first_token_logits([image], QUESTION, [selection])[0]
    assert torch.allclose(original, reference, atol=1e-4), float((original - reference).abs().max())
    assert not torch.allclose(compact, reference, atol=1e-3)  # the positions are what differs


def test_kept_tokens_go_in_their_patches_order_whatever_the_selections_order(llava_pipeline):
    """PruneSID lists kept tokens group by group; at original positions they are handed over in their
    patches' order, so the prompt is the full one with the dropped patches taken out, CLS in front."""
    pipe, image = llava_pipeline, make_image(17)
    feats = pipe.encode([image])
    selection = pipe.select(feats, 64)
    keep = selection.keep_row(0)
    assert not torch.equal(keep[1:], keep[1:].sort().values)  # group order is not raster order
    shuffled = dataclasses.replace(selection, keep=torch.cat([keep[:1], keep[1:].flip(0)])[None])
    one, other = pipe.first_token_logits([image], QUESTION, [selection, shuffled], positions="original")
    assert torch.allclose(one, other, atol=1e-5)  # the listing order does not matter, the places do
    without_cls = _without_cls_in_raster_order(selection)
    unsorted = dataclasses.replace(without_cls, keep=without_cls.keep.flip(1))
    assert torch.allclose(*pipe.first_token_logits([image], QUESTION, [without_cls, unsorted], positions="original"),
                          atol=1e-5)


def test_generation_continues_at_the_full_prompts_next_position(llava_pipeline):
    """The answer's first token logits are the prefill's, and greedy decoding goes on after the
    full prompt's last position (every token kept: the same answer as the model's ``generate``)."""
    pipe, image = llava_pipeline, make_image(12)
    feats = pipe.encode([image])
    selection = pipe.select(feats, 64)
    answer = pipe.answer([image], QUESTION, selection, max_new_tokens=6, positions="original")
    logits = pipe.first_token_logits([image], QUESTION, [selection], positions="original")[0]
    assert answer.visual_tokens == 64
    assert torch.allclose(answer.first_logits, logits, atol=1e-4)
    everything = pipe.select(feats, 577)
    full = pipe.answer([image], QUESTION, None, max_new_tokens=6)
    assert pipe.answer([image], QUESTION, everything, max_new_tokens=6, positions="original").tokens == full.tokens


def test_each_hand_over_is_cached_apart_and_said_in_the_result(llava_pipeline):
    pipe, image = llava_pipeline, make_image(13)
    feats = pipe.encode([image])
    selection = pipe.select(feats, 32)
    before = pipe.stats["pruned_generations"]
    pipe.answer([image], QUESTION, selection, max_new_tokens=4)
    pipe.answer([image], QUESTION, selection, max_new_tokens=4, positions="original")
    assert pipe.answer([image], QUESTION, selection, max_new_tokens=4, positions="original").cached
    assert pipe.stats["pruned_generations"] - before == 2
    result = pipe.compare([image], QUESTION, 32, max_new_tokens=4, positions="original")
    assert result.positions == "original" and result.to_dict()["positions"] == "original"
    assert pipe.compare([image], QUESTION, 32, max_new_tokens=4).to_dict()["positions"] == "compact"
    assert pipe.position_modes == POSITION_MODES and pipe.check_positions(None) == "compact"
    score = pipe.loglikelihood([image], QUESTION, "a cat", selection, positions="original")
    assert score[0] < 0


def test_what_cannot_keep_original_positions_says_so(llava_pipeline, llava_next_pipeline):
    pipe, image = llava_pipeline, make_image(14)
    feats = pipe.encode([image])
    selection = pipe.select(feats, 32)
    with pytest.raises(ValueError, match="positions must be one of"):
        pipe.answer([image], QUESTION, selection, positions="shuffled")
    merged = pipe.select(feats, 32, method="visionzip")
    assert merged.merged_tokens is not None
    with pytest.raises(ValueError, match="VisionZip selection merges tokens"):
        pipe.answer([image], QUESTION, merged, positions="original")
    with pytest.raises(ValueError, match="inside the language model runs with compact positions only"):
        pipe.answer([image], QUESTION, selection, positions="original", in_llm=InLLMSchedule.fastv(1, 0.5))
    with pytest.raises(ValueError, match="compact positions only: LLaVA-NeXT packs the kept crop tokens"):
        llava_next_pipeline.answer([image], QUESTION, None, positions="original")
    before = pipe.stats["full_generations"]
    with pytest.raises(ValueError, match="merges tokens"):  # refused before the full answer is generated
        pipe.compare([image], QUESTION, 32, method="visionzip", positions="original")
    assert pipe.stats["full_generations"] == before


def test_cls_free_families_keep_original_positions_only(demo_cache):
    from prunesid_vlm.pipeline import load_pipeline
    from prunesid_vlm.registry import DEMO_QWEN2_ID

    qwen = load_pipeline(DEMO_QWEN2_ID, device="cpu")
    image = make_image(15)
    assert qwen.position_modes == ("original",) and qwen.check_positions(None) == "original"
    with pytest.raises(ValueError, match="original positions only"):
        qwen.answer([image], QUESTION, None, positions="compact")
    assert qwen.compare([image], QUESTION, 64, max_new_tokens=2).positions == "original"


def test_the_app_answers_with_original_positions_when_asked_and_says_so(llava_pipeline):
    from studio import handlers as H
    from studio.session import Analysis

    pipe, image = llava_pipeline, make_image(16)
    feats = pipe.encode([image])
    analysis = Analysis(kind="image", source="x.png", model_id=pipe.model_id, is_demo=True, images=[image],
                        feats=feats, view_pixels=pipe.view_pixels([image], feats), grid=pipe.grid, reference_phis=[],
                        budget=32, selection=pipe.select(feats, 32))
    placed = H.answer(analysis, QUESTION, pipe, 4, original_positions=True)
    packed = H.answer(analysis, QUESTION, pipe, 4)
    assert (placed.positions, packed.positions) == ("original", "compact")
    said = H.answer_texts(placed, own_positions=pipe.positions_default)["fidelity"]
    assert "original places" in said
    assert "original places" not in H.answer_texts(packed, own_positions=pipe.positions_default)["fidelity"]


def test_the_positions_box_shows_for_llava_only_and_marks_answers_made_the_other_way(llava_pipeline, demo_cache):
    from studio import handlers as H
    from prunesid_vlm.serving import MANAGER
    from prunesid_vlm.pipeline import load_pipeline
    from prunesid_vlm.registry import DEMO_NEXT_MODEL_ID, DEMO_QWEN2_ID
    from studio.session import Analysis

    before = MANAGER.current() if MANAGER.state.active else None
    try:
        MANAGER.install(llava_pipeline)
        assert H.positions_choice() == {"__type__": "update", "visible": True}
        pipe, image = llava_pipeline, make_image(17)
        feats = pipe.encode([image])
        analysis = Analysis(kind="image", source="x.png", model_id=pipe.model_id, is_demo=True, images=[image],
                            feats=feats, view_pixels=pipe.view_pixels([image], feats), grid=pipe.grid,
                            reference_phis=[], budget=32, selection=pipe.select(feats, 32))
        skip = H.on_positions(analysis, True)  # nothing answered: nothing to mark
        assert [v == {"__type__": "update"} for v in skip] == [True, True]
        answered = dict(zip(H.ANSWER_KEYS, H.on_answer(analysis, QUESTION, 32, False, 4, False,
                                                       progress=H._no_progress)))["state"]
        assert answered.answered["positions"] == "compact" and answered.positions_wanted == "compact"
        ticked_state, ticked = H.on_positions(answered, True)
        assert "at compact positions" in ticked and "at original positions" in ticked
        # The mark stays whatever redraws in between (the slider away and back), and the panel says why.
        assert H.stale_note(H.reselect(H.reselect(ticked_state, 64, False), 32, False)) == ticked
        assert "made at compact positions" in H.answer_panel(ticked_state)["pruned_head"]
        cleared_state, cleared = H.on_positions(ticked_state, False)
        assert cleared == H.stale_note(cleared_state) == ""  # back as answered: no mark
        assert H.answer_panel(cleared_state)["pruned_answer"] == answered.answered["texts"]["pruned_answer"]

        MANAGER.install(load_pipeline(DEMO_NEXT_MODEL_ID, device="cpu"))
        assert H.positions_choice() == {"__type__": "update", "visible": False, "value": False}
        # A box left ticked when the model changed asks for the model's own way, not for a refusal.
        next_pipe, picture = MANAGER.current(), make_image(18)
        feats = next_pipe.encode([picture])
        on_next = Analysis(kind="image", source="y.png", model_id=next_pipe.model_id, is_demo=True, images=[picture],
                           feats=feats, view_pixels=next_pipe.view_pixels([picture], feats), grid=next_pipe.grid,
                           reference_phis=[], budget=32, selection=next_pipe.select(feats, 32))
        assert H.answer(on_next, QUESTION, next_pipe, 2, original_positions=True).positions == "compact"
        MANAGER.install(load_pipeline(DEMO_QWEN2_ID, device="cpu"))
        assert H.positions_choice()["visible"] is False
    finally:
        MANAGER.install(before or llava_pipeline)
