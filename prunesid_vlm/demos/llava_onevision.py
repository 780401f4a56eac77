"""Tiny random LLaVA-OneVision: a SigLIP tower at 384 px / patch 14 (27 × 27 tokens per view, no
CLS), the checkpoints' AnyRes resolutions, a 2-layer Qwen2 language model. Built from a config,
saved like a hub checkpoint; its answers mean nothing."""
from __future__ import annotations

from pathlib import Path


def build(folder: Path) -> None:
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, Qwen2Config, SiglipVisionConfig)

    from ..backends.llava_onevision import ONEVISION_CHAT_TEMPLATE, OnevisionPrompts
    from ..demo_model import demo_tokenizer, seeded

    tok = demo_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    image_processor = LlavaOnevisionImageProcessorPil()  # the checkpoints' 384 px and resolutions
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=384, patch_size=14, vision_use_head=False)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384, bos_token_id=1,
                       eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                                  image_token_id=tok.convert_tokens_to_ids("<image>"),
                                  video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                  image_grid_pinpoints=[list(p) for p in image_processor.image_grid_pinpoints])
    model = seeded(lambda: LlavaOnevisionForConditionalGeneration(config))
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = [2, tok.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.suppress_tokens = list(range(3, 3 + 256))  # byte tokens decode to "�"
    model.save_pretrained(folder)
    OnevisionPrompts(tok, image_processor, ONEVISION_CHAT_TEMPLATE).save_pretrained(folder)
