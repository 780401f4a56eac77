"""The Pipeline as the one door to the model, on the tiny demo models: one calibration path, budgets
that agree between the Explore and Compare views, answers computed once, and concurrent sessions."""
from __future__ import annotations

import threading

import pytest
import torch

from prunesid import information_score
from prunesid_vlm import studies
from prunesid_vlm.calibration import calibration_images
from prunesid_vlm.pipeline import select, selection_budgets, view_budgets, view_phis

QUESTION = "What is in the picture?"


@pytest.fixture(params=["llava_pipeline", "llava_next_pipeline", "llava_next_video_pipeline"])
def any_pipeline(request):
    return request.getfixturevalue(request.param)


def test_calibration_phi_is_the_phi_of_a_users_image(any_pipeline):
    """φ_ref and the reference φ shown in the dynamic-ratio chart come from one computation, and a
    calibration image encoded like a user's image gets exactly that φ (NeXT-Video: after pooling)."""
    pipe = any_pipeline
    calibration = pipe.calibration()
    images = calibration_images()
    if pipe.one_clip:  # a clip's frames: encode them one by one, as one-frame clips
        phis = torch.cat([pipe.encode([im]).phi for im in images])
    else:
        phis = pipe.encode(images).phi
    torch.testing.assert_close(phis, torch.tensor(calibration.phis), atol=1e-6, rtol=1e-6)
    assert calibration.phi_ref == pytest.approx(float(phis.mean()), abs=1e-6)
    feats = pipe.encode(images[:1])
    assert feats.phi_ref == pytest.approx(calibration.phi_ref)
    # φ is measured on the patches the language model receives (a padded NeXT crop: fewer).
    torch.testing.assert_close(feats.phi, view_phis(feats.hidden_states, feats.visible))
    if feats.visible is None or bool(feats.visible.all()):
        torch.testing.assert_close(feats.phi, information_score(feats.hidden_states))


def test_dynamic_toggle_and_prunesid_dyn_give_the_same_budgets(llava_next_pipeline, images):
    pipe = llava_next_pipeline
    feats = pipe.encode(images[:1])
    assert feats.num_views > 1 and any(feats.drops_cls)
    explore = select(feats, 64, dynamic=True)
    compare = select(feats, 64, method="prunesid-dyn")
    assert torch.equal(explore.keep, compare.keep) and torch.equal(explore.num_tokens, compare.num_tokens)
    budgets = view_budgets(feats, 64, dynamic=True)
    assert sum(budgets) == 64 * feats.num_views
    assert explore.num_tokens.tolist() == selection_budgets(feats, budgets)
    result = pipe.compare(images[:1], QUESTION, 64, dynamic=True, max_new_tokens=2, selection=explore)
    assert result.budgets == budgets


def test_the_selection_given_is_the_selection_answered(llava_pipeline, images):
    pipe = llava_pipeline
    feats = pipe.encode(images[:1])
    sel = select(feats, 40)
    result = pipe.compare(images[:1], QUESTION, 40, max_new_tokens=2, selection=sel)
    assert result.selection is sel and result.visual_tokens_pruned == 40 and result.budgets == [40]
    with pytest.raises(ValueError, match="rows"):
        pipe.compare(images[:2], QUESTION, 40, max_new_tokens=2, selection=sel)


def test_full_answer_is_computed_once_per_media_question_and_settings(llava_pipeline, images):
    pipe = llava_pipeline
    question = "Which colours dominate? (cache test)"
    before = pipe.stats["full_generations"]
    first = pipe.compare(images[2:3], question, 32, max_new_tokens=3)
    second = pipe.compare(images[2:3], question, 96, max_new_tokens=3)
    assert pipe.stats["full_generations"] - before == 1
    assert first.answers_cached == {"full": False, "pruned": False}
    assert second.answers_cached == {"full": True, "pruned": False}
    assert second.full_tokens == first.full_tokens
    pipe.compare(images[2:3], question, 32, max_new_tokens=4)  # other generation settings: a new full run
    assert pipe.stats["full_generations"] - before == 2


