"""The "Compare methods" tab: PruneSID beside the other token-selection rules on the same
image and budget, the stability of the reference's randomised PCA, and budget sweeps.

The app calls :func:`build_compare_tab` inside ``with gr.Tab("Compare methods"):`` with its
image (a file path), question and budget components and a ``get_pipeline()`` callable.
Three layers, as in :mod:`studio.handlers`:

* core steps (:func:`compare_view`, :func:`stability_view`, :func:`sweep_view`) that raise
  ValueError / MediaError / ModelLoadError with a message for a person; tests call these;
* ``on_*`` handlers that never raise (a ``gr.Warning`` and a status line instead);
* JSON endpoints for ``gradio_client``: ``/compare`` (public: every method at one budget, with the
  published figures), and, callable but left out of the API page to keep it small,
  ``/compare_stability`` (image, budget, seeds) and ``/compare_sweep`` (image, question, budgets, methods).
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from functools import cached_property
from typing import Any, Callable, Sequence

import gradio as gr
import torch

from prunesid_eval.compare import (
    DEFAULT_STABILITY_SEEDS,
    DEFAULT_SWEEP_BUDGETS,
    budget_sweep,
    compare_methods,
    method_fn,
    stability,
)
from studio.media import MediaError, load_image
from prunesid_eval.methods import get_method, list_methods
from prunesid_vlm.pipeline import ModelLoadError, Pipeline
from prunesid_eval.published import (
    FAMILY_MODEL,
    LLAVA_15_7B,
    MODEL_LABELS,
    NOT_REPORTED,
    published_budgets,
    published_figure,
    published_table,
)
from viz.compare import draw_keep_frequency, method_colors, method_overlays, plot_budget_sweep, plot_stability

from .components import SafeImage
from .handlers import check_budget  # one budget rule for the whole app
from .runtime import gpu, limit_blas_threads, log, single_thread
from .session import tower_view

EXPECTED = (ValueError, MediaError, ModelLoadError)
GENERIC_ERROR = "Something went wrong on our side (details are in the server log). Please try again or another input."
DEFAULT_QUESTION = "What is in this picture? Answer in one sentence."
DEFAULT_MAX_NEW_TOKENS = 24
TABLE_HEADERS = ["method", "tokens to the LLM", "published rel. accuracy", "answer", "fidelity (KL, nats)",
                 "selection ms"]
MAX_SEEDS = 16
MAX_SWEEP_POINTS = 12

GetPipeline = Callable[[], Pipeline]
ProgressFn = Callable[..., Any]

limit_blas_threads(1)


# ---- inputs --------------------------------------------------------------------------------


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """Registry names, in registry order; all of them when ``methods`` is None."""
    if methods is None:
        return [s.name for s in list_methods()]
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)  # ValueError listing the known names
    chosen = [s.name for s in list_methods() if s.name in set(methods)]
    if not chosen:
        raise ValueError("No method selected: tick at least one method to compare.")
    return chosen


def parse_budgets(text: Any, num_patches: int = 576) -> list[int]:
    """``"16, 64, 192"`` (or a list) → sorted distinct budgets in [2, 1+N]."""
    items = text if isinstance(text, (list, tuple)) else str(text or "").replace(";", ",").split(",")
    budgets = sorted({check_budget(str(v).strip(), num_patches) for v in items if str(v).strip()})
    if not budgets:
        raise ValueError("Give at least one budget for the sweep, e.g. 16, 64, 192, 576.")
    if len(budgets) > MAX_SWEEP_POINTS:
        raise ValueError(f"At most {MAX_SWEEP_POINTS} budgets per sweep, got {len(budgets)}.")
    return budgets


def _question(question: Any) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("The question is empty: type a question about the image (in the Explore tab).")
    return question.strip()


class _Prepared:
    """An image, its pipeline and cached features, ready for every method."""

    def __init__(self, image: Any, get_pipeline: GetPipeline):
        if image is None or (isinstance(image, str) and not image):
            raise MediaError("No image yet: upload one (or pick an example) in the Explore tab.")
        self.image, self.notes = load_image(image)
        self.pipe = get_pipeline()
        self.feats = _encode(self.pipe, [self.image])
        self.pixels = tower_view(self.image, self.feats.views[0].box)
        self.model = FAMILY_MODEL.get(self.pipe.family, LLAVA_15_7B)

    @cached_property
    def options(self) -> dict:
        """Per-method options: φ_ref for the dynamic ratio; DivPrune on the *projected* tokens, as its code
        prunes the LLM's input embeddings (the registry default, tower states, is for model-free use)."""
        options = {"prunesid-dyn": {"phi_ref": float(self.pipe.phi_ref)}}
        projected = _projected(self.pipe, self.feats.hidden_states)
        if projected is not None:
            options["divprune"] = {"features": projected}
        return options

    def selection_budgets(self, k: int) -> list[int]:
        return list(self.pipe.adapter.selection_budgets(self.feats.views, self.pipe.budgets(self.feats, k)))


