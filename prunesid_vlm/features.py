"""One vision-tower pass → the layer −2 hidden states and the CLS attention row.

The tower stays on its fast attention kernel (sdpa): the CLS row is rebuilt from the
query/key projections of that one layer, captured by forward hooks that are removed on
exit. It equals eager ``attentions[layer][:, :, 0, 1:].sum(1)`` and costs one
``[H, 1, 1+N]`` product, against +10–40 % for switching the tower to eager attention.

Measured (``benchmarks/prefill.py``, CLIP ViT-L/14-336 widths, 24 layers, random weights,
fp32, 2 CPU threads, min of 5 interleaved runs): plain sdpa pass 3.13 s, with the hooks
2.92 s (no measurable overhead: below the run-to-run noise), eager + ``output_attentions``
3.60 s (+15 %).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class ClsAttentionCapture:
    """Collects the q/k projections of one attention layer (CLIP's or DINOv2's) while active."""

    def __init__(self, attention: torch.nn.Module):
        self.attention = attention
        self.query: torch.Tensor | None = None  # [V, 1, C]: the CLS query only
        self.key: torch.Tensor | None = None  # [V, 1+N, C]

    def _on_query(self, module, args, output):
        self.query = output[:, :1]

    def _on_key(self, module, args, output):
        self.key = output

    def cls_attention(self) -> torch.Tensor:
        """Float32 ``[V, N]``: CLS → patch attention of the captured pass, summed over heads."""
        if self.query is None or self.key is None:
            raise RuntimeError("the vision tower did not run while the capture was active")
        views, tokens, _ = self.key.shape
        heads, head_dim = attention_heads(self.attention), self.attention.head_dim
        q = self.query.view(views, 1, heads, head_dim).transpose(1, 2)  # [V, H, 1, d]
        k = self.key.view(views, tokens, heads, head_dim).transpose(1, 2)  # [V, H, 1+N, d]
        # Softmax over all 1+N keys (CLS included), as eager attention does, then drop CLS→CLS.
        weights = ((q @ k.transpose(-1, -2)).float() * attention_scale(self.attention)).softmax(-1)[:, :, 0]
        return weights[:, :, 1:].sum(1)


def attention_heads(attention: torch.nn.Module) -> int:
    """Head count of an attention module (CLIP: ``num_heads``; DINOv2: ``num_attention_heads``)."""
    heads = getattr(attention, "num_heads", None) or getattr(attention, "num_attention_heads", None)
    if not heads:
        raise ValueError(f"{type(attention).__name__} has no head count this code knows")
    return int(heads)


def attention_scale(attention: torch.nn.Module) -> float:
    """The softmax scale of an attention module (CLIP: ``scale``; DINOv2: ``scaling``)."""
    scale = getattr(attention, "scale", None) or getattr(attention, "scaling", None)
    return float(scale if scale is not None else attention.head_dim ** -0.5)


def attention_layers(tower: torch.nn.Module) -> list[torch.nn.Module]:
    """The tower's attention modules, first layer first (CLIP: ``encoder.layers[i].self_attn``;
    DINOv2: ``encoder.layer[i].attention``)."""
    encoder = tower.encoder
    if hasattr(encoder, "layers"):
        return [layer.self_attn for layer in encoder.layers]
    if hasattr(encoder, "layer"):
        return [layer.attention for layer in encoder.layer]
    raise ValueError(f"{type(tower).__name__} has no encoder layers this code knows")


@contextmanager
def capture_cls_attention(attention: torch.nn.Module) -> Iterator[ClsAttentionCapture]:
    """Hooks on ``attention.q_proj``/``k_proj`` for the duration of the ``with`` block only."""
    capture = ClsAttentionCapture(attention)
    handles = [attention.q_proj.register_forward_hook(capture._on_query),
               attention.k_proj.register_forward_hook(capture._on_key)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def feature_layer_index(model: torch.nn.Module) -> int:
    """The ``hidden_states`` index LLaVA projects (``config.vision_feature_layer``, −2 for all LLaVA-1.5/NeXT)."""
    layer = model.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"multi-layer vision features ({layer}) are not supported; PruneSID uses one layer")
    return layer


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision model, CLIP or DINOv2 (transformers 5.x: ``model.model.vision_tower``, flat layout)."""
    return model.model.vision_tower


@torch.inference_mode()
def encode_views(model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the tower once over ``V`` views.

    Args:
        pixel_values: ``[V, 3, S, S]`` preprocessed views (images, AnyRes crops or frames).

    Returns:
        ``hidden_states`` ``[V, 1+N, D]`` (the projected layer, CLS first, model dtype) and
        ``cls_attention`` float32 ``[V, N]`` from the same layer.
    """
    tower = vision_tower(model)
    index = feature_layer_index(model)
    # hidden_states[0] is the embedding output and hidden_states[i] the output of layer i−1,
    # so the attention that produced hidden_states[index] sits in layers[index − 1] (index < 0: layers[index]).
    layers = attention_layers(tower)
    attention = layers[index if index < 0 else index - 1]
    # CLIP returns only the asked layer's states; DINOv2 takes a plain flag.
    wanted = [index] if hasattr(tower.encoder, "layers") else True
    with capture_cls_attention(attention) as capture:
        out = tower(pixel_values.to(tower.device, tower.dtype), output_hidden_states=wanted, return_dict=True)
    return out.hidden_states[index], capture.cls_attention()
