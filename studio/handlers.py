"""What every button, slider and upload does. Small typed functions; tests call them directly.

Two layers:

* core steps that raise on bad input (``load_media``, ``encode``, ``reselect``, ``answer``,
  ``analyze``): ValueError / MediaError / ModelLoadError carry a message for a person. They
  call the pipeline's public API only; a redraw (``reselect``) needs no model at all;
* ``on_*`` UI handlers that never raise: expected errors become a ``gr.Warning`` plus an
  inline status line, anything else is logged and shown as a short generic message.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import replace
from typing import Any

import cachetools
import gradio as gr
import numpy as np

from prunesid_vlm.pipeline import (
    MAX_QUESTION_CHARS,  # noqa: F401  (the question box's limit, read by the layout)
    RESULT_SCHEMA,
    CompareResult,
    Frames,
    Pipeline,
    budget_patches,
    check_budget,
    check_question,
    select,
    token_counts,
    view_budgets,
)

from . import views as V
from .components import png_file, written_folder
from . import limits
from .errors import endpoint, guarded, status_line, warn
from prunesid_vlm.media import MediaError, browser_preview, load_image, load_video, video_codec  # noqa: F401 (tests)
from prunesid_vlm import spec_for
from prunesid_vlm.serving import MANAGER, ModelManager
from .references import judges_answers, reference_answer, reference_line
from .session import Analysis

MAX_FRAMES = 6
"""Frames sampled from a video: 6 × 576 = 3456 visual tokens still fit LLaVA-1.5's 4096-token
context for the full (unpruned) answer."""
log = logging.getLogger("prunesid.studio")
DEFAULT_BUDGET = 64
DEFAULT_QUESTION = "What is in this picture? Answer in one sentence."

ANSWER_PANEL = ("full_head", "full_answer", "full_stats", "pruned_head", "pruned_answer", "pruned_stats", "fidelity",
                "diff")
"""The answers side by side: drawn from the visitor's analysis, so they always belong to what is on screen."""
VIEW_KEYS = ("state", "status", "kept", "kept_slider", "original", "groups", "groups_note", "nms", "importance", "group_chart",
             "dynamic_chart", "dynamic_text", "summary", "gallery", "frame_chart", "frame", "stale",
             "budget_label", "nms_group", "nms_note", "budget", "preset_all", "patch_info") + ANSWER_PANEL
"""Order of the outputs of :func:`on_prepare` / :func:`on_reselect` / :func:`on_view`."""
ANSWER_KEYS = ("state",) + ANSWER_PANEL + ("stale",)
"""Order of the outputs of :func:`on_answer`."""


# ---- core steps --------------------------------------------------------------------------
def load_media(kind: str, image: str | None, video: str | None) -> tuple[list, list[str], list[float] | None, str]:
    """``(images, notes, frame_times, source)`` for the active upload (``kind`` "image" or "video")."""
    if kind == "video":
        if not video:
            raise MediaError("No video yet: upload one (MP4/WebM/AVI) or pick the example.")
        frames, fps, duration, notes = load_video(video, max_frames=MAX_FRAMES)
        times = list(np.linspace(0, duration, len(frames) * 2 + 1)[1::2]) if duration > 0 else None
        return Frames(frames), notes, times, str(video)
    if not image:
        raise MediaError("No image yet: upload one or pick an example.")
    img, notes = load_image(image)
    return [img], notes, None, str(image)


def encode(pipe: Pipeline, kind: str, source: str, images: list, notes: list[str],
           frame_times: list[float] | None) -> Analysis:
    """One tower pass over the media (cached by content); everything later reuses it."""
    feats = pipe.encode(images)
    notes = list(notes) + [n for n in (_enlarged_note(images[0]),) if n]
    return Analysis(kind=kind, source=source, model_id=pipe.model_id, is_demo=pipe.is_demo,
                    grid=feats.grid or pipe.grid,
                    random_features=pipe.random_features, answers=pipe.answers, model_meaning=pipe.meaning,
                    images=images,
                    feats=feats, view_pixels=pipe.view_pixels(images, feats),
                    reference_phis=list(pipe.calibration().phis), notes=list(notes), frame_times=frame_times)


SMALL_SIDE = 112
"""A picture whose shorter side is below this (a third of the 336 px tower input) is enlarged
three times or more before the tower sees it: its patches repeat the same few pixels."""


def _enlarged_note(image) -> str | None:
    side = min(image.size)
    if side >= SMALL_SIDE:
        return None
    return (f"⚠ The picture is only {image.width}×{image.height} px: the model sees it enlarged about "
            f"{336 / side:.0f}×, so neighbouring patches repeat the same few pixels and what is kept says little "
            "about PruneSID.")


def budget_rule(analysis: Analysis) -> tuple[int, str]:
    """``(num_tokens, mode)`` for the pipeline: K per view, or K × views over all views when shared."""
    if analysis.shared and analysis.num_views > 1:
        return analysis.budget * analysis.num_views, "total"
    return analysis.budget, "per_view"


def reselect(analysis: Analysis, budget: Any, dynamic: bool, shared: bool | None = None) -> Analysis:
    """Select again on the session's cached features for a new budget / dynamic / shared setting
    (``shared=None`` keeps the session's).

    Pure: no model, no lock, nothing shared, so redraws of different visitors run side by side."""
    k = check_budget(budget, budget_patches(analysis.feats))
    analysis = replace(analysis, budget=k, dynamic=bool(dynamic),
                       shared=analysis.shared if shared is None else bool(shared))
    num_tokens, mode = budget_rule(analysis)
    start = time.perf_counter()
    sel = select(analysis.feats, num_tokens, dynamic=analysis.dynamic, mode=mode)
    ms = 1000 * (time.perf_counter() - start)
    return replace(analysis, budgets=view_budgets(analysis.feats, num_tokens, analysis.dynamic, mode),
                   selection=sel, selection_ms=ms)


