"""Every offline demo of a CLS-free family hands the rule tokens that vary with the picture: a demo
whose projector gives constant tokens (Gemma 3's image projection starts at zeros in transformers)
would make every selection the first K tokens in raster order and every test of the pruned prompt
trivially true."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prunesid_vlm.pipeline import load_pipeline
from prunesid_vlm.registry import (DEMO_GEMMA3_ID, DEMO_INTERNVL3_ID, DEMO_ONEVISION_ID, DEMO_QWEN25_ID,
                                   DEMO_QWEN2_ID, DEMO_QWEN3_ID)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    blocks = rng.random((4, 6, 3)).repeat(60, 0).repeat(60, 1)
    return Image.fromarray((blocks * 255).astype(np.uint8))


@pytest.mark.parametrize("demo", [DEMO_QWEN2_ID, DEMO_QWEN25_ID, DEMO_QWEN3_ID, DEMO_ONEVISION_ID, DEMO_INTERNVL3_ID,
                                  DEMO_GEMMA3_ID])
def test_the_demos_tokens_vary_with_the_picture_and_so_does_the_selection(demo, demo_cache):
    pipe = load_pipeline(demo, device="cpu")
    first, second = pipe.encode([picture(1)]), pipe.encode([picture(2)])
    tokens = first.hidden_states[0, 1:]
    assert float(tokens.std(dim=0).mean()) > 1e-4, f"{demo}: every token of a view is the same"
    assert not torch.allclose(first.hidden_states, second.hidden_states)
    keep = [pipe.select(f, 64).keep_row(0) for f in (first, second)]
    raster = torch.arange(1, keep[0].numel() + 1)
    assert not torch.equal(keep[0], raster) or not torch.equal(keep[1], raster), f"{demo}: raster-order selections"


@pytest.mark.parametrize("demo", [DEMO_QWEN3_ID, DEMO_ONEVISION_ID, DEMO_INTERNVL3_ID, DEMO_GEMMA3_ID])
def test_the_studies_run_on_every_new_family(demo, demo_cache):
    """Compare (every runnable method), the stability study and a budget sweep, as the app's tabs run
    them; the methods a CLS-free tower cannot run are named with a reason."""
    from prunesid_vlm import studies

    pipe = load_pipeline(demo, device="cpu")
    image = picture(3)
    comparison = studies.compare_methods(pipe, [image], 64)
    feats = pipe.encode([image])
    runnable = pipe.available_methods(feats)
    assert "prunesid" in runnable and {"topk", "visionzip"} <= set(pipe.unavailable_methods(feats))
    assert {run.spec.name for run in comparison.runs} == set(runnable)
    for run in comparison.runs:
        handed = studies.handed_tokens(pipe, feats, run.selection)
        assert 0 < handed < feats.num_views * feats.num_patches, run.spec.name
    _, stability = studies.stability_of(pipe, [image], 64, [0, 1])
    assert stability is not None
    result, generations = studies.sweep(pipe, [image], [16, 64])
    assert result is not None and sum(generations.values()) == 0  # no question: no answers generated


@pytest.mark.parametrize("demo", [DEMO_QWEN3_ID, DEMO_ONEVISION_ID, DEMO_INTERNVL3_ID, DEMO_GEMMA3_ID])
def test_the_pages_texts_describe_a_cls_free_family(demo, demo_cache, tmp_path):
    """What the app writes about a CLS-free model's views names its own rule: no CLS, K′ (not the LLaVA
    rule's τ = (K/32)·ρ or 'every image gets K'), and the per-group chart counts the kept tokens."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from studio import handlers as H
    from studio import views as V
    from prunesid_vlm.serving import MANAGER

    path = tmp_path / "picture.png"
    picture(4).save(path)
    previous = MANAGER._pipe  # put back after: other tests share the process-wide manager
    MANAGER.install(load_pipeline(demo, device="cpu"))
    try:
        out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", str(path), None, 64, False, 1, None,
                                                 progress=H._no_progress)))
        analysis = out["state"]
        assert analysis is not None, out["status"]
        for view in range(analysis.num_views):
            texts = V.render(analysis, view, parts=("nms", "dynamic"))
            words = " ".join([str(texts["nms_note"]), str(texts["dynamic_text"]), V.summary(analysis, view)])
            assert "(K/32)" not in words and "every image gets" not in words and "CLS +" not in words, words
            chart = V.render(analysis, view, parts=("group_chart",))["group_chart"]
            kept = int((analysis.selection.keep_row(view) > 0).sum())
            assert f"({kept} of " in chart.axes[0].get_title()
    finally:
        MANAGER._pipe = previous
