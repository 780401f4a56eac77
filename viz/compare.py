"""Pictures for "Compare methods": kept-token overlays side by side, the stability of
PruneSID's randomised PCA, and budget sweeps. Pure: arrays and Selections in, uint8
arrays or matplotlib Figures out (no UI code; see :mod:`viz` for the conventions).

    tiles = method_overlays(image, [("PruneSID", sel_a), ("VisionZip", sel_b)], size=336)
    sheet = comparison_sheet(image, [("PruneSID", sel_a), ("VisionZip", sel_b)])
    fig = plot_stability(jaccard_vs_exact, pairwise, seeds)
    fig = plot_budget_sweep(budgets, {"PruneSID": [...], "Random": [...]}, ylabel="KL (nats)",
                            x={"PruneSID": [...tokens handed over...], "Random": [...]})
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from prunesid.result import Selection

from ._draw import LegendItem, blend, colorbar_band, grayscale, legend_band, stack_below
from .grid import as_rgb_uint8
from .overlays import _line_width, _scale, draw_kept_tokens, prepare
from .palette import KEPT_HEX, group_hex, hex_to_rgb
from .plots import FONT_SIZE, _figure, _style, contact_sheet

MERGED_HEX = "#56B4E9"
"""Tint of patches folded into merged (contextual) tokens: sky blue, apart from the kept yellow."""
FREQUENCY_CMAP = "viridis"
"""How often a patch is kept across seeds (0 → 1)."""
NOTE_CHARS = 118
"""Characters per line of a chart's caption (8-inch figure, 9 pt)."""


def method_colors(names: Sequence[str]) -> dict[str, str]:
    """One stable colour per method (the project palette, in the given order)."""
    return dict(zip(names, group_hex(len(names))))


# ---- overlays ------------------------------------------------------------------------------
def draw_method_tokens(
    image: np.ndarray,
    selection: Selection,
    row: int = 0,
    *,
    size: int | None = None,
    grid_shape: tuple[int, int] | None = None,
    merged_alpha: float = 0.4,
    legend: bool = False,
) -> np.ndarray:
    """Kept tokens of any method (dropped cells darkened, kept cells outlined, as
    :func:`viz.draw_kept_tokens`); patches folded into merged tokens (VisionZip's contextual
    tokens) are tinted blue instead of dimmed, so "kept", "merged" and "dropped" read apart."""
    out = draw_kept_tokens(image, selection, row, size=size, grid_shape=grid_shape, legend=False)
    _, grid, sr = prepare(image, selection, row, size, grid_shape)
    merged = None
    if selection.merged_into is not None:
        merged = selection.merged_into[row].cpu().numpy() >= 0
        tint = blend(out, np.array(hex_to_rgb(MERGED_HEX), dtype=np.float32), merged_alpha)  # over the dimmed cells
        out = np.where(merged[grid.cell_map][..., None], tint, out)
    if not legend:
        return out
    kept = int(sr.kept.sum())
    keep_row = selection.keep_row(row)
    has_cls = bool((keep_row == 0).any())
    n_merged = int(selection.num_tokens[row]) - keep_row.numel()
    items = [LegendItem("box", KEPT_HEX, f"kept: {kept} patches" + (" + CLS" if has_cls else ""))]
    if merged is not None:
        items.append(LegendItem("fill", MERGED_HEX, f"merged into {n_merged} tokens: {int(merged.sum())} patches"))
    items.append(LegendItem("fill", (60, 60, 60), f"dropped: {sr.num_patches - kept - (0 if merged is None else int(merged.sum()))}"))
    return stack_below(out, legend_band(items, out.shape[1], _scale(grid)))


def token_parts(selection: Selection, row: int = 0) -> str:
    """Where row ``row``'s tokens come from, e.g. ``"CLS + 53 patches + 10 merged"``."""
    keep = selection.keep_row(row)
    parts = []
    if bool((keep == 0).any()):
        parts.append("CLS")
    parts.append(f"{int((keep > 0).sum())} patches")
    merged = int(selection.num_tokens[row]) - keep.numel()
    if merged:
        parts.append(f"{merged} merged")
    return " + ".join(parts)


