"""Pictures of a PruneSID selection: pure functions, arrays and Selections in, arrays or
matplotlib Figures out. No UI code here (the app wires these to Gradio components).

Overlays (uint8 ``H x W x 3`` in, uint8 out; see :mod:`viz.overlays` for conventions):
    draw_kept_tokens, draw_groups, group_masks, group_annotations, draw_nms, draw_importance,
    draw_on_original (the original picture as the processor cuts it, kept tokens in place)
Charts (matplotlib Figures) and video helpers:
    plot_group_budgets, plot_dynamic_ratio, complexity_label, plot_frame_budgets, contact_sheet,
    with_caption (a picture under a caption band)
Geometry and colours:
    PatchGrid (patch index <-> pixel rectangle), group_colors / group_hex
"""
from ._draw import with_caption
from .grid import PatchGrid, as_rgb_uint8
from .overlays import (
    GroupAnnotations,
    draw_groups,
    draw_importance,
    draw_kept_tokens,
    draw_nms,
    group_annotations,
    group_label,
    group_masks,
)
from .original import draw_on_original
from .palette import KEPT_HEX, group_colors, group_hex
from .plots import (
    complexity_label,
    contact_sheet,
    figure_to_array,
    plot_dynamic_ratio,
    plot_frame_budgets,
    plot_group_budgets,
)
from .selection_row import SelectionRow, selection_row

__all__ = [
    "PatchGrid",
    "as_rgb_uint8",
    "GroupAnnotations",
    "draw_groups",
    "draw_importance",
    "draw_kept_tokens",
    "draw_nms",
    "draw_on_original",
    "group_annotations",
    "group_label",
    "group_masks",
    "KEPT_HEX",
    "group_colors",
    "group_hex",
    "complexity_label",
    "contact_sheet",
    "figure_to_array",
    "plot_dynamic_ratio",
    "plot_frame_budgets",
    "plot_group_budgets",
    "SelectionRow",
    "selection_row",
    "with_caption",
]
