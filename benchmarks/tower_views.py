"""Seconds per tower view on this machine for each kind of model the picker offers, side by side.

* the offline demos: the tiny random LLaVA-1.5 and the real DINOv2-small one;
* LLaVA-1.5's tower alone (``tower/llava-hf/llava-1.5-7b-hf``): CLIP ViT-L/14-336 at full depth
  (24 layers, width 1024), timed here with random weights of the real shape (the same work as the
  downloaded weights), in float32 and bfloat16; a LLaVA-NeXT image is 3-5 such views.

Each model encodes the same photos, uncached, ``--repeats`` times; the median per view is printed
with its ratio to the DINOv2 demo.

    python -m benchmarks.tower_views [--repeats 3] [--views 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image


def clip_l_336_pipeline(dtype: torch.dtype):
    """A LLaVA-1.5 pipeline whose tower has CLIP-L/336's full shape (random weights, tiny LM)."""
    from transformers import CLIPVisionConfig

    from prunesid_vlm.families import adapter_for
    from prunesid_vlm.loading import LoadedModel
    from prunesid_vlm.pipeline import DEMO_MODEL_ID, Pipeline, load_pipeline
    from prunesid_vlm.registry import spec_for

    demo = load_pipeline(DEMO_MODEL_ID, device="cpu")
    config = demo.model.config
    config.vision_config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, image_size=336, patch_size=14)
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(config).eval().to(dtype)
    loaded = LoadedModel(model, demo.processor, "llava", "tower/llava-hf/llava-1.5-7b-hf (shape only)",
                         f"{demo.loaded.path}#clip-l-336-shape",  # its own calibration entry
                         torch.device("cpu"), dtype, is_demo=False, spec=spec_for("tower/llava-hf/llava-1.5-7b-hf"))
    pipe = Pipeline(loaded)
    assert isinstance(adapter_for("llava", model, demo.processor), type(pipe.adapter))
    return pipe


def per_view_seconds(pipe, images: list[Image.Image], repeats: int) -> float:
    times = []
    pipe.calibration()
    for _ in range(repeats):
        pipe.clear_caches()
        start = time.perf_counter()
        feats = pipe.encode(images)
        times.append((time.perf_counter() - start) / feats.num_views)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", type=int, default=4, help="photos encoded together")
    args = parser.parse_args(argv)
    from prunesid_vlm.pipeline import DEMO_MODEL_ID, DINOV2_DEMO_ID, load_pipeline

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8)) for _ in range(args.views)]
    rows = [("offline demo, tiny random LLaVA-1.5", load_pipeline(DEMO_MODEL_ID, device="cpu")),
            ("offline demo, real DINOv2-small", load_pipeline(DINOV2_DEMO_ID, device="cpu")),
            ("LLaVA-1.5 tower alone (CLIP-L/336), float32", clip_l_336_pipeline(torch.float32)),
            ("LLaVA-1.5 tower alone (CLIP-L/336), bfloat16", clip_l_336_pipeline(torch.bfloat16))]
    results = [(name, per_view_seconds(pipe, images, args.repeats)) for name, pipe in rows]
    reference = results[1][1]
    print(f"Seconds per tower view (median of {args.repeats}, {args.views} photos at a time; CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__})")
    for name, seconds in results:
        print(f"  {name:<48}{seconds:8.3f} s  ({seconds / reference:5.1f}x the DINOv2 demo)")


if __name__ == "__main__":
    main()
