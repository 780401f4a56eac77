"""Turn an :class:`~studio.session.Analysis` into the pictures and text of every view.

Pure functions over arrays: no Gradio here, so the handlers and the slider benchmark
share exactly this code.
"""
from __future__ import annotations


import numpy as np

import viz
from prunesid_vlm.pipeline import token_counts, view_budgets

from .session import Analysis

DISPLAY = 504
"""Pixel side of the main overlays (21 px per patch: the 24×24 grid stays crisp)."""
ORIGINAL_SIDE = 768
"""Longer side of the picture on the original image (large photos reduced, small ones enlarged)."""
THUMB = 336
"""Pixel side of the per-frame overlays in the video gallery."""
MAX_GROUP_ANNOTATIONS = 16
"""Groups shown as separate, hoverable legend entries (all of them up to K = 67); beyond, the
smaller groups are pooled in one grey entry so the legend leaves room for the picture."""
OTHER_GROUPS_HEX = "#9a9a9a"


PARTS = ("kept", "original", "groups", "nms", "importance", "group_chart", "dynamic")
"""The views, one per tab. The slider redraws only the visible one; the others are drawn
when their tab is opened (see ``studio.handlers.on_tab``)."""


def budget_label(k: int, num_patches: int = 576) -> str:
    """What the slider says while it moves, before a selection is made: K as set (counting the CLS
    token, as the paper does). The tokens handed over are said once the selection is on screen
    (``studio.handlers.budget_text``): the dynamic ratio and the model's views change them."""
    return f"K = {int(k)} (as the paper counts: per view, with the CLS where there is one) · release to select"


def render(analysis: Analysis, view: int = 0, parts=PARTS) -> dict:
    """The requested ``parts`` of tower view ``view`` under the analysis's current selection.

    Returns a dict: ``kept`` (original, overlay) for an ImageSlider; ``groups``
    (base, [(mask, label)], color_map) and ``groups_note``; ``nms`` and ``importance`` images;
    ``group_chart``, ``dynamic_chart`` (+ ``frame_chart`` for several views) matplotlib
    Figures and ``dynamic_text``.
    """
    sel = analysis.selection
    if sel is None:
        raise ValueError("nothing selected yet")
    view = max(0, min(int(view), analysis.num_views - 1))
    pixels = analysis.view_pixels[view]
    grid = analysis.grid
    out: dict = {}
    if "kept" in parts:
        overlay = viz.draw_kept_tokens(pixels, sel, view, size=DISPLAY, grid_shape=grid, legend=False)
        out["kept"] = (viz.PatchGrid.for_display(DISPLAY, *grid).fit(pixels), overlay)
        out["kept_slider"] = out["kept"]
    if "original" in parts:
        out["original"] = on_original(analysis, view)
    if "groups" in parts:
        out["groups"], out["groups_note"] = _group_annotations(pixels, sel, view, grid)
    if "nms" in parts:
        focus, choices = nms_focus(analysis, view)
        out["nms"] = viz.draw_nms(pixels, sel, view, size=DISPLAY, grid_shape=grid,
                                  focus_group=None if focus < 0 else focus)
        out["nms_group"] = (focus, choices)
        out["nms_note"] = nms_note(analysis, view)
    if "importance" in parts:
        out["importance"] = viz.draw_importance(
            pixels, sel, view, size=DISPLAY, grid_shape=grid, mark_kept=True,
            title=("importance = loading on its PSCA component (kept tokens outlined)" if analysis.feats.rule == "qwen"
                   else "importance = attention from the CLS token (kept tokens outlined)"))
    if "group_chart" in parts:
        out["group_chart"] = viz.plot_group_budgets(sel, view)
    if "dynamic" in parts:
        out["dynamic_chart"], out["dynamic_text"] = _dynamic(analysis, view)
        out["frame_chart"] = frame_chart(analysis)
    return out


