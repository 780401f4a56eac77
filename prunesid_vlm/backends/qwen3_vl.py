"""Qwen3-VL: Qwen2.5-VL's merged tokens and M-RoPE, plus DeepStack, and timestamped clips.

* **DeepStack.** Besides the merged tokens it hands the language model's input, the vision tower
  merges the states of a few of its intermediate blocks into the same token grid and adds them to
  the hidden states of the first decoder layers, at the visual positions. A pruned prompt keeps
  the same rows of every DeepStack feature as of the input tokens, in the same order: the decoder
  adds to each kept token what it would have added to it in the full prompt.
* **Clips.** Each temporal patch (two frames) is its own placeholder run after its time
  (``<0.5 seconds>``), as Qwen3-VL's processor writes it; the pruned prompt keeps every run, with
  that patch's kept tokens.
* **Size.** Patches are 16 px, so a merged token covers 32 × 32 px.
"""
from __future__ import annotations

import torch

from .base import EncodedMedia
from .qwen import QwenBackend


class Qwen3VLBackend(QwenBackend):
    """Qwen3-VL (see the module docstring)."""

    @staticmethod
    def load_processor(path: str, name: str):
        processor = QwenBackend.load_processor(path, name)
        processor.frame_timestamps = True
        return processor

    def extra_layers(self, out, views: int, n: int) -> tuple[torch.Tensor, ...]:
        """The DeepStack features, ``[V, N, D]`` per injected decoder layer (rows as the tokens')."""
        return tuple(torch.cat(list(layer)).reshape(views, n, -1) for layer in out.deepstack_features)

    def encoder_extra(self, media: EncodedMedia, order: list[torch.Tensor]) -> dict:
        """The kept rows of every DeepStack feature, per placeholder run as the input tokens."""
        device, dtype = self.model.device, self.model.dtype
        rows = [layer.reshape(-1, layer.shape[-1]) for layer in media.layers]
        return {"deepstack_features": [[layer[o].to(device, dtype) for o in order] for layer in rows]}