@gpu(duration=60)
def _encode(pipe: Pipeline, images: list):
    return pipe.encode(images)


_PROJECTED: OrderedDict[str, torch.Tensor] = OrderedDict()
PROJECTED_CACHE_SIZE = 8


def _projected(pipe: Pipeline, hidden: torch.Tensor) -> torch.Tensor | None:
    """Float32 CPU ``[V, N, D_text]``: the patch rows through the model's projector (cached by content),
    or None if the adapter has no projector call."""
    project = getattr(getattr(pipe, "adapter", None), "project", None)
    if project is None:
        return None
    key = f"{pipe.model_id}|{tuple(hidden.shape)}|" + hashlib.sha1(hidden.float().contiguous().numpy().tobytes()).hexdigest()
    if key not in _PROJECTED:
        _PROJECTED[key] = _project(project, hidden)
        while len(_PROJECTED) > PROJECTED_CACHE_SIZE:
            _PROJECTED.popitem(last=False)
    _PROJECTED.move_to_end(key)
    return _PROJECTED[key]


@gpu(duration=60)
def _project(project, hidden: torch.Tensor) -> torch.Tensor:
    v, tokens, d = hidden.shape
    with torch.inference_mode():
        rows = project(hidden[:, 1:].reshape(-1, d))  # (V·N, D_text)
    return rows.float().cpu().reshape(v, tokens - 1, -1).clone()


@gpu(duration=180)
def _answers(pipe: Pipeline, image, question: str, k: int, fns: dict[str, Callable], max_new_tokens: int,
             progress: ProgressFn | None = None) -> dict:
    out = {}
    for i, (name, fn) in enumerate(fns.items()):
        if progress is not None:
            progress(0.3 + 0.7 * i / len(fns), desc=f"answering with {get_method(name).label}'s tokens")
        out[name] = pipe.compare([image], question, k, selection=fn, max_new_tokens=max_new_tokens)
    return out


