"""Per-session state kept in ``gr.State``: the tower features of the current image or video
(CPU tensors) and what was last selected and answered. Deep-copyable, no model inside."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from prunesid import Selection
from prunesid_vlm.adapters.llava import ViewInfo
from prunesid_vlm.pipeline import EncodedImages

TOWER_SIDE = 336
"""Side of the square each tower view is drawn on (the CLIP-L/336 input)."""


@dataclass
class Analysis:
    """One image (or video) encoded once; a budget change only re-runs the selection.

    ``V`` tower views: one per image or frame for LLaVA-1.5, base + crops for LLaVA-NeXT.
    """

    kind: str  # "image" | "video"
    source: str  # file path the user gave (for re-use checks)
    model_id: str
    is_demo: bool
    images: list[Image.Image]  # what the model is asked about (1 image, or the sampled frames)
    feats: EncodedImages  # the pipeline's tower outputs (CPU tensors): hidden states, CLS attention, views
    view_pixels: list[np.ndarray]  # per view: uint8 [336, 336, 3], the pixels the tower saw
    grid: tuple[int, int]
    phi_ref: float
    reference_phis: list[float]
    vision_s: float
    notes: list[str] = field(default_factory=list)
    frame_times: list[float] | None = None
    # Updated by each selection:
    budget: int = 64
    dynamic: bool = False
    budgets: list[int] = field(default_factory=list)
    selection: Selection | None = None
    selection_ms: float = 0.0
    drawn: dict = field(default_factory=dict)  # view part -> (budget, dynamic, view) it was drawn for
    # Set by the last answer:
    answered: dict | None = None  # {"budget": K, "dynamic": bool, "question": str}

    @property
    def hidden_states(self) -> torch.Tensor:
        """``[V, 1+N, D]`` CPU, model dtype."""
        return self.feats.hidden_states

    @property
    def cls_attention(self) -> torch.Tensor:
        """Float32 ``[V, N]`` CPU."""
        return self.feats.cls_attention

    @property
    def views(self) -> list[ViewInfo]:
        return self.feats.views

    @property
    def num_views(self) -> int:
        return int(self.hidden_states.shape[0])

    @property
    def num_patches(self) -> int:
        return int(self.hidden_states.shape[1]) - 1

    def view_label(self, v: int) -> str:
        """Short human name of view ``v`` (frame time, crop position or image)."""
        info = self.views[v]
        if self.kind == "video":
            t = f" · t={self.frame_times[info.image]:.1f}s" if self.frame_times else ""
            return f"frame {info.image + 1}{t}"
        if info.kind == "crop":
            return f"crop row {info.crop_row + 1}, col {info.crop_col + 1}"
        if info.kind == "base":
            return "whole image (base view)"
        return "image"


def tower_view(image: Image.Image, box: tuple[float, float, float, float], side: int = TOWER_SIDE) -> np.ndarray:
    """The ``side``×``side`` pixels a tower view covers: ``box`` of ``image`` (padded grey past
    its edges, as the processors pad), resized. For LLaVA-1.5 ``box`` is the centre square."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if x0 >= 0 and y0 >= 0 and x1 <= image.width and y1 <= image.height:
        region = image.crop((x0, y0, x1, y1))
    else:
        region = Image.new("RGB", (max(1, x1 - x0), max(1, y1 - y0)), (122, 116, 104))
        region.paste(image, (-x0, -y0))
    return np.asarray(region.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
