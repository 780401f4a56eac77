"""A checkpoint's vision tower alone: everything PruneSID's selection depends on, without the
language model, so that a CPU shows the tokens a 7B LLaVA would keep.

``tower/<checkpoint>`` is built once into the cache as an ordinary checkpoint of the same
family: the checkpoint's own config (vision tower, feature layer, AnyRes grid), its image
processor, its vision-tower weights, and a tiny random language model in place of the real one
(so the pipeline, the adapters and every view run unchanged); it is then loaded through the
usual ``from_pretrained`` path. The pipeline knows it has no answers (``answers="none"``).

Where the tower's weights come from:

* a separate repository when the checkpoint's tower was frozen in training (LLaVA-1.5 keeps
  ``openai/clip-vit-large-patch14-336`` unchanged, about 0.3 B of its parameters in one file);
* otherwise the checkpoint itself (LLaVA-NeXT fine-tunes its tower): its safetensors index says
  which shards hold ``vision_tower.*`` keys, and only those shards are fetched.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .built_folder import build_once
from .registry import TOWER_PREFIX, ModelSpec

TOWER_KEY = "vision_tower."
LEGACY_PREFIX = "vision_model."
"""transformers 4 wrapped CLIP's vision weights in ``vision_model``; transformers 5 does not."""
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def fetch(source: str, filename: str) -> Path:
    """``filename`` of ``source``: a local checkpoint folder, or a hub repository (downloaded to the
    Hugging Face cache, nothing else of the repository)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{filename} is not in {folder.name}")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename))
    except EntryNotFoundError as err:
        raise FileNotFoundError(f"{filename} is not in {source}") from err


def tower_shards(source: str) -> list[str]:
    """The weight files of ``source`` that hold its vision tower (from the safetensors index; the
    single weights file when there is no index)."""
    try:
        index = json.loads(fetch(source, INDEX_FILE).read_text())
    except FileNotFoundError:
        return [SINGLE_FILE]
    shards = sorted({file for key, file in index["weight_map"].items() if TOWER_KEY in key})
    if not shards:
        raise ValueError(f"the weights of {source} hold no {TOWER_KEY}* keys")
    return shards


def tower_state_dict(source: str) -> dict[str, torch.Tensor]:
    """The vision tower's weights from ``source``'s shards that hold them, keyed as the tower's own
    ``state_dict`` in transformers 5 (``embeddings.…``, ``encoder.…``): checkpoints saved by
    transformers 4 store them as ``vision_tower.vision_model.…``, by 5 as ``[model.]vision_tower.…``."""
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    for shard in tower_shards(source):
        with safe_open(str(fetch(source, shard)), framework="pt") as weights:
            for key in weights.keys():
                if TOWER_KEY in key:
                    state[_tower_key(key.split(TOWER_KEY, 1)[1])] = weights.get_tensor(key)
    return state


def _tower_key(key: str) -> str:
    return key[len(LEGACY_PREFIX):] if key.startswith(LEGACY_PREFIX) else key


def tower_from(weights: str) -> dict[str, torch.Tensor]:
    """The state dict of a separate tower repository (a CLIP model: its vision half)."""
    from transformers import CLIPVisionModel

    return {_tower_key(k): v for k, v in CLIPVisionModel.from_pretrained(weights).state_dict().items()}


def save_tower_only(spec: ModelSpec, folder: Path) -> None:
    """Write ``spec``'s tower-only checkpoint to ``folder``."""
    from transformers import AutoConfig, AutoImageProcessor

    from .demo_model import LLAVA15_CHAT_TEMPLATE, demo_text_config, demo_tokenizer, seeded
    from .families import FAMILIES, TOWERS_WITH_CLS, family_for_model_type

    checkpoint = spec.model_id[len(TOWER_PREFIX):]
    config = AutoConfig.from_pretrained(checkpoint)
    family = family_for_model_type(config.model_type)
    if family is None:
        raise ValueError(f"{checkpoint} is a {config.model_type!r} model, not one of this app's LLaVA families")
    if getattr(config.vision_config, "model_type", None) not in TOWERS_WITH_CLS:
        raise ValueError(f"{checkpoint}'s vision tower has no CLS token")
    tok = demo_tokenizer()
    config.text_config = demo_text_config(tok)
    config.image_token_index = tok.convert_tokens_to_ids("<image>")
    if hasattr(config, "video_token_index"):
        config.video_token_index = tok.convert_tokens_to_ids("<video>")
    config.pad_token_id = tok.pad_token_id
    config.prunesid_tower_only = checkpoint
    import transformers

    model = seeded(lambda: getattr(transformers, family.model_class)(config))
    source = spec.tower_weights or f"{checkpoint} ({', '.join(tower_shards(checkpoint))})"
    state = tower_from(spec.tower_weights) if spec.tower_weights else tower_state_dict(checkpoint)
    model.model.vision_tower.load_state_dict(state, strict=True)
    dtype = next(iter(state.values())).dtype
    model.model.vision_tower.to(dtype if dtype.is_floating_point else torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    (folder / "SOURCE.txt").write_text(
        f"Vision tower of {checkpoint}, weights from {source}; image processor from the checkpoint; language model "
        "and projector random (seeded). Built by prunesid_vlm/tower_only.py.\n")
    if FAMILIES[family.name].frame_processor:
        tok.save_pretrained(folder)  # frames are preprocessed with a CLIP processor built at load
        return
    image_processor = AutoImageProcessor.from_pretrained(checkpoint)
    processor_class = getattr(transformers, {"llava": "LlavaProcessor", "llava_next": "LlavaNextProcessor"}[family.name])
    processor = processor_class(image_processor=image_processor, tokenizer=tok, patch_size=config.vision_config.patch_size,
                                vision_feature_select_strategy=config.vision_feature_select_strategy,
                                num_additional_image_tokens=1, chat_template=LLAVA15_CHAT_TEMPLATE)
    processor.save_pretrained(folder)


def tower_only_path(spec: ModelSpec, root: Path) -> Path:
    """The tower-only checkpoint of ``spec`` under ``root``, built (atomically) on first use."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", spec.model_id[len(TOWER_PREFIX):].strip("/"))
    return build_once(root / f"tower-{name}-v1", lambda tmp: save_tower_only(spec, tmp))
