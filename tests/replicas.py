"""Replicas of published checkpoints for tests: the real configs' widths (vision tower, language
model, projector), fewer layers, random weights, the offline demo tokenizer (its small vocabulary
stands in for the real one), saved like a hub checkpoint (sharded, with an index) so that the
same ``from_pretrained`` path loads them.

Configs, from the checkpoints' published ``config.json`` files:

* CLIP ViT-L/14-336 (LLaVA-1.5, LLaVA-NeXT, TinyLLaVA, llava-gemma, llava-phi-3): width 1024,
  16 heads, MLP 4096, patch 14, 336 px; 24 layers (here 3), layer −2 read.
* ``bczhou/tiny-llava-v1-hf``: TinyLlama-1.1B, width 2048, MLP 5632, 32 heads, 4 KV heads (22 layers).
* ``Intel/llava-gemma-2b``: Gemma-2B, width 2048, MLP 16384, 8 heads of 256, 1 KV head (18 layers).
* ``xtuner/llava-phi-3-mini-hf``: Phi-3-mini in Llama layout, width 3072, MLP 8192, 32 heads (32 layers).
* ``llava-hf/llava-v1.6-vicuna-7b-hf``: the AnyRes grid pinpoints [[336, 672], [672, 336], [672, 672],
  [1008, 336], [336, 1008]].
"""
from __future__ import annotations

from pathlib import Path

import torch

CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, image_size=336, patch_size=14,
                  projection_dim=768)
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
TEXT_MODELS = {
    "bczhou/tiny-llava-v1-hf": ("llama", dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                                              num_key_value_heads=4)),
    "Intel/llava-gemma-2b": ("gemma", dict(hidden_size=2048, intermediate_size=16384, num_attention_heads=8,
                                           num_key_value_heads=1, head_dim=256)),
    "xtuner/llava-phi-3-mini-hf": ("llama", dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
                                                 num_key_value_heads=32)),
}
VISION_LAYERS = 3
TEXT_LAYERS = 1


def _text_config(kind: str, widths: dict, tok, layers: int = TEXT_LAYERS):
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Phi3Config

    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=1, eos_token_id=2,
                  num_hidden_layers=layers, max_position_embeddings=4096, **widths)
    kinds = {"gemma": GemmaConfig, "llama": LlamaConfig, "mistral": MistralConfig, "phi3": Phi3Config}
    return kinds[kind](**common)


def save_replica(folder: Path, family: str = "llava", text: tuple[str, dict] | None = None, seed: int = 0,
                 max_shard_size: str = "50MB", tower_state: dict | None = None, text_layers: int = TEXT_LAYERS) -> Path:
    """A ``family`` checkpoint with CLIP-L/336 widths in ``folder`` (model, image processor, tokenizer);
    ``text`` (kind, widths) with ``text_layers`` decoder layers, else the demo's language model."""
    import transformers
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaNextImageProcessorPil

    from prunesid_vlm.demo_model import LLAVA15_CHAT_TEMPLATE, demo_text_config, demo_tokenizer

    tok = demo_tokenizer()
    vision = CLIPVisionConfig(num_hidden_layers=VISION_LAYERS, **CLIP_L_336)
    text_config = demo_text_config(tok) if text is None else _text_config(*text, tok, text_layers)
    image_id = tok.convert_tokens_to_ids("<image>")
    common = dict(vision_config=vision, text_config=text_config, image_token_index=image_id, vision_feature_layer=-2,
                  vision_feature_select_strategy="default")
    if family == "llava":
        config = transformers.LlavaConfig(image_seq_length=576, **common)
        model_class, processor_class = transformers.LlavaForConditionalGeneration, transformers.LlavaProcessor
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    else:
        config = transformers.LlavaNextConfig(image_grid_pinpoints=PINPOINTS, **common)
        model_class, processor_class = transformers.LlavaNextForConditionalGeneration, transformers.LlavaNextProcessor
        image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                     image_grid_pinpoints=PINPOINTS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    if tower_state is not None:
        model.model.vision_tower.load_state_dict(tower_state)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    processor_class(image_processor=image_processor, tokenizer=tok, patch_size=14,
                    vision_feature_select_strategy="default", num_additional_image_tokens=1,
                    chat_template=LLAVA15_CHAT_TEMPLATE).save_pretrained(folder)
    return folder


def save_clip_replica(folder: Path, seed: int = 1) -> Path:
    """A CLIP ViT-L/14-336 checkpoint (both towers, as ``openai/clip-vit-large-patch14-336`` holds
    them) with 3 vision layers and a 1-layer text tower."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(vision_config=dict(num_hidden_layers=VISION_LAYERS, **CLIP_L_336),
                        text_config=dict(num_hidden_layers=1, hidden_size=64, intermediate_size=128,
                                         num_attention_heads=2), projection_dim=768)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPModel(config).eval().save_pretrained(folder)
    return folder


QWEN_CONFIGS = {
    # Published configs (Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct); depth reduced.
    "Qwen/Qwen2-VL-2B-Instruct": ("qwen2_vl", dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
                                                   num_key_value_heads=2),
                                  dict(embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)),
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", dict(hidden_size=2048, intermediate_size=11008, num_attention_heads=16,
                                                       num_key_value_heads=2),
                                    dict(hidden_size=1280, out_hidden_size=2048, intermediate_size=3420, num_heads=16,
                                         window_size=112, fullatt_block_indexes=[1], tokens_per_second=2)),
}


def save_qwen_replica(folder: Path, checkpoint: str, seed: int = 0, text_layers: int = TEXT_LAYERS) -> Path:
    """A replica of a Qwen checkpoint: its widths, ``text_layers`` decoder layers, 2 vision blocks, M-RoPE 16/24/24."""
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from prunesid_vlm.demo_model import demo_tokenizer
    from prunesid_vlm.qwen_processing import QWEN_CHAT_TEMPLATE, QwenProcessor

    family, text, vision = QWEN_CONFIGS[checkpoint]
    tok = demo_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                    "<|video_pad|>"], special_tokens=True)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {n: tok.convert_tokens_to_ids(f"<|{n}|>") for n in ("vision_start", "vision_end", "image_pad", "video_pad")}
    text = dict(text, vocab_size=len(tok), num_hidden_layers=text_layers, max_position_embeddings=32768, bos_token_id=1,
                eos_token_id=2, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    vision = dict(vision, depth=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config_class, model_class = ((transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration)
                                 if family == "qwen2_vl" else
                                 (transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration))
    config = config_class(vision_config=vision, text_config=text, image_token_id=ids["image_pad"],
                          video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
                          vision_end_token_id=ids["vision_end"], bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.save_pretrained(folder)
    QwenProcessor(tok, Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)).save_pretrained(folder)
    return folder