def answer(analysis: Analysis, question: Any, pipe: Pipeline, max_new_tokens: int = 64,
           original_positions: bool = False) -> CompareResult:
    """Both answers (all tokens vs PruneSID's) for the analysed media, with exactly the selection on screen;
    ``original_positions``: the kept tokens at their places in the full prompt (else the family's own way)."""
    if analysis.selection is None:
        raise ValueError("Nothing selected yet: pick a budget first.")
    num_tokens, mode = budget_rule(analysis)
    # A box left ticked for a model that cannot take original positions (it was switched meanwhile) asks
    # for the model's own way rather than for a refusal.
    wanted = "original" if original_positions and "original" in pipe.position_modes else None
    return pipe.compare(analysis.images, check_question(question), num_tokens, dynamic=analysis.dynamic,
                        max_new_tokens=int(max_new_tokens), selection=analysis.selection, mode=mode,
                        selection_s=analysis.selection_ms / 1000, positions=wanted)


def method_analysis(pipe: Pipeline, encoded: Analysis, budget: int, dynamic: bool, method: str) -> Analysis:
    """``encoded`` with ``method``'s selection at ``budget``: PruneSID's through :func:`reselect` (the
    page's own path), another method's through the pipeline, which gives DivPrune and CDPruner their
    code's inputs (PruneSID's selection is not made first and thrown away)."""
    if method == "prunesid":
        return reselect(encoded, budget, dynamic)
    k = check_budget(budget, budget_patches(encoded.feats))
    analysis = replace(encoded, budget=k, dynamic=bool(dynamic))
    num_tokens, mode = budget_rule(analysis)
    return replace(analysis, budgets=view_budgets(analysis.feats, num_tokens, analysis.dynamic, mode),
                   selection=pipe.select(analysis.feats, k, dynamic=analysis.dynamic, method=method))


MAX_API_NEW_TOKENS = 256
"""The longest answer a scripted call may ask for (the page's slider stops there too)."""


def check_api_options(method: Any, max_new_tokens: Any) -> tuple[str, int]:
    """``(method, max_new_tokens)`` as the scripted API takes them, or a ValueError that says why."""
    from prunesid_eval.methods import get_method

    name = get_method(str(method or "prunesid").strip()).name  # ValueError listing the known names
    try:
        count = int(float(max_new_tokens if max_new_tokens not in (None, "") else 64))
    except (TypeError, ValueError):
        raise ValueError(f"max_new_tokens must be a whole number, got {max_new_tokens!r}.") from None
    if not 1 <= count <= MAX_API_NEW_TOKENS:
        raise ValueError(f"max_new_tokens must be between 1 and {MAX_API_NEW_TOKENS}, got {count}.")
    return name, count


def analyze(image: Any, question: Any, budget: Any, dynamic: bool = False, max_new_tokens: Any = 64,
            manager: ModelManager = MANAGER, method: Any = "prunesid", model: Any = None,
            positions: Any = None) -> dict:
    """The ``/analyze`` endpoint: a method's selection and both answers for one image, as JSON.

    One crossing onto the GPU: the pipeline's ``compare`` encodes, selects and answers together;
    the views' data then come from the features it cached. ``model``: locally, switch to it first
    (as the picker does, for everyone); on a public deployment only the model in use is accepted.
    ``positions``: ``"compact"`` or ``"original"`` (empty: the model's own way; see ``Pipeline.compare``)."""
    k = check_budget(budget)
    positions = str(positions).strip().lower() if positions not in (None, "") else None
    question = check_question(question)
    method, max_new_tokens = check_api_options(method, max_new_tokens)
    if model not in (None, "") and str(model).strip() != (manager.state.active or manager.state.requested):
        outcome = manager.switch(model)
        if outcome.problem:
            raise ValueError(outcome.problem)
    pipe = manager.current()
    positions = pipe.check_positions(positions)  # before the picture is read: a wrong value costs nothing
    images, notes, _, source = load_media("image", image, None)
    result = None
    if pipe.answers != "none":
        result = pipe.compare(images, question, k, dynamic=bool(dynamic), max_new_tokens=max_new_tokens,
                              method=method, positions=positions)
    encoded = encode(pipe, "image", source, images, notes, None)  # cached by the crossing above
    if result is None:  # a vision tower alone: the selection is all there is
        analysis = method_analysis(pipe, encoded, k, dynamic, method)
    else:
        analysis = replace(encoded, budget=k, dynamic=bool(dynamic), selection=result.selection,
                           budgets=list(token_counts(encoded.feats, result.selection).handed))
    notes = notes + pipe.media_notes(analysis.feats)
    state = manager.state
    if state.fallback_reason:
        notes = notes + [f"Fell back to an offline demo model: {state.fallback_reason}"]
    if pipe.meaning:
        notes = notes + [f"{pipe.model_id}: {pipe.meaning}."]
    if result is not None:
        out = result.to_dict()
    else:  # a vision tower alone: the selection is all there is
        sel = analysis.selection
        out = {"schema": RESULT_SCHEMA, "model": {"id": pipe.model_id, "family": pipe.family, "device": pipe.device},
               "selection": [sel.to_dict(row) for row in range(sel.batch_size)], "budgets": list(analysis.budgets),
               "full": None, "pruned": None, "fidelity": None, "prefill": None}
    out["model"].update(is_demo=pipe.is_demo, features_meaningful=not pipe.random_features, answers=pipe.answers)
    out.update({
        "question": question, "method": method, "budget": k, "dynamic": bool(dynamic),
        "grid": list(analysis.grid), "image_size": [images[0].width, images[0].height],
        "views": [{"kind": v.kind, "box": [round(float(c), 2) for c in v.box]} for v in analysis.views],
        "index_spaces": INDEX_SPACES, "notes": notes,
    })
    if result is None:
        out["token_counts"] = {"full": token_counts(analysis.feats).to_dict(),
                               "pruned": token_counts(analysis.feats, analysis.selection).to_dict()}
    return out


