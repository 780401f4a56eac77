"""The combination study's picture: fidelity and prefill cost against total compression for each
variant (pruning before the language model, inside it, or both), with the token schedule of each
run drawn beside it. Pure: plain numbers in, a matplotlib Figure out.

    fig = plot_combination(rows, schedule_budget=64)

``rows`` are the study's rows (``CombinationStudy.rows()``): dicts with ``kind``, ``kind_label``,
``budget``, ``compression``, ``first_token_kl``, ``flops_vs_full``, ``time_vs_full`` (None: not
drawn), optionally ``time_vs_full_spread`` (``[low, high]``: the middle half of the timing passes,
drawn as a bar; ``time_resolved`` False: no time drawn) and ``image_tokens_per_layer`` (its first
entry: the image tokens handed to the language model); the ``"full"`` row is the unpruned reference.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from .plots import FONT_SIZE, _figure, _style

KIND_COLORS = {"full": "#444444", "prunesid": "#0072B2", "fastv": "#E69F00", "prunesid+fastv": "#009E73",
               "prunesid+pyramiddrop": "#CC79A7"}
KIND_MARKERS = {"prunesid": "o", "fastv": "s", "prunesid+fastv": "^", "prunesid+pyramiddrop": "D"}
KL_FLOOR = 1e-6
"""Where a KL of zero is drawn on the log axis."""


def _log_ticks(axis, low: float, high: float) -> None:
    """Plain-number ticks (1, 2, 5, 10, 20, 50, …) on a log axis spanning ``low``–``high``."""
    steps = [m * 10.0 ** e for e in range(-1, 5) for m in (1, 2, 5)]
    inside = [t for t in steps if low / 1.05 <= t <= high * 1.05] or [low, high]
    axis.set_major_locator(FixedLocator(inside))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _timed(row: Mapping) -> bool:
    """Whether a row's time is drawn: measured, and long enough for the clock to resolve."""
    return row.get("time_vs_full") is not None and row.get("time_resolved", True)


def _count(value: float) -> str:
    """A token count (a mean over items may be fractional)."""
    return f"{value:g}" if float(value) != int(value) else str(int(value))


