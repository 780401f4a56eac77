"""Prefill time with all vs K visual tokens, on LLaVA at the real 7B widths (random weights).

    .venv/bin/python benchmarks/prefill.py                 # CPU: 4 LLM layers, fp32
    .venv/bin/python benchmarks/prefill.py --layers 32     # GPU: full depth, fp16/bf16

Model: CLIP ViT-L/14-336 tower (1024 wide, 24 layers) + Llama-7B text widths (hidden
4096, MLP 11008, 32 heads, vocab 32064) at ``--layers`` decoder layers; random weights,
built from configs (nothing is downloaded). Prompt: ``T`` text tokens + the visual tokens.

Pruned time = PruneSID selection + projector + prefill forward; full time = projector +
prefill forward (both one forward with ``use_cache=True, logits_to_keep=1``, as
``generate`` does). Each figure is the minimum of ``--repeats`` interleaved runs. The
bound is the token-count ratio (576 + T) / (K + T): what prefill would gain if its cost
were linear in the sequence length.

LLaVA-NeXT rows: 5 views (base + 4 crops) × 576 = 2880 tokens vs 5 × K (640/320/160),
selection run per view; the same language model (Vicuna-7B has these widths), newline
tokens left out of both counts as the paper does.

Also measured: the cost of the CLS-attention hooks against a plain tower pass, and
against switching the tower to eager attention with ``output_attentions``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from prunesid import select_tokens
from prunesid_vlm.features import encode_views
from prunesid_vlm.generation import synchronize


def build_model(layers: int, vision_layers: int, dtype: torch.dtype, device: torch.device):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers,
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        return LlavaForConditionalGeneration(config).to(dtype).eval()


def pixel_values(count: int) -> torch.Tensor:
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    photos = sorted((Path(__file__).resolve().parents[1] / "assets").glob("*.jpg"))  # the app's examples
    images = [Image.open(photos[i % len(photos)]).convert("RGB") for i in range(count)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@torch.inference_mode()
def prefill(model, hidden: torch.Tensor, cls: torch.Tensor, budget: int | None, text: int) -> None:
    """One prefill over ``text`` tokens + the visual tokens of ``hidden`` ``[V, 1+N, D]``
    (all patches when ``budget`` is None, else ``budget`` per view chosen by PruneSID)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    if budget is None:
        rows = hidden[:, 1:].flatten(0, 1)
    else:
        keep = select_tokens(hidden, cls, budget).keep  # [V, K]
        rows = hidden[torch.arange(hidden.shape[0])[:, None], keep].flatten(0, 1)
    features = model.model.multi_modal_projector(rows)
    ids = torch.full((1, text + rows.shape[0]), 100, device=hidden.device)
    ids[0, 5:5 + rows.shape[0]] = model.config.image_token_id  # 5 text tokens, the image, the rest of the text
    model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1,
          mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[features])})


def bench_prefill(model, hidden, cls, text, repeats, device):
    cases = [("LLaVA-1.5", 576, None, hidden[:1], cls[:1])]
    cases += [("LLaVA-1.5", 576, k, hidden[:1], cls[:1]) for k in (64, 128, 192)]
    cases += [("LLaVA-NeXT", 2880, None, hidden, cls)]
    cases += [("LLaVA-NeXT", 2880, k, hidden, cls) for k in (128, 64, 32)]
    best = [float("inf")] * len(cases)
    prefill(model, hidden[:1], cls[:1], 64, text)  # warm-up
    for _ in range(repeats):  # interleaved: a slow spell on a shared machine hits every case alike
        for i, (_, _, k, h, a) in enumerate(cases):
            best[i] = min(best[i], timed(lambda: prefill(model, h, a, k, text), device))
    print(f"\nPrefill, T = {text} text tokens, min of {repeats} interleaved runs")
    print(f"{'model':<11} {'visual':>6} {'seconds':>8} {'speed-up':>8} {'bound':>6} {'of bound':>8}")
    for (name, full, k, h, _), t in zip(cases, best):
        if k is None:
            base = t
            print(f"{name:<11} {full:>6} {t:>8.3f} {'1.00x':>8} {'':>6} {'':>8}")
            continue
        kept = k * h.shape[0]
        bound = (full + text) / (kept + text)
        print(f"{name:<11} {kept:>6} {t:>8.3f} {base / t:>7.2f}x {bound:>5.2f}x {100 * base / t / bound:>7.0f}%")
    sel = min(timed(lambda: select_tokens(hidden[:1], cls[:1], 64), device) for _ in range(3))
    print(f"(selection alone, K=64, one view: {sel:.3f} s; included above)")


@torch.inference_mode()
def bench_tower(model, pixels, repeats, device):
    tower = model.model.vision_tower
    def plain():
        return tower(pixels, output_hidden_states=[-2])

    def hooked():
        return encode_views(model, pixels)

    best = {"plain": float("inf"), "hooks": float("inf"), "eager": float("inf")}
    for _ in range(repeats):
        best["plain"] = min(best["plain"], timed(plain, device))
        best["hooks"] = min(best["hooks"], timed(hooked, device))
        model.set_attn_implementation({"vision_config": "eager"})
        try:
            best["eager"] = min(best["eager"], timed(lambda: tower(pixels, output_hidden_states=[-2],
                                                                   output_attentions=True), device))
        finally:
            model.set_attn_implementation({"vision_config": "sdpa"})
    print(f"\nVision tower, {len(tower.encoder.layers)} layers, 1 image, min of {repeats} interleaved runs")
    for name, label in (("plain", "sdpa, layer -2 states"), ("hooks", "sdpa + CLS q/k hooks (ours)"),
                        ("eager", "eager + output_attentions")):
        print(f"  {label:<30} {best[name]:.3f} s  ({100 * (best[name] / best['plain'] - 1):+.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--layers", type=int, default=32 if on_gpu else 4, help="LLM decoder layers")
    parser.add_argument("--vision-layers", type=int, default=24, help="CLIP tower layers (24 = ViT-L)")
    parser.add_argument("--dtype", default="fp16" if on_gpu else "fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--text-tokens", type=int, default=35, help="T: text tokens in the prompt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-tower", action="store_true", help="skip the hook-overhead measurement")
    args = parser.parse_args()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    print(f"device {device}, {torch.get_num_threads()} threads, {args.dtype}, {args.layers} LLM layers, "
          f"{args.vision_layers} tower layers, random weights at LLaVA-1.5-7B widths")
    model = build_model(args.layers, args.vision_layers, dtype, device)
    pixels = pixel_values(5).to(device, dtype)
    with torch.inference_mode():
        hidden, cls = encode_views(model, pixels)  # 5 views stand in for NeXT's base + 4 crops
    if not args.skip_tower:
        bench_tower(model, pixels[:1], args.repeats, device)
    bench_prefill(model, hidden, cls, args.text_tokens, args.repeats, device)


if __name__ == "__main__":
    main()