INDEX_SPACES = ("selection[v].keep holds tower indices (0 = CLS, patch p is p + 1), in the order handed to the "
                "language model; group, nms_rank, suppressed_by and importance are per patch index p = row * grid[1] "
                "+ col, in raster order over the grid; views[v].box is the part of the picture view v covers, in its "
                "pixels (x0, y0, x1, y1)")


# ---- UI handlers (never raise) -------------------------------------------------------------
def _empty_views(message: str) -> tuple:
    hidden = gr.update(visible=False)
    values = {k: None for k in VIEW_KEYS}
    values.update(state=None, status=status_line(message, "warn"), gallery=hidden, frame_chart=hidden,
                  frame=gr.update(visible=False), stale=stale_note(None), dynamic_text="", summary="",
                  groups_note="", nms_note="", patch_info="", budget_label=gr.skip(), budget=gr.skip(),
                  preset_all=gr.skip(), **answer_panel(None))
    return tuple(values[k] for k in VIEW_KEYS)


def cleared_views(message: str) -> tuple:
    """Every view and answer emptied (the picture they belonged to is gone), with ``message``."""
    hidden = gr.update(visible=False)
    values = {k: None for k in VIEW_KEYS}
    values.update(state=None, status=status_line(message, "info"), gallery=hidden, frame_chart=hidden, frame=hidden,
                  stale=stale_note(None), dynamic_text="", groups_note="", nms_note="", patch_info="",
                  summary="*Upload an image or pick an example to see what PruneSID keeps.*",
                  budget_label=gr.skip(), budget=gr.skip(), preset_all=gr.skip(), nms_group=gr.update(choices=[]),
                  **answer_panel(None))
    return tuple(values[k] for k in VIEW_KEYS)


def _redraw_refused(message: str) -> tuple:
    """A redraw that failed (e.g. a typed budget out of range): say why, keep the session and the
    views as they are."""
    values = {k: gr.skip() for k in VIEW_KEYS}
    values["status"] = status_line(message, "warn")
    return tuple(values[k] for k in VIEW_KEYS)


PART_OUTPUTS = {"kept": ("kept", "kept_slider"), "original": ("original",), "groups": ("groups", "groups_note"),
                "nms": ("nms", "nms_group", "nms_note"),
                "importance": ("importance",), "group_chart": ("group_chart",),
                "dynamic": ("dynamic_chart", "dynamic_text", "frame_chart")}
"""Which outputs (``VIEW_KEYS``) each view part fills."""


def _view_outputs(analysis: Analysis, view: int, status: Any, parts=V.PARTS) -> tuple:
    """Outputs for ``VIEW_KEYS``: the ``parts`` are drawn, the other views are left as they are
    (and drawn when their tab is opened)."""
    view = max(0, min(int(view or 0), analysis.num_views - 1))
    key = analysis.setting + (view,)
    drawn = {p: k for p, k in analysis.drawn.items() if k == key} if parts != V.PARTS else {}
    r = V.render(analysis, view, parts)
    drawn.update({p: key for p in parts})
    analysis = replace(analysis, drawn=drawn)
    multi = analysis.num_views > 1
    values: dict[str, Any] = {k: gr.skip() for k in VIEW_KEYS}
    values.update(state=analysis, status=status, summary=V.summary(analysis, view), stale=stale_note(analysis),
                  budget_label=budget_text(analysis), **answer_panel(analysis))
    for part in parts:
        for name in PART_OUTPUTS[part]:
            values[name] = r[name]
    # Images go out as PNG files written here (fast zlib level, deduplicated by content).
    if "kept" in parts:  # the kept tokens on the picture, and the same beside the original for the handle
        values["kept_slider"] = tuple(png_file(im) for im in r["kept"])
        values["kept"] = values["kept_slider"][1]
    for name in ("nms", "importance", "original"):
        if name in parts:
            values[name] = png_file(r[name])
    if "nms" in parts:
        focus, choices = r["nms_group"]
        values["nms_group"] = gr.update(choices=choices, value=focus)
    if "groups" in parts:
        base, items, colors = r["groups"]
        values["groups"] = gr.update(value=(png_file(base), items, colors), color_map=colors)
    if "dynamic" in parts:
        values["frame_chart"] = gr.update(value=r["frame_chart"], visible=multi)
    values["gallery"] = gr.update(value=[(png_file(im), c) for im, c in V.gallery(analysis)], visible=True) if multi else gr.update(value=None, visible=False)
    what = "frame" if analysis.kind == "video" else "view"
    if multi:
        values["gallery"]["label"] = f"Kept tokens per {what} (the views are parts of one picture)" if what == "view" \
            else "Kept tokens per frame"
    values["frame"] = gr.update(visible=multi, maximum=max(2, analysis.num_views), value=view + 1,
                                label=f"{what.capitalize()} shown above (1–{analysis.num_views})")
    top = budget_patches(analysis.feats) + 1  # the largest K this model's views take (CLS included)
    values["budget"] = gr.update(maximum=top)
    values["preset_all"] = gr.update(value=f"all {top}")
    if "kept" in parts:
        values["patch_info"] = "*Click a patch above: what PruneSID did with it, and why.*"
    return tuple(values[k] for k in VIEW_KEYS)


def _answered_here(analysis: Analysis | None) -> bool:
    a = analysis.answered if analysis is not None else None
    return a is not None and a["setting"] == analysis.setting and not _positions_differ(analysis)


def _positions_differ(analysis: Analysis) -> bool:
    """Whether Run would now place the kept tokens otherwise than the shown answers did (the box moved)."""
    a = analysis.answered
    return (a is not None and analysis.positions_wanted is not None and "positions" in a
            and analysis.positions_wanted != a["positions"])


