"""What every button, slider and upload does. Small typed functions; tests call them directly.

Two layers:

* core steps that raise on bad input (``load_media``, ``encode``, ``reselect``, ``answer``,
  ``analyze``): ValueError / MediaError / ModelLoadError carry a message for a person;
* ``on_*`` UI handlers that never raise: expected errors become a ``gr.Warning`` plus an
  inline status line, anything else is logged and shown as a short generic message.
"""
from __future__ import annotations

import functools
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np

from prunesid import select_tokens
from studio.media import MediaError, load_image, load_video
from prunesid_vlm.pipeline import CompareResult, EncodedImages, ModelLoadError, Pipeline

from . import views as V
from .components import png_file
from .models import MANAGER, ModelManager
from .runtime import gpu, limit_blas_threads, log, single_thread
from .session import Analysis, tower_view

MAX_QUESTION_CHARS = 2000
"""Longer questions are refused (LLaVA-1.5's context is 4096 tokens, most of it image)."""
MAX_FRAMES = 6
"""Frames sampled from a video: 6 × 576 = 3456 visual tokens still fit LLaVA-1.5's 4096-token
context for the full (unpruned) answer."""
DEFAULT_BUDGET = 64
DEFAULT_QUESTION = "What is in this picture? Answer in one sentence."
EXPECTED = (ValueError, MediaError, ModelLoadError)
GENERIC_ERROR = "Something went wrong on our side (details are in the server log). Please try again or another input."

VIEW_KEYS = ("state", "status", "kept", "groups", "groups_note", "nms", "importance", "group_chart",
             "dynamic_chart", "dynamic_text", "summary", "gallery", "frame_chart", "frame", "stale")
"""Order of the outputs of :func:`on_prepare` / :func:`on_reselect` / :func:`on_view`."""
ANSWER_KEYS = ("state", "full_head", "full_answer", "full_stats", "pruned_head", "pruned_answer",
               "pruned_stats", "fidelity", "stale")
"""Order of the outputs of :func:`on_answer`."""

limit_blas_threads(1)


# ---- core steps --------------------------------------------------------------------------
def check_budget(budget: Any, num_patches: int = 576) -> int:
    """The budget as an int in [2, 1+N] (CLS included), or a ValueError that says so."""
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"The token budget must be a number, got {budget!r}.") from None
    if not np.isfinite(value) or value != int(value):
        raise ValueError(f"The token budget must be a whole number, got {budget!r}.")
    k = int(value)
    if not 2 <= k <= num_patches + 1:
        raise ValueError(f"The token budget must be between 2 and {num_patches + 1} (CLS included); got {k}.")
    return k


def check_question(question: Any) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("The question is empty: type a question about the image.")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question is {len(question)} characters long; please keep it under {MAX_QUESTION_CHARS}.")
    return question


def load_media(kind: str, image: str | None, video: str | None) -> tuple[list, list[str], list[float] | None, str]:
    """``(images, notes, frame_times, source)`` for the active upload (``kind`` "image" or "video")."""
    if kind == "video":
        if not video:
            raise MediaError("No video yet: upload one (MP4/WebM/AVI) or pick the example.")
        frames, fps, duration, notes = load_video(video, max_frames=MAX_FRAMES)
        times = list(np.linspace(0, duration, len(frames) * 2 + 1)[1::2]) if duration > 0 else None
        return frames, notes, times, str(video)
    if not image:
        raise MediaError("No image yet: upload one or pick an example.")
    img, notes = load_image(image)
    return [img], notes, None, str(image)


_PIPE_LOCK = threading.RLock()
"""The pipeline's feature cache is not thread-safe: uploads, Run and /analyze take turns on it."""


@gpu(duration=60)
def _encode(pipe: Pipeline, images: list, manager: ModelManager) -> EncodedImages:
    with _PIPE_LOCK:
        manager.calibrate(pipe)  # no-op after the first call for this model
        return pipe.encode(images)


def encode(pipe: Pipeline, kind: str, source: str, images: list, notes: list[str],
           frame_times: list[float] | None, manager: ModelManager = MANAGER) -> Analysis:
    """One tower pass over the media (cached by content); everything later reuses it."""
    feats = _encode(pipe, images, manager)
    pixels = [tower_view(images[v.image], v.box) for v in feats.views]
    return Analysis(kind=kind, source=source, model_id=pipe.model_id, is_demo=pipe.is_demo, images=images,
                    feats=feats, view_pixels=pixels, grid=tuple(pipe.grid),
                    phi_ref=float(manager.state.phi_ref if manager.state.phi_ref is not None else pipe.phi_ref),
                    reference_phis=list(manager.state.reference_phis), vision_s=feats.vision_s,
                    notes=list(notes), frame_times=frame_times)


