"""Matplotlib charts (Agg backend, no pyplot state) and the video contact sheet.

Figures are created with :class:`matplotlib.figure.Figure` directly, not ``pyplot``, so
nothing is registered globally: there is no figure to close and no leak when many
are drawn. They are plain matplotlib Figures (how they are shown is the caller's
business); use :func:`figure_to_array` to rasterise one for a file, a test or a UI.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless; harmless if another backend was already chosen by the app

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import ScaledTranslation, blended_transform_factory

from prunesid.result import Selection

from ._draw import label_inplace
from ._figures import DynamicRatioFigure, render_rgba
from .grid import as_rgb_uint8
from .palette import group_colors_float
from .selection_row import selection_row

FONT_SIZE = 11


def _figure(width: float, height: float, margins: tuple[float, float, float, float] | None = None,
            **adjust) -> Figure:
    """A ``width`` × ``height`` inch figure at 100 dpi with an Agg canvas.

    Without ``margins`` the layout is ``"constrained"`` (general, but it re-measures every
    text on each draw: several times slower). With ``margins = (left, right, bottom, top)``
    in inches the axes are placed once with ``subplots_adjust`` (``adjust``: e.g. ``hspace``);
    the charts redrawn on every slider move use this, with margins that fit their labels.
    """
    if margins is None:
        fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    else:
        fig = Figure(figsize=(width, height), dpi=100)
        left, right, bottom, top = margins
        fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                            top=1 - top / height, **adjust)
    FigureCanvasAgg(fig)
    return fig


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=FONT_SIZE - 1)
    ax.grid(axis="y", alpha=0.3, linewidth=0.6)
    ax.set_axisbelow(True)


def figure_to_array(fig: Figure, *, alpha: bool = False) -> np.ndarray:
    """Uint8 ``[H, W, 3]`` (``[H, W, 4]`` with ``alpha``) Agg rendering of a figure at its dpi
    (for saving, tests, a gallery or a UI); the same pixels as ``fig.savefig(..., format="png")``
    with matplotlib's default savefig settings."""
    rgba = render_rgba(fig)
    return rgba if alpha else np.ascontiguousarray(rgba[:, :, :3])


# ---- 5. per-group budgets ------------------------------------------------------------------
def plot_group_budgets(selection: Selection, row: int = 0, *, max_groups: int = 160) -> Figure:
    """Per PSCA group (x, in the palette's colours): its size c_g and how many distinct
    tokens survive NMS n_g (top), and how many tokens it keeps k_g (bottom).

    n_g <= c_g always, so the top panel draws n_g as a solid bar inside the pale c_g
    bar. k_g gets its own panel because it is a handful while c_g can be ~100.
    """
    sr = selection_row(selection, row)
    g = min(sr.num_groups, max_groups)
    x = np.arange(1, g + 1)
    colors = group_colors_float(g)
    width = min(12.0, max(7.0, 0.11 * g + 3.0))
    note = g < sr.num_groups
    # fixed margins (inches): y tick labels + label on the left, x ticks + label (+ the
    # "first g of N" note) below, the title above
    fig = _figure(width, 4.6, margins=(0.78, 0.12, 0.78 if note else 0.58, 0.36), hspace=0.12)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    # one collection per bar series (not a Rectangle per bar: 3 × 144 artists at K = 577)
    _bars(top, x, sr.group_size[:g], 0.85, colors, alpha=0.3, edge=True)
    _bars(top, x, sr.group_survivors[:g], 0.55, colors)
    top.set_ylabel("patches", fontsize=FONT_SIZE)
    top.set_title(
        f"Tokens per PSCA group ({int(np.count_nonzero(sr.kept))} of {sr.num_patches} patches kept)",
        fontsize=FONT_SIZE + 1,
        y=1.0,  # a fixed position: nothing is drawn above the axes (no search for it on each draw)
    )
    gray = (0.45, 0.45, 0.45)
    top.set_ylim(0, max(1, int(sr.group_size[:g].max())) * 1.35)  # headroom for the legend
    top.legend(
        handles=[
            Patch(facecolor=gray, alpha=0.3, edgecolor=gray, label="group size c_g"),
            Patch(facecolor=gray, label="left after NMS n_g"),
        ],
        fontsize=FONT_SIZE - 1,
        frameon=False,
        loc="upper right",
        ncols=2,
    )
    _bars(bottom, x, sr.group_budget[:g], 0.7, colors)
    bottom.set_ylim(0, max(1, int(sr.group_budget[:g].max())) * 1.05)
    bottom.set_ylabel("tokens kept (k_g)", fontsize=FONT_SIZE)
    bottom.set_xlabel("semantic group (PSCA component, strongest first)", fontsize=FONT_SIZE)
    bottom.yaxis.get_major_locator().set_params(integer=True)
    for ax in (top, bottom):
        _style(ax)
        ax.set_xlim(0.3, g + 0.7)
        # fixed label positions (clear of 3-digit tick labels), so a draw needn't measure the ticks
        _place_label(ax.yaxis, ax, 0.0, 0.5, dx=-0.44)
    _place_label(bottom.xaxis, bottom, 0.5, 0.0, dy=-0.29)
    # The top panel's x axis (tick marks only: its labels are the bottom panel's) is not drawn:
    # with one tick per group, its tick objects are a sizeable share of the drawing time
    # (figures in PERFORMANCE.md, "Views and overlays").
    top.xaxis.set_visible(False)
    if g <= 40:
        bottom.set_xticks(x)
        if g > 24:  # two-digit labels, one per group: smaller, so that they stay apart
            bottom.tick_params(axis="x", labelsize=FONT_SIZE - 3)
    else:
        bottom.xaxis.get_major_locator().set_params(integer=True)
    if note:
        bottom.text(1.0, -0.45, f"first {g} of {sr.num_groups} groups", transform=bottom.transAxes, ha="right")
    return fig


