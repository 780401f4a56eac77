"""The offline InternVL3 demo: ``InternVLForConditionalGeneration`` at tiny widths, random weights.

The real geometry (448 px tiles, 14 px patches: 32 × 32 patches + CLS, the CLS dropped, a 0.5
pixel shuffle to 16 × 16 = 256 tokens per tile, then the MLP projector) with a 2-layer InternViT
of width 32 and a 2-layer Qwen2 decoder of width 64; at most :data:`DEMO_MAX_PATCHES` tiles (plus
the thumbnail) per picture so that CPU runs stay fast. The tokenizer is the demos' character
vocabulary plus ChatML's and InternVL's image tokens, named as InternVL's tokenizer names them.
"""
from __future__ import annotations

from pathlib import Path

DEMO_MAX_PATCHES = 6
"""Tiles per picture in the demo (the real processors allow 12)."""

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=448,
              patch_size=14, attention_bias=True, norm_type="layer_norm", layer_scale_init_value=0.1)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def internvl_tokenizer():
    """The demos' tokenizer with ``<|im_start|>``, ``<|im_end|>``, ``<img>``, ``</img>`` and
    ``<IMG_CONTEXT>``, named ``start_image_token`` … as in InternVL3's ``tokenizer_config.json``."""
    from ..backends.internvl import CONTEXT_IMAGE, END_IMAGE, INTERNVL_CHAT_TEMPLATE, START_IMAGE, VIDEO
    from ..demo_model import demo_tokenizer

    tok = demo_tokenizer()
    tok.add_tokens(["<|im_start|>", "<|im_end|>", START_IMAGE, END_IMAGE, CONTEXT_IMAGE], special_tokens=True)
    tok._set_model_specific_special_tokens({"start_image_token": START_IMAGE, "end_image_token": END_IMAGE,
                                            "context_image_token": CONTEXT_IMAGE, "video_token": VIDEO})
    tok.chat_template = INTERNVL_CHAT_TEMPLATE
    return tok


def build_model(tok, vision: dict, text: dict, max_patches: int = DEMO_MAX_PATCHES):
    """A random-weight InternVL3 (seeded) and its processor at the given widths, around ``tok``."""
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    from ..backends.internvl import CONTEXT_IMAGE, InternVLPrompts
    from ..demo_model import readable_answers, seeded

    image_id, im_end = tok.convert_tokens_to_ids(CONTEXT_IMAGE), tok.convert_tokens_to_ids("<|im_end|>")
    text_config = dict(model_type="qwen2", vocab_size=len(tok), bos_token_id=1, eos_token_id=im_end,
                       pad_token_id=tok.pad_token_id, **text)
    ratio = 0.5
    seq = (vision["image_size"] // vision["patch_size"] * ratio) ** 2  # tokens per tile after the pixel shuffle
    cfg = InternVLConfig(vision_config=dict(vision), text_config=text_config, image_token_id=image_id,
                         image_seq_length=int(seq), downsample_ratio=ratio, projector_hidden_act="gelu",
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = seeded(lambda: InternVLForConditionalGeneration(cfg))
    readable_answers(model, tok.pad_token_id, bos_token_id=1, eos_token_id=[im_end, 2])
    side = cfg.vision_config.image_size[0]
    image_processor = GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_patches)
    return model, InternVLPrompts(tok, image_processor)


def build(folder: Path) -> None:
    """Save the tiny InternVL3 and its tokenizer, image processor and chat template to ``folder``."""
    model, processor = build_model(internvl_tokenizer(), VISION, TEXT)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
