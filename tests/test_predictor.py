"""Encode once, then select and answer many times (``Pipeline.media``): the same answers as the
pipeline's own calls, no second tower pass, clips included."""
from __future__ import annotations

import pytest
import torch

from conftest import make_image
from prunesid_vlm.pipeline import Frames, MediaPredictor

QUESTION = "What is in the picture?"


def test_a_predictor_encodes_once_and_answers_as_the_pipeline_does(llava_pipeline):
    pipe, image = llava_pipeline, make_image(31)
    media = pipe.media([image])
    assert isinstance(media, MediaPredictor) and media.features.num_views == 1
    towers = pipe.stats["tower_images"]
    kept = media.select(64)
    assert torch.equal(kept.keep, pipe.select(pipe.encode([image]), 64).keep)
    assert media.token_counts(kept).total < media.token_counts().total
    assert media.budgets(64) == [64] and "prunesid" in media.available_methods()
    assert media.view_pixels()[0].shape == (336, 336, 3)
    answer = media.answer(QUESTION, kept, max_new_tokens=3)
    assert answer.tokens == pipe.answer([image], QUESTION, kept, max_new_tokens=3).tokens
    result = media.compare(QUESTION, 32, max_new_tokens=3)
    assert result.visual_tokens_pruned < result.visual_tokens_full
    [full, pruned] = media.first_token_logits(QUESTION, [None, kept])
    torch.testing.assert_close(pruned, answer.first_logits, rtol=1e-4, atol=1e-4)
    score, _ = media.loglikelihood(QUESTION, "a", kept)
    assert score <= 0
    assert pipe.stats["tower_images"] == towers  # nothing encoded again


def test_a_clip_binds_as_frames_and_bad_media_is_refused_up_front(llava_next_video_pipeline):
    pipe = llava_next_video_pipeline
    clip = Frames([make_image(s, 240, 320) for s in range(3)])
    media = pipe.media(clip)
    assert isinstance(media.images, Frames) and media.features.num_views == 3
    assert media.answer("What happens?", media.select(16), max_new_tokens=2).visual_tokens < \
        media.answer("What happens?", None, max_new_tokens=2).visual_tokens
    with pytest.raises(ValueError):
        pipe.media([])