def on_original(analysis: Analysis, view: int) -> np.ndarray:
    """The original image (or frame) of ``view`` at its own resolution: what the processor cuts
    off or pads, where every view of it lies, and the kept tokens of ``view`` in place."""
    source = analysis.feats.sources[view]
    same = [v for v in range(analysis.num_views) if analysis.feats.sources[v] == source]
    labels = None if len(same) == 1 else [_short_label(analysis, v) for v in same]
    original = np.asarray(analysis.images[source].convert("RGB"))
    return viz.draw_on_original(original, [analysis.views[v].box for v in same], focus=same.index(view),
                                kept=analysis.selection.kept_patches[view].numpy(), grid_shape=analysis.grid,
                                labels=labels, max_side=ORIGINAL_SIDE)


def _short_label(analysis: Analysis, view: int) -> str:
    info = analysis.views[view]
    return f"{info.kind} {info.crop_row + 1},{info.crop_col + 1}" if info.kind in ("crop", "tile") else info.kind


def nms_focus(analysis: Analysis, view: int) -> tuple[int, list[tuple[str, int]]]:
    """The group the NMS view shows in full (−1: all of them) and the picker's ``(label, group)``
    choices: by default the group with the most near-duplicate links, since all groups' links at
    once cross into an unreadable tangle."""
    sr = viz.selection_row(analysis.selection, view)
    links = np.bincount(sr.group[sr.suppressed_by >= 0], minlength=sr.num_groups)[: sr.num_groups]
    groups = [g for g in range(sr.num_groups) if sr.group_size[g] > 0]
    choices = [("all groups at once", -1)] + [
        (f"group {g + 1}: {int(sr.group_size[g])} patches, {int(links[g])} near-duplicates", g) for g in groups]
    wanted = analysis.nms_group
    if wanted is None or (wanted >= 0 and wanted not in groups):
        wanted = int(np.argmax(links)) if links.size and links.max() > 0 else (groups[0] if groups else -1)
    return wanted, choices


def _group_annotations(pixels, sel, view, grid):
    sr = viz.selection_row(sel, view)
    nonempty = [g for g in range(sr.num_groups) if sr.group_size[g] > 0]
    note = (f"{len(nonempty)} non-empty groups. Hover a legend entry to see only that group; "
            "white dots are its kept tokens.")
    if len(nonempty) <= MAX_GROUP_ANNOTATIONS:
        ann = viz.group_annotations(pixels, sel, view, size=DISPLAY, grid_shape=grid)
        return (ann.base, list(ann.annotations), dict(ann.color_map)), note
    # Only the largest groups get a mask of their own; the rest share one (built directly,
    # not as ~130 full-size masks merged afterwards).
    by_size = sorted(nonempty, key=lambda g: -int(sr.group_size[g]))  # stable: ties in group order
    head, tail = sorted(by_size[:MAX_GROUP_ANNOTATIONS - 1]), by_size[MAX_GROUP_ANNOTATIONS - 1:]
    ann = viz.group_annotations(pixels, sel, view, size=DISPLAY, grid_shape=grid, groups=head, pool=tail)
    label = f"{len(tail)} smaller groups: {int(sum(int(sr.group_size[g]) for g in tail))} patches"
    items = list(ann.annotations) + [(ann.pooled, label)]
    colors = {lbl: ann.color_map[lbl] for _, lbl in ann.annotations} | {label: OTHER_GROUPS_HEX}
    note = (f"{len(nonempty)} non-empty groups: the {len(head)} largest have their own legend entry, "
            f"the other {len(tail)} are pooled in grey (the per-group chart lists them all).")
    return (ann.base, items, colors), note


