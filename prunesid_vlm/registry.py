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

@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model picker."""

    model_id: str
    family: str
    description: str
    is_demo: bool = False


KNOWN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("llava-hf/llava-1.5-7b-hf", "llava", "LLaVA-1.5 7B (576 visual tokens)"),
    ModelSpec("llava-hf/llava-1.5-13b-hf", "llava", "LLaVA-1.5 13B (576 visual tokens)"),
    ModelSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next", "LLaVA-NeXT Vicuna 7B (AnyRes, up to 2880 tokens)"),
    ModelSpec("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", "LLaVA-NeXT Mistral 7B (AnyRes, up to 2880 tokens)"),
    ModelSpec("llava-hf/LLaVA-NeXT-Video-7B-hf", "llava_next_video", "LLaVA-NeXT-Video 7B (144 tokens per frame)"),
    ModelSpec(DEMO_MODEL_ID, "llava", "Offline demo: tiny LLaVA-1.5, random weights", is_demo=True),
    ModelSpec(DEMO_NEXT_MODEL_ID, "llava_next", "Offline demo: tiny LLaVA-NeXT, random weights", is_demo=True),
    ModelSpec(DEMO_NEXT_VIDEO_MODEL_ID, "llava_next_video", "Offline demo: tiny LLaVA-NeXT-Video, random weights",
              is_demo=True),
)


def list_models() -> list[ModelSpec]:
    """Every model the picker can offer, real hub ids first, then the offline demos."""
    return list(KNOWN_MODELS)


def demo_spec(model_id: str) -> ModelSpec | None:
    """The spec of an offline demo id, or None for anything else."""
    return next((s for s in KNOWN_MODELS if s.is_demo and s.model_id == model_id), None)
