"""Image overlays of one selection: kept tokens, PSCA groups, NMS, importance.

Every view takes the image the vision tower saw (``H x W x 3`` uint8, usually the
336 x 336 tower input) and a :class:`prunesid.Selection` (+ batch ``row``), and returns a
new uint8 ``H' x W' x 3`` array:

* ``size=None`` draws at the image's own size; ``size=672`` first resizes the image
  to the grid multiple >= 672 px (pixel repetition for integer upscales, so 14 px
  patches stay crisp; see :meth:`PatchGrid.fit`).
* ``legend=True`` appends a white legend band *below* the image (the output is then
  taller than the image; the image part is rows ``0 .. grid.height - 1``). Pass
  ``legend=False`` for an exact-size overlay (``gr.ImageSlider``, click mapping).
* ``grid_shape=None`` infers a square grid from the number of patches (24 x 24).

Marker sizes and line widths scale with the cell size, so views look the same at
336 and 672 px.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from matplotlib import colormaps

from prunesid.result import Selection

from ._draw import LegendItem, blend, colorbar_band, grayscale, legend_band, stack_below
from .grid import PatchGrid, as_rgb_uint8
from .palette import IMPORTANCE_CMAP, KEPT_HEX, group_colors, group_hex, hex_to_rgb
from .selection_row import SelectionRow, selection_row

WHITE = np.array([255, 255, 255], dtype=np.float32)
BLACK = np.array([0, 0, 0], dtype=np.float32)


def prepare(
    image: np.ndarray,
    selection: Selection,
    row: int = 0,
    size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, PatchGrid, SelectionRow]:
    """The display image, its patch grid and the selection row, checked against each other."""
    image = as_rgb_uint8(image)
    sr = selection_row(selection, row)
    rows, cols = grid_shape or sr.grid_shape()
    if rows * cols != sr.num_patches:
        raise ValueError(f"grid {rows}x{cols} does not match the selection's {sr.num_patches} patches")
    if size is None:
        grid = PatchGrid.for_image(image, rows, cols)
    else:
        grid = PatchGrid.for_display(size, rows, cols)
        image = grid.fit(image)
    return image, grid, sr


def _scale(grid: PatchGrid) -> float:
    """Display scale relative to the 14 px cells of a 336 px tower input."""
    return max(0.75, grid.cell_size / 14.0)


def _line_width(grid: PatchGrid) -> int:
    return max(1, round(grid.cell_size / 14.0))


# ---- vectorised cell-centred markers -------------------------------------------------------
def _disc_coverage(grid: PatchGrid, radius: float) -> np.ndarray:
    """Float ``[H, W]`` in 0..1: anti-aliased coverage of a disc centred in every cell."""
    dx, dy = grid.center_offset
    return np.clip(radius + 0.5 - np.hypot(dx, dy), 0.0, 1.0)


def _ring_coverage(grid: PatchGrid, radius: float, width: float) -> np.ndarray:
    dx, dy = grid.center_offset
    return np.clip(width / 2 + 0.5 - np.abs(np.hypot(dx, dy) - radius), 0.0, 1.0)


def _square_coverage(grid: PatchGrid, half: float, width: float) -> np.ndarray:
    dx, dy = grid.center_offset
    return np.clip(width / 2 + 0.5 - np.abs(np.maximum(np.abs(dx), np.abs(dy)) - half), 0.0, 1.0)


def _paint(image: np.ndarray, grid: PatchGrid, which: np.ndarray, coverage: np.ndarray, color) -> np.ndarray:
    """Blend ``color`` (one RGB or per-patch ``[N, 3]``) where ``coverage`` > 0 in cells ``which``."""
    alpha = coverage * which[grid.cell_map]
    color = np.asarray(color, dtype=np.float32)
    over = grid.paint(color) if color.ndim == 2 else color
    return blend(image, over, alpha)


# ---- 1. kept tokens ------------------------------------------------------------------------
def draw_kept_tokens(
    image: np.ndarray,
    selection: Selection,
    row: int = 0,
    *,
    size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
    dim_alpha: float = 0.65,
    outline: str = KEPT_HEX,
    legend: bool = True,
) -> np.ndarray:
    """Which patches reach the language model: dropped cells darkened, kept cells outlined.

    Dropped cells are ``image * (1 - dim_alpha)`` (towards black) and nothing else;
    kept cells keep their pixels except a thin outline drawn *inside* the cell, so
    the two sets of pixels never mix. Returns uint8 ``[H (+ legend), W, 3]``.
    """
    image, grid, sr = prepare(image, selection, row, size, grid_shape)
    kept_px = sr.kept[grid.cell_map]
    out = blend(image, BLACK, np.where(kept_px, 0.0, dim_alpha))
    edge = kept_px & grid.border_mask(_line_width(grid))
    out[edge] = hex_to_rgb(outline)
    if not legend:
        return out
    kept = int(sr.kept.sum())
    items = [
        LegendItem("box", outline, f"kept: {kept} patches (+1 CLS = {sr.num_tokens} tokens)"),
        LegendItem("fill", (60, 60, 60), f"dropped: {sr.num_patches - kept}"),
    ]
    return stack_below(out, legend_band(items, out.shape[1], _scale(grid)))


# ---- 2. PSCA groups ------------------------------------------------------------------------
def _group_boundaries(grid: PatchGrid, group: np.ndarray) -> np.ndarray:
    """Bool ``[H, W]``: pixels on the edge between two different groups (both sides)."""
    g = group[grid.cell_map]
    edge = np.zeros(g.shape, dtype=bool)
    dx = g[:, 1:] != g[:, :-1]
    dy = g[1:, :] != g[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def _kept_dots(image: np.ndarray, grid: PatchGrid, kept: np.ndarray) -> np.ndarray:
    """White dots with a dark rim on kept cells (visible on any group colour)."""
    r = 0.2 * grid.cell_size
    out = _paint(image, grid, kept, _disc_coverage(grid, r + 1.0 * _line_width(grid)), (20, 20, 20))
    return _paint(out, grid, kept, _disc_coverage(grid, r), (255, 255, 255))


def draw_groups(
    image: np.ndarray,
    selection: Selection,
    row: int = 0,
    *,
    size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
    fill_alpha: float = 0.5,
    mark_kept: bool = True,
    legend: bool = True,
) -> np.ndarray:
    """PSCA's semantic groups: each cell tinted with its group's colour, group borders
    drawn as thin dark lines, kept tokens marked with white dots.

    Colours come from :func:`viz.palette.group_colors` (group g -> colour g), the same
    as in :func:`plot_group_budgets` and :func:`group_annotations`.
    """
    image, grid, sr = prepare(image, selection, row, size, grid_shape)
    colors = group_colors(max(sr.num_groups, int(sr.group.max()) + 1)).astype(np.float32)
    out = blend(image, grid.paint(colors[sr.group]), fill_alpha)
    out = blend(out, BLACK, 0.75 * _group_boundaries(grid, sr.group))
    if mark_kept:
        out = _kept_dots(out, grid, sr.kept)
    if not legend:
        return out
    nonempty = int((sr.group_size > 0).sum())
    items = [
        LegendItem("palette", "", f"colour = semantic group ({nonempty} groups)", colors=tuple(group_hex(min(4, sr.num_groups)))),
    ]
    if mark_kept:
        items.append(LegendItem("dot", (255, 255, 255), f"kept token ({int(sr.kept.sum())})", edge=(20, 20, 20)))
    return stack_below(out, legend_band(items, out.shape[1], _scale(grid)))


def group_label(g: int, size: int, budget: int) -> str:
    """Legend label of group ``g`` (0-based) as shown to users (1-based)."""
    return f"group {g + 1}: {size} patches, keeps {budget}"


def group_masks(
    selection: Selection,
    row: int = 0,
    *,
    grid: PatchGrid | None = None,
    grid_shape: tuple[int, int] | None = None,
    fill: float = 0.55,
    cutout_kept: bool = True,
    groups: Sequence[int] | None = None,
    pool: Sequence[int] | None = None,
) -> list[tuple[np.ndarray, str]]:
    """One ``(mask, label)`` per non-empty PSCA group, for ``gr.AnnotatedImage``.

    ``mask`` is float32 ``[H, W]`` in 0..1 on ``grid`` (default: 336 px display grid):
    ``fill`` inside the group (the image shows through), 1.0 on the group's border,
    and 0 where a kept-token dot sits (so dots drawn on the base image stay visible).
    Groups are listed in group order; empty groups are skipped, so the annotation
    index is not the group id: parse it from the label (:func:`group_label`).

    ``groups``: only these group ids (in that order; default all). ``pool``: group ids whose
    masks are merged into one more entry at the end, labelled ``""`` (left out when empty).
    """
    sr = selection_row(selection, row)
    if grid is None:
        rows, cols = grid_shape or sr.grid_shape()
        grid = PatchGrid.for_display(336, rows, cols)
    if grid.num_patches != sr.num_patches:
        raise ValueError(f"grid {grid.rows}x{grid.cols} does not match the selection's {sr.num_patches} patches")
    g_px = sr.group[grid.cell_map]
    base = np.where(_group_boundaries(grid, sr.group), 1.0, fill).astype(np.float32)
    if cutout_kept:
        r = 0.2 * grid.cell_size + 1.0 * _line_width(grid)
        base *= 1.0 - (_disc_coverage(grid, r) * sr.kept[grid.cell_map]).astype(np.float32)
    out = []
    zero = np.float32(0.0)
    for g in range(sr.num_groups) if groups is None else groups:  # one mask per group: G <= 144
        if sr.group_size[g] == 0:
            continue
        out.append((np.where(g_px == g, base, zero), group_label(g, int(sr.group_size[g]), int(sr.group_budget[g]))))
    if pool is not None and len(pool):
        member = np.zeros(max(sr.num_groups, int(sr.group.max()) + 1), dtype=bool)
        member[np.asarray(pool, dtype=np.int64)] = True
        out.append((np.where(member[g_px], base, zero), ""))
    return out


# A group layer is one uint8 code per pixel, drawn with a palette made for its group's colour
# (:func:`group_layer_palette`): a hovered legend entry hides every other layer, so each group's
# kept-token dots live in its own layer, not on the base image, and vanish with their group.
FILL_LEVELS = 160
"""Codes ``0 .. FILL_LEVELS - 1``: the group's colour at alpha ``code / (FILL_LEVELS - 1)``."""
MARK_LEVELS = 48
RIM_CODE = FILL_LEVELS
"""Codes ``RIM_CODE + i``: a kept dot's dark rim at coverage ``i / (MARK_LEVELS - 1)``."""
DOT_CODE = FILL_LEVELS + MARK_LEVELS
"""Codes ``DOT_CODE + i``: a kept dot's white centre over its rim, opaque, at coverage ``i / (MARK_LEVELS - 1)``."""
RIM_RGB = (20, 20, 20)