def _select_single_thread(hidden, attention, budgets):
    with single_thread():
        return select_tokens(hidden, attention, budgets)


def reselect(analysis: Analysis, budget: Any, dynamic: bool, pipe: Pipeline) -> Analysis:
    """Re-run the selection on the cached features for a new budget / dynamic setting (no model pass)."""
    k = check_budget(budget, analysis.num_patches)
    budgets = pipe.budgets(analysis.feats, k, bool(dynamic))
    start = time.perf_counter()
    sel = _select_single_thread(analysis.hidden_states, analysis.cls_attention,
                                pipe.adapter.selection_budgets(analysis.views, budgets))
    ms = 1000 * (time.perf_counter() - start)
    return replace(analysis, budget=k, dynamic=bool(dynamic), budgets=list(budgets), selection=sel.cpu(),
                   selection_ms=ms)


@gpu(duration=120)
def _compare(pipe: Pipeline, images, question, budget, dynamic, max_new_tokens) -> CompareResult:
    with _PIPE_LOCK:
        return pipe.compare(images, question, budget, dynamic=dynamic, max_new_tokens=max_new_tokens,
                            selection=_select_single_thread)


def answer(analysis: Analysis, question: Any, budget: Any, dynamic: bool, pipe: Pipeline,
           max_new_tokens: int = 64) -> CompareResult:
    """Both answers (all tokens vs PruneSID's) for the analysed media."""
    question = check_question(question)
    k = check_budget(budget, analysis.num_patches)
    return _compare(pipe, analysis.images, question, k, bool(dynamic), int(max_new_tokens))


def analyze(image: Any, question: Any, budget: Any, dynamic: bool = False, max_new_tokens: int = 64,
            manager: ModelManager = MANAGER) -> dict:
    """The ``/analyze`` endpoint: selection and both answers for one image, as JSON."""
    k = check_budget(budget)
    question = check_question(question)
    pipe = manager.get()
    images, notes, _, source = load_media("image", image, None)
    analysis = reselect(encode(pipe, "image", source, images, notes, None, manager), k, dynamic, pipe)
    result = answer(analysis, question, k, dynamic, pipe, max_new_tokens)
    full, pruned = result.timings["full"], result.timings["pruned"]
    state = manager.state
    if state.fallback_reason:
        notes = notes + [f"Fell back to the offline demo model: {state.fallback_reason}"]
    if pipe.is_demo:
        notes = notes + ["Demo model (tiny, random weights): its answers and groups are not meaningful."]
    return {
        "model": pipe.model_id,
        "is_demo": pipe.is_demo,
        "budget": k,
        "dynamic": bool(dynamic),
        "budgets": result.budgets,
        "question": question,
        "selection": analysis.selection.to_dict(0),
        "full": {"answer": result.full_answer, "visual_tokens": result.visual_tokens_full,
                 "prefill_s": full["prefill_s"], "total_s": full["total_s"]},
        "pruned": {"answer": result.pruned_answer, "visual_tokens": result.visual_tokens_pruned,
                   "prefill_s": pruned["prefill_s"], "total_s": pruned["total_s"]},
        "prefill_speedup": result.prefill_speedup,
        "fidelity": {"first_token_kl_nats": result.fidelity, "first_token_agrees": result.first_token_agrees,
                     "same_answer": result.same_answer},
        "timings": result.timings,
        "notes": notes,
    }


