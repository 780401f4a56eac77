"""Prefill time and FLOPs of PruneSID alone, FastV alone and PruneSID + FastV / PyramidDrop on
LLaVA-1.5-7B's language model widths.

    python -m benchmarks.inllm_prefill                  # CPU: 4 decoder layers, float32
    python -m benchmarks.inllm_prefill --layers 32      # GPU: the published depth

Model: Vicuna-7B's published widths (hidden 4096, MLP 11008, 32 heads, vocabulary 32064) under a
CLIP-L/336 tower (2 layers: the tower is not what is timed), random weights, saved and loaded through
the app's ``load_pipeline`` (nothing is downloaded). The photo ``assets/cat.jpg`` gives 576 patches.

Two measurements, side by side in one run:

1. **Direct**: :func:`prunesid_vlm.combination.combination_study` on this model — every variant's
   prefill through the same per-layer loop, medians of ``--repeats`` passes in one rotating order;
   stages at the published layers scaled to ``--layers`` (FastV after 2; PyramidDrop after ¼, ½, ¾).
2. **Composed at 32 layers** (the published depth, which a CPU cannot hold at these widths): one
   real-width decoder layer is timed at every sequence length the 32-layer schedules need (median
   of ``--repeats``), and each variant's prefill is the sum over its layers — FastV after layer 2,
   PyramidDrop after 8/16/24, as published. Beside it, the FLOPs estimate of the same schedule.

Fidelity numbers from random weights mean nothing and are not printed here; see the README.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VICUNA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
PUBLISHED_LAYERS = 32


def save_replica(folder: Path, layers: int, dtype: torch.dtype) -> Path:
    import transformers
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig

    from prunesid_vlm.demo_model import LLAVA15_CHAT_TEMPLATE, demo_tokenizer

    tok = demo_tokenizer()
    text = LlamaConfig(vocab_size=32064, num_hidden_layers=layers, max_position_embeddings=4096, bos_token_id=1,
                       eos_token_id=2, pad_token_id=tok.pad_token_id, **VICUNA_7B)
    vision = CLIPVisionConfig(num_hidden_layers=2, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(
        "<image>"), vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlavaForConditionalGeneration(config).to(dtype).eval()
    model.save_pretrained(folder)
    transformers.LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA15_CHAT_TEMPLATE).save_pretrained(folder)
    return folder


def layer_seconds(pipe, lengths: set[int], repeats: int) -> dict[int, float]:
    """Median seconds of one decoder layer of ``pipe``'s language model at each sequence length."""
    from prunesid_vlm.generation import synchronize

    lm = pipe.model.model.language_model
    layer, device = lm.layers[0], pipe.model.device
    out = {}
    with torch.inference_mode():
        for n in sorted(lengths):
            hidden = torch.randn(1, n, lm.config.hidden_size, dtype=pipe.model.dtype, device=device)
            embeddings = lm.rotary_emb(hidden, torch.arange(n, device=device)[None])
            layer(hidden, position_embeddings=embeddings)  # warm-up at this shape
            times = []
            for _ in range(repeats):
                synchronize(device)
                start = time.perf_counter()
                layer(hidden, position_embeddings=embeddings)
                synchronize(device)
                times.append(time.perf_counter() - start)
            out[n] = statistics.median(times)
    return out


def composed(pipe, study, repeats: int) -> list[tuple[str, float, float]]:
    """``(variant, time vs none, FLOPs vs none)`` at the published depth, from one layer's timings."""
    from prunesid_vlm.combination import STAGE_KEEP
    from prunesid_vlm.inllm import InLLMSchedule, prefill_flops

    full_image = study.full.image_tokens_per_layer[0]
    text = study.full.tokens_per_layer[0] - full_image
    schedules = {"prunesid": InLLMSchedule(), "prunesid+fastv": InLLMSchedule.fastv(2, STAGE_KEEP),
                 "prunesid+pyramiddrop": InLLMSchedule.pyramiddrop((8, 16, 24), STAGE_KEEP)}
    plans = [("No pruning", [full_image + text] * PUBLISHED_LAYERS)]
    for run in study.runs:
        entering = run.image_tokens_per_layer[0]
        if run.kind == "fastv":
            kept = run.image_tokens_per_layer[-1]
            counts = InLLMSchedule.fastv(2, kept / full_image).image_tokens_per_layer(full_image, PUBLISHED_LAYERS)
        else:
            counts = schedules[run.kind].image_tokens_per_layer(entering, PUBLISHED_LAYERS)
        plans.append((run.label, [text + c for c in counts]))
    seconds = layer_seconds(pipe, {n for _, lengths in plans for n in lengths}, repeats)
    config = pipe.model.model.language_model.config
    full_s, full_flops = sum(seconds[n] for n in plans[0][1]), prefill_flops(plans[0][1], config)
    return [(label, sum(seconds[n] for n in lengths) / full_s, prefill_flops(lengths, config) / full_flops)
            for label, lengths in plans]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--budgets", default="192,64,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    args = parser.parse_args(argv)
    from PIL import Image

    from prunesid_vlm.combination import combination_study
    from prunesid_vlm.pipeline import load_pipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    torch.set_num_threads(torch.get_num_threads())
    image = Image.open(ROOT / "assets" / "cat.jpg").convert("RGB")
    budgets = [int(b) for b in args.budgets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(str(save_replica(Path(tmp) / "llava-7b-widths", args.layers, dtype)), device=device,
                             dtype=dtype)
        print(f"LLaVA-1.5-7B widths, {args.layers} decoder layers, {dtype}, {device}, "
              f"{torch.get_num_threads()} threads; medians of {args.repeats}")
        study = combination_study(pipe, [image], "Describe the picture in one sentence.", budgets,
                                  repeats=args.repeats)
        print(f"\n1. Direct, {args.layers} layers (stages scaled to the depth)")
        print(f"{'variant':30} {'schedule (image tokens per layer)':40} {'compr.':>7} {'FLOPs':>6} {'time':>6} {'ms':>9}")
        for r in study.rows():
            counts = r["image_tokens_per_layer"]
            print(f"{r['variant']:30} {' '.join(map(str, counts)):40} {r['compression']:6.1f}x "
                  f"{r['flops_vs_full']:6.3f} {r['time_vs_full']:6.3f} {r['prefill_ms']:9.1f}")
        print(f"\n2. Composed at {PUBLISHED_LAYERS} layers (one real-width layer timed per length; FastV after 2, "
              "PyramidDrop after 8/16/24)")
        print(f"{'variant':30} {'time':>6} {'FLOPs':>6}")
        for label, time_ratio, flops_ratio in composed(pipe, study, args.repeats):
            print(f"{label:30} {time_ratio:6.3f} {flops_ratio:6.3f}")


if __name__ == "__main__":
    main()
