"""The view-size limit (``prunesid.MAX_TOKENS_PER_VIEW``, issue 26): the Python API and the app refuse
a view larger than it with a message that names it, and Qwen pictures are scaled down to it.

The limit is lowered here so that the tiny demo models' views exceed it."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import prunesid.config  # noqa: E402
from fake_pipeline import FakePipeline, fake_image  # noqa: E402
from prunesid_vlm.pipeline import load_pipeline, select  # noqa: E402
from prunesid_vlm.registry import DEMO_QWEN2_ID  # noqa: E402
from studio import handlers as H  # noqa: E402
from prunesid_vlm.serving import MANAGER  # noqa: E402


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def test_the_api_refuses_a_view_above_the_limit_and_says_which(llava_pipeline, monkeypatch):
    feats = llava_pipeline.encode([picture(336, 336)])
    n = feats.hidden_states.shape[1] - 1
    monkeypatch.setattr(prunesid.config, "MAX_TOKENS_PER_VIEW", n)
    assert int(llava_pipeline.select(feats, 64).num_tokens[0]) == 64  # at the limit: selected
    monkeypatch.setattr(prunesid.config, "MAX_TOKENS_PER_VIEW", n - 1)
    for run in (lambda: llava_pipeline.select(feats, 64), lambda: select(feats, 64, method="random")):
        with pytest.raises(ValueError, match=rf"view of {n:,} tokens .*MAX_TOKENS_PER_VIEW = {n - 1:,}"):
            run()


def test_the_app_shows_the_refusal_instead_of_a_generic_error(tmp_path, monkeypatch):
    previous = MANAGER.loaded
    MANAGER.install(FakePipeline())
    try:
        path = tmp_path / "fake.png"
        fake_image(1).save(path)
        out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", str(path), None, 64, False, 1, None, progress=H._no_progress)))
        state = out["state"]
        assert state is not None, out["status"]
        monkeypatch.setattr(prunesid.config, "MAX_TOKENS_PER_VIEW", 100)
        out = dict(zip(H.VIEW_KEYS, H.on_reselect(state, 32, False, 1, "image", str(path), None, "kept")))
        assert "MAX_TOKENS_PER_VIEW = 100" in out["status"], out["status"]
    finally:
        if previous is not None:
            MANAGER.install(previous)


def test_qwen_pictures_are_scaled_down_to_the_limit_and_a_larger_range_is_refused(demo_cache, monkeypatch):
    monkeypatch.setattr(prunesid.config, "MAX_TOKENS_PER_VIEW", 100)  # the demo's processor allows 512
    qwen = load_pipeline(DEMO_QWEN2_ID, device="cpu")
    assert qwen.checkpoint_max_pixels == 512 * 28 * 28 and qwen.max_view_pixels == 100 * 28 * 28
    feats = qwen.encode([picture(600, 900)])
    assert 80 <= feats.num_patches <= 100
    assert any("Scaled down to at most 100 merged tokens" in note for note in qwen.media_notes(feats))
    assert int(qwen.select(feats, 64).num_tokens[0]) > 0
    small = qwen.encode([picture(140, 196)])  # fits: not scaled down
    assert not any("Scaled down" in note for note in qwen.media_notes(small))
    with pytest.raises(ValueError, match="MAX_TOKENS_PER_VIEW"):
        qwen.set_pixel_range(max_pixels=101 * 28 * 28)
    qwen.set_pixel_range(max_pixels=64 * 28 * 28)  # a lower range is the visitor's own: no note
    feats = qwen.encode([picture(600, 900)])
    assert feats.num_patches <= 64
    assert not any("Scaled down" in note for note in qwen.media_notes(feats))
