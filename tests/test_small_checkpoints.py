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
    """SigLIP towers (llava-interleave-qwen-0.5b, llava-onevision-0.5b) have no CLS token, whose
    attention is PruneSID's importance: they are left out, and loading one says so."""
    from transformers import LlamaConfig, LlavaConfig, SiglipVisionConfig

    config = LlavaConfig(vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                          num_attention_heads=2, image_size=56, patch_size=14),
                         text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, vocab_size=100))
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="CLS token"):
        load_pipeline(str(tmp_path), device="cpu")
    assert not any("siglip" in s.description.lower() for s in list_models())


def test_sizes_are_listed_for_real_checkpoints():
    for spec in list_models():
        if not spec.is_demo and spec.answers != "none":
            assert spec.size.endswith(" B"), spec.model_id