def group_layer_palette(rgb: Sequence[int]) -> tuple[bytes, bytes]:
    """The 256-entry palette (RGB bytes, alpha bytes) that draws a group layer's codes in ``rgb``."""
    levels = np.linspace(0.0, 1.0, MARK_LEVELS)
    colour = np.asarray(rgb, dtype=np.float32)
    rim = np.asarray(RIM_RGB, dtype=np.float32)
    rgb_table = np.concatenate([
        np.broadcast_to(colour, (FILL_LEVELS, 3)),
        np.broadcast_to(rim, (MARK_LEVELS, 3)),
        rim + levels[:, None] * (WHITE - rim),
    ])
    alpha = np.concatenate([np.linspace(0.0, 1.0, FILL_LEVELS), levels, np.ones(MARK_LEVELS)])
    return (np.rint(rgb_table).astype(np.uint8).tobytes(), np.rint(alpha * 255).astype(np.uint8).tobytes())


def _group_layer(mask: np.ndarray, rim: np.ndarray, dot: np.ndarray) -> np.ndarray:
    """Codes for one group: its mask's fill, then its kept dots' rims and centres on top."""
    code = np.rint(np.clip(mask, 0.0, 1.0) * (FILL_LEVELS - 1)).astype(np.uint8)
    top = MARK_LEVELS - 1
    code = np.where(rim >= 0.5, RIM_CODE + np.rint(rim * top).astype(np.uint8), code)
    return np.where(dot > 0, DOT_CODE + np.rint(dot * top).astype(np.uint8), code).astype(np.uint8)