def test_compare_of_every_method_costs_one_full_and_one_pruned_generation_each(llava_pipeline, images):
    pipe = llava_pipeline
    question = "Describe the scene. (count test)"
    out = studies.compare_methods(pipe, images[:1], 64, None, question=question, max_new_tokens=2)
    assert [r.name for r in out.runs] == pipe.available_methods(pipe.encode(images[:1]))  # all nine on the demo
    assert len(out.runs) == 9
    distinct = len({tuple(r.selection.keep[0].tolist()) + (int(r.selection.num_tokens[0]),) for r in out.runs
                    if r.selection.merged_tokens is None}) + sum(r.selection.merged_tokens is not None for r in out.runs)
    assert out.generations == {"full": 1, "pruned": distinct, "prefills": 0, "prefill_batches": 0}
    again = studies.compare_methods(pipe, images[:1], 64, None, question=question, max_new_tokens=2)
    assert again.generations == {"full": 0, "pruned": 0, "prefills": 0, "prefill_batches": 0}
    for run in out.runs:
        res = out.results[run.name]
        assert res.full_answer == out.full_answer and res.visual_tokens_pruned == int(run.selection.num_tokens.sum())


def test_sweep_reuses_the_full_run(llava_pipeline, images):
    pipe = llava_pipeline
    question = "What shapes are there? (sweep test)"
    pipe.compare(images[1:2], question, 64, max_new_tokens=4)  # the Explore tab's answer
    result, generations = studies.sweep(pipe, images[1:2], (16, 64, 128), ["prunesid", "grid"], question=question)
    # No generation at all: the full prompt and PruneSID at 64 were answered already; the other
    # five points are prefilled together in one forward pass.
    assert generations == {"full": 0, "pruned": 0, "prefills": 2 * 3 - 1, "prefill_batches": 1}
    assert all(len(v) == 3 for v in result.fidelity.values())
    _, again = studies.sweep(pipe, images[1:2], (16, 64, 128), ["prunesid", "grid"], question=question)
    assert again == {"full": 0, "pruned": 0, "prefills": 0, "prefill_batches": 0}


def test_batched_prefill_gives_each_prompts_own_first_token_logits(any_pipeline, images):
    """Left-padded prompts of different lengths in one forward pass: each row's logits are the
    ones its own greedy run starts from."""
    pipe = any_pipeline
    media = images[:3] if pipe.one_clip else images[:1]
    feats = pipe.encode(media)
    question = "Which is it? (batched prefill test)"
    selections = [None, select(feats, 16), select(feats, 100), select(feats, 40, method="grid")]
    pipe.clear_caches()
    batched = pipe.first_token_logits(media, question, selections)
    assert pipe.stats["prefill_batches"] >= 1
    pipe.clear_caches()
    for sel, row in zip(selections, batched):
        alone = pipe.answer(media, question, sel, max_new_tokens=1).first_logits
        torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-5)