# ---- UI handlers (never raise) -------------------------------------------------------------
def _friendly(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text[0].upper() + text[1:]


def _warn(message: str) -> None:
    try:
        with warnings.catch_warnings():  # outside a request (tests) Gradio would also warn
            warnings.simplefilter("ignore", UserWarning)
            gr.Warning(message)
    except Exception:  # the status line carries the message anyway
        pass


def _guarded(empty: Callable[[str], tuple]):
    """Wrap a UI handler: expected errors → warning + ``empty(message)``; others → logged + generic."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except EXPECTED as err:
                message = _friendly(err)
                _warn(message)
                return empty(message)
            except Exception:
                log.exception("unexpected error in %s", fn.__name__)
                _warn(GENERIC_ERROR)
                return empty(GENERIC_ERROR)

        return inner

    return wrap


def _status(text: str, kind: str = "info") -> str:
    icon = {"info": "ℹ", "warn": "⚠", "ok": "✓"}[kind]  # text symbols: they render without an emoji font
    return f"{icon} {text}"


def _empty_views(message: str) -> tuple:
    hidden = gr.update(visible=False)
    values = {k: None for k in VIEW_KEYS}
    values.update(state=None, status=_status(message, "warn"), gallery=hidden, frame_chart=hidden,
                  frame=gr.update(visible=False), stale="", dynamic_text="", summary="", groups_note="")
    return tuple(values[k] for k in VIEW_KEYS)


PART_OUTPUTS = {"kept": ("kept",), "groups": ("groups", "groups_note"), "nms": ("nms",),
                "importance": ("importance",), "group_chart": ("group_chart",),
                "dynamic": ("dynamic_chart", "dynamic_text", "frame_chart")}
"""Which outputs (``VIEW_KEYS``) each view part fills."""


def _view_outputs(analysis: Analysis, view: int, status: Any, parts=V.PARTS) -> tuple:
    """Outputs for ``VIEW_KEYS``: the ``parts`` are drawn, the other views are left as they are
    (and drawn when their tab is opened)."""
    view = max(0, min(int(view or 0), analysis.num_views - 1))
    key = (analysis.budget, analysis.dynamic, view)
    drawn = {p: k for p, k in analysis.drawn.items() if k == key} if parts != V.PARTS else {}
    r = V.render(analysis, view, parts)
    drawn.update({p: key for p in parts})
    analysis = replace(analysis, drawn=drawn)
    multi = analysis.num_views > 1
    values: dict[str, Any] = {k: gr.skip() for k in VIEW_KEYS}
    values.update(state=analysis, status=status, summary=V.summary(analysis, view), stale=stale_note(analysis))
    for part in parts:
        for name in PART_OUTPUTS[part]:
            values[name] = r[name]
    # Images go out as PNG files written here (fast zlib level, deduplicated by content).
    if "kept" in parts:
        values["kept"] = tuple(png_file(im) for im in r["kept"])
    for name in ("nms", "importance"):
        if name in parts:
            values[name] = png_file(r[name])
    if "groups" in parts:
        base, items, colors = r["groups"]
        values["groups"] = gr.update(value=(png_file(base), items, colors), color_map=colors)
    if "dynamic" in parts:
        values["frame_chart"] = gr.update(value=r["frame_chart"], visible=multi)
    values["gallery"] = gr.update(value=[(png_file(im), c) for im, c in V.gallery(analysis)], visible=True) if multi else gr.update(value=None, visible=False)
    values["frame"] = gr.update(visible=multi, maximum=max(2, analysis.num_views), value=view + 1,
                                label=f"{'Frame' if analysis.kind == 'video' else 'View'} shown above "
                                      f"(1–{analysis.num_views})")
    return tuple(values[k] for k in VIEW_KEYS)


def stale_note(analysis: Analysis | None) -> str:
    """Tell the user when the answers below were made with other settings than the views show."""
    if analysis is None or analysis.answered is None:
        return "*Press **Run** to compare the answers with all tokens and with PruneSID's.*"
    a = analysis.answered
    if a["budget"] != analysis.budget or a["dynamic"] != analysis.dynamic:
        return (f"⚠ *The answers below were made with {a['budget']} tokens"
                f"{' (dynamic)' if a['dynamic'] else ''}; the views now show {analysis.budget}. "
                "Press **Run** to answer again.*")
    return ""


def _status_for(analysis: Analysis, pipe: Pipeline, encoded_now: bool) -> str:
    bits = []
    if analysis.kind == "video":
        bits.append(f"{len(analysis.images)} frames sampled")
    if encoded_now:
        bits.append(f"vision tower {1000 * analysis.vision_s:.0f} ms" if analysis.vision_s else "features from cache")
    bits.extend(analysis.notes)
    return _status(" · ".join(bits) if bits else "Ready.", "ok")


def _matches(state: Analysis | None, kind: str, source: str | None, model_id: str | None) -> bool:
    return (state is not None and state.kind == kind and state.source == source
            and (not model_id or model_id in (state.model_id, MANAGER.state.requested)))


@_guarded(_empty_views)
def on_prepare(kind: str, image: str | None, video: str | None, model_id: str | None, budget: Any, dynamic: bool,
               view: Any = 1, state: Analysis | None = None, progress=gr.Progress()) -> tuple:
    """Upload / example / Run: load the media, encode it (once), select and draw every view."""
    kind = "video" if kind == "video" else "image"
    source = video if kind == "video" else image
    pipe = MANAGER.get(model_id, progress=progress)
    if _matches(state, kind, source, pipe.model_id) and state.model_id == pipe.model_id:
        analysis, fresh = state, False
    else:
        progress(0.7, desc="Reading the " + kind)
        images, notes, times, source = load_media(kind, image, video)
        progress(0.8, desc=f"Encoding {len(images)} {'frames' if len(images) > 1 else 'image'} with the vision tower")
        analysis, fresh = encode(pipe, kind, source, images, notes, times), True
        if state is not None and state.answered and state.source == analysis.source:
            analysis.answered = None
    analysis = reselect(analysis, budget, dynamic, pipe)
    return _view_outputs(analysis, (int(view or 1) - 1) if not fresh else 0, _status_for(analysis, pipe, fresh))


@_guarded(_empty_views)
def on_reselect(state: Analysis | None, budget: Any, dynamic: bool, view: Any, kind: str, image: str | None,
                video: str | None, model_id: str | None, active: str = "kept") -> tuple:
    """Slider release / preset / dynamic toggle: re-select from cached features and redraw the
    visible view (``active``, one of ``views.PARTS``); no new answers."""
    if state is None:
        if not (image if kind != "video" else video):
            return tuple(gr.skip() for _ in VIEW_KEYS)  # nothing uploaded yet: just move the slider
        return on_prepare.__wrapped__(kind, image, video, model_id, budget, dynamic, view, None,
                                      progress=_no_progress)
    pipe = MANAGER.get(state.model_id)
    analysis = reselect(state, budget, dynamic, pipe)
    parts = (active,) if active in V.PARTS else V.PARTS
    return _view_outputs(analysis, int(view or 1) - 1, _status(
        f"Re-selected {analysis.budget} tokens from cached features in {analysis.selection_ms:.0f} ms.", "ok"), parts)


@_guarded(_empty_views)
def on_view(state: Analysis | None, view: Any, active: str = "kept") -> tuple:
    """Frame / view picker: redraw the visible view for another frame (no new selection)."""
    if state is None:
        return tuple(gr.skip() for _ in VIEW_KEYS)
    parts = (active,) if active in V.PARTS else V.PARTS
    return _view_outputs(state, int(view or 1) - 1, gr.skip(), parts)


def on_tab(part: str):
    """A view tab was opened: remember it, and draw it if the slider moved since it was drawn."""

    def handler(state: Analysis | None, view: Any) -> tuple:
        if state is None or state.selection is None:
            return (part,) + tuple(gr.skip() for _ in VIEW_KEYS)
        v = max(0, min(int(view or 1) - 1, state.num_views - 1))
        if state.drawn.get(part) == (state.budget, state.dynamic, v):
            return (part,) + tuple(gr.skip() for _ in VIEW_KEYS)
        return (part,) + _guarded(_empty_views)(_view_outputs)(state, v, gr.skip(), (part,))

    handler.__name__ = f"on_tab_{part}"
    return handler


def on_clear_answers() -> tuple:
    """New media: the answers on screen were about the previous one, so clear them."""
    return "", "", "", "", "", stale_note(None)


def _no_progress(*_args, **_kwargs):
    return None


def _empty_answers(message: str) -> tuple:
    values = {k: gr.skip() for k in ANSWER_KEYS}
    values.update(fidelity=_status(message, "warn"))
    return tuple(values[k] for k in ANSWER_KEYS)


@_guarded(_empty_answers)
def on_answer(state: Analysis | None, question: Any, budget: Any, dynamic: bool, max_new_tokens: Any = 64,
              progress=gr.Progress()) -> tuple:
    """Run (second step): answer with all tokens and with PruneSID's, side by side."""
    if state is None:
        raise ValueError("Nothing to answer about yet: upload an image or a video first.")
    check_question(question)
    pipe = MANAGER.get(state.model_id)
    progress(0.1, desc="Answering twice: with all visual tokens, then with PruneSID's")
    result = answer(state, question, budget, dynamic, pipe, int(max_new_tokens or 64))
    state = replace(state, answered={"budget": check_budget(budget, state.num_patches), "dynamic": bool(dynamic),
                                     "question": check_question(question)})
    texts = answer_texts(result, is_demo=pipe.is_demo, device=pipe.loaded.device.type)
    values = dict(texts, state=state, stale=stale_note(state))
    return tuple(values[k] for k in ANSWER_KEYS)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def answer_texts(result: CompareResult, is_demo: bool = False, device: str = "cpu") -> dict[str, str]:
    """Headers, answers, timing lines and the fidelity explanation for the answers panel."""
    full, pruned = result.timings["full"], result.timings["pruned"]
    total_speedup = full["total_s"] / max(pruned["total_s"], 1e-12)
    budgets = result.budgets
    per = f" ({' + '.join(map(str, budgets))})" if len(budgets) > 1 else ""
    agree = "yes" if result.first_token_agrees else "no"
    same = "identical" if result.same_answer else "different"
    demo = (" *Demo model: random weights, so these answers are gibberish and only show the mechanics.*"
            if is_demo else "")
    return {
        "full_head": f"#### Full · {result.visual_tokens_full} visual tokens",
        "full_answer": result.full_answer or "(empty answer)",
        "full_stats": f"prefill **{_ms(full['prefill_s'])}** · total **{_ms(full['total_s'])}**",
        "pruned_head": f"#### PruneSID · {result.visual_tokens_pruned} visual tokens{per}",
        "pruned_answer": result.pruned_answer or "(empty answer)",
        "pruned_stats": (f"prefill **{_ms(pruned['prefill_s'])}** (**{result.prefill_speedup:.1f}×** faster) · "
                         f"total **{_ms(pruned['total_s'])}** ({total_speedup:.2f}×)"),
        "fidelity": (f"**Fidelity: {result.fidelity:.3f} nats** — how far PruneSID moved the model's choice of the "
                     f"first answer word (KL divergence of the first-token distributions; 0 = unchanged). "
                     f"Same first token: **{agree}**; whole answers: **{same}**. Totals include the shared vision "
                     f"tower ({_ms(full['vision_s'])}) and greedy decoding; measured on this machine's {device.upper()}.{demo}"),
    }


# ---- model picker and banner ------------------------------------------------------------------
def banner_text(manager: ModelManager = MANAGER) -> str:
    """Markdown for the top banner: empty for a real model, a clear warning for the demo model."""
    s = manager.state
    if s.loading and s.active is None:
        return f"⏳ Loading **{s.requested}**… the first run waits for it."
    if s.active is None:
        if s.requested.startswith("demo/"):
            return ("⚠ **Offline demo model** (tiny, random weights): its answers and groups are **not meaningful**; "
                    "they only show how PruneSID and this app work. Pick a LLaVA checkpoint for real results.")
        return f"Model **{s.requested}** loads on first use."
    if s.is_demo:
        why = f" ({s.fallback_reason})" if s.fallback_reason else ""
        return ("⚠ **Offline demo model** (tiny, random weights): its answers and groups are **not meaningful**; "
                f"they only show how PruneSID and this app work.{why}")
    return f"Model: **{s.active}**"


@_guarded(lambda message: (_status(message, "warn"), gr.skip(), None))
def on_model_change(model_id: str, progress=gr.Progress()) -> tuple:
    """Model picker: load the model (or fall back to the demo), update the banner, drop old features."""
    if not model_id or not str(model_id).strip():
        raise ValueError("Pick a model from the list or type a hub id / local folder.")
    pipe = MANAGER.get(str(model_id).strip(), progress=progress)
    if MANAGER.state.fallback_reason:
        _warn(MANAGER.state.fallback_reason + " — using the offline demo model instead.")
    return banner_text(), gr.update(value=pipe.model_id), None


def on_load() -> str:
    """Page load (and after each run): the banner for whatever model is (or will be) in use."""
    return banner_text()


__all__ = [n for n in dir() if n.startswith(("on_", "check_", "load_media", "encode", "reselect", "answer",
                                              "analyze", "banner_text", "stale_note"))] + ["VIEW_KEYS", "ANSWER_KEYS"]


def on_media(kind: str):
    """Upload / example / clear of the image (``kind="image"``) or video input: analyse it at once."""

    def handler(source: str | None, model_id: str | None, budget: Any, dynamic: bool, state: Analysis | None,
                progress=gr.Progress()) -> tuple:
        if not source:  # cleared: keep the page as it is
            return (kind,) + tuple(gr.skip() for _ in VIEW_KEYS)
        image, video = (source, None) if kind == "image" else (None, source)
        return (kind,) + on_prepare(kind, image, video, model_id, budget, dynamic, 1, state, progress=progress)

    handler.__name__ = f"on_{kind}_upload"
    return handler


def analyze_endpoint(image: str | None, question: str | None, budget: float | int | None) -> dict:
    """``/analyze`` (gradio_client): expected problems become a ``gr.Error`` with the message."""
    try:
        return analyze(image, question, budget)
    except EXPECTED as err:
        raise gr.Error(_friendly(err)) from None
    except Exception:
        log.exception("unexpected error in /analyze")
        raise gr.Error(GENERIC_ERROR) from None