def _dynamic(analysis: Analysis, view: int):
    sel = analysis.selection
    phi = float(sel.phi[view])
    budget = int(analysis.budgets[view])  # what this view hands over now (a crop's CLS not counted)
    refs = analysis.reference_phis or [analysis.phi_ref]
    clip = bool(analysis.feats.clip)  # a clip of a CLS-free family: one view per frame or temporal patch
    part = analysis.feats.views[view].kind if clip else ("frame" if analysis.kind == "video" else "image")
    label = f"this {part}"
    would = view_budgets(analysis.feats, analysis.budget, dynamic=True)[view]
    cls_free = analysis.feats.rule == "qwen"  # K is per 576 tokens, scaled to each view's tokens
    fixed = view_budgets(analysis.feats, analysis.budget)[view]
    # The chart marks what the dynamic ratio gives this φ, so that the marker and the chart's token
    # axis always agree; that axis (K̄ · φ / φ_ref) is the single-image rule, so several views,
    # which share their total in proportion to φ instead, get no such axis.
    single = analysis.num_views == 1
    marker = label if analysis.dynamic else f"{label}, with the dynamic ratio"
    fig = viz.plot_dynamic_ratio(phi, refs, would, mean_budget=analysis.budget if single else None, label=marker)
    level = viz.complexity_label(phi, refs)
    if analysis.num_views > 1 and analysis.dynamic:
        views = ("temporal patches (two frames each)" if clip and part == "temporal patch" else
                 "frames" if clip or analysis.kind == "video" else "views")
        total = sum(analysis.budgets)
        # Qwen scales K (per 576 tokens) to its views' size first: name the scaled K′ it shares.
        each = f"K′ = {total // analysis.num_views}" if analysis.feats.rule == "qwen" else str(analysis.budget)
        text = (f"**Dynamic ratio on.** The {analysis.num_views} {views} "
                f"share {each} × {analysis.num_views} = {total} tokens in proportion to "
                f"their information φ; {label} (φ = {phi:.3f}, {level} complexity) got **{budget}**.")
    elif analysis.dynamic:
        scaled = (f"K = round({analysis.budget} × φ / φ_ref) per 576 tokens, scaled to this view's tokens: "
                  f"**{budget} tokens** instead of {fixed}" if cls_free else
                  f"Budget = round({analysis.budget} × φ / φ_ref) = **{budget} tokens** instead of {analysis.budget}")
        text = (f"**Dynamic ratio on.** φ = 1 − ρ = {phi:.3f} ({level} complexity; calibration photos' mean "
                f"φ_ref = {analysis.phi_ref:.3f}). {scaled}.")
    else:
        gets = (f"this view gets K = {analysis.budget} per 576 tokens, scaled to its tokens: {fixed}" if cls_free else
                f"every image gets {analysis.budget} tokens")
        text = (f"**Dynamic ratio off**: {gets}. {label.capitalize()} has "
                f"φ = {phi:.3f} ({level} complexity); with the dynamic ratio it would get **{would}** tokens.")
    return fig, text + (" *(Random-weight demo model: its φ values are not meaningful.)*"
                        if analysis.random_features else "")