class GroupAnnotations(NamedTuple):
    """Everything ``gr.AnnotatedImage`` needs: ``value=(base, annotations)``, ``color_map``.

    ``annotations`` hold group *layers* (uint8 codes, :func:`group_layer_palette`), each with its
    group's kept-token dots; ``base`` is the picture without marks."""

    base: np.ndarray
    annotations: list[tuple[np.ndarray, str]]
    color_map: dict[str, str]
    pooled: np.ndarray | None = None
    """The merged layer of the ``pool`` groups, when asked for."""


def group_annotations(
    image: np.ndarray,
    selection: Selection,
    row: int = 0,
    *,
    size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
    groups: Sequence[int] | None = None,
    pool: Sequence[int] | None = None,
) -> GroupAnnotations:
    """The PSCA groups as an annotated image: hovering a legend entry isolates a group, with
    only that group's kept tokens (white dots with a dark rim).

    The masks (:func:`group_masks`) leave holes where the dots sit; each layer fills its own
    holes with its own dots. ``groups`` / ``pool``: as in :func:`group_masks`; the pooled layer
    (if any) is ``pooled``, not in ``annotations``.
    """
    image, grid, sr = prepare(image, selection, row, size, grid_shape)
    ann = group_masks(selection, row, grid=grid, groups=groups, pool=pool)
    r = 0.2 * grid.cell_size
    kept_px = sr.kept[grid.cell_map]
    rim_all = _disc_coverage(grid, r + 1.0 * _line_width(grid)) * kept_px
    dot_all = _disc_coverage(grid, r) * kept_px
    g_px = sr.group[grid.cell_map]

    def layer(mask: np.ndarray, members: np.ndarray) -> np.ndarray:
        own = members[g_px]
        return _group_layer(mask, rim_all * own, dot_all * own)

    n_ids = max(sr.num_groups, int(sr.group.max()) + 1)
    wanted = list(range(sr.num_groups)) if groups is None else list(groups)
    wanted = [g for g in wanted if sr.group_size[g] > 0]
    layers = []
    for g, (mask, label) in zip(wanted, ann):  # one layer per listed group: G <= 144
        layers.append((layer(mask, np.arange(n_ids) == g), label))
    pooled = None
    if len(ann) > len(wanted):
        members = np.zeros(n_ids, dtype=bool)
        members[np.asarray(pool, dtype=np.int64)] = True
        pooled = layer(ann[-1][0], members)
    hexes = group_hex(sr.num_groups)
    labels = {label: hexes[int(label.split(":")[0].split()[1]) - 1] for _, label in layers}
    return GroupAnnotations(image, layers, labels, pooled)


