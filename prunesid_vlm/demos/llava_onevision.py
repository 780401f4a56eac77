"""Tiny random LLaVA-OneVision: a SigLIP tower at 384 px / patch 14 (27 × 27 tokens per view, no
CLS), the checkpoints' AnyRes resolutions, a 2-layer Qwen2 language model. Built from a config,
saved like a hub checkpoint; its answers mean nothing."""
from __future__ import annotations

from pathlib import Path

DEMO_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
DEMO_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)


def save_onevision(folder: Path, vision: dict, text: dict, max_shard_size: str = "5GB") -> None:
    """A random OneVision with these SigLIP and Qwen2 widths (384 px, patch 14, the checkpoints'
    resolutions and feature settings), weights from the demos' seed, saved with its processor files."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, Qwen2Config, SiglipVisionConfig)

    from ..backends.llava_onevision import ONEVISION_CHAT_TEMPLATE, OnevisionPrompts
    from ..demo_model import demo_tokenizer, readable_answers, seeded

    tok = demo_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    image_processor = LlavaOnevisionImageProcessorPil()  # the checkpoints' 384 px and resolutions
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(image_size=384, patch_size=14, vision_use_head=False, **vision),
        text_config=Qwen2Config(vocab_size=len(tok), max_position_embeddings=32768, bos_token_id=1, eos_token_id=end,
                                pad_token_id=tok.pad_token_id, **text),
        image_token_id=tok.convert_tokens_to_ids("<image>"), video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[list(p) for p in image_processor.image_grid_pinpoints])
    model = seeded(lambda: LlavaOnevisionForConditionalGeneration(config))
    readable_answers(model, tok.pad_token_id, bos_token_id=1, eos_token_id=[2, end])
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    OnevisionPrompts(tok, image_processor, ONEVISION_CHAT_TEMPLATE).save_pretrained(folder)


def build(folder: Path) -> None:
    save_onevision(folder, DEMO_VISION, DEMO_TEXT)