def token_caption(label: str, selection: Selection, row: int = 0, *, handed: int | None = None,
                  detail: bool = True) -> str:
    """E.g. ``"VisionZip · 64 tokens (CLS + 53 patches + 10 merged)"``; ``detail=False``: ``"VisionZip · 64 tokens"``.

    ``handed``: the tokens the language model actually receives, when a caller counted them (all
    views of the media, or an unpruned prompt); the row's own breakdown is then left out unless
    it adds up to that count."""
    count = int(selection.num_tokens[row])
    shown = count if handed is None else int(handed)
    text = f"{label} · {shown} tokens"
    return text + (f" ({token_parts(selection, row)})" if detail and shown == count else "")


def method_overlays(
    image: np.ndarray,
    labelled: Sequence[tuple[str, Selection]],
    row: int = 0,
    *,
    size: int | None = 336,
    grid_shape: tuple[int, int] | None = None,
    legend: bool = True,
    handed: Sequence[int | None] | None = None,
    detail: bool = True,
) -> list[tuple[np.ndarray, str]]:
    """``(overlay, caption)`` per method, ready for a gallery (``legend``: a key under each).

    ``handed``: per method, the tokens the language model receives (see :func:`token_caption`);
    ``detail=False``: short captions (label and count), for narrow gallery tiles."""
    counts = list(handed) if handed is not None else [None] * len(labelled)
    if len(counts) != len(labelled):
        raise ValueError(f"{len(counts)} counts for {len(labelled)} selections")
    return [(draw_method_tokens(image, sel, row, size=size, grid_shape=grid_shape, legend=legend),
             token_caption(label, sel, row, handed=n, detail=detail)) for (label, sel), n in zip(labelled, counts)]


