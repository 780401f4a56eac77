"""Tiny random Qwen3-VL: 16 px patches merged 2 × 2, DeepStack from two vision blocks, M-RoPE
sections 2/3/3 (interleaved, as the real models), 2 decoder layers. Built from a config, saved
like a hub checkpoint; its answers mean nothing."""
from __future__ import annotations

from pathlib import Path

DEMO_MAX_PIXELS = 512 * 32 * 32
"""Up to 512 merged tokens per picture (the real checkpoints' processors allow more)."""


def build(folder: Path) -> None:
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from ..demo_model import demo_tokenizer, seeded
    from ..qwen_processing import QWEN_CHAT_TEMPLATE, QwenProcessor

    tok = demo_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                    "<|video_pad|>"], special_tokens=True)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {name: tok.convert_tokens_to_ids(f"<|{name}|>") for name in ("vision_start", "vision_end", "image_pad",
                                                                        "video_pad")}
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[0, 1])
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True})
    config = Qwen3VLConfig(vision_config=vision, text_config=text, image_token_id=ids["image_pad"],
                           video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
                           vision_end_token_id=ids["vision_end"])
    model = seeded(lambda: Qwen3VLForConditionalGeneration(config))
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.suppress_tokens = list(range(3, 3 + 256))  # byte tokens decode to "�"
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               min_pixels=64 * 64, max_pixels=DEMO_MAX_PIXELS,
                                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    model.save_pretrained(folder)
    QwenProcessor(tok, image_processor).save_pretrained(folder)