def test_concurrent_sessions_get_what_they_would_get_alone(llava_pipeline, images):
    """Four sessions reselecting on their own features while a fifth asks the model: every result
    equals the one computed alone."""
    pipe = llava_pipeline
    feats = [pipe.encode([im]) for im in images]
    budgets = [16, 48, 100, 200]
    alone = {(i, k): select(feats[i % 3], k).keep for i in range(4) for k in budgets}
    answer_alone = pipe.compare(images[:1], "Alone or not?", 50, max_new_tokens=3)
    other_alone = pipe.compare(images[2:3], "Another image, another visitor", 30, max_new_tokens=3)
    pipe.clear_caches()  # the concurrent runs below must really run
    generations = pipe.stats["full_generations"] + pipe.stats["pruned_generations"]
    results, errors = {}, []

    def session(i):
        try:
            for _ in range(3):
                for k in budgets:
                    results[(i, k)] = select(feats[i % 3], k).keep
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    def asker():
        try:
            results["answer"] = pipe.compare(images[:1], "Alone or not?", 50, max_new_tokens=3)
            results["other"] = pipe.compare(images[2:3], "Another image, another visitor", 30, max_new_tokens=3)
        except Exception as err:  # pragma: no cover
            errors.append(err)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)] + [threading.Thread(target=asker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(results[key], alone[key]) for key in alone)
    assert pipe.stats["full_generations"] + pipe.stats["pruned_generations"] - generations == 4
    for key, expected in (("answer", answer_alone), ("other", other_alone)):
        got = results[key]
        assert (got.full_tokens, got.pruned_tokens) == (expected.full_tokens, expected.pruned_tokens)
        assert not any(got.answers_cached.values())


def test_cached_images_survive_a_batch_that_fills_the_cache(llava_pipeline):
    """Old cached images in a batch of new ones must not be evicted by the new ones (a video's
    repeated frames hit this)."""
    from conftest import make_image

    from prunesid_vlm.pipeline import FEATURE_CACHE_SIZE

    pipe = llava_pipeline
    pipe.clear_caches()
    old = [make_image(100 + i, 64, 64) for i in range(FEATURE_CACHE_SIZE)]
    pipe.encode(old)
    new = [make_image(200 + i, 64, 64) for i in range(FEATURE_CACHE_SIZE - 1)]
    feats = pipe.encode(old[:2] + new)
    assert feats.cached == [True, True] + [False] * len(new)
    assert feats.num_views == FEATURE_CACHE_SIZE + 1


def test_a_clips_views_know_their_frames(llava_next_video_pipeline, images):
    """NeXT-Video answers all frames as one clip (every view's media item is 0), yet each view is
    drawn from, and labelled as, its own frame."""
    import numpy as np

    from prunesid_vlm.pipeline import tower_view

    pipe = llava_next_video_pipeline
    feats = pipe.encode(images)
    assert [v.image for v in feats.views] == [0, 0, 0] and feats.sources == (0, 1, 2)
    pixels = pipe.view_pixels(images, feats)
    assert all(np.array_equal(p, tower_view(im, v.box)) for p, im, v in zip(pixels, images, feats.views))


def test_token_counts_are_the_prompts_visual_tokens(any_pipeline, images):
    pipe = any_pipeline
    media = images[:3] if pipe.one_clip else images[:1]
    feats = pipe.encode(media)
    for k, dynamic in ((16, False), (64, True)):
        sel = select(feats, k, dynamic=dynamic)
        result = pipe.compare(media, QUESTION, k, dynamic=dynamic, max_new_tokens=1, selection=sel)
        assert result.counts["full"].total == result.visual_tokens_full
        assert result.counts["pruned"].total == result.visual_tokens_pruned
        assert pipe.token_counts(feats, sel) == result.counts["pruned"]
        assert result.to_dict()["token_counts"]["pruned"]["total"] == result.visual_tokens_pruned


def test_a_budget_of_every_token_answers_like_the_full_model(any_pipeline, images):
    """K = 1+N (the page's 'all' preset) keeps every patch: the answer is the unpruned one,
    first-token KL 0, and the counts are the full path's."""
    pipe = any_pipeline
    media = images[:3] if pipe.one_clip else images[:1]
    result = pipe.compare(media, QUESTION, pipe.num_patches + 1, max_new_tokens=3)
    assert result.pruned_tokens == result.full_tokens and result.fidelity == pytest.approx(0.0, abs=1e-6)
    assert result.visual_tokens_pruned == result.visual_tokens_full == result.counts["pruned"].total


def test_loglikelihood_scores_a_continuation_as_the_model_would_generate_it(any_pipeline, images):
    """The greedy answer's own tokens are 'greedy' and score higher than another continuation."""
    pipe = any_pipeline
    media = images[:3] if pipe.one_clip else images[:1]
    feats = pipe.encode(media)
    sel = select(feats, 32)
    answer = pipe.answer(media, QUESTION, sel, max_new_tokens=3)
    logprob, greedy = pipe.loglikelihood(media, QUESTION, answer.tokens, sel)
    assert greedy and logprob <= 0
    other, other_greedy = pipe.loglikelihood(media, QUESTION, "zzzz qqqq", sel)
    assert other < logprob and not other_greedy