# ---- 3. NMS ---------------------------------------------------------------------------------
def draw_nms(
    image: np.ndarray,
    selection: Selection,
    row: int = 0,
    *,
    size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
    background_dim: float = 0.45,
    legend: bool = True,
    focus_group: int | None = None,
) -> np.ndarray:
    """Intra-group NMS: which near-duplicate each representative replaced.

    With ``focus_group`` (a group index), that group is drawn in full and every other group
    faint, so its links can be followed even when hundreds of lines cross.

    The image is shown in dimmed gray so the colours carry the meaning:

    * a thin line in the group's colour joins every suppressed patch (small dot at
      its end) to the pick that suppressed it (a near-duplicate of it, S > tau);
    * **kept picks**: filled discs in the group colour with a white rim;
    * **picks not kept** (the group's budget ran out): hollow rings in the group colour;
    * suppressed patches that were kept anyway (the group's budget exceeded its
      picks, step 9): white squares.
    """
    import cv2

    image, grid, sr = prepare(image, selection, row, size, grid_shape)
    colors = group_colors(max(sr.num_groups, int(sr.group.max()) + 1))
    if focus_group is not None:
        faint = np.arange(len(colors)) != int(focus_group)
        colors = colors.copy()
        colors[faint] = (0.22 * colors[faint].astype(np.float32) + 0.78 * 70).astype(colors.dtype)
    out = blend(grayscale(image), BLACK, background_dim)
    lw = _line_width(grid)

    # Lines: one cv2.polylines call per group (sub-pixel precise, anti-aliased).
    suppressed = sr.suppressed_by >= 0
    idx = np.flatnonzero(suppressed)
    shift = 4
    if idx.size:
        seg = np.stack([grid.center(idx), grid.center(sr.suppressed_by[idx])], axis=1)  # [M, 2, (x, y)]
        # cv2 puts integer coordinates on pixel centres; ours put them on pixel corners.
        seg = np.round((seg - 0.5) * (1 << shift)).astype(np.int32)
        grp = sr.group[idx]
        for g in np.unique(grp):
            c = tuple(int(v) for v in colors[g])
            cv2.polylines(out, list(seg[grp == g]), False, c, lw, cv2.LINE_AA, shift)
    cell = grid.cell_size
    per_patch = colors[sr.group].astype(np.float32)
    # Ends of suppressed lines: small dots in the group colour.
    out = _paint(out, grid, suppressed & ~sr.kept, _disc_coverage(grid, 0.12 * cell), per_patch)
    # Picks.
    picks = sr.is_pick
    r = 0.26 * cell
    kept_pick = picks & sr.kept
    in_focus = np.ones_like(picks) if focus_group is None else sr.group == int(focus_group)
    out = _paint(out, grid, kept_pick & in_focus, _disc_coverage(grid, r + 1.2 * lw), WHITE)
    out = _paint(out, grid, kept_pick, _disc_coverage(grid, r), per_patch)
    lost_pick = picks & ~sr.kept
    out = _paint(out, grid, lost_pick, _ring_coverage(grid, r, 1.5 * lw), per_patch)
    # Kept duplicates (budget filled from suppressed members).
    kept_dup = suppressed & sr.kept
    out = _paint(out, grid, kept_dup & in_focus, _square_coverage(grid, 0.3 * cell, 1.5 * lw), WHITE)
    if not legend:
        return out
    sample = colors[0 if focus_group is None else int(focus_group)]
    counted = (lambda mask: int(mask.sum())) if focus_group is None else (lambda mask: int((mask & in_focus).sum()))
    items = [
        LegendItem("disc", sample, f"kept pick ({counted(kept_pick)})", edge=(255, 255, 255)),
        LegendItem("ring", sample, f"pick not kept ({counted(lost_pick)})"),
        LegendItem("line", sample, f"near-duplicate → its pick ({counted(suppressed)})"),
    ]
    if (kept_dup & in_focus).any():
        items.append(LegendItem("square", (90, 90, 90), f"kept duplicate ({counted(kept_dup)})"))
    where = "colour = group" if focus_group is None else f"group {int(focus_group) + 1} only"
    # Two entries, so that a narrow picture (a Qwen grid) wraps them instead of cutting the text.
    items.append(LegendItem("none", "", where + ";"))
    items.append(LegendItem("none", "", f"duplicate = similarity > τ = {sr.tau:.2f}"))
    return stack_below(out, legend_band(items, out.shape[1], _scale(grid)))


