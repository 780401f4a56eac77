"""The small checkpoints the picker lists (issue 14, item 2), each as a replica of its published
config (real widths, one language-model layer, three tower layers, random weights), loaded
through the same ``from_pretrained`` path as the real one, and answering with PruneSID's tokens."""
from __future__ import annotations

import pytest

from prunesid_vlm.pipeline import ModelLoadError, list_models, load_pipeline
from tests.conftest import make_image
from tests.replicas import TEXT_MODELS, save_replica


@pytest.mark.parametrize("checkpoint", sorted(TEXT_MODELS))
def test_each_small_checkpoint_answers_with_prunesids_tokens(checkpoint, tmp_path, demo_cache):
    assert checkpoint in {s.model_id for s in list_models()}  # offered in the picker
    folder = save_replica(tmp_path / checkpoint.replace("/", "--"), text=TEXT_MODELS[checkpoint], max_shard_size="4GB")
    pipe = load_pipeline(str(folder), device="cpu")
    assert pipe.family == "llava" and pipe.answers == "real"
    image = make_image(4)
    result = pipe.compare([image], "What is in the picture?", 64, max_new_tokens=2)
    assert result.visual_tokens_full == 576 and result.visual_tokens_pruned == 64
    assert len(result.pruned_tokens) >= 1 and result.fidelity >= 0
    # The full path is the model's own: the same first token as transformers' generate.
    inputs = pipe.prompt_inputs([image], "What is in the picture?")
    plain = pipe.model.generate(**inputs, do_sample=False, max_new_tokens=1)
    assert result.full_tokens[0] == int(plain[0, -1])


def test_a_tower_without_a_cls_token_is_refused_with_why(tmp_path):
    """A LLaVA-1.5-layout checkpoint with a SigLIP tower (llava-interleave-qwen-0.5b) has no CLS token,
    whose attention is the LLaVA rule's importance: loading one says so. SigLIP models are listed
    only in the CLS-free families, whose backends run the CLS-free rule (LLaVA-OneVision, Gemma 3)."""
    from transformers import LlamaConfig, LlavaConfig, SiglipVisionConfig

    config = LlavaConfig(vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=2, image_size=56, patch_size=14),
                         text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=100))
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="CLS token"):
        load_pipeline(str(tmp_path), device="cpu")
    from prunesid_vlm.families import FAMILIES

    siglip = [s for s in list_models() if "siglip" in s.description.lower()]
    assert siglip and all(FAMILIES[s.family].cls_free for s in siglip)


def test_sizes_are_listed_for_real_checkpoints():
    for spec in list_models():
        if not spec.is_demo and spec.answers != "none":
            assert spec.size.endswith(" B"), spec.model_id


def test_cdpruner_on_a_real_width_replica(tmp_path, demo_cache):
    """CLIP-L/336 widths with a CLIP-L-width text side (random weights, as offline tests must be):
    the relevance has one value per patch and CDPruner's kept set follows the question."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from prunesid_vlm.pipeline import select
    from prunesid_vlm.relevance import TextSide

    folder = save_replica(tmp_path / "llava-1.5", text=TEXT_MODELS["bczhou/tiny-llava-v1-hf"], max_shard_size="4GB")
    pipe = load_pipeline(str(folder), device="cpu")
    tok = pipe.processor.tokenizer
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    pipe._text_side = TextSide(CLIPTextModelWithProjection(config).eval(), torch.nn.Linear(1024, 768, bias=False),
                               tok, "a CLIP-L-width random text side")
    feats = pipe.encode([make_image(9)])
    relevance = pipe.instruction_relevance(feats, "Where is the red square?")
    assert relevance.shape == (1, 576) and torch.isfinite(relevance).all()
    kept = [select(feats, 64, method="cdpruner", options=pipe.method_options(feats, ["cdpruner"], question=q))
            for q in ("Where is the red square?", "What colour is the sky?")]
    assert not torch.equal(kept[0].kept_patches, kept[1].kept_patches)
    assert all(int(k.num_tokens[0]) == 64 for k in kept)