def _place_label(axis, ax, x: float, y: float, *, dx: float = 0.0, dy: float = 0.0) -> None:
    """Pin ``axis``' label at point (x, y) of ``ax`` shifted by (dx, dy) inches (turns off
    matplotlib's per-draw placement, which measures every tick label)."""
    axis.set_label_coords(x, y, transform=ax.transAxes + ScaledTranslation(dx, dy, ax.figure.dpi_scale_trans))


def _bars(ax, x, heights, width, colors, *, alpha: float = 1.0, edge: bool = False) -> None:
    """Vertical bars from 0 as one PolyCollection (drawn like ``ax.bar``, far fewer artists)."""
    h = np.asarray(heights, dtype=np.float64)
    x0, x1 = x - width / 2, x + width / 2
    verts = np.stack([np.stack([x0, np.zeros_like(h)], -1), np.stack([x0, h], -1),
                      np.stack([x1, h], -1), np.stack([x1, np.zeros_like(h)], -1)], axis=1)
    rgba = np.asarray(colors, dtype=np.float64)[:, :3]
    rgba = np.concatenate([rgba, np.full((len(rgba), 1), alpha)], axis=1)
    ax.add_collection(PolyCollection(verts, facecolors=rgba, edgecolors=rgba if edge else "none",
                                     linewidths=0.8 if edge else 0.0, closed=True), autolim=False)


# ---- 6. dynamic ratio ----------------------------------------------------------------------
def complexity_label(phi: float, reference_phis: Sequence[float]) -> str:
    """``"low"``, ``"medium"`` or ``"high"``: the image's φ against the reference tertiles."""
    ref = np.asarray(reference_phis, dtype=np.float64)
    if ref.size == 0:
        raise ValueError("need at least one reference φ")
    lo, hi = np.percentile(ref, [100 / 3, 200 / 3])
    return "low" if phi < lo else ("high" if phi > hi else "medium")


def plot_dynamic_ratio(
    phi: float,
    reference_phis: Sequence[float],
    budget: int,
    *,
    mean_budget: int | None = None,
    bins: int = 20,
    label: str = "this image",
) -> Figure:
    """Where this image's information score φ = 1 − ρ sits among reference images, and
    the token budget it was given.

    A histogram of ``reference_phis`` (e.g. a calibration set), a marker at ``phi``
    annotated with ``budget``. With ``mean_budget`` (K̄) the top axis also shows the
    budget any φ would get under K = K̄ · φ / mean(reference φ).
    """
    ref = np.asarray(reference_phis, dtype=np.float64)
    if ref.size == 0:
        raise ValueError("need at least one reference φ")
    phi = float(phi)
    secondary = mean_budget is not None and float(ref.mean()) > 0
    width, height = 6.6, 3.3
    # fixed margins (inches); on top: the secondary axis' ticks and label, then the title
    top_margin = 0.8 if secondary else 0.36
    fig = DynamicRatioFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.62 / width, right=1 - 0.16 / width, bottom=0.56 / height, top=1 - top_margin / height)
    ax = fig.subplots()
    lo = min(ref.min(), phi)
    hi = max(ref.max(), phi)
    span = max(hi - lo, 1e-3)
    edges = np.linspace(lo - 0.05 * span, hi + 0.05 * span, bins + 1)
    counts, _, _ = ax.hist(ref, bins=edges, color="#9DB4C8", edgecolor="white")
    ax.set_xlim(edges[0] - 0.05 * (edges[-1] - edges[0]), edges[-1] + 0.05 * (edges[-1] - edges[0]))  # = autoscale
    ax.set_ylim(0, max(counts.max(), 1) * 1.45)  # headroom for the label
    ax.axvline(phi, color="#D55E00", linewidth=2.2)
    level = complexity_label(phi, ref)
    note = ax.annotate(
        f"{label}:\nφ = {phi:.3f} ({level} complexity) → {budget} tokens",  # two short lines fit beside any φ
        xy=(phi, ax.get_ylim()[1] * 0.97),
        xytext=(8 if phi < edges.mean() else -8, 0),
        textcoords="offset points",
        ha="left" if phi < edges.mean() else "right",
        va="top",
        fontsize=FONT_SIZE,
        color="#8A3A00",
        bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="#D55E00", alpha=0.9),
    )
    ax.set_xlabel("information score φ = 1 − mean patch similarity (higher = more varied image)", fontsize=FONT_SIZE)
    # centred on the figure (the label is nearly as wide as it), at a fixed distance below the axes
    ax.xaxis.set_label_coords(0.5, -0.52 / (height - 0.56 - top_margin),
                              transform=blended_transform_factory(fig.transFigure, ax.transAxes))
    ax.xaxis.label.set_va("bottom")
    ax.set_ylabel(f"reference images (of {ref.size})", fontsize=FONT_SIZE)
    # fixed title position (no per-draw search for the top axis' extent): above the secondary axis
    subject = label.split(",")[0]  # "this frame", "this temporal patch", "this image"
    title = f"How complex is {subject}? Varied ones get more tokens"  # fits the width for every subject
    ax.set_title(title, fontsize=FONT_SIZE + 1, y=1.0, pad=35 if secondary else 6)
    ax.yaxis.get_major_locator().set_params(integer=True)
    dynamic = [note]
    if secondary:
        phi_ref = float(ref.mean())
        top = ax.secondary_xaxis(
            "top", functions=(lambda p: mean_budget * p / phi_ref, lambda k: k * phi_ref / mean_budget)
        )
        top.set_xlabel(f"tokens for that φ (mean budget {mean_budget})", fontsize=FONT_SIZE - 1)
        top.tick_params(labelsize=FONT_SIZE - 1)
        _place_label(top.xaxis, ax, 0.5, 1.0, dy=0.258)  # above its tick labels (as placed automatically)
        top.xaxis.label.set_va("bottom")
        top.set_zorder(2.6)  # over the marker line and the spines, under the label (as when blitted)
        dynamic.append(top)
    _style(ax)
    # what changes when only the budget moves (the label and the top axis) is drawn over a
    # cached rendering of the rest (histogram, marker, labels, title), keyed by what shapes it
    fig.set_background_key((ref.tobytes(), phi, bins, secondary, title, tuple(ax.get_position().bounds)), dynamic)
    return fig


