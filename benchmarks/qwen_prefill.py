"""Prefill time with all vs PruneSID's merged tokens on Qwen2.5-VL at the real 7B widths.

    python -m benchmarks.qwen_prefill                 # CPU: 4 decoder layers, float32
    python -m benchmarks.qwen_prefill --layers 28     # GPU: full depth

Model: Qwen2.5-VL-7B-Instruct's published widths (text: hidden 3584, MLP 18944, 28 heads, 4 KV heads,
vocabulary 152064, M-RoPE sections 16/24/24; vision: width 1280, MLP 3420, 16 heads, merger to
3584) with ``--layers`` decoder layers and 2 vision blocks (the tower is not what is timed), random
weights, saved as a checkpoint and loaded through the app's ``load_pipeline`` (nothing is
downloaded). A 644 × 644 photo gives 23 × 23 = 529 merged tokens; K = 64 / 128 / 192 (per 576,
the reference's ``need_token_num``) keeps K′ = 59 / 118 / 176 of them.

Each row is ``Pipeline.compare``'s prefill medians (one untimed warm-up, then 3 prefill-only
passes per prompt, full and pruned alternating) beside the token-count bound (full / pruned
prompt length).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def save_replica(folder: Path, layers: int, dtype: torch.dtype) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from prunesid_vlm.demo_model import demo_tokenizer
    from prunesid_vlm.qwen_processing import QWEN_CHAT_TEMPLATE, QwenProcessor

    tok = demo_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                    "<|video_pad|>"], special_tokens=True)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {n: tok.convert_tokens_to_ids(f"<|{n}|>") for n in ("vision_start", "vision_end", "image_pad", "video_pad")}
    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, bos_token_id=1,
                eos_token_id=2, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    vision = dict(depth=2, hidden_size=1280, out_hidden_size=3584, intermediate_size=3420, num_heads=16, window_size=112,
                  fullatt_block_indexes=[1], tokens_per_second=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=ids["image_pad"],
                              video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
                              vision_end_token_id=ids["vision_end"], bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    model.save_pretrained(folder)
    QwenProcessor(tok, Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 192])
    args = parser.parse_args(argv)
    from prunesid_vlm.calibration import calibration_images
    from prunesid_vlm.pipeline import load_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    photo = calibration_images()[0].convert("RGB").resize((644, 644))
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(str(save_replica(Path(tmp), args.layers, dtype)), device=device, dtype=dtype)
        feats = pipe.encode([photo])
        print(f"Qwen2.5-VL-7B widths, {args.layers} decoder layers, {device} {str(dtype).removeprefix('torch.')}; "
              f"{feats.num_patches} merged tokens ({feats.grid[0]} x {feats.grid[1]})")
        print(f"  {'K':>4}{'kept':>6}{'prompt':>14}{'full ms':>10}{'pruned ms':>11}{'speed-up':>10}{'bound':>8}")
        for k in args.budgets:
            result = pipe.compare([photo], "What is in the picture?", k, max_new_tokens=1)
            full, pruned = result.timings["full"]["prefill_s"], result.timings["pruned"]["prefill_s"]
            prompt = f"{result.prompt_tokens['full']}→{result.prompt_tokens['pruned']}"
            print(f"  {k:>4}{result.visual_tokens_pruned:>6}{prompt:>14}{1000 * full:>10.0f}{1000 * pruned:>11.0f}"
                  f"{result.prefill_speedup:>9.2f}x{result.prefill_bound:>7.2f}x")


if __name__ == "__main__":
    main()
