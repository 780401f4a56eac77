"""The model families this package can run, one entry each: which checkpoints belong to
it, which transformers class loads it, and which adapter (CLS towers) or backend (CLS-free
towers) packs its visual tokens.

Adding a family means adding a backend (:class:`~prunesid_vlm.backends.base.TokenBackend`, one
module under :mod:`prunesid_vlm.backends`), its demo builder (:mod:`prunesid_vlm.demos`), a test,
and one :class:`Family` line here; loading and the pipeline look families up, they do not branch
on names (docs/architecture.md).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .adapters.base import Adapter
from .backends.base import TokenBackend
from .adapters.llava import LlavaAdapter
from .adapters.llava_next import LlavaNextAdapter
from .adapters.llava_next_video import LlavaNextVideoAdapter
from .backends.qwen import QwenBackend


TOWERS_WITH_CLS = ("clip_vision_model", "dinov2")
"""Vision towers whose CLS token's attention gives the LLaVA rule's importance."""


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    """``config.model_type`` of its checkpoints."""
    model_class: str
    """The ``transformers`` class that loads it."""
    adapter: type[Adapter] | type[TokenBackend] | str
    """The class, or ``"module:Class"`` under :mod:`prunesid_vlm.backends` (imported when first used)."""
    frame_processor: bool = False
    """Build the processor from the tokenizer and a CLIP image processor (the family's own
    video processor needs torchvision, which this project does not depend on)."""
    cls_free: bool = False
    """The tower has no CLS token to read importance from: ``adapter`` is a
    :class:`~prunesid_vlm.backends.base.TokenBackend` (it loads its own processor), the pipeline a
    :class:`~prunesid_vlm.token_pipeline.TokenPipeline`, and PruneSID the CLS-free rule."""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llava", "llava", "LlavaForConditionalGeneration", LlavaAdapter),
    Family("llava_next", "llava_next", "LlavaNextForConditionalGeneration", LlavaNextAdapter),
    Family("llava_next_video", "llava_next_video", "LlavaNextVideoForConditionalGeneration", LlavaNextVideoAdapter,
           frame_processor=True),
    Family("qwen2_vl", "qwen2_vl", "Qwen2VLForConditionalGeneration", QwenBackend, cls_free=True),
    Family("qwen2_5_vl", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", QwenBackend, cls_free=True),
    Family("qwen3_vl", "qwen3_vl", "Qwen3VLForConditionalGeneration", "qwen3_vl:Qwen3VLBackend", cls_free=True),
    Family("llava_onevision", "llava_onevision", "LlavaOnevisionForConditionalGeneration",
           "llava_onevision:OnevisionBackend", cls_free=True),
    Family("internvl", "internvl", "InternVLForConditionalGeneration", "internvl:InternVLBackend", cls_free=True),
    Family("gemma3", "gemma3", "Gemma3ForConditionalGeneration", "gemma3:Gemma3Backend", cls_free=True),
)}


def family_for_model_type(model_type: str) -> Family | None:
    """The family whose checkpoints have this ``config.model_type``, or None."""
    return next((f for f in FAMILIES.values() if f.model_type == model_type), None)


def adapter_class(family: str) -> type[Adapter] | type[TokenBackend]:
    """The family's adapter or backend class (a backend named by string is imported now)."""
    adapter = FAMILIES[family].adapter
    if isinstance(adapter, str):
        module, name = adapter.split(":")
        adapter = getattr(importlib.import_module(f"{__package__}.backends.{module}"), name)
    return adapter


def adapter_for(family: str, model, processor) -> Adapter | TokenBackend:
    """The family's adapter (or backend) around a loaded model and its processor."""
    return adapter_class(family)(model, processor)