def _by_kind(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    out: dict[str, list[Mapping]] = {}
    for row in rows:
        if row["kind"] != "full":
            out.setdefault(row["kind"], []).append(row)
    return {kind: sorted(group, key=lambda r: r["compression"]) for kind, group in out.items()}


def plot_combination(rows: Sequence[Mapping], *, schedule_budget: int | None = None,
                     title: str = "Pruning before and inside the language model") -> Figure:
    """Left: first-token KL against total compression (log–log), one line per variant. Middle:
    prefill FLOPs (solid) and measured prefill time (dotted) relative to no pruning. Right: the image
    tokens each decoder layer sees, for every variant at ``schedule_budget`` (default: the budget
    nearest 64) and without pruning."""
    groups = _by_kind(rows)
    full = [r for r in rows if r["kind"] == "full"]
    if not groups or not full:
        raise ValueError("need the unpruned row and at least one variant")
    full = full[0]
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    shown = schedule_budget if schedule_budget in budgets else min(budgets, key=lambda b: abs(b - 64))
    fig = _figure(15.0, 5.6)
    kl_ax, cost_ax, schedule_ax = fig.subplots(1, 3, width_ratios=[1, 1, 1.15])
    for kind, group in groups.items():
        x = [r["compression"] for r in group]
        style = dict(color=KIND_COLORS.get(kind), marker=KIND_MARKERS.get(kind, "o"), markersize=5, linewidth=1.6)
        kl_ax.plot(x, [max(r["first_token_kl"], KL_FLOOR) for r in group], label=group[0]["kind_label"], **style)
        for r in group:
            if not r["first_token_agrees"]:  # a hollow ring: the first answer token changed
                kl_ax.plot(r["compression"], max(r["first_token_kl"], KL_FLOOR), "o", markersize=11,
                           markerfacecolor="none", markeredgecolor="#D55E00", markeredgewidth=1.2)
        cost_ax.plot(x, [r["flops_vs_full"] for r in group], **style)
        if all(_timed(r) for r in group):
            cost_ax.plot(x, [r["time_vs_full"] for r in group], color=style["color"], marker=style["marker"],
                         markersize=4, linewidth=1.1, linestyle=":", alpha=0.8)
            for r in group:  # the run-to-run spread: differences inside it are noise
                if r.get("time_vs_full_spread"):
                    low, high = r["time_vs_full_spread"]
                    cost_ax.plot([r["compression"]] * 2, [low, high], color=style["color"], linewidth=3.0,
                                 alpha=0.35, solid_capstyle="butt")
    spread = [r["compression"] for g in groups.values() for r in g]
    kl_ax.set_xscale("log")
    kl_ax.set_yscale("log")
    _log_ticks(kl_ax.xaxis, min(spread), max(spread))
    kl_ax.set_xlabel("total compression (image tokens over all layers, ×)", fontsize=FONT_SIZE)
    kl_ax.set_ylabel("first-token KL to no pruning (nats)", fontsize=FONT_SIZE)
    kl_ax.set_title("Fidelity (lower is better)", fontsize=FONT_SIZE + 1)
    changed = Line2D([], [], marker="o", linestyle="none", markersize=9, markerfacecolor="none",
                     markeredgecolor="#D55E00", label="first token changed")
    kl_ax.legend(handles=[*kl_ax.get_legend_handles_labels()[0], changed], fontsize=FONT_SIZE - 2, frameon=False)
    _style(kl_ax)
    cost_ax.set_xscale("log")
    _log_ticks(cost_ax.xaxis, min(spread), max(spread))
    cost_ax.axhline(1.0, color=KIND_COLORS["full"], linewidth=0.8, linestyle="--")
    timed = [v for g in groups.values() for r in g if _timed(r)
             for v in [r["time_vs_full"], *(r.get("time_vs_full_spread") or [])]]
    cost_ax.set_ylim(0, 1.08 * max([1.0, *timed]))
    cost_ax.set_xlabel("total compression (×)", fontsize=FONT_SIZE)
    cost_ax.set_ylabel("prefill, relative to no pruning", fontsize=FONT_SIZE)
    spread = any(r.get("time_vs_full_spread") for g in groups.values() for r in g if _timed(r))
    cost_ax.set_title(("Prefill FLOPs (solid), measured time (dotted)" + (
        "\nbars: middle half of the passes (overlapping: not told apart)" if spread else ""))
        if timed else "Prefill FLOPs (estimated)", fontsize=FONT_SIZE + 1 if not spread else FONT_SIZE)
    _style(cost_ax)
    num_layers = len(full["image_tokens_per_layer"])
    edges = np.arange(num_layers + 1) + 0.5
    drawn = [(f"{full['kind_label']}: {_count(full['image_tokens_per_layer'][0])} in", full["image_tokens_per_layer"],
              KIND_COLORS["full"], "--")]
    drawn += [(f"{r['kind_label']}: {_count(r['image_tokens_per_layer'][0])} in ({r['compression']:.1f}×)",
               r["image_tokens_per_layer"], KIND_COLORS.get(kind), "-")
              for kind, group in groups.items() for r in group if r["budget"] == shown]
    for order, (label, counts, color, style) in enumerate(drawn):
        # Later lines thinner, so that equal schedules stay visible on top of each other.
        width = 1.6 if order == 0 else max(1.2, 5.0 - 1.1 * (order - 1))
        schedule_ax.stairs(counts, edges, color=color, linestyle=style, linewidth=width,
                           label=label, baseline=None)
    schedule_ax.set_yscale("log")
    every = [c for _, counts, _, _ in drawn for c in counts if c > 0]
    _log_ticks(schedule_ax.yaxis, min(every), max(every))
    schedule_ax.set_ylim(min(every) / 1.4, max(every) * 1.4)
    schedule_ax.set_xlim(0.5, num_layers + 0.5)
    schedule_ax.set_xlabel("decoder layer", fontsize=FONT_SIZE)
    schedule_ax.set_ylabel("image tokens the layer sees", fontsize=FONT_SIZE)
    schedule_ax.set_title(f"Token schedule at budget {shown}", fontsize=FONT_SIZE + 1)
    schedule_ax.set_xticks(range(1, num_layers + 1, max(1, num_layers // 8)))
    schedule_ax.legend(fontsize=FONT_SIZE - 2, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                       ncols=2, title="image tokens handed to the LLM, and the total compression",
                       title_fontsize=FONT_SIZE - 2)
    _style(schedule_ax)
    fig.suptitle(title, fontsize=FONT_SIZE + 2)
    return fig