def stale_note(analysis: Analysis | None) -> str:
    """What the answer panel holds: nothing yet, the answers for exactly this setting, or (after the
    slider or the toggle moved) nothing for this setting, with what the last answers were made with."""
    if analysis is not None and analysis.answers == "none":
        return f"ℹ *No answers with this model: {analysis.model_meaning}.*"
    if analysis is None or analysis.answered is None:
        return "*Press **Run** to compare the answers with all tokens and with PruneSID's.*"
    if _answered_here(analysis):
        return ""
    a = analysis.answered
    if a["setting"] == analysis.setting:  # only the placement differs
        return (f"⚠ *The answers shown put PruneSID's kept tokens at {a['positions']} positions; press **Run** to "
                f"answer with them at {analysis.positions_wanted} positions.*")
    made = f"{a['tokens']} tokens" + (f" (dynamic ratio, K = {a['budget']})" if a["dynamic"] else "")
    if a["setting"][2]:
        made += " shared over all views"
    return (f"⚠ *Not run for this setting: the last answers were made with {made}. "
            "Press **Run** to answer with what the views show now.*")


def answer_panel(analysis: Analysis | None, question: str | None = None) -> dict[str, Any]:
    """The answer panel for ``analysis``: its answers when they were made for the current setting
    (and, if given, for ``question``). After the slider moved, the answer with all tokens stays (it
    does not depend on K) and the pruned one stays too, headed as made with another budget, until
    Run. Otherwise empty panels whose headers say what Run would compare."""
    a = analysis.answered if analysis is not None else None
    same_question = a is not None and (question is None or question.strip() == a["question"])
    if _answered_here(analysis) and same_question:
        return dict(a["texts"])
    full = "" if analysis is None else tokens_head(token_counts(analysis.feats))
    tokens = ("" if analysis is None or analysis.selection is None
              else tokens_head(token_counts(analysis.feats, analysis.selection)))
    empty = {"full_head": f"#### Full{full}", "full_answer": "", "full_stats": "",
             "pruned_head": f"#### PruneSID{tokens}", "pruned_answer": "", "pruned_stats": "", "fidelity": "",
             "diff": diff_update(None)}
    if not same_question or a.get("model_id", analysis.model_id) != analysis.model_id:
        return empty
    texts = a["texts"]
    made = (f"at {a['positions']} positions" if a["setting"] == analysis.setting  # only the placement differs
            else f"with {a['tokens']} visual tokens")
    return dict(empty, full_head=texts["full_head"], full_answer=texts["full_answer"], full_stats=texts["full_stats"],
                pruned_head=f"#### PruneSID · ⚠ made {made}, not this setting's",
                pruned_answer=texts["pruned_answer"],
                pruned_stats="*Press **Run** for the answer with the tokens the views show now.*")


DIFF_LABELS = {"-": "only with all tokens", "+": "only with PruneSID's tokens"}
DIFF_COLORS = {DIFF_LABELS["-"]: "#f4b6b6", DIFF_LABELS["+"]: "#b6e3b6"}


def diff_update(items: list | None) -> dict:
    """The difference view: shown only when the two answers differ."""
    return gr.update(value=items, visible=bool(items))


def answer_diff(full: str, pruned: str) -> list[tuple[str, str | None]]:
    """Word by word, where the pruned answer departs from the full one: ``(text, label)`` pairs for
    ``gr.HighlightedText`` (label None: both say it)."""
    import difflib

    a, b = full.split(), pruned.split()
    out: list[tuple[str, str | None]] = []
    for op, i0, i1, j0, j1 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append((" ".join(a[i0:i1]) + " ", None))
            continue
        if i1 > i0:
            out.append((" ".join(a[i0:i1]) + " ", DIFF_LABELS["-"]))
        if j1 > j0:
            out.append((" ".join(b[j0:j1]) + " ", DIFF_LABELS["+"]))
    return out


def tokens_head(counts) -> str:
    """`` · 339 visual tokens`` and, for several views, where they come from (they add up)."""
    parts = counts.breakdown()
    return f" · {counts.total} visual tokens" + (f" = {parts}" if parts else "")


def handed_text(analysis: Analysis) -> str:
    """``**239 of 576 visual tokens** to the language model (41.5 %, 2.4× fewer)``: what the
    selection on screen hands over against the full prompt's visual tokens (the same counts as the
    answers' headers), never the nominal K."""
    full = token_counts(analysis.feats).total
    handed = token_counts(analysis.feats, analysis.selection).total
    if handed >= full:
        return f"**all {full} visual tokens** to the language model (no pruning)"
    return (f"**{handed} of {full} visual tokens** to the language model ({100 * handed / full:.1f} %, "
            f"{full / max(handed, 1):.1f}× fewer)")


def budget_text(analysis: Analysis) -> str:
    """The line under the budget slider once a selection is on screen: K as set, what the rule made
    of it, and the tokens really handed over."""
    given = analysis.budgets
    multi = analysis.num_views > 1
    feats = analysis.feats
    what = feats.views[0].kind if feats.clip else ("frame" if analysis.kind == "video" else "view")
    if feats.rule == "qwen":
        each = given[0] if len(set(given)) == 1 else " + ".join(map(str, given))
        per = feats.views[0].kind if feats.clip else ("view" if multi else "image")
        head = (f"K = {analysis.budget} per 576 tokens, scaled to this {'clip' if feats.clip else 'image'}'s "
                f"{analysis.num_patches} {feats.token_noun} per {per}: "
                f"K′ = {each}" + (" (shared ∝ φ)" if analysis.dynamic and len(given) > 1 else ""))
    elif analysis.setting[2]:
        rule = "∝ φ" if analysis.dynamic else "evenly, a view taking no more than it can hand over"
        head = f"K = {analysis.budget} × {len(given)} {what}s shared ({rule}): {' + '.join(map(str, given))}"
    elif analysis.dynamic:
        head = (f"K = {analysis.budget}, dynamic ratio: " + (f"{given[0]} for this image" if not multi else
                                                              f"{' + '.join(map(str, given))} over {len(given)} {what}s"))
    else:
        head = f"K = {analysis.budget}" + (f" per {what}" if multi else "")
        if multi and min(given) < analysis.budget:
            head += f" ({' + '.join(map(str, given))}: a crop hands over at most what it shows)"
    return f"{head} → {handed_text(analysis)}"


