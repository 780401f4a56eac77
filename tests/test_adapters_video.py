"""Video on the tiny LLaVA-1.5 demo: frames sampled with OpenCV, answered as a multi-image
prompt, the dynamic ratio sharing the budget across frames."""
from __future__ import annotations

import numpy as np
import pytest

from prunesid.pipeline import video_frames


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
    frames = video_frames(clip_path, num_frames=4)
    assert len(frames) == 4 and all(f.size == (160, 120) for f in frames)
    k = 32
    result = llava_pipeline.compare(frames, "What moves?", k, dynamic=True, max_new_tokens=2)
    assert result.visual_tokens_full == 4 * 576
    assert sum(result.budgets) == result.visual_tokens_pruned == 4 * k
    assert result.prompt_tokens["full"] - result.prompt_tokens["pruned"] == 4 * 576 - 4 * k
    assert len(set(result.budgets)) > 1  # frames differ in information, so in budget
