"""The model families this package can run, one entry each: which checkpoints belong to
it, which transformers class loads it, and which adapter packs its visual tokens.

Adding a family means adding an adapter (:class:`~prunesid_vlm.adapters.base.Adapter`)
and one :class:`Family` here; loading and the pipeline look families up, they do not
branch on names.
"""
from __future__ import annotations

from dataclasses import dataclass

from .adapters.base import Adapter
from .adapters.llava import LlavaAdapter
from .adapters.llava_next import LlavaNextAdapter
from .adapters.llava_next_video import LlavaNextVideoAdapter
from .adapters.qwen import QwenAdapter


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    """``config.model_type`` of its checkpoints."""
    model_class: str
    """The ``transformers`` class that loads it."""
    adapter: type[Adapter]
    frame_processor: bool = False
    """Build the processor from the tokenizer and a CLIP image processor (the family's own
    video processor needs torchvision, which this project does not depend on)."""
    qwen: bool = False
    """Qwen2-VL / Qwen2.5-VL: merged tokens without CLS, M-RoPE positions, the Qwen PruneSID rule,
    a :class:`~prunesid_vlm.qwen_processing.QwenProcessor` and a :class:`QwenPipeline`."""


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llava", "llava", "LlavaForConditionalGeneration", LlavaAdapter),
    Family("llava_next", "llava_next", "LlavaNextForConditionalGeneration", LlavaNextAdapter),
    Family("llava_next_video", "llava_next_video", "LlavaNextVideoForConditionalGeneration", LlavaNextVideoAdapter,
           frame_processor=True),
    Family("qwen2_vl", "qwen2_vl", "Qwen2VLForConditionalGeneration", QwenAdapter, qwen=True),
    Family("qwen2_5_vl", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", QwenAdapter, qwen=True),
)}


def family_for_model_type(model_type: str) -> Family | None:
    """The family whose checkpoints have this ``config.model_type``, or None."""
    return next((f for f in FAMILIES.values() if f.model_type == model_type), None)


def adapter_for(family: str, model, processor) -> Adapter:
    """The family's adapter around a loaded model and its processor."""
    return FAMILIES[family].adapter(model, processor)