def _status_for(analysis: Analysis, pipe: Pipeline, encoded_now: bool) -> str:
    bits = []
    if analysis.kind == "video":
        bits.append(f"{len(analysis.images)} frames sampled")
    if encoded_now:
        bits.append(f"vision tower {1000 * analysis.vision_s:.0f} ms" if analysis.vision_s else "features from cache")
    bits.extend(analysis.notes)
    bits.extend(pipe.media_notes(analysis.feats))
    warned = any(b.startswith("⚠") for b in bits)
    bits = [b.removeprefix("⚠ ") for b in bits]
    return status_line(" · ".join(bits) if bits else "Ready.", "warn" if warned else "ok")


def _matches(state: Analysis | None, kind: str, source: str | None, model_id: str) -> bool:
    return state is not None and state.kind == kind and state.source == source and state.model_id == model_id


@guarded(_empty_views)
def on_prepare(kind: str, image: str | None, video: str | None, budget: Any, dynamic: bool, view: Any = 1,
               state: Analysis | None = None, shared: bool = False, progress=gr.Progress()) -> tuple:
    """Upload / example / Run: load the media, encode it with the model in use (once), select and
    draw every view. Never switches the model: only the picker does."""
    kind = "video" if kind == "video" else "image"
    video = original_of(video)
    source = video if kind == "video" else image
    pipe = MANAGER.current(progress=progress)
    if _matches(state, kind, source, pipe.model_id):
        analysis, fresh = state, False
    else:
        progress(0.7, desc="Reading the " + kind)
        images, notes, times, source = load_media(kind, image, video)
        if state is not None and state.model_id != pipe.model_id and state.source == source:
            notes = notes + [f"The model in use is now {pipe.model_id} (switched in the picker since your last "
                             f"analysis, {state.model_id}); this {kind} was encoded again with it."]
        progress(0.8, desc=f"Encoding {len(images)} {'frames' if len(images) > 1 else 'image'} with the vision tower")
        analysis, fresh = encode(pipe, kind, source, images, notes, times), True
    analysis = reselect(analysis, budget, dynamic, shared)
    return _view_outputs(analysis, (int(view or 1) - 1) if not fresh else 0, _status_for(analysis, pipe, fresh))


@guarded(_redraw_refused)
def on_reselect(state: Analysis | None, budget: Any, dynamic: bool, view: Any, kind: str, image: str | None,
                video: str | None, active: str = "kept", shared: bool = False) -> tuple:
    """Slider release / preset / dynamic toggle: re-select from cached features and redraw the
    visible view (``active``, one of ``views.PARTS``); no new answers, no model."""
    if state is None:
        if not (image if kind != "video" else video):
            return tuple(gr.skip() for _ in VIEW_KEYS)  # nothing uploaded yet: just move the slider
        return on_prepare.__wrapped__(kind, image, video, budget, dynamic, view, None, shared,
                                      progress=_no_progress)
    analysis = reselect(state, budget, dynamic, shared)
    parts = (active,) if active in V.PARTS else V.PARTS
    stale_model = old_model_note(analysis, MANAGER.state.active or analysis.model_id)
    handed = token_counts(analysis.feats, analysis.selection).total
    return _view_outputs(analysis, int(view or 1) - 1, status_line(
        f"Selected again from cached features in {analysis.selection_ms:.0f} ms: {handed} visual tokens handed "
        f"over.{stale_model}", "warn" if stale_model else "ok"), parts)


@guarded(_redraw_refused)
def on_view(state: Analysis | None, view: Any, active: str = "kept") -> tuple:
    """Frame / view picker: redraw the visible view for another frame (no new selection)."""
    if state is None:
        return tuple(gr.skip() for _ in VIEW_KEYS)
    parts = (active,) if active in V.PARTS else V.PARTS
    return _view_outputs(state, int(view or 1) - 1, gr.skip(), parts)


@guarded(_redraw_refused)
def on_nms_group(state: Analysis | None, group: Any, view: Any) -> tuple:
    """The NMS view's group picker: show that group's links in full (−1: every group)."""
    if state is None or state.selection is None or group is None:
        return tuple(gr.skip() for _ in VIEW_KEYS)
    return _view_outputs(replace(state, nms_group=int(group)), int(view or 1) - 1, gr.skip(), ("nms",))


def on_tab(part: str):
    """A view tab was opened: remember it, and draw it if the slider moved since it was drawn."""

    def handler(state: Analysis | None, view: Any) -> tuple:
        if state is None or state.selection is None:
            return (part,) + tuple(gr.skip() for _ in VIEW_KEYS)
        v = max(0, min(int(view or 1) - 1, state.num_views - 1))
        if state.drawn.get(part) == state.setting + (v,):
            return (part,) + tuple(gr.skip() for _ in VIEW_KEYS)
        return (part,) + guarded(_redraw_refused)(_view_outputs)(state, v, gr.skip(), (part,))

    handler.__name__ = f"on_tab_{part}"
    return handler


def on_patch(state: Analysis | None, view: Any, evt: gr.SelectData) -> str:
    """A click on the kept-tokens view: what happened to that patch."""
    if state is None or state.selection is None or not isinstance(getattr(evt, "index", None), (list, tuple)):
        return ""
    v = max(0, min(int(view or 1) - 1, state.num_views - 1))
    try:
        return V.patch_info(state, v, float(evt.index[0]), float(evt.index[1]))
    except (TypeError, ValueError, IndexError):
        return ""


def example_question(questions: list[str]):
    """The examples' picker: clicking example ``i`` puts its question in the box."""

    def handler(evt: gr.SelectData) -> Any:
        index = evt.index if isinstance(evt.index, int) else (evt.index[0] if isinstance(evt.index, list) else None)
        return questions[index] if isinstance(index, int) and 0 <= index < len(questions) else gr.skip()

    handler.__name__ = "on_example_question"
    return handler


