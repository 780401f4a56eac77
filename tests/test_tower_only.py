"""Tower-only models (issue 14, item 1): a checkpoint's vision tower alone gives exactly the
selection the whole model makes, loads only the weight files that hold the tower, and says
plainly that it has no answers. Tested on replicas (real CLIP-L/336 widths, 3 layers)."""
from __future__ import annotations

import json

import pytest
import torch

from prunesid_vlm import tower_only
from prunesid_vlm.pipeline import NoAnswers, load_pipeline, select
from prunesid_vlm.registry import spec_for, tower_only_spec
from tests.conftest import make_image
from tests.replicas import save_clip_replica, save_replica


@pytest.fixture(scope="module")
def next_replica(tmp_path_factory):
    # A 1-layer language model of width 1024: its weights fill shards of their own, as a 7B's do.
    text = ("llama", dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=16))
    return save_replica(tmp_path_factory.mktemp("llava-next-replica"), family="llava_next", text=text,
                        max_shard_size="20MB")


def test_the_index_names_the_shards_that_hold_the_tower(next_replica):
    index = json.loads((next_replica / tower_only.INDEX_FILE).read_text())["weight_map"]
    everything = set(index.values())
    shards = tower_only.tower_shards(str(next_replica))
    assert set(shards) < everything  # some weight files hold no part of the tower
    assert all(any(tower_only.TOWER_KEY in k for k, f in index.items() if f == s) for s in shards)


def test_a_next_tower_alone_selects_what_the_whole_model_selects(next_replica, demo_cache, monkeypatch):
    fetched = []
    real_fetch = tower_only.fetch
    monkeypatch.setattr(tower_only, "fetch", lambda source, name: fetched.append(name) or real_fetch(source, name))
    tower = load_pipeline(f"tower/{next_replica}", device="cpu")
    full = load_pipeline(str(next_replica), device="cpu")
    needed = {tower_only.INDEX_FILE, *tower_only.tower_shards(str(next_replica))}
    assert set(fetched) <= needed  # only the index and the shards with tower weights are read
    image = make_image(3, 300, 500)
    ours, theirs = tower.encode([image]), full.encode([image])
    torch.testing.assert_close(ours.hidden_states, theirs.hidden_states)
    for k in (16, 64, 160):
        assert torch.equal(select(ours, k, mode="total").keep, select(theirs, k, mode="total").keep)
        assert torch.equal(select(ours, k, dynamic=True).keep, select(theirs, k, dynamic=True).keep)
    assert tower.answers == "none" and "no language model" in tower.meaning
    with pytest.raises(NoAnswers, match="vision tower alone"):
        tower.compare([image], "What is it?", 64)


def test_a_frozen_tower_comes_from_its_own_repository(tmp_path, demo_cache):
    """LLaVA-1.5 keeps openai's CLIP unchanged: tower-only reads that repository (here a replica)
    and selects exactly as the whole model."""
    from transformers import CLIPVisionModel

    clip = save_clip_replica(tmp_path / "clip")
    vision = CLIPVisionModel.from_pretrained(clip).state_dict()
    llava = save_replica(tmp_path / "llava-1.5", family="llava", tower_state=vision)
    spec = tower_only_spec(str(llava), "llava", "LLaVA-1.5 replica", tower_weights=str(clip))
    folder = tower_only.tower_only_path(spec, tmp_path / "cache")
    tower, full = load_pipeline(str(folder), device="cpu"), load_pipeline(str(llava), device="cpu")
    assert tower.answers == "none"  # known from the folder alone
    images = [make_image(s) for s in range(3)]
    assert torch.equal(select(tower.encode(images), 64).keep, select(full.encode(images), 64).keep)


def test_from_the_hub_only_the_tower_shards_are_downloaded(next_replica, monkeypatch):
    import huggingface_hub

    asked = []

    def hub_download(repo_id, filename, **_kwargs):
        asked.append(filename)
        return str(next_replica / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    state = tower_only.tower_state_dict("someone/llava-next-replica")
    assert asked[0] == tower_only.INDEX_FILE and set(asked[1:]) == set(tower_only.tower_shards(str(next_replica)))
    assert all(k.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")) for k in state), list(state)[:3]


def test_tower_ids_name_what_they_are():
    spec = spec_for("tower/llava-hf/llava-1.5-7b-hf")
    assert spec.answers == "none" and spec.tower_weights == "openai/clip-vit-large-patch14-336"
    assert "exactly those" in spec.meaning and "no answers" in spec.meaning
    other = spec_for("tower/some-org/some-llava")
    assert other.answers == "none" and other.model_id == "tower/some-org/some-llava"


def test_checkpoints_saved_by_transformers_4_are_read_too(tmp_path):
    """The llava-hf checkpoints on the hub were saved by transformers 4 (``vision_tower.vision_model.…``)."""
    from safetensors.torch import save_file

    save_file({"vision_tower.vision_model.embeddings.class_embedding": torch.ones(4),
               "language_model.model.norm.weight": torch.ones(4)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"language_model.lm_head.weight": torch.ones(2, 4)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    (tmp_path / tower_only.INDEX_FILE).write_text(json.dumps({"weight_map": {
        "vision_tower.vision_model.embeddings.class_embedding": "model-00001-of-00002.safetensors",
        "language_model.model.norm.weight": "model-00001-of-00002.safetensors",
        "language_model.lm_head.weight": "model-00002-of-00002.safetensors"}}))
    assert tower_only.tower_shards(str(tmp_path)) == ["model-00001-of-00002.safetensors"]
    assert list(tower_only.tower_state_dict(str(tmp_path))) == ["embeddings.class_embedding"]
