"""Tiny random Qwen3-VL: 16 px patches merged 2 × 2, DeepStack from two vision blocks, M-RoPE
sections 2/3/3 (interleaved, as the real models), 2 decoder layers. Built from a config, saved
like a hub checkpoint; its answers mean nothing."""
from __future__ import annotations

from pathlib import Path

DEMO_MAX_PIXELS = 512 * 32 * 32
"""Up to 512 merged tokens per picture (the real checkpoints' processors allow more)."""
DEMO_VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                   deepstack_visual_indexes=[0, 1])
DEMO_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
DEMO_MROPE = [2, 3, 3]


def save_qwen3_vl(folder: Path, vision: dict, text: dict, mrope_section: list[int], max_pixels: int,
                  max_shard_size: str = "5GB") -> None:
    """A random Qwen3-VL with these widths (patch 16, merge 2, temporal patch 2, interleaved M-RoPE),
    weights from the demos' seed, saved with its tokenizer and image processor."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from ..demo_model import qwen_demo_tokenizer, readable_answers, seeded
    from ..qwen_processing import QwenProcessor

    tok, ids = qwen_demo_tokenizer()
    config = Qwen3VLConfig(
        vision_config=dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, **vision),
        text_config=dict(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": mrope_section, "mrope_interleaved": True}, **text),
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"])
    model = seeded(lambda: Qwen3VLForConditionalGeneration(config))
    readable_answers(model, tok.pad_token_id, bos_token_id=1, eos_token_id=2)
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=64 * 64, max_pixels=max_pixels,
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    QwenProcessor(tok, image_processor).save_pretrained(folder)


def build(folder: Path) -> None:
    save_qwen3_vl(folder, DEMO_VISION, DEMO_TEXT, DEMO_MROPE, DEMO_MAX_PIXELS)