# ---- core steps (raise on bad input) -----------------------------------------------------------
def compare_view(image: Any, question: Any, budget: Any, methods: Sequence[str] | None, get_pipeline: GetPipeline,
                 *, answers: bool = True, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 progress: ProgressFn | None = None) -> dict:
    """Every chosen method at one budget: overlays, a table and a JSON summary.

    Returns ``{"gallery": [(uint8 image, caption)], "table": [[...]], "json": {...}}``."""
    names = check_methods(methods)
    if answers:
        question = _question(question)
    if progress is not None:
        progress(0.05, desc="Encoding the image (cached after the first time)…")
    prep = _Prepared(image, get_pipeline)
    k = check_budget(budget, prep.pipe.num_patches)
    sel_budgets = prep.selection_budgets(k)
    if progress is not None:
        progress(0.2, desc="Selecting tokens with every method…")
    options = prep.options  # DivPrune's projected tokens: one projector pass, cached per image
    start = time.perf_counter()
    with single_thread():
        runs = compare_methods(prep.feats.hidden_states, prep.feats.cls_attention, sel_budgets, names,
                               options=options, model=prep.model)
    selection_s = time.perf_counter() - start
    total = sum(sel_budgets)
    gallery = method_overlays(prep.pixels, [(r.label, r.selection) for r in runs], size=336,
                              grid_shape=tuple(prep.pipe.grid), legend=False)  # the caption says it all
    results = {}
    if answers:
        fns = {r.name: method_fn(r.spec, options=options) for r in runs}
        results = _answers(prep.pipe, prep.image, question, k, fns, int(max_new_tokens), progress)
    full_answer = next(iter(results.values())).full_answer if results else None

    table, rows = [], []
    for r in runs:
        fig = published_figure(r.name, total, prep.model)  # paper budgets: totals over views (NeXT)
        published = NOT_REPORTED if fig is None else fig.label()
        res = results.get(r.name)
        tokens = int(r.selection.num_tokens.sum())
        table.append([r.label, _token_text(r), published, res.pruned_answer if res else "—",
                      f"{res.fidelity:.3f}" if res else "—", f"{1000 * r.seconds:.1f}"])
        row = r.to_dict()
        row.update({"tokens": tokens, "published": NOT_REPORTED if fig is None else fig.to_dict(),
                    "answer": res.pruned_answer if res else None, "fidelity": res.fidelity if res else None,
                    "first_token_agrees": res.first_token_agrees if res else None})
        rows.append(row)
    summary = {
        "model_id": prep.pipe.model_id, "family": prep.pipe.family, "is_demo": prep.pipe.is_demo,
        "budget": k, "selection_budgets": sel_budgets, "question": question if answers else None,
        "full_answer": full_answer, "fidelity_metric": "first_token_kl_nats" if answers else None,
        "selection_ms_all_methods": 1000 * selection_s, "methods": rows,
        "published_model": MODEL_LABELS[prep.model], "published_budgets": published_budgets(prep.model),
        "published": published_table(prep.model), "notes": prep.notes,
    }
    return {"gallery": gallery, "table": table, "json": summary, "full_answer": full_answer,
            "full_tokens": next(iter(results.values())).visual_tokens_full if results else None,
            "selection_ms": 1000 * selection_s}


def _token_text(run) -> str:
    keep = run.selection.keep_row(0)
    parts = (["CLS"] if bool((keep == 0).any()) else []) + [f"{int((keep > 0).sum())} patches"]
    merged = int(run.selection.num_tokens[0]) - keep.numel()
    if merged:
        parts.append(f"{merged} merged")
    return f"{int(run.selection.num_tokens[0])} = " + " + ".join(parts)


def stability_view(image: Any, budget: Any, seeds: Any, get_pipeline: GetPipeline, *,
                   progress: ProgressFn | None = None) -> dict:
    """PruneSID's randomised PCA with ``seeds`` seeds vs the exact PCA, on the image (first view)."""
    try:
        count = int(seeds)
    except (TypeError, ValueError):
        raise ValueError(f"The number of seeds must be a whole number, got {seeds!r}.") from None
    if not 2 <= count <= MAX_SEEDS:
        raise ValueError(f"Use between 2 and {MAX_SEEDS} seeds, got {count}.")
    prep = _Prepared(image, get_pipeline)
    k = check_budget(budget, prep.pipe.num_patches)
    report = (lambda f, d: progress(f, desc=d)) if progress is not None else None
    with single_thread():
        result = stability(prep.feats.hidden_states, prep.feats.cls_attention, k, range(count), progress=report)
    fig = plot_stability(result.jaccard_vs_exact, result.pairwise, result.seeds, exact_repeat=result.exact_repeat,
                         num_tokens=k)
    overlay = draw_keep_frequency(prep.pixels, result.keep_frequency, result.exact_kept, size=336,
                                  grid_shape=tuple(prep.pipe.grid))
    d = result.to_dict()
    text = (f"**Exact PCA:** the same {k - 1} patches every run (Jaccard with itself = {result.exact_repeat:.2f}).  \n"
            f"**Randomised PCA (the reference's `pca_lowrank`), {count} seeds:** Jaccard with the exact result "
            f"{result.mean_vs_exact:.2f} on average (lowest {d['min_jaccard_vs_exact']:.2f}); between two seeds "
            f"{result.mean_pairwise:.2f}. {d['always_kept']} patches are kept by every seed, {d['sometimes_kept']} "
            f"only by some.")
    d.update({"model_id": prep.pipe.model_id, "method": "prunesid", "pca": ["exact", "randomized"]})
    return {"overlay": overlay, "figure": fig, "markdown": text, "json": d}


