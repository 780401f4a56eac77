"""Per-session state kept in ``gr.State``: the tower features of the current image or video
(CPU tensors, from the pipeline) and what was last selected and answered. Deep-copyable, no
model inside: a redraw needs nothing but this object."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from prunesid import Selection
from prunesid_vlm.pipeline import EncodedImages


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
    feats: EncodedImages  # the pipeline's tower outputs (CPU tensors): hidden states, CLS attention, views, φ
    view_pixels: list[np.ndarray]  # per view: uint8 [336, 336, 3], the pixels the tower saw
    grid: tuple[int, int]
    reference_phis: list[float]  # φ of the model's calibration views (their mean is feats.phi_ref)
    notes: list[str] = field(default_factory=list)
    frame_times: list[float] | None = None
    random_features: bool = False  # the tower's weights are random: groups, importance and φ mean nothing
    answers: str = "real"  # "real", "random" (gibberish) or "none" (a tower alone: no answers)
    model_meaning: str = ""  # what the model's pictures and answers mean (registry), for the page
    # Updated by each selection:
    budget: int = 64
    dynamic: bool = False
    shared: bool = False  # K × views shared over all views (the paper's LLaVA-NeXT totals), not K per view
    budgets: list[int] = field(default_factory=list)
    selection: Selection | None = None
    selection_ms: float = 0.0
    drawn: dict = field(default_factory=dict)  # view part -> (budget, dynamic, view) it was drawn for
    nms_group: int | None = None  # the group the NMS view shows in full (None: the one with most duplicates; -1: all)
    # Set by the last answer:
    answered: dict | None = None  # {"setting": Analysis.setting, "question": str, "tokens": int, "texts": {...}}
    positions_wanted: str | None = None  # where Run would put the kept tokens now (the box), None: the model's way

    @property
    def setting(self) -> tuple[int, bool, bool]:
        """What a selection (and the answers made with it) depends on besides the media."""
        return (self.budget, self.dynamic, self.shared and self.num_views > 1)

    @property
    def phi_ref(self) -> float:
        return self.feats.phi_ref

    @property
    def vision_s(self) -> float:
        return self.feats.vision_s

    @property
    def views(self) -> list:
        """Per view: where it comes from (``prunesid_vlm`` ViewInfo: image, kind, box, crop row/col)."""
        return self.feats.views

    @property
    def num_views(self) -> int:
        return self.feats.num_views

    @property
    def num_patches(self) -> int:
        return self.feats.num_patches

    def view_label(self, v: int) -> str:
        """Short human name of view ``v`` (frame time, crop position or image)."""
        info, frame = self.views[v], self.feats.sources[v]
        if self.kind == "video":
            t = f" · t={self.frame_times[frame]:.1f}s" if self.frame_times else ""
            return f"frame {frame + 1}{t}"
        if info.kind in ("crop", "tile"):
            return f"{info.kind} row {info.crop_row + 1}, col {info.crop_col + 1}"
        if info.kind == "base":
            return "whole image (base view)"
        if info.kind == "thumbnail":
            return "whole image (thumbnail)"
        return "image"