def all_tokens(state: Analysis | None) -> tuple[int, str]:
    """The "all" preset: the largest K the analysed media's views take (577 before any analysis)."""
    top = budget_patches(state.feats) + 1 if state is not None else 577
    return top, V.budget_label(top)


@guarded(_redraw_refused)
def on_first_visit(image: str | None, budget: Any, dynamic: bool, state: Analysis | None = None,
                   progress=gr.Progress()) -> tuple:
    """Page load: a new visitor lands on the first example, analysed (views, not answers)."""
    if state is not None or not image:
        return tuple(gr.skip() for _ in VIEW_KEYS)
    return on_prepare.__wrapped__("image", image, None, budget, dynamic, 1, None, progress=progress)


def on_question(state: Analysis | None, question: Any) -> tuple:
    """The question was edited: answers to another question are not shown as this one's."""
    if state is None or state.answered is None:
        return tuple(gr.skip() for _ in ANSWER_PANEL + ("stale",))
    question = question if isinstance(question, str) else ""
    values = answer_panel(state, question)
    values["stale"] = (stale_note(state) if question.strip() == state.answered["question"]
                       else "⚠ *Not run for this question yet: press **Run** to answer it.*")
    return tuple(values[k] for k in ANSWER_PANEL + ("stale",))


def on_positions(state: Analysis | None, original_positions: bool) -> tuple:
    """The original-positions box was ticked or cleared: remembered with the visitor's analysis, so
    that the answers shown are marked as made the other way until Run (and unmarked when the box is
    back), whatever moves in between."""
    if state is None or state.answered is None or "positions" not in state.answered:
        return gr.skip(), gr.skip()
    wanted = "original" if original_positions else state.answered["own_positions"]
    state = replace(state, positions_wanted=wanted)
    return state, stale_note(state)


def positions_choice() -> dict:
    """The original-positions box, shown only for a model whose pruned prompts can take either
    placement (LLaVA-1.5): the CLS-free families always keep original positions and LLaVA-NeXT
    cannot, so for them the box would do nothing or be refused. Hidden, it is cleared. Left as it
    is while the start-up model is still loading (this never waits for it)."""
    pipe = MANAGER.loaded
    if pipe is None:
        return gr.skip()
    offered = len(pipe.position_modes) > 1
    return gr.update(visible=offered) if offered else gr.update(visible=False, value=False)


def _no_progress(*_args, **_kwargs):
    return None


def _empty_answers(message: str) -> tuple:
    values = {k: gr.skip() for k in ANSWER_KEYS}
    values.update(fidelity=status_line(message, "warn"))
    return tuple(values[k] for k in ANSWER_KEYS)


@guarded(_empty_answers)
def on_answer(state: Analysis | None, question: Any, budget: Any, dynamic: bool, max_new_tokens: Any = 64,
              original_positions: bool = False, progress=gr.Progress()) -> tuple:
    """Run (second step): answer with all tokens and with PruneSID's, side by side."""
    if state is None:
        raise ValueError("Nothing to answer about yet: upload an image or a video first.")
    check_question(question)
    pipe = MANAGER.current()
    if pipe.model_id != state.model_id:
        raise ValueError(f"The model in use changed to {pipe.model_id} since this picture was analysed with "
                         f"{state.model_id}; press Run to analyse it with the new model.")
    if pipe.answers == "none":
        values = dict(answer_panel(state), state=state, stale=stale_note(state))
        return tuple(values[k] for k in ANSWER_KEYS)
    progress(0.1, desc="Answering twice: with all visual tokens, then with PruneSID's")
    result = answer(state, question, pipe, int(max_new_tokens or 64), bool(original_positions))
    texts = answer_texts(result, random_answers=pipe.answers == "random", own_positions=pipe.positions_default)
    reference = reference_answer(state.images, question) if state.kind == "image" else None
    if reference is not None:  # an example scene of the shapes world: which answer is right is known
        line = reference_line(reference, result.full_answer, result.pruned_answer, judges_answers(pipe.model_id))
        texts["fidelity"] = f"{line}\n\n{texts['fidelity']}"
    state = replace(state, answered={"setting": state.setting, "budget": state.budget, "dynamic": state.dynamic,
                                     "question": check_question(question), "tokens": result.visual_tokens_pruned,
                                     "texts": texts, "model_id": state.model_id, "positions": result.positions,
                                     "own_positions": pipe.positions_default}, positions_wanted=result.positions)
    values = dict(texts, state=state, stale=stale_note(state))
    return tuple(values[k] for k in ANSWER_KEYS)


def _ms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "—"
    return f"{1000 * seconds:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def speedup_text(ratio: float) -> str:
    """``"3.1× faster"``, or ``"1.3× slower"`` when pruning did not pay off (never a bare ratio below 1)."""
    if not np.isfinite(ratio) or ratio <= 0:
        return "—"
    return f"{ratio:.1f}× faster" if ratio >= 1 else f"{1 / ratio:.1f}× slower"


def _cache_note(cached: bool) -> str:
    if limits.is_public():  # on a public server it would tell what other visitors asked
        return ""
    return " · *cached answer (times from the run that made it)*" if cached else ""