def sweep_view(image: Any, question: Any, budgets: Any, methods: Sequence[str] | None, get_pipeline: GetPipeline,
               *, with_model: bool = True, mark: Any = None, progress: ProgressFn | None = None) -> dict:
    """Fidelity (model: first-token KL) and feature coverage against budget, per method."""
    names = check_methods(methods)
    if with_model:
        question = _question(question)
    prep = _Prepared(image, get_pipeline)
    points = parse_budgets(budgets, prep.pipe.num_patches)
    fidelity = None
    if with_model:
        options = prep.options

        def fidelity(name, k, _selection):  # the pipeline re-selects (deterministically) on all views
            return prep.pipe.compare([prep.image], question, k, selection=method_fn(name, options=options),
                                     max_new_tokens=1).fidelity

    report = (lambda f, d: progress(f, desc=d)) if progress is not None else None
    with single_thread():
        result = _sweep(prep, points, names, fidelity, report)
    labels = dict(zip(result.methods, result.labels))
    colors = method_colors(list(result.labels))
    coverage = {labels[m]: result.coverage[m] for m in result.methods}
    marks = [int(mark)] if mark is not None and str(mark).strip() else []
    if result.fidelity is not None:
        fig = plot_budget_sweep(result.budgets, {labels[m]: result.fidelity[m] for m in result.methods},
                                ylabel="first-token KL (nats)", title="Fidelity against budget on this image",
                                marks=marks, colors=colors,
                                ax_extra=("feature coverage (higher = better)", coverage))
    else:
        fig = plot_budget_sweep(result.budgets, coverage, ylabel="feature coverage",
                                title="Feature coverage against budget on this image (higher is better)",
                                lower_is_better=False, marks=marks, colors=colors)
    d = result.to_dict()
    d.update({"model_id": prep.pipe.model_id, "question": question if with_model else None,
              "published_model": MODEL_LABELS[prep.model],
              "published": {m: {str(k): _published_text(m, k, prep.model) for k in result.budgets}
                            for m in result.methods}})
    return {"figure": fig, "json": d}


def _published_text(method: str, k: int, model: str):
    fig = published_figure(method, k, model)
    return NOT_REPORTED if fig is None else fig.relative_accuracy


@gpu(duration=300)
def _sweep(prep: _Prepared, points, names, fidelity, report):
    return budget_sweep(prep.feats.hidden_states, prep.feats.cls_attention, points, names, fidelity=fidelity,
                        fidelity_metric="first_token_kl_nats" if fidelity else None, options=prep.options,
                        progress=report)


# ---- UI handlers (never raise) ---------------------------------------------------------------
def _fail(err: Exception, where: str) -> str:
    if isinstance(err, EXPECTED):
        message = str(err)
    else:
        log.exception("unexpected error in %s", where)
        message = GENERIC_ERROR
    gr.Warning(message)
    return f"⚠️ {message}"


def on_compare(get_pipeline: GetPipeline):
    def handler(image, question, budget, methods, answers, max_new_tokens, progress=gr.Progress()):
        try:
            out = compare_view(image, question, budget, methods, get_pipeline, answers=bool(answers),
                               max_new_tokens=int(max_new_tokens), progress=progress)
        except Exception as err:  # noqa: BLE001 — shown to the user, logged if unexpected
            return gr.skip(), gr.skip(), _fail(err, "compare"), gr.skip()
        status = f"Selection with {len(out['table'])} methods: {out['selection_ms']:.0f} ms (features cached)."
        if out["full_answer"] is not None:
            status += f"  \n**Answer with all {out['full_tokens']} visual tokens:** {out['full_answer']}"
        return out["gallery"], out["table"], status, out["json"]
    handler.__name__ = "on_compare"
    return handler