# ---- 4. importance ------------------------------------------------------------------------
def draw_importance(
    image: np.ndarray,
    selection: Selection,
    row: int = 0,
    *,
    size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
    alpha: float = 0.6,
    cmap: str = IMPORTANCE_CMAP,
    clip_percentile: float = 99.0,
    mark_kept: bool = False,
    title: str = "importance (attention from the CLS token)",
    legend: bool = True,
) -> np.ndarray:
    """Per-patch importance as a heatmap over the image, one flat colour per cell.

    Colours map linearly from the minimum to the ``clip_percentile`` percentile
    (CLIP has a few "artifact" tokens with huge attention that would otherwise wash
    the rest out; the colour bar then reads "≥ max"). ``legend=True`` adds the bar.
    """
    image, grid, sr = prepare(image, selection, row, size, grid_shape)
    imp = sr.importance
    vmin = float(imp.min())
    vmax = float(np.percentile(imp, clip_percentile))
    clipped = vmax < float(imp.max())
    if vmax <= vmin:
        vmax = vmin + 1e-12  # flat map: everything at the bottom colour
    norm = np.clip((imp - vmin) / (vmax - vmin), 0.0, 1.0)
    heat = (colormaps[cmap](norm)[:, :3] * 255.0).astype(np.float32)  # [N, 3]
    out = blend(grayscale(image), grid.paint(heat), alpha)
    if mark_kept:
        edge = sr.kept[grid.cell_map] & grid.border_mask(_line_width(grid))
        out[edge] = (255, 255, 255)
    if not legend:
        return out
    return stack_below(out, colorbar_band(cmap, vmin, vmax, title, out.shape[1], _scale(grid), clipped))