def answer_texts(result: CompareResult, random_answers: bool = False, own_positions: str = "compact"
                 ) -> dict[str, str]:
    """Headers, answers, timing lines and the fidelity explanation for the answers panel
    (``own_positions``: the model's own way of placing kept tokens; another is said)."""
    full, pruned = result.timings["full"], result.timings["pruned"]
    total_speedup = full["total_s"] / max(pruned["total_s"], 1e-12)
    agree = "yes" if result.first_token_agrees else "no"
    same = "identical" if result.same_answer else "different"
    demo = (" *Demo model: random weights, so these answers are gibberish and only show the mechanics.*"
            if random_answers else "")
    repeats = f" (median of {result.prefill_repeats})" if result.prefill_repeats > 1 else ""
    placed = (" The kept tokens sat at their original places in the prompt, not packed together as this model's "
              "published pruned prompt does." if result.positions != own_positions else "")
    return {
        "full_head": f"#### Full{tokens_head(result.counts['full'])}",
        "full_answer": result.full_answer or "(empty answer)",
        "full_stats": (f"prefill **{_ms(full['prefill_s'])}**{repeats} · total **{_ms(full['total_s'])}**"
                       + _cache_note(result.answers_cached.get("full", False))),
        "pruned_head": f"#### PruneSID{tokens_head(result.counts['pruned'])}",
        "pruned_answer": result.pruned_answer or "(empty answer)",
        "pruned_stats": (f"prefill **{_ms(pruned['prefill_s'])}**{repeats} (**{speedup_text(result.prefill_speedup)}**; "
                         f"the prompt is {result.prefill_bound:.1f}× shorter) · total **{_ms(pruned['total_s'])}** "
                         f"({speedup_text(total_speedup)})"
                         + _cache_note(result.answers_cached.get("pruned", False))),
        "diff": diff_update(None if result.same_answer else answer_diff(result.full_answer, result.pruned_answer)),
        "fidelity": (f"**Fidelity: {result.fidelity:.3f} nats** — how far PruneSID moved the model's choice of the "
                     f"first answer word (KL divergence of the first-token distributions; 0 = unchanged). "
                     f"Same first token: **{agree}**; whole answers: **{same}**. Totals include the shared vision "
                     f"tower ({_ms(full['vision_s'])}) and greedy decoding; measured on this machine's "
                     f"{result.device.upper()}.{placed}{demo}"),
    }


# ---- model picker and banner ------------------------------------------------------------------
def plain_markdown(text: str) -> str:
    """``text`` with Markdown's and HTML's special characters escaped, so that what someone typed
    (a model id in an error message) is shown as text and never as a link or an image."""
    return re.sub(r"([\\`*_\[\]()<>!])", r"\\\1", text)


def banner_text(manager: ModelManager = MANAGER, reason: str | None = None) -> str:
    """Markdown for the top banner: the model in use (a clear warning for the demo model), with the
    start-up fallback's reason (everyone's news) and ``reason``, a failed switch's, for the visitor
    who asked only. Everything typed by someone is escaped."""
    s = manager.state
    mine = f"  \n⚠ Your switch did not happen: {plain_markdown(reason)}" if reason else ""
    loading = f"  \n⏳ Loading **{plain_markdown(s.loading)}**; the model above serves meanwhile." if s.loading else ""
    return _model_line(s) + mine + loading


def _model_line(s) -> str:
    if s.active is None:
        spec = spec_for(s.requested)
        if spec is not None and spec.is_demo:  # what this demo's pictures and answers mean, before it loads
            return (f"⚠ **Offline demo model** `{s.requested}` (loads on first use): {spec.meaning}. Pick a LLaVA "
                    "checkpoint for real results.")
        return f"Model **{plain_markdown(s.requested)}** loads on first use."
    why = f" ({plain_markdown(s.fallback_reason)})" if s.fallback_reason else ""
    if s.is_demo:
        return f"⚠ **Offline demo model** `{s.active}`: {s.meaning}.{why}"
    if s.meaning:
        return f"ℹ Model: **{plain_markdown(s.active)}** — {s.meaning}."
    return f"Model: **{plain_markdown(s.active)}**"


MODEL_CHANGE_KEYS = ("banner", "model") + VIEW_KEYS
"""Order of the outputs of :func:`on_model_change`: the banner, the picker, then the views."""


def _model_change_refused(message: str) -> tuple:
    return (status_line(message, "warn"), gr.skip()) + _redraw_refused(message)


@guarded(_model_change_refused)
def on_model_change(model_id: str, state: Analysis | None = None, progress=gr.Progress()) -> tuple:
    """The picker, the only way to switch the model: the model in use keeps serving until the new
    one has loaded; a refused or failed switch changes nothing and is told to this visitor only.
    After a switch, this visitor's picture (or clip) is analysed again with the new model and every
    view redrawn, so that nothing on the page belongs to the old one."""
    outcome = MANAGER.switch(model_id, progress=progress)
    if outcome.problem:
        warn(outcome.problem)
    head = (banner_text(reason=outcome.problem), gr.update(value=outcome.pipe.model_id))
    if state is None or state.model_id == outcome.pipe.model_id:
        if state is None and outcome.changed:  # nothing analysed yet: the empty panels' headers change
            values = {k: gr.skip() for k in VIEW_KEYS} | answer_panel(None) | {"stale": stale_note(None)}
            return head + tuple(values[k] for k in VIEW_KEYS)
        return head + tuple(gr.skip() for _ in VIEW_KEYS)
    pipe = outcome.pipe
    progress(0.8, desc=f"Analysing your {state.kind} again with {pipe.model_id}")
    notes = [n for n in state.notes if "switched in the picker" not in n]
    notes.append(f"Analysed again with {pipe.model_id} (was {state.model_id}).")
    analysis = encode(pipe, state.kind, state.source, state.images, notes, state.frame_times)
    analysis = reselect(analysis, min(state.budget, budget_patches(analysis.feats) + 1), state.dynamic, state.shared)
    return head + _view_outputs(analysis, 0, _status_for(analysis, pipe, True))


def old_model_note(analysis: Analysis, in_use: str) -> str:
    """Said on a redraw whose analysis another model made (another visitor switched the model)."""
    if analysis.model_id == in_use:
        return ""
    return (f" These views belong to {analysis.model_id}; the model in use is now {in_use}: press Run to analyse "
            "with it.")


def on_load() -> tuple[str, Any]:
    """Page load (and after each upload or run): the banner and the picker for the model in use now
    (another visitor may have switched it)."""
    active = MANAGER.state.active or MANAGER.state.requested
    return banner_text(), gr.update(value=active)