def plot_frame_budgets(
    budgets: Sequence[int],
    *,
    phis: Sequence[float] | None = None,
    times: Sequence[float] | None = None,
    noun: str = "video frame",
) -> Figure:
    """Tokens given to each sampled video frame (bars), optionally with each frame's
    information score φ (line, right axis). x = frame time in seconds when ``times``
    is given, else the frame number. ``noun``: what the bars are (``"view"`` for the crops or
    tiles of one picture, ``"temporal patch"``)."""
    b = np.asarray(budgets, dtype=np.float64)
    if b.size == 0:
        raise ValueError("need at least one frame budget")
    x = np.arange(1, b.size + 1)
    fig = _figure(max(5.0, min(10.0, 0.5 * b.size + 3.0)), 3.2)
    ax = fig.subplots()
    bars = ax.bar(x, b, color="#0072B2", width=0.7)
    ax.bar_label(bars, labels=[str(int(v)) for v in b], fontsize=FONT_SIZE - 2, padding=2)
    ax.set_ylabel("tokens", fontsize=FONT_SIZE)
    plural = noun.replace("patch", "patches") if noun.endswith("patch") else noun + "s"
    ax.set_title(f"Tokens per {noun} ({int(b.sum())} in total; busier {plural.split()[-1]} get more)",
                 fontsize=FONT_SIZE + 1)
    ax.set_xticks(x)
    if times is not None:
        t = np.asarray(times, dtype=np.float64)
        ax.set_xticklabels([f"{v:.1f}s" for v in t])
        ax.set_xlabel("frame time", fontsize=FONT_SIZE)
    else:
        ax.set_xlabel(noun.split()[-1], fontsize=FONT_SIZE)
    ax.set_ylim(0, b.max() * 1.18)
    _style(ax)
    if phis is not None:
        ax2 = ax.twinx()
        ax2.plot(x, np.asarray(phis, dtype=np.float64), color="#D55E00", marker="o", linewidth=1.8)
        ax2.set_ylabel("information φ", color="#D55E00", fontsize=FONT_SIZE)
        ax2.tick_params(axis="y", colors="#D55E00", labelsize=FONT_SIZE - 1)
        ax2.spines[["top"]].set_visible(False)
    return fig


def contact_sheet(
    images: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    *,
    cols: int = 4,
    pad: int = 6,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Tile per-frame overlays into one uint8 image, row by row, ``cols`` per row.

    Tiles of different sizes are placed top-left in cells as large as the largest
    tile. ``labels`` (e.g. ``"t=1.5s · 42 tokens"``) are drawn as chips on each tile.
    """
    if len(images) == 0:
        raise ValueError("contact_sheet needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    tiles = [as_rgb_uint8(im).copy() for im in images]
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    sheet = np.empty((rows * th + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3), dtype=np.uint8)
    sheet[...] = background
    for i, t in enumerate(tiles):
        if labels is not None:
            label_inplace(t, labels[i], scale=max(0.8, tw / 336))
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
    return sheet
