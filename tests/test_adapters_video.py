"""Video on the tiny LLaVA-1.5 demo: frames sampled with OpenCV, answered as a multi-image
prompt, the dynamic ratio sharing the budget across frames."""
from __future__ import annotations

import numpy as np
import pytest

from prunesid_vlm.media import load_video


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(0)
    for t in range(20):  # a square moving over a noisy background; busier towards the end
        frame = (rng.random((120, 160, 3)) * (40 + 10 * t)).astype(np.uint8)
        frame[40:80, 5 * t:5 * t + 40] = (255, 128, 0)
        writer.write(frame)
    writer.release()
    return path


def test_frames_are_answered_as_a_multi_image_prompt(llava_pipeline, clip_path):
    frames = load_video(clip_path, max_frames=4)[0]
    assert len(frames) == 4 and all(f.size == (160, 120) for f in frames)
    k = 32
    result = llava_pipeline.compare(frames, "What moves?", k, dynamic=True, max_new_tokens=2)
    assert result.visual_tokens_full == 4 * 576
    assert sum(result.budgets) == result.visual_tokens_pruned == 4 * k
    assert result.prompt_tokens["full"] - result.prompt_tokens["pruned"] == 4 * 576 - 4 * k
    assert len(set(result.budgets)) > 1  # frames differ in information, so in budget


def test_next_video_full_path_equals_plain_generate(llava_next_video_pipeline, clip_path):
    pipe = llava_next_video_pipeline
    frames = load_video(clip_path, max_frames=3)[0]
    result = pipe.compare(frames, "What moves?", 16, max_new_tokens=6)
    inputs = pipe.prompt_inputs(frames, "What moves?")
    plain = pipe.model.generate(**inputs, do_sample=False, max_new_tokens=6)
    assert result.full_tokens == plain[0, inputs["input_ids"].shape[1]:].tolist()
    assert pipe.grid == (12, 12) and result.visual_tokens_full == 3 * 144


def test_next_video_selects_on_pooled_tokens_and_hands_over_k_per_frame(llava_next_video_pipeline, clip_path):
    import torch

    pipe, k = llava_next_video_pipeline, 20
    frames = load_video(clip_path, max_frames=3)[0]
    feats = pipe.encode(frames)
    assert feats.hidden_states.shape == (3, 145, 64) and feats.cls_attention.shape == (3, 144)
    assert [v.kind for v in feats.views] == ["frame"] * 3 and {v.image for v in feats.views} == {0}
    inputs = pipe.prompt_inputs(frames, "What moves?")
    with torch.no_grad():
        expected = pipe.model.model.get_video_features(inputs["pixel_values_videos"]).pooler_output[0]  # [3·144, D]
    torch.testing.assert_close(pipe.adapter.full_features([feats.hidden_states], None)[0], expected)
    result = pipe.compare(frames, "What moves?", k, dynamic=True, max_new_tokens=2)
    assert result.visual_tokens_pruned == sum(result.budgets) == 3 * k
    assert result.prompt_tokens["full"] - result.prompt_tokens["pruned"] == 3 * 144 - 3 * k
