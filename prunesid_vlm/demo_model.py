"""Tiny random-weight LLaVA models, built offline and saved like a hub checkpoint.

Same architectures as the real ones (CLIP tower at 336 px / patch 14, so 24×24 = 576
patches + CLS per view; Llama language model), only narrow and shallow, so every test
and the app's fallback run in seconds on a CPU. They are written once to a cache folder
and then loaded through the ordinary ``from_pretrained`` path, like a real model.
No tokenizer file ships offline, so the tokenizer is a character vocabulary with byte
fallback: it encodes any text.
"""
from __future__ import annotations

import os
import string
from pathlib import Path

import torch

from .built_folder import build_once

DEMO_SEED = 0
"""Weights are drawn from this seed inside ``fork_rng``: identical on every machine, and
the caller's global RNG is left untouched."""

LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""The text of llava-hf's ``chat_template.json`` (renders ``USER: <image>\\nWhat? ASSISTANT:``)."""

_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
               image_size=336, patch_size=14)  # 24×24 grid like CLIP-L/336; depth ≥ 3 so layer −2 ≠ the last
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=4096)


def cache_root() -> Path:
    """``$PRUNESID_CACHE`` or ``~/.cache/prunesid-studio``."""
    return Path(os.environ.get("PRUNESID_CACHE") or Path.home() / ".cache" / "prunesid-studio")


def demo_model_path(family: str = "llava") -> Path:
    """Folder of the tiny demo checkpoint of ``family``, built on first use."""
    folder = cache_root() / f"tiny-{family.replace('_', '-')}-v2"
    return build_once(folder, lambda tmp: save_demo_model(family, tmp))


def demo_tokenizer():
    """A Llama tokenizer over characters with byte fallback, plus ``<pad>``, ``<image>``, ``<video>``."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in ["▁"] + list(string.ascii_letters + string.digits + string.punctuation):
        vocab.setdefault(ch, len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens(["<image>", "<video>"], special_tokens=True)
    return tok


def save_demo_model(family: str, folder: Path) -> None:
    """Build the tiny ``family`` model with random weights and save model + processor to ``folder``."""
    from transformers import CLIPVisionConfig

    tok = demo_tokenizer()
    vision = CLIPVisionConfig(**_VISION)
    text = demo_text_config(tok)
    image_id = tok.convert_tokens_to_ids("<image>")
    if family == "llava":
        model, processor = _llava(vision, text, tok, image_id)
    elif family == "llava_next":
        model, processor = _llava_next(vision, text, tok, image_id)
    elif family == "llava_next_video":
        model, processor = _llava_next_video(vision, text, tok, image_id)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        model, processor = _qwen(family)
    else:
        from .demos import demo_builder

        demo_builder(family)(folder)  # a family's own module under prunesid_vlm.demos
        return
    readable_answers(model, tok.pad_token_id)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def readable_answers(model, pad_token_id: int, *, bos_token_id: int | None = None,
                     eos_token_id: int | list[int] | None = None) -> None:
    """The generation settings every random demo shares: its special ids, and the 256 byte-fallback
    ids suppressed (random weights favour them, and they decode to "�")."""
    generation = model.generation_config
    generation.pad_token_id = pad_token_id
    if bos_token_id is not None:
        generation.bos_token_id = bos_token_id
    if eos_token_id is not None:
        generation.eos_token_id = eos_token_id
    generation.suppress_tokens = list(range(3, 3 + 256))


def demo_text_config(tok):
    """The tiny random Llama every demo checkpoint answers with (its answers mean nothing)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=1, eos_token_id=2, **_TEXT)


def seeded(build):
    """``build()`` with weights drawn from ``DEMO_SEED`` (the caller's RNG untouched), in eval mode."""
    return _seeded(build)


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        return build().eval()


def _llava(vision, text, tok, image_id):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, image_seq_length=576,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = _seeded(lambda: LlavaForConditionalGeneration(cfg))
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA15_CHAT_TEMPLATE)
    return model, processor


def _llava_next(vision, text, tok, image_id):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6 defaults
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                          image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                          vision_feature_select_strategy="default")
    model = _seeded(lambda: LlavaNextForConditionalGeneration(cfg))
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA15_CHAT_TEMPLATE)
    return model, processor


QWEN_DEMO_MAX_PIXELS = 512 * 28 * 28
"""The Qwen demos see an image at up to 512 merged tokens (the real checkpoints' processors allow more)."""


def qwen_demo_tokenizer():
    """The demo tokenizer with Qwen's chat and vision tokens and chat template, and the ids of
    ``vision_start``, ``vision_end``, ``image_pad`` and ``video_pad``."""
    from .qwen_processing import QWEN_CHAT_TEMPLATE

    tok = demo_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                    "<|video_pad|>"], special_tokens=True)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {name: tok.convert_tokens_to_ids(f"<|{name}|>") for name in ("vision_start", "vision_end", "image_pad",
                                                                        "video_pad")}
    return tok, ids


def _qwen(family: str):
    """A tiny Qwen2-VL / Qwen2.5-VL (2 vision blocks, 2 decoder layers, M-RoPE sections 2/3/3)."""
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    from .qwen_processing import QwenProcessor

    tok, ids = qwen_demo_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]})
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, **common)
        config_class, model_class = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=2, window_size=112,
                      fullatt_block_indexes=[1], tokens_per_second=2, **common)
        config_class, model_class = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    cfg = config_class(vision_config=vision, text_config=text, image_token_id=ids["image_pad"],
                       video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
                       vision_end_token_id=ids["vision_end"], bos_token_id=1, eos_token_id=2,
                       pad_token_id=tok.pad_token_id)
    model = _seeded(lambda: model_class(cfg))
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=QWEN_DEMO_MAX_PIXELS)
    return model, QwenProcessor(tok, image_processor)


def _llava_next_video(vision, text, tok, image_id):
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    # Video processors need torchvision; the folder holds the tokenizer only and frames are
    # preprocessed with the CLIP image processor (see loading.frame_processor).
    cfg = LlavaNextVideoConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                               video_token_index=tok.convert_tokens_to_ids("<video>"), spatial_pool_mode="average",
                               spatial_pool_stride=2, vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = _seeded(lambda: LlavaNextVideoForConditionalGeneration(cfg))
    return model, tok