def on_stability(get_pipeline: GetPipeline):
    def handler(image, budget, seeds, progress=gr.Progress()):
        try:
            out = stability_view(image, budget, seeds, get_pipeline, progress=progress)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), gr.skip(), _fail(err, "stability"), gr.skip()
        return out["overlay"], out["figure"], out["markdown"], out["json"]
    handler.__name__ = "on_stability"
    return handler


def on_sweep(get_pipeline: GetPipeline):
    def handler(image, question, budgets, methods, with_model, budget, progress=gr.Progress()):
        try:
            out = sweep_view(image, question, budgets, methods, get_pipeline, with_model=bool(with_model),
                             mark=budget, progress=progress)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), _fail(err, "sweep"), gr.skip()
        d = out["json"]
        return out["figure"], f"Sweep over {len(d['budgets'])} budgets × {len(d['methods'])} methods in {d['seconds']:.1f} s.", d
    handler.__name__ = "on_sweep"
    return handler


def _endpoint(fn, where: str):
    def call(*args):
        try:
            return fn(*args)
        except EXPECTED as err:
            raise gr.Error(str(err)) from None
        except Exception:
            log.exception("unexpected error in /%s", where)
            raise gr.Error(GENERIC_ERROR) from None
    return call


def methods_markdown() -> str:
    """Each method: its rule, source, CLS handling and deviations from its public code."""
    lines = []
    for s in list_methods():
        src = f"[code]({s.code_url})" if s.code_url else "simple baseline"
        lines.append(f"- **{s.label}** (`{s.name}`; {'keeps' if s.keeps_cls else 'no'} CLS; {src}). {s.notes}"
                     + (f" *Deviations:* {' '.join(s.deviations)}" if s.deviations else "")
                     + (f" — {s.paper}" if s.paper != "—" else ""))
    lines.append("\nPublished figures: PruneSID paper (arXiv 2603.09480) tables, averages over its benchmarks "
                 "for LLaVA-1.5-7B (64 / 192 tokens), LLaVA-NeXT-7B (640 / 320 / 160) and Video-LLaVA (17 per frame);"
                 " \"not reported\" everywhere else. They describe the benchmark suite, not this image.")
    return "\n".join(lines)


INTRO = """Every method gets **the same image, question and token budget** as the Explore tab and hands the
language model the same number of visual tokens (PruneSID-Dyn adapts its own budget to the image).
Yellow outlines: patches kept; blue tint: patches merged into VisionZip's contextual tokens; dark: dropped.
*Fidelity* is KL(full ‖ pruned) of the first answer token in nats (0 = pruning changed nothing)."""


