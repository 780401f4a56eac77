"""Load a LLaVA-family model and its processor by hub id, local folder or demo id.

Everything goes through ``from_pretrained`` (no ``trust_remote_code``); the offline demo
models are ordinary checkpoints in a cache folder. Failures become a
:class:`ModelLoadError` whose message says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .demo_model import cache_root, demo_model_path
from .load_errors import ModelLoadError
from .families import FAMILIES, TOWERS_WITH_CLS, adapter_class, family_for_model_type
from .registry import DINOV2_DEMO_ID, SHAPES_DEMO_ID, ModelSpec, spec_for, tower_only_spec




@dataclass
class LoadedModel:
    """A model in eval mode, its processor, and how it was loaded."""

    model: torch.nn.Module
    processor: object
    family: str
    model_id: str
    path: str
    device: torch.device
    dtype: torch.dtype
    is_demo: bool
    spec: ModelSpec | None = None
    """What the registry knows of this model (its meaning, whether it answers); None for a
    checkpoint it does not list."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was requested but no CUDA GPU is visible; pass device='cpu' or None.")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default: bf16 on CUDA when supported (else fp16); fp32 on CPU. CPU accepts fp32 or bf16."""
    if isinstance(dtype, str):
        names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        dtype = names[dtype]
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if device.type == "cpu" and dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"on the CPU use float32 or bfloat16, not {dtype}")
    return dtype


def load_model(model_id_or_path: str, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load ``model_id_or_path`` (hub id, local folder, or a ``demo/...`` id) ready for inference.

    Raises:
        ModelLoadError: missing files, no network, unsupported architecture, out of memory.
        ValueError: a dtype that does not fit the device.
    """
    if not model_id_or_path or not model_id_or_path.strip():
        raise ModelLoadError("no model given: pass a hub id such as 'llava-hf/llava-1.5-7b-hf', a local folder, "
                             "or the offline demo id 'demo/tiny-llava-1.5'.")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    spec = spec_for(model_id_or_path.strip())
    path = checkpoint_folder(spec) if spec is not None else model_id_or_path
    family = _family_of(path, model_id_or_path)
    model = _load_weights(family, path, model_id_or_path, device, dtype)
    if FAMILIES[family].cls_free:
        processor = adapter_class(family).load_processor(path, model_id_or_path)
    elif FAMILIES[family].frame_processor:
        processor = frame_processor(path, model)
    else:
        processor = _load_processor(path, model_id_or_path)
    built_from = getattr(model.config, "prunesid_tower_only", None)
    if spec is None and built_from:  # a tower-only folder loaded by its path
        spec = tower_only_spec(built_from, family)
    return LoadedModel(model, processor, family, model_id_or_path, path, device, dtype,
                       is_demo=bool(spec and spec.is_demo), spec=spec)


def checkpoint_folder(spec: ModelSpec) -> str:
    """Where the checkpoint of a registry entry is: a demo or tower-only folder built into the cache
    on first use, or the hub id / folder itself."""
    from .dinov2_demo import DemoWeightsMissing, dinov2_demo_path
    from .tower_only import tower_only_path

    if spec.model_id in (DINOV2_DEMO_ID, SHAPES_DEMO_ID):
        from .demos.shapes import shapes_demo_path

        build = dinov2_demo_path if spec.model_id == DINOV2_DEMO_ID else shapes_demo_path
        try:
            return str(build(cache_root()))
        except DemoWeightsMissing as err:
            raise ModelLoadError(str(err)) from err
    if spec.is_demo:
        return str(demo_model_path(spec.family))
    if spec.answers == "none":
        try:
            return str(tower_only_path(spec, cache_root()))
        except (OSError, ValueError) as err:
            raise ModelLoadError(_not_found_message(spec.model_id, err)) from err
    return spec.model_id


def _family_of(path: str, name: str) -> str:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(_not_found_message(name, err)) from err
    family = family_for_model_type(config.model_type)
    if family is None:
        raise ModelLoadError(f"{name!r} is a {config.model_type!r} model; this app supports LLaVA-1.5, LLaVA-NeXT and "
                             f"LLaVA-NeXT-Video checkpoints in the transformers format (e.g. 'llava-hf/llava-1.5-7b-hf').")
    if not family.cls_free and getattr(config.vision_config, "model_type", None) not in TOWERS_WITH_CLS:
        raise ModelLoadError(f"{name!r} has a {config.vision_config.model_type!r} vision tower; PruneSID's importance "
                             "is the CLS token's attention, so it needs a tower with a CLS token (CLIP or DINOv2).")
    return family.name


def _model_class(family: str):
    import transformers

    return getattr(transformers, FAMILIES[family].model_class)


def _load_weights(family, path, name, device, dtype):
    try:
        model = _model_class(family).from_pretrained(path, dtype=dtype, device_map=None)
        return model.to(device).eval()
    except torch.OutOfMemoryError as err:
        raise ModelLoadError(f"out of memory loading {name!r} on {device} in {dtype}: free memory, choose a smaller "
                             "model, use bf16/fp16, or the offline demo model 'demo/tiny-llava-1.5'.") from err
    except RuntimeError as err:
        if "out of memory" in str(err).lower() or "not enough memory" in str(err).lower():
            raise ModelLoadError(f"out of memory loading {name!r} on {device} in {dtype}: free memory, choose a "
                                 "smaller model, or use the offline demo model 'demo/tiny-llava-1.5'.") from err
        raise ModelLoadError(f"could not load the weights of {name!r}: {err}") from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(_not_found_message(name, err)) from err


def _load_processor(path, name):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, AttributeError, ImportError) as err:
        raise ModelLoadError(f"could not load the processor of {name!r} ({type(err).__name__}: {err}). The folder "
                             "needs the tokenizer and image-processor files saved by `processor.save_pretrained`.") from err


@dataclass
class FrameProcessor:
    """Tokenizer + per-frame CLIP preprocessing for LLaVA-NeXT-Video (its video processor needs torchvision)."""

    tokenizer: object
    image_processor: object


def frame_processor(path: str, model: torch.nn.Module) -> FrameProcessor:
    """Frames are resized (shortest edge) and centre-cropped to the tower's size with CLIP's statistics,
    as ``LlavaNextVideoVideoProcessor`` does."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the tokenizer from {path!r}: {err}") from err
    size = model.config.vision_config.image_size
    return FrameProcessor(tokenizer, CLIPImageProcessorPil(size={"shortest_edge": size},
                                                           crop_size={"height": size, "width": size}))


def _not_found_message(name: str, err: Exception) -> str:
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        return (f"there is no folder {name!r}. Pass an existing local folder (holding config.json, the weights and "
                "the processor files), a hub id such as 'llava-hf/llava-1.5-7b-hf', or the offline demo model "
                "'demo/tiny-llava-1.5'.")
    where = "local folder" if Path(name).exists() else "hub id"
    return (f"could not load {name!r} as a {where} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Check the spelling; if you are offline, download it first (`hf download <id>`, from huggingface_hub) or pass the "
            "path of a local folder holding config.json, the weights and the processor files; or use the offline "
            "demo model 'demo/tiny-llava-1.5'.")
