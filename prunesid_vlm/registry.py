"""Known model ids and their family, for the app's model picker and for loading.

A *family* names the adapter code path (:mod:`prunesid_vlm.families`): ``llava``
(LLaVA-1.5, one 24×24 view per image), ``llava_next`` (AnyRes: a base view plus grid crops)
and ``llava_next_video`` (CLIP per frame, 2×2 average-pooled).
"""
from __future__ import annotations

from dataclasses import dataclass

DEMO_MODEL_ID = "demo/tiny-llava-1.5"
DEMO_NEXT_MODEL_ID = "demo/tiny-llava-next"
DEMO_NEXT_VIDEO_MODEL_ID = "demo/tiny-llava-next-video"
DINOV2_DEMO_ID = "demo/dinov2-small-llava"
DEMO_QWEN2_ID = "demo/tiny-qwen2-vl"
DEMO_QWEN25_ID = "demo/tiny-qwen2.5-vl"
TOWER_PREFIX = "tower/"
"""``tower/<checkpoint>``: that checkpoint's vision tower alone (see :mod:`prunesid_vlm.tower_only`)."""

RANDOM_DEMO_MEANING = ("tiny, random weights: its answers and groups are not meaningful; they only show how PruneSID "
                       "and this app work")
DINOV2_DEMO_MEANING = ("real DINOv2-small image features (not LLaVA's CLIP), random language model — groups, kept "
                       "tokens, importance and φ are meaningful, answers are not")


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model picker, and what its pictures and answers mean."""

    model_id: str
    family: str
    description: str
    is_demo: bool = False
    random_features: bool = False
    """The vision tower's weights are random: groups, importance and φ mean nothing."""
    answers: str = "real"
    """``"real"``, ``"random"`` (a random language model: gibberish) or ``"none"`` (tower only)."""
    meaning: str = ""
    """One sentence for the page: what this model's pictures and answers mean (empty: a real model)."""
    size: str = ""
    """Parameter count, for the picker (e.g. ``"1.4 B"``)."""
    tower_weights: str = ""
    """Tower-only: where the tower's weights come from (a hub id or folder; empty: the checkpoint's own)."""


def tower_only_spec(checkpoint: str, family: str = "", label: str = "", tower_weights: str = "") -> ModelSpec:
    """The spec of ``tower/<checkpoint>``: its vision tower, no language model."""
    name = label or checkpoint
    return ModelSpec(
        TOWER_PREFIX + checkpoint, family, f"{name} — vision tower only (no answers)", answers="none",
        meaning=(f"{name}'s own vision tower alone: the kept tokens, groups, importance and φ are exactly those "
                 f"{name} uses; there is no language model, so there are no answers (pick {checkpoint} on a GPU "
                 "for answers)"), tower_weights=tower_weights)


KNOWN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("llava-hf/llava-1.5-7b-hf", "llava", "LLaVA-1.5 7B (576 visual tokens)", size="7.1 B"),
    ModelSpec("llava-hf/llava-1.5-13b-hf", "llava", "LLaVA-1.5 13B (576 visual tokens)", size="13.4 B"),
    ModelSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next", "LLaVA-NeXT Vicuna 7B (AnyRes, up to 2880 tokens)",
              size="7.1 B"),
    ModelSpec("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", "LLaVA-NeXT Mistral 7B (AnyRes, up to 2880 tokens)",
              size="7.6 B"),
    ModelSpec("llava-hf/LLaVA-NeXT-Video-7B-hf", "llava_next_video", "LLaVA-NeXT-Video 7B (144 tokens per frame)",
              size="7.1 B"),
    ModelSpec("bczhou/tiny-llava-v1-hf", "llava", "TinyLLaVA 1.4B (TinyLlama-1.1B + CLIP-L/336; answers on a CPU)",
              size="1.4 B"),
    ModelSpec("Intel/llava-gemma-2b", "llava", "llava-gemma 2B (Gemma-2B + CLIP-L/336)", size="2.8 B"),
    ModelSpec("xtuner/llava-phi-3-mini-hf", "llava", "LLaVA-Phi-3-mini (Phi-3-mini + CLIP-L/336)", size="4.1 B"),
    ModelSpec("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", "Qwen2-VL 2B (any aspect ratio; video; answers on a CPU)",
              size="2.2 B"),
    ModelSpec("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl", "Qwen2-VL 7B (any aspect ratio; video)", size="8.3 B"),
    ModelSpec("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "Qwen2.5-VL 3B (any aspect ratio; video; answers on a CPU)",
              size="3.8 B"),
    ModelSpec("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "Qwen2.5-VL 7B (any aspect ratio; video)", size="8.3 B"),
    tower_only_spec("llava-hf/llava-1.5-7b-hf", "llava", "LLaVA-1.5 (7B and 13B share it)",
                    tower_weights="openai/clip-vit-large-patch14-336"),
    tower_only_spec("llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next", "LLaVA-NeXT Vicuna 7B"),
    tower_only_spec("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", "LLaVA-NeXT Mistral 7B"),
    ModelSpec(DINOV2_DEMO_ID, "llava", "Offline demo: real DINOv2-small image features, random language model",
              is_demo=True, answers="random", meaning=DINOV2_DEMO_MEANING),
    ModelSpec(DEMO_MODEL_ID, "llava", "Offline demo: tiny LLaVA-1.5, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
    ModelSpec(DEMO_NEXT_MODEL_ID, "llava_next", "Offline demo: tiny LLaVA-NeXT, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
    ModelSpec(DEMO_NEXT_VIDEO_MODEL_ID, "llava_next_video", "Offline demo: tiny LLaVA-NeXT-Video, random weights",
              is_demo=True, random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
    ModelSpec(DEMO_QWEN2_ID, "qwen2_vl", "Offline demo: tiny Qwen2-VL, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
    ModelSpec(DEMO_QWEN25_ID, "qwen2_5_vl", "Offline demo: tiny Qwen2.5-VL, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
)


def list_models() -> list[ModelSpec]:
    """Every model the picker can offer: real hub checkpoints, their towers alone, then the offline
    demos (the real-feature one only where its weights are installed)."""
    from .dinov2_demo import available

    return [s for s in KNOWN_MODELS if s.model_id != DINOV2_DEMO_ID or available()]


def spec_for(model_id: str) -> ModelSpec | None:
    """The registry's spec of ``model_id``; for ``tower/<other>``, a tower-only spec made for it."""
    known = next((s for s in KNOWN_MODELS if s.model_id == model_id), None)
    if known is None and model_id.startswith(TOWER_PREFIX):
        return tower_only_spec(model_id[len(TOWER_PREFIX):])
    return known