def summary(analysis: Analysis, view: int = 0) -> str:
    """One line of numbers under the views: tokens, groups, ρ, τ and how long selecting took."""
    sel = analysis.selection
    k = int(sel.num_tokens[view])
    groups = int(sel.num_groups[view])
    picks = int((sel.nms_rank[view] >= 0).sum())
    where = f" ({analysis.view_label(view)})" if analysis.num_views > 1 else ""
    tau = float(sel.tau[view])
    nms = (f"{picks} patches survive NMS (similarity threshold τ = (K/32)·ρ = {tau:.3f}"
           + (", so at this budget nothing is suppressed)" if tau >= 1 else ")"))
    if analysis.feats.rule == "qwen":
        rows, cols = analysis.grid
        feats = analysis.feats
        visible = feats.visible
        received = analysis.num_patches if visible is None else int(visible[view].sum())
        size = f", {feats.token_px} × {feats.token_px} px each" if feats.token_px else ""
        kept = (f"**{k} of {received} {feats.token_noun} kept**{where} ({rows} × {cols} grid{size}; no "
                "CLS token: importance is each token's loading on its PSCA component)")
        if received < analysis.num_patches:
            kept += f"; {analysis.num_patches - received} tokens of this view lie in padding the model never receives"
        qwen_nms = (f"{picks} tokens survive NMS (threshold τ = max(18·K′/N, 1)·ρ′ = {tau:.3f}"
                    + (", so nothing is suppressed)" if tau >= 1 else ")"))
        return (f"{kept}: {groups} semantic groups, {qwen_nms}; ρ′ = {float(sel.rho[view]):.3f}. Selected in "
                f"{analysis.selection_ms:.0f} ms from cached features.")
    drops_cls = bool(analysis.feats.drops_cls and analysis.feats.drops_cls[view])
    visible = analysis.feats.visible
    received = analysis.num_patches if visible is None else int(visible[view].sum())
    kept = (f"**{k - 1} of {received} patches kept**{where}, handed over without the view's CLS (the crop map "
            f"has no place for it)" if drops_cls else
            f"**{k} tokens kept**{where}: CLS + {k - 1} of {analysis.num_patches} patches")
    if received < analysis.num_patches:
        kept += f"; {analysis.num_patches - received} patches of this view lie in padding the model never receives"
    return (f"{kept}: {groups} semantic groups, {nms}; "
            f"mean similarity ρ = {float(sel.rho[view]):.3f}. Selected in {analysis.selection_ms:.0f} ms "
            f"from cached features.")


def nms_note(analysis: Analysis, view: int) -> str:
    """A sentence when NMS does nothing at this budget (τ ≥ 1: no cosine similarity exceeds it),
    else how many near-duplicates it dropped."""
    sr = viz.selection_row(analysis.selection, view)
    dropped = int((sr.suppressed_by >= 0).sum())
    if sr.tau >= 1 or dropped == 0:
        rule = "max(18·K′/N, 1)·ρ′" if analysis.feats.rule == "qwen" else "(K/32)·ρ"
        return (f"ℹ **NMS does nothing at this budget**: τ = {rule} = {sr.tau:.3f}"
                + (" is above 1, and no two patches are more similar than that" if sr.tau >= 1 else
                   ", and no two patches of a group are more similar than that")
                + ", so no patch is dropped as a near-duplicate: each group keeps its most important patches. "
                  "Lower K to see NMS at work.")
    return f"NMS dropped {dropped} near-duplicates (cosine similarity above τ = {sr.tau:.3f}) before the budgets."


def patch_info(analysis: Analysis, view: int, x: float, y: float) -> str:
    """What PruneSID did with the patch under pixel ``(x, y)`` of the kept-tokens view (drawn at
    :data:`DISPLAY`): kept or dropped, its group, its importance, and, for a near-duplicate, the
    pick that suppressed it."""
    grid = viz.PatchGrid.for_display(DISPLAY, *analysis.grid)
    p = int(grid.patch_at(x, y))
    row, col = divmod(p, grid.cols)
    sr = viz.selection_row(analysis.selection, view)
    rank = int((sr.importance > sr.importance[p]).sum()) + 1
    what = "**kept**: handed to the language model" if sr.kept[p] else "**dropped**"
    lines = [f"Patch row {row + 1}, column {col + 1} (patch {p}): {what}.",
             f"Group {int(sr.group[p]) + 1} of {sr.num_groups} ({int(sr.group_size[sr.group[p]])} patches, "
             f"{int(sr.group_budget[sr.group[p]])} kept); importance {float(sr.importance[p]):.4f}, "
             f"#{rank} of {sr.num_patches}."]
    by = int(sr.suppressed_by[p])
    if by >= 0:
        lines.append(f"A near-duplicate of patch row {by // grid.cols + 1}, column {by % grid.cols + 1}: their "
                     f"similarity is above τ = {sr.tau:.3f}, and that patch was picked first in their group.")
    elif sr.nms_rank[p] >= 0:
        lines.append(f"Pick #{int(sr.nms_rank[p]) + 1} of its group after NMS"
                     + ("" if sr.kept[p] else "; the group's budget had no room for it") + ".")
    return "  \n".join(lines)