# ---- layout --------------------------------------------------------------------------------
def build_compare_tab(image_input, question_input, budget_input, get_pipeline: GetPipeline) -> None:
    """The tab's components and events (call inside ``with gr.Tab("Compare methods"):``)."""
    choices = [(s.label, s.name) for s in list_methods()]
    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        methods = gr.CheckboxGroup(choices, value=[c[1] for c in choices], label="Methods", scale=4,
                                   elem_id="compare-methods")
        with gr.Column(scale=2, min_width=240):
            answers = gr.Checkbox(True, label="Also answer the question with each method's tokens",
                                  elem_id="compare-answers")
            max_new = gr.Slider(1, 64, DEFAULT_MAX_NEW_TOKENS, step=1, label="Answer length (new tokens)",
                                elem_id="compare-max-new")
    with gr.Row():
        run_compare = gr.Button("Compare at this budget", variant="primary", elem_id="compare-run")
        run_stability = gr.Button("Stability (randomised PCA)", elem_id="compare-stability")
        run_sweep = gr.Button("Budget sweep", elem_id="compare-sweep")
    status = gr.Markdown(elem_id="compare-status")
    with gr.Tabs():
        with gr.Tab("Side by side", id="compare-side"):
            gallery = gr.Gallery(label="Kept tokens per method", columns=4, rows=2, format="png", object_fit="contain",
                                 height=660, allow_preview=True, elem_id="compare-gallery")
            table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["str"] * len(TABLE_HEADERS), wrap=True,
                                 interactive=False, elem_id="compare-table")
        with gr.Tab("Stability", id="compare-stability-tab"):
            seeds = gr.Slider(2, MAX_SEEDS, len(DEFAULT_STABILITY_SEEDS), step=1, label="Seeds of the randomised PCA",
                              elem_id="compare-seeds")
            stability_md = gr.Markdown()
            with gr.Row(equal_height=False):
                frequency = gr.Image(label="How often each patch is kept (white outline: exact PCA)", format="png",
                                     interactive=False, scale=2, elem_id="compare-frequency")
                stability_plot = gr.Plot(show_label=False, scale=3, elem_id="compare-stability-plot")
        with gr.Tab("Budget sweep", id="compare-sweep-tab"):
            with gr.Row():
                sweep_budgets = gr.Textbox(", ".join(str(k) for k in DEFAULT_SWEEP_BUDGETS), label="Budgets",
                                           scale=3, elem_id="compare-budgets")
                with_model = gr.Checkbox(True, label="Fidelity from the model (2 prefills per point)", scale=2,
                                         elem_id="compare-with-model")
            sweep_plot = gr.Plot(show_label=False, elem_id="compare-sweep-plot")
    with gr.Accordion("Raw numbers (JSON)", open=False):
        raw = gr.JSON(elem_id="compare-json")
    with gr.Accordion("Methods, sources and deviations", open=False):
        gr.Markdown(methods_markdown())

    private = dict(api_visibility="private", concurrency_id="model")
    run_compare.click(on_compare(get_pipeline), [image_input, question_input, budget_input, methods, answers, max_new],
                      [gallery, table, status, raw], **private)
    run_stability.click(on_stability(get_pipeline), [image_input, budget_input, seeds],
                        [frequency, stability_plot, stability_md, raw], **private)
    run_sweep.click(on_sweep(get_pipeline), [image_input, question_input, sweep_budgets, methods, with_model,
                                             budget_input], [sweep_plot, status, raw], **private)

    # Scripted endpoints (hidden on the page): JSON with method names, budgets and published figures.
    with gr.Row(visible=False):
        api_image = SafeImage(type="filepath", label="image")
        api_question = gr.Textbox(DEFAULT_QUESTION, label="question")
        api_budget = gr.Number(64, label="budget", precision=0)
        api_methods = gr.Textbox("", label="methods (comma-separated registry names; empty = all)")
        api_answers = gr.Checkbox(True, label="answers")
        api_seeds = gr.Number(len(DEFAULT_STABILITY_SEEDS), label="seeds", precision=0)
        api_budgets = gr.Textbox(", ".join(str(k) for k in DEFAULT_SWEEP_BUDGETS), label="budgets")
        api_out = gr.JSON(label="result")
        api_compare = gr.Button("compare")
        api_stability = gr.Button("compare_stability")
        api_sweep = gr.Button("compare_sweep")

    def _api_methods(text):
        return None if not str(text or "").strip() else str(text)

    api_compare.click(
        _endpoint(lambda im, q, k, ms, ans: compare_view(im, q, k, check_methods(_api_methods(ms)), get_pipeline,
                                                         answers=bool(ans))["json"], "compare"),
        [api_image, api_question, api_budget, api_methods, api_answers], api_out, api_name="compare",
        api_description="Every selection method at one budget on one image: tokens, kept indices, answers, "
                        "fidelity and the published relative accuracy (or 'not reported'), as JSON.",
        concurrency_id="model")
    api_stability.click(
        _endpoint(lambda im, k, s: stability_view(im, k, s, get_pipeline)["json"], "compare_stability"),
        [api_image, api_budget, api_seeds], api_out, api_name="compare_stability", api_visibility="undocumented",
        api_description="Jaccard of PruneSID's kept set: randomised PCA (one run per seed) vs exact, as JSON.",
        concurrency_id="model")
    api_sweep.click(
        _endpoint(lambda im, q, b, ms: sweep_view(im, q, b, check_methods(_api_methods(ms)), get_pipeline)["json"],
                  "compare_sweep"),
        [api_image, api_question, api_budgets, api_methods], api_out, api_name="compare_sweep", api_visibility="undocumented",
        api_description="Per method and budget: tokens, feature coverage and first-token KL, as JSON.",
        concurrency_id="model")