def comparison_sheet(
    image: np.ndarray,
    labelled: Sequence[tuple[str, Selection]],
    row: int = 0,
    *,
    size: int = 336,
    cols: int = 4,
    grid_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """All methods' overlays tiled into one uint8 image, each labelled with its caption."""
    if not labelled:
        raise ValueError("comparison_sheet needs at least one selection")
    tiles = [draw_method_tokens(image, sel, row, size=size, grid_shape=grid_shape) for _, sel in labelled]
    return contact_sheet(tiles, [token_caption(label, sel, row) for label, sel in labelled], cols=cols)


def draw_keep_frequency(
    image: np.ndarray,
    frequency: np.ndarray,
    exact_kept: np.ndarray | None = None,
    *,
    size: int | None = 336,
    grid_shape: tuple[int, int] | None = None,
    alpha: float = 0.65,
    title: str = "share of randomised-PCA runs that keep each patch",
    legend: bool = True,
) -> np.ndarray:
    """Per patch, how often it was kept over several runs (colour), with the exact run's kept
    patches outlined in white. ``frequency`` is float ``[N]`` in 0..1, ``exact_kept`` bool ``[N]``."""
    from .grid import PatchGrid

    frequency = np.asarray(frequency, dtype=np.float64)
    n = frequency.shape[0]
    rows, cols = grid_shape or (int(round(np.sqrt(n))),) * 2
    if rows * cols != n:
        raise ValueError(f"grid {rows}x{cols} does not match {n} patches")
    image = as_rgb_uint8(image)
    if size is None:
        grid = PatchGrid.for_image(image, rows, cols)
    else:
        grid = PatchGrid.for_display(size, rows, cols)
        image = grid.fit(image)
    heat = (colormaps[FREQUENCY_CMAP](np.clip(frequency, 0, 1))[:, :3] * 255.0).astype(np.float32)
    cell_alpha = np.where(frequency > 0, alpha, 0.0)[grid.cell_map]
    out = blend(blend(grayscale(image), np.zeros(3, np.float32), 0.5), grid.paint(heat), cell_alpha)
    if exact_kept is not None:
        edge = np.asarray(exact_kept, dtype=bool)[grid.cell_map] & grid.border_mask(_line_width(grid))
        out[edge] = (255, 255, 255)
    if not legend:
        return out
    band = colorbar_band(FREQUENCY_CMAP, 0.0, 1.0, title, out.shape[1], _scale(grid))
    if exact_kept is not None:
        band = np.concatenate([band, legend_band([LegendItem("box", "#FFFFFF", "kept by the exact PCA", edge="#000000")],
                                                 out.shape[1], _scale(grid))])
    return stack_below(out, band)


# ---- charts --------------------------------------------------------------------------------
def plot_stability(
    jaccard_vs_exact: Sequence[float],
    pairwise: np.ndarray,
    seeds: Sequence[int],
    *,
    exact_repeat: float = 1.0,
    num_tokens: int | None = None,
) -> Figure:
    """Left: Jaccard of each randomised-PCA run's kept set with the exact PCA's (bars), and
    of the exact mode with itself (dashed line). Right: Jaccard between the seeds (heatmap)."""
    j = np.asarray(jaccard_vs_exact, dtype=np.float64)
    p = np.asarray(pairwise, dtype=np.float64)
    if j.size == 0 or p.shape != (j.size, j.size):
        raise ValueError(f"need one Jaccard per seed and an S×S matrix, got {j.size} and {p.shape}")
    fig = _figure(10.0, 3.8)
    left, right = fig.subplots(1, 2, width_ratios=[1.25, 1])
    x = np.arange(j.size)
    bars = left.bar(x, j, color="#0072B2", width=0.65, label="randomised PCA vs exact")
    left.bar_label(bars, labels=[f"{v:.2f}" for v in j], fontsize=FONT_SIZE - 2, padding=2)
    left.axhline(exact_repeat, color="#D55E00", linestyle="--", linewidth=1.6,
                 label=f"exact vs exact = {exact_repeat:.2f}")
    left.axhline(j.mean(), color="#0072B2", linestyle=":", linewidth=1.2, label=f"mean = {j.mean():.2f}")
    left.set_ylim(0, 1.38)
    left.set_xticks(x, [str(s) for s in seeds])
    left.set_xlabel("seed of the randomised PCA", fontsize=FONT_SIZE)
    left.set_ylabel("Jaccard of kept patches", fontsize=FONT_SIZE)
    what = f" ({num_tokens} tokens)" if num_tokens is not None else ""
    left.set_title(f"How much the kept set moves{what}", fontsize=FONT_SIZE + 1)
    left.legend(fontsize=FONT_SIZE - 2, frameon=False, loc="upper center", ncols=2)
    _style(left)
    im = right.imshow(p, vmin=min(0.5, float(p.min())), vmax=1.0, cmap="viridis")
    right.set_xticks(x, [str(s) for s in seeds])
    right.set_yticks(x, [str(s) for s in seeds])
    right.set_title("seed vs seed (Jaccard)", fontsize=FONT_SIZE + 1)
    right.tick_params(labelsize=FONT_SIZE - 1)
    if j.size <= 10:
        for a in range(j.size):
            for b in range(j.size):
                right.text(b, a, f"{p[a, b]:.2f}", ha="center", va="center", fontsize=FONT_SIZE - 3,
                           color="white" if p[a, b] < 0.85 else "black")
    fig.colorbar(im, ax=right, shrink=0.85)
    return fig


def _token_ticks(low: float, high: float, budgets: np.ndarray, on_budgets: bool = True) -> list[float]:
    """Ticks of a log₂ token axis: the budgets when some line's points sit on them (``on_budgets``) and
    the others lie among them, else powers of two (ticks at K under points that are not at K would
    read as budgets)."""
    if on_budgets and budgets.size and low >= budgets.min() / 1.25 and high <= budgets.max() * 1.25:
        ticks = []
        for t in sorted(set(budgets.tolist())):
            if not ticks or t / ticks[-1] >= 1.12:  # 576 and 577 would print over each other
                ticks.append(t)
        return ticks
    first, last = int(np.floor(np.log2(max(low, 1.0)))), int(np.ceil(np.log2(max(high, 1.0))))
    return [float(2 ** e) for e in range(first, last + 1)]


def plot_budget_sweep(
    budgets: Sequence[int],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str = "Fidelity against budget",
    lower_is_better: bool = True,
    marks: Sequence[int] = (),
    mark_label: str = "K = {k}",
    colors: Mapping[str, str] | None = None,
    ax_extra: tuple[str, Mapping[str, Sequence[float]]] | None = None,
    x: Mapping[str, Sequence[float]] | None = None,
    xlabel: str = "visual tokens handed to the LLM (log scale)",
    note: str | None = None,
) -> Figure:
    """One line per method: a figure against the visual tokens handed over (log-scaled x).

    Args:
        series: ``{label: [value per budget]}`` (NaN for missing points).
        x: ``{label: [tokens handed over per budget]}``: where each point goes on the token axis.
            A method whose count is not the budget (PruneSID-Dyn, which scales it by the image's φ;
            Qwen's K′; all views of a media item) is drawn at its own count. Default: the budgets,
            for callers whose every method hands over exactly the budget.
        marks: token counts to mark with a vertical line (e.g. the current slider value),
            labelled ``mark_label.format(k=...)`` in the legend.
        ax_extra: ``(ylabel, series)`` for a second panel below sharing the x axis
            (e.g. the model-free coverage next to the model's fidelity).
        note: a caption under the axes (what the points are, which methods moved off their budget).
    """
    b = np.asarray(budgets, dtype=np.float64)
    if b.size == 0 or not series:
        raise ValueError("need at least one budget and one method")
    for label, values in series.items():
        if len(values) != b.size:
            raise ValueError(f"{label}: {len(values)} values for {b.size} budgets")
    xs = {label: np.asarray((x or {}).get(label, b), dtype=np.float64) for label in series}
    for label, where in xs.items():
        if where.shape != b.shape:
            raise ValueError(f"{label}: {where.size} token counts for {b.size} budgets")
        if (where <= 0).any():
            raise ValueError(f"{label}: token counts must be positive, got {where.tolist()}")
    colors = dict(colors or method_colors(list(series)))
    panels = [(ylabel, series)] + ([ax_extra] if ax_extra else [])
    note_lines = [line for part in (note or "").split("\n") for line in textwrap.wrap(part, NOTE_CHARS) or [""]]
    note_h = 0.0 if not note else 0.17 * len(note_lines) + 0.12  # inches
    height = 3.6 * len(panels) + 0.4 + note_h
    fig = _figure(8.0, height)
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    for ax, (label_y, data) in zip(axes, panels):
        for i, (label, values) in enumerate(data.items()):
            style = "-" if i < 8 else "--"
            where = xs.get(label, b)
            order = np.argsort(where, kind="stable")
            ax.plot(where[order], np.asarray(values, dtype=np.float64)[order], style, marker="o", markersize=4,
                    linewidth=1.8, label=label, color=colors.get(label))
        for j, k in enumerate(marks):
            ax.axvline(k, color="#888888", linewidth=1.0, linestyle=":",
                       label=mark_label.format(k=k) if ax is axes[0] and j == 0 else None)
        ax.set_ylabel(label_y, fontsize=FONT_SIZE)
        _style(ax)
    axes[0].set_title(title + (" (lower is better)" if lower_is_better else ""), fontsize=FONT_SIZE + 1)
    axes[0].legend(fontsize=FONT_SIZE - 2, frameon=False, ncols=2)
    every = np.concatenate(list(xs.values()))
    axes[-1].set_xscale("log", base=2)
    ticks = _token_ticks(float(every.min()), float(every.max()), b, any(np.array_equal(v, b) for v in xs.values()))
    axes[-1].set_xticks(ticks, [str(int(v)) for v in ticks])
    axes[-1].minorticks_off()
    axes[-1].set_xlabel(xlabel, fontsize=FONT_SIZE)
    if note:
        fig.text(0.012, 0.06 / height, "\n".join(note_lines), fontsize=FONT_SIZE - 2, color="#333333", ha="left",
                 va="bottom", linespacing=1.25)
        fig.get_layout_engine().set(rect=(0, note_h / height, 1, 1 - note_h / height))
    return fig