def gallery(analysis: Analysis) -> list[tuple[np.ndarray, str]]:
    """Per view (frame or crop): the kept-token overlay with a caption, for ``gr.Gallery``."""
    sel = analysis.selection
    return [(viz.draw_kept_tokens(analysis.view_pixels[v], sel, v, size=THUMB, grid_shape=analysis.grid, legend=False),
             f"{analysis.view_label(v)} · {n} tokens") for v, n in enumerate(token_counts(analysis.feats, sel).handed)]


def frame_chart(analysis: Analysis):
    """Tokens per frame (bars) and each frame's φ (line); None for a single view."""
    if analysis.num_views < 2:
        return None
    sel = analysis.selection
    times = None
    if analysis.kind == "video" and analysis.frame_times and len(analysis.frame_times) == analysis.num_views:
        times = analysis.frame_times
    handed = token_counts(analysis.feats, sel).handed  # what each view hands over (a crop's dropped CLS not counted)
    feats = analysis.feats
    noun = (feats.views[0].kind if feats.clip else "video frame") if analysis.kind == "video" else "view"
    return viz.plot_frame_budgets([int(v) for v in handed], phis=[float(v) for v in sel.phi], times=times, noun=noun)


KEPT_CAPTION = ("Bright, outlined cells are the tokens handed to the language model; dimmed ones are dropped (the "
                "grid is the model's own: LLaVA-1.5 sees 336 × 336 px as 24 × 24 patches, other models their own "
                "views and token sizes; the status and the summary under the views say how this model sees it). Click a patch to see its group, its importance and, for a "
                "dropped one, why; open *Before / after* to lay the picture as the model sees it over the same view. PruneSID chooses from the picture alone (the vision tower's features): the same tokens are kept "
                "whatever the question; only the answers depend on it.")

ORIGINAL_CAPTION = ("The whole picture you gave, as the model's processor cuts it: hatched parts never reach the vision "
                    "tower, grey is padding the processor adds, white boxes are the other views (LLaVA-NeXT crops). "
                    "Inside the yellow box, the kept tokens of the view shown are outlined at the picture's own "
                    "resolution.")
GROUPS_CAPTION = ("Colours are PSCA groups: each patch joins the principal component of the patch features it loads on "
                  "most, so a group can be spread over the picture. White dots are kept tokens.")
NMS_CAPTION = ("Inside each group PruneSID takes the most important patch, drops the patches whose cosine similarity to "
               "it is above τ, and repeats. A line joins each dropped near-duplicate to the pick that replaced it; "
               "filled discs are picks that were kept, rings picks the group's budget had no room for.")
IMPORTANCE_CAPTION = ("Brighter = more important to PruneSID: the CLS token's attention in the layer the model reads "
                      "its features from, or, for a tower without a CLS token (Qwen, LLaVA-OneVision, InternVL3, "
                      "Gemma 3), each token's loading on its own PSCA component. Kept tokens are outlined. Vision transformers often have a few very "
                      "bright 'artifact' patches; the colour scale is clipped at the 99th percentile.")
GROUP_CHART_CAPTION = ("Per group: its size, how many of its patches survive NMS (distinct ones), and how many tokens it "
                       "keeps. Groups with more distinct content get more of the budget.")
DYNAMIC_CAPTION = ("φ = 1 − ρ (ρ: mean cosine similarity between patches). Busy pictures have a high φ and, with the "
                   "dynamic ratio on, get more tokens; the bars are this model's calibration photos (public-domain and "
                   "CC0 photographs; for LLaVA-NeXT, each of their views), and φ_ref is their mean.")