__all__ = [n for n in dir() if n.startswith(("on_", "check_", "load_media", "encode", "reselect", "answer",
                                              "analyze", "banner_text", "stale_note"))] + ["VIEW_KEYS", "ANSWER_KEYS"]


PREVIEWS: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
"""Player previews made for clips browsers cannot play, each mapped to the upload it shows (the
video input then holds the preview; what is analysed and answered is always the original).
Visitors' handlers share it from several threads: every use holds ``_PREVIEWS_LOCK``."""
_PREVIEWS_LOCK = threading.Lock()


def original_of(video: str | None) -> str | None:
    """The upload a video input's value stands for (itself, or the clip a preview was made of)."""
    if not video:
        return video
    with _PREVIEWS_LOCK:
        return PREVIEWS.get(str(video), video)


def _preview_for(state: Analysis | None, source: str) -> tuple[Any, str | None]:
    """A browser-playable preview of ``source`` for the video input, when its codec needs one."""
    if state is None or state.kind != "video" or state.source != source:
        return gr.skip(), None
    try:
        preview, note = browser_preview(source, written_folder())
    except Exception:  # noqa: BLE001 - the analysis stands; only the player stays blank
        log.warning("could not make a playable preview of a clip", exc_info=True)
        return gr.skip(), None
    if preview is None:
        return gr.skip(), None
    with _PREVIEWS_LOCK:
        PREVIEWS[str(preview)] = source  # the least recently used goes past maxsize
    return str(preview), note


def on_media(kind: str):
    """Upload / example / clear of the image (``kind="image"``) or video input: analyse it at once.
    Outputs: the active kind, ``VIEW_KEYS``, and (video) a preview the browser can play."""

    def handler(source: str | None, budget: Any, dynamic: bool, state: Analysis | None,
                shared: bool = False, progress=gr.Progress()) -> tuple:
        if source and original_of(source) != source:  # the preview this handler put in the player
            return (kind,) + tuple(gr.skip() for _ in VIEW_KEYS) + (gr.skip(),)
        if not source:  # removed: nothing on the page may belong to a picture that is gone
            if state is None or state.kind != kind:
                return (kind,) + tuple(gr.skip() for _ in VIEW_KEYS) + (gr.skip(),)
            return (kind,) + cleared_views(f"The {kind} was removed: upload another or pick an example.") + (
                gr.skip(),)
        image, video = (source, None) if kind == "image" else (None, source)
        views = on_prepare(kind, image, video, budget, dynamic, 1, state, shared, progress=progress)
        if kind != "video":
            return (kind,) + views + (gr.skip(),)
        values = dict(zip(VIEW_KEYS, views))
        preview, note = _preview_for(values["state"] if isinstance(values["state"], Analysis) else None, str(source))
        if note:
            values["status"] = f"{values['status']} · {note}"
        return (kind,) + tuple(values[k] for k in VIEW_KEYS) + (preview,)
        image, video = (source, None) if kind == "image" else (None, source)
        return (kind,) + on_prepare(kind, image, video, budget, dynamic, 1, state, shared, progress=progress)

    handler.__name__ = f"on_{kind}_upload"
    return handler


def kept_tokens_picture(image: Any, budget: Any, method: Any = "prunesid", dynamic: bool = False,
                        manager: ModelManager = MANAGER) -> str:
    """A PNG of the kept tokens on the picture as the model's processor cuts it (the "On the
    original" view of the first view): what a script can show without knowing the model's geometry."""
    k = check_budget(budget)
    method, _ = check_api_options(method, 64)
    pipe = manager.current()
    images, notes, _, source = load_media("image", image, None)
    analysis = method_analysis(pipe, encode(pipe, "image", source, images, notes, None), k, dynamic, method)
    return png_file(V.on_original(analysis, 0))


def kept_tokens_endpoint(image: str | None, budget: float | int | None, method: str | None = "prunesid",
                         dynamic: bool | None = False) -> str:
    """``/kept_tokens`` (gradio_client): the kept tokens drawn on the picture, as a PNG file.

    Args:
        image: the picture (``handle_file(path)``).
        budget: K, visual tokens kept, CLS included.
        method: a registry method (as ``/analyze``).
        dynamic: PruneSID's information-aware dynamic ratio.
    """
    return _kept_tokens_endpoint(image, budget, method, dynamic)


_kept_tokens_endpoint = endpoint(lambda image, budget, method, dynamic: kept_tokens_picture(
    image, budget, method, bool(dynamic)), "kept_tokens")


def analyze_endpoint(image: str | None, question: str | None, budget: float | int | None,
                     method: str | None = "prunesid", dynamic: bool | None = False,
                     max_new_tokens: float | int | None = 64, model: str | None = "",
                     positions: str | None = "") -> dict:
    """``/analyze`` (gradio_client): expected problems become a ``gr.Error`` with the message.

    Args:
        image: the picture (``handle_file(path)``).
        question: asked with all visual tokens and with the kept ones.
        budget: K, visual tokens kept per view, CLS included (2 … 1+N).
        method: a registry method (``prunesid``, ``prunesid-dyn``, ``random``, ``grid``, ``topk``,
            ``visionzip``, ``divprune``, ``vispruner``, ``cdpruner``).
        dynamic: PruneSID's information-aware dynamic ratio.
        max_new_tokens: the longest answer, in tokens (1 … 256).
        model: the model to use (empty: the one in use); on a public Space only the Space's.
        positions: where the kept tokens sit in the pruned prompt: ``compact`` (LLaVA's published
            hand-over) or ``original`` (their places in the full prompt); empty: the model's own way.
    """
    return _analyze_endpoint(image, question, budget, method, dynamic, max_new_tokens, model, positions)


_analyze_endpoint = endpoint(
    lambda image, question, budget, method, dynamic, max_new_tokens, model, positions: limits.without_cache_fields(
        analyze(image, question, budget, bool(dynamic), max_new_tokens, method=method, model=model,
                positions=positions)), "analyze")
