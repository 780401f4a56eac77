"""Two loading options that benchmark harnesses pass (lmms-eval's ``llava_hf`` / ``qwen2_5_vl``
arguments), with transformers' meaning: a checkpoint's hub ``revision`` and the attention kernel.

    from prunesid_vlm.load_options import checkpoint_at_revision, set_attention
    pipe = load_pipeline(checkpoint_at_revision("llava-hf/llava-1.5-7b-hf", "a272c74"))
    set_attention(pipe, "sdpa")
"""
from __future__ import annotations

from pathlib import Path

from .loading import ModelLoadError
from .pipeline import Pipeline
from .registry import spec_for

__all__ = ["ATTENTION_KERNELS", "checkpoint_at_revision", "set_attention"]

CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
"""What ``from_pretrained`` reads of a checkpoint (config, weights, tokenizer, processor, chat template)."""

ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
"""transformers' ``attn_implementation`` values (the vision tower's CLS attention is read by a hook,
whatever the kernel: ``prunesid_vlm.features``)."""


def checkpoint_at_revision(model_id: str, revision: str | None) -> str:
    """``model_id`` itself for the default revision (``None``, ``""`` or ``"main"``), else the local
    folder of that hub checkpoint at ``revision`` (a branch, tag or commit; downloaded once into the
    hub cache, read from it offline).

    Raises:
        ValueError: a revision of a demo, a vision tower alone or a local folder.
        ModelLoadError: the revision cannot be had (offline and not cached, no such revision)."""
    if revision in (None, "", "main"):
        return model_id
    spec = spec_for(model_id)
    if (spec is not None and (spec.is_demo or spec.answers == "none")) or Path(model_id).expanduser().exists():
        raise ValueError(f"revision={revision!r} applies to a checkpoint on the hub; {model_id!r} is "
                         f"{'built here' if spec is not None else 'a local folder'}")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model_id, revision=revision, allow_patterns=CHECKPOINT_FILES)
        if not any(Path(folder).glob("*.safetensors")):  # an older checkpoint: PyTorch weight files
            folder = snapshot_download(model_id, revision=revision, allow_patterns=[*CHECKPOINT_FILES, "*.bin"])
    except Exception as err:  # offline and not cached, no such repository or revision, no access
        raise ModelLoadError(f"could not get {model_id!r} at revision {revision!r} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from err
    return folder


def set_attention(pipe: Pipeline, implementation: str | None) -> None:
    """Run the model's attention with ``implementation`` (``None``: leave transformers' default)."""
    if implementation in (None, ""):
        return
    if implementation not in ATTENTION_KERNELS:
        raise ValueError(f"attn_implementation must be one of {', '.join(ATTENTION_KERNELS)}, got {implementation!r}")
    with pipe.model_work():
        try:
            pipe.model.set_attn_implementation(implementation)
        except (ImportError, ValueError) as err:  # e.g. flash-attn not installed, or no CUDA
            raise ValueError(f"attn_implementation={implementation!r} cannot run here: {err}") from err
