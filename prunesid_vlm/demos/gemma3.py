"""The offline demo of Gemma 3: a tiny random-weight ``Gemma3ForConditionalGeneration``.

Same architecture as google/gemma-3-4b-it, only narrow and shallow: a SigLIP tower without a
pooling head (448 px, patch 14: 32 × 32 patches) whose patches Gemma 3's projector average-pools
to ``mm_tokens_per_image`` = 256 tokens (16 × 16, a 2 × 2 kernel here, 4 × 4 on the real 896 px
tower), and a Gemma 3 decoder with one sliding-window layer and one global layer. The tokenizer
is the demos' character vocabulary plus Gemma's turn and image tokens, with Gemma 3's chat
template; the folder holds ``Gemma3Processor``'s files (its PIL image processor: no torchvision).
"""
from __future__ import annotations

from pathlib import Path

IMAGE_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}
"""Gemma 3's named image tokens: the prompt's ``<start_of_image>`` becomes
``\\n\\n<start_of_image>`` + one ``<image_soft_token>`` per visual token + ``<end_of_image>\\n\\n``."""
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
"""google/gemma-3-4b-it's chat template (renders
``<bos><start_of_turn>user\\n<start_of_image>What?<end_of_turn>\\n<start_of_turn>model\\n``)."""

DEMO_IMAGE_SIZE = 448
"""The demo tower's input side: 448 / 14 = 32 patches a side, pooled 2 × 2 to 16 × 16 tokens
(the real tower: 896 px, 64 patches a side, pooled 4 × 4), so a CPU encodes a picture quickly."""
DEMO_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   image_size=DEMO_IMAGE_SIZE, patch_size=14, vision_use_head=False)
DEMO_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=512,
                 layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096)


def gemma3_tokenizer(folder: Path):
    """The demos' character tokenizer with Gemma's turn tokens and named image tokens, saved to and
    reloaded from ``folder`` (the named tokens are set through ``from_pretrained``)."""
    from transformers import AutoTokenizer

    from ..demo_model import demo_tokenizer

    tok = demo_tokenizer()
    tok.add_tokens([*TURN_TOKENS, *IMAGE_TOKENS.values()], special_tokens=True)
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder, extra_special_tokens=IMAGE_TOKENS)


def gemma3_config(tok, vision: dict, text: dict, mm_tokens_per_image: int = 256):
    """A ``Gemma3Config`` whose token ids are ``tok``'s."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    text_config = Gemma3TextConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, **text)
    return Gemma3Config(vision_config=SiglipVisionConfig(**vision), text_config=text_config,
                        mm_tokens_per_image=mm_tokens_per_image, boi_token_index=tok.boi_token_id,
                        eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def save_gemma3(folder: Path, vision: dict, text: dict, mm_tokens_per_image: int = 256) -> None:
    """Build a random Gemma 3 (weights from the demos' seed) and save it with its processor to ``folder``."""
    from transformers import Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    from ..demo_model import readable_answers, seeded

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = gemma3_tokenizer(folder)
    tok.chat_template = GEMMA3_CHAT_TEMPLATE
    config = gemma3_config(tok, vision, text, mm_tokens_per_image)
    model = seeded(lambda: _with_random_projection(Gemma3ForConditionalGeneration(config)))
    end_of_turn = tok.convert_tokens_to_ids(TURN_TOKENS[1])
    # eos as the real one's: <eos> or <end_of_turn>
    readable_answers(model, tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, end_of_turn])
    side = int(vision["image_size"])
    image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA3_CHAT_TEMPLATE,
                                image_seq_length=mm_tokens_per_image)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _with_random_projection(model):
    """transformers initialises Gemma 3's image projection to zeros (a checkpoint overwrites it), which
    would hand the language model 256 identical zero tokens: draw it like the other random weights
    (inside ``seeded``, so from the demos' seed)."""
    import torch

    weight = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        weight.normal_(0.0, weight.shape[0] ** -0.5)
    return model


def build(folder: Path) -> None:
    """The tiny demo (see the module docstring), saved to ``folder``."""
    save_gemma3(folder, DEMO_VISION, DEMO_TEXT)
