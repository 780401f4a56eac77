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
  ``/compare_stability`` (image, budget, seeds), ``/compare_sweep`` (image, question, budgets, methods)
  and ``/compare_in_llm`` (image, question, budgets: the combinations with in-LLM pruning).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from prunesid_eval.compare import DEFAULT_STABILITY_SEEDS, DEFAULT_SWEEP_BUDGETS
from prunesid_eval.methods import get_method, list_methods
from prunesid_eval.published import MODEL_LABELS, NOT_REPORTED, published_budgets, published_figure, published_table
from prunesid_vlm import studies
from prunesid_vlm.pipeline import Cost, Pipeline, check_budget, check_question
from viz.compare import draw_keep_frequency, method_colors, method_overlays, plot_budget_sweep, plot_stability

from .components import RawNumber, SafeImage
from .errors import endpoint, message_for, warn
from .limits import without_cache_fields
from .inllm_tab import build_inllm_tab, combination_view
from .media import MediaError, load_image

DEFAULT_QUESTION = "What is in this picture? Answer in one sentence."
DEFAULT_MAX_NEW_TOKENS = 24
TABLE_HEADERS = ["method", "tokens to the LLM", "answer on this image", "fidelity (KL, nats)", "selection ms",
                 "beside its authors' code (synthetic cases)", "paper's benchmark average (not this image)"]
MAX_SEEDS = 16
MAX_SWEEP_POINTS = 12
ANY_PATCHES = 1 << 20
"""A bound that lets every budget through :func:`parse_budgets` when the media's N is not known yet."""

GetPipeline = Callable[[], Pipeline]
ProgressFn = Callable[..., Any]

check_methods = studies.check_methods


# ---- inputs --------------------------------------------------------------------------------
def parse_budgets(text: Any, num_patches: int = 576) -> list[int]:
    """``"16, 64, 192"`` (or a list) → sorted distinct budgets in [2, 1+N]. The studies check the
    budgets against the media's own N again where they run (one crossing onto the GPU with the
    encoding), so a caller without features may pass a large ``num_patches``."""
    items = text if isinstance(text, (list, tuple)) else str(text or "").replace(";", ",").split(",")
    budgets = sorted({check_budget(str(v).strip(), num_patches) for v in items if str(v).strip()})
    if not budgets:
        raise ValueError("Give at least one budget for the sweep, e.g. 16, 64, 192, 576.")
    if len(budgets) > MAX_SWEEP_POINTS:
        raise ValueError(f"At most {MAX_SWEEP_POINTS} budgets per sweep, got {len(budgets)}.")
    return budgets


def _media(image: Any, media: Any = None) -> tuple[list, list[str], str]:
    """``(images, notes, label)``: the media of the Explore tab's current analysis when there is
    one (an image, or a video's sampled frames), else the image input's file."""
    if media is not None and getattr(media, "images", None):
        name = Path(str(media.source)).name
        label = f"the {len(media.images)} frames sampled from {name}" if media.kind == "video" else name
        return list(media.images), list(media.notes), label
    if image is None or (isinstance(image, str) and not image):
        raise MediaError("No image yet: upload one (or pick an example) in the Explore tab.")
    img, notes = load_image(image)
    return [img], notes, Path(str(image)).name


def context_line(label: str, budget: int, question: str | None, model_id: str) -> str:
    """What a comparison was computed on, shown above its results."""
    asked = f" · question: “{question}”" if question else " · no answers"
    return f"**Compared on** {label} · K = {budget} per view{asked} · model `{model_id}`"


def _reporter(progress: ProgressFn | None):
    return (lambda f, d: progress(f, desc=d)) if progress is not None else None


# ---- core steps (raise on bad input) -----------------------------------------------------------
def compare_view(image: Any, question: Any, budget: Any, methods: Sequence[str] | None, get_pipeline: GetPipeline,
                 *, answers: bool = True, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 progress: ProgressFn | None = None, media: Any = None, native_dtype: bool = False) -> dict:
    """Every chosen method at one budget: overlays, a table and a JSON summary.

    Returns ``{"gallery": [(uint8 image, caption)], "table": [[...]], "json": {...}, ...}``."""
    names = check_methods(methods)
    asked = check_question(question) if answers or (isinstance(question, str) and question.strip()) else None
    question = asked if answers else None  # checked even when unused: one rule for every endpoint
    images, notes, label = _media(image, media)
    pipe = get_pipeline()
    if question is not None and pipe.answers == "none":
        question = None
        notes = notes + [f"{pipe.model_id} is a vision tower alone: every method's tokens are compared, without "
                         "answers."]
    if progress is not None:
        progress(0.05, desc="Encoding the image (cached after the first time)…")
    answers_to_make = (1 + len(names)) if question is not None else 0
    cost = pipe.encode_cost(images) + Cost(generations=answers_to_make, new_tokens=int(max_new_tokens), prefills=2)
    out = pipe.run(studies.compare_methods, images, budget, names, question=question,
                   max_new_tokens=int(max_new_tokens), progress=_reporter(progress), native_dtype=bool(native_dtype),
                   instruction=asked, cost=cost)
    model = studies.published_model(pipe)
    pixels = pipe.view_pixels(images, out.feats)[0]
    gallery = method_overlays(pixels, [(r.label, r.selection) for r in out.runs], size=336,
                              grid_shape=out.feats.grid or pipe.grid, legend=False)  # the caption says it all
    total = sum(out.selection_budgets)
    table, rows = [], []
    for r in out.runs:
        fig = published_figure(r.name, total, model)  # paper budgets: totals over views (NeXT)
        res = out.results.get(r.name)
        table.append([r.label, _token_text(r), res.pruned_answer if res else "—",
                      f"{res.fidelity:.3f}" if res else "—", f"{1000 * r.seconds:.1f}",
                      r.spec.versus_code or "—", NOT_REPORTED if fig is None else fig.label()])
        row = r.to_dict()
        row.update({"tokens": int(r.selection.num_tokens.sum()), "native_dtype": bool(native_dtype),
                    "published": NOT_REPORTED if fig is None else fig.to_dict(),
                    "answer": res.pruned_answer if res else None, "fidelity": res.fidelity if res else None,
                    "first_token_agrees": res.first_token_agrees if res else None})
        rows.append(row)
    summary = {
        "model_id": pipe.model_id, "family": pipe.family, "is_demo": pipe.is_demo,
        "budget": out.budget, "selection_budgets": out.selection_budgets, "question": question,
        "full_answer": out.full_answer, "fidelity_metric": studies.FIDELITY_METRIC if answers else None,
        "selection_ms_all_methods": 1000 * out.selection_s, "methods": rows, "generations": out.generations,
        "published_model": MODEL_LABELS[model], "published_budgets": published_budgets(model),
        "published": published_table(model), "notes": notes,
    }
    if out.unavailable:
        summary["notes"] = summary["notes"] + [
            f"Not available for {pipe.model_id}: {', '.join(get_method(n).label for n in out.unavailable)} (they rank "
            "patches by the CLS token's attention, and this tower has none)."]
    summary["media"] = label
    return {"gallery": gallery, "table": table, "json": summary, "full_answer": out.full_answer,
            "full_tokens": out.full_tokens, "selection_ms": 1000 * out.selection_s,
            "context": context_line(label, out.budget, question, pipe.model_id)
            + (f" · not available for this model (no CLS token): "
               f"{', '.join(get_method(n).label for n in out.unavailable)}" if out.unavailable else "")}


def _token_text(run) -> str:
    keep = run.selection.keep_row(0)
    parts = (["CLS"] if bool((keep == 0).any()) else []) + [f"{int((keep > 0).sum())} patches"]
    merged = int(run.selection.num_tokens[0]) - keep.numel()
    if merged:
        parts.append(f"{merged} merged")
    return f"{int(run.selection.num_tokens[0])} = " + " + ".join(parts)


def stability_view(image: Any, budget: Any, seeds: Any, get_pipeline: GetPipeline, *,
                   progress: ProgressFn | None = None, media: Any = None) -> dict:
    """PruneSID's randomised PCA with ``seeds`` seeds vs the exact PCA, on the image (first view)."""
    try:
        count = int(seeds)
    except (TypeError, ValueError):
        raise ValueError(f"The number of seeds must be a whole number, got {seeds!r}.") from None
    if not 2 <= count <= MAX_SEEDS:
        raise ValueError(f"Use between 2 and {MAX_SEEDS} seeds, got {count}.")
    images, _, label = _media(image, media)
    pipe = get_pipeline()
    feats, result = studies.stability_of(pipe, images, budget, range(count), progress=_reporter(progress))
    k = result.num_tokens
    fig = plot_stability(result.jaccard_vs_exact, result.pairwise, result.seeds, exact_repeat=result.exact_repeat,
                         num_tokens=k)
    overlay = draw_keep_frequency(pipe.view_pixels(images, feats)[0], result.keep_frequency, result.exact_kept,
                                  size=336, grid_shape=feats.grid or pipe.grid)
    d = result.to_dict()
    text = (context_line(label, k, None, pipe.model_id) + " (first view)  \n"
            f"**Exact PCA:** the same {k - 1} patches every run (Jaccard with itself = {result.exact_repeat:.2f}).  \n"
            f"**Randomised PCA (the reference's `pca_lowrank`), {count} seeds:** Jaccard with the exact result "
            f"{result.mean_vs_exact:.2f} on average (lowest {d['min_jaccard_vs_exact']:.2f}); between two seeds "
            f"{result.mean_pairwise:.2f}. {d['always_kept']} patches are kept by every seed, {d['sometimes_kept']} "
            f"only by some.")
    d.update({"model_id": pipe.model_id, "method": "prunesid", "pca": ["exact", "randomized"]})
    return {"overlay": overlay, "figure": fig, "markdown": text, "json": d}


def sweep_view(image: Any, question: Any, budgets: Any, methods: Sequence[str] | None, get_pipeline: GetPipeline,
               *, with_model: bool = True, mark: Any = None, progress: ProgressFn | None = None,
               media: Any = None) -> dict:
    """Fidelity (model: first-token KL) and feature coverage against budget, per method."""
    names = check_methods(methods)
    asked = check_question(question) if with_model or (isinstance(question, str) and question.strip()) else None
    question = asked if with_model else None
    images, _, label = _media(image, media)
    pipe = get_pipeline()
    if pipe.answers == "none":  # a vision tower alone: feature coverage, no first-token fidelity
        question = None
    points = parse_budgets(budgets, ANY_PATCHES)  # checked against the media's N inside the study
    cost = pipe.encode_cost(images) + Cost(prefills=2 + (len(points) * len(names) + 1 if question else 0))
    result, generations = pipe.run(studies.sweep, images, points, names, question=question,
                                   progress=_reporter(progress), cost=cost)
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
    model = studies.published_model(pipe)
    d = result.to_dict()
    d.update({"model_id": pipe.model_id, "question": question, "generations": generations, "media": label,
              "published_model": MODEL_LABELS[model],
              "published": {m: {str(k): _published_text(m, k, model) for k in result.budgets}
                            for m in result.methods}})
    return {"figure": fig, "json": d}


def _published_text(method: str, k: int, model: str):
    fig = published_figure(method, k, model)
    return NOT_REPORTED if fig is None else fig.relative_accuracy


# ---- UI handlers (never raise) ---------------------------------------------------------------
def _fail(err: Exception, where: str) -> str:
    message = message_for(err, where)
    warn(message)
    return f"⚠ {message}"


def on_compare(get_pipeline: GetPipeline):
    def handler(image, question, budget, methods, answers, max_new_tokens, native_dtype=False, media=None,
                progress=gr.Progress()):
        try:
            out = compare_view(image, question, budget, methods, get_pipeline, answers=bool(answers),
                               max_new_tokens=int(max_new_tokens), progress=progress, media=media,
                               native_dtype=bool(native_dtype))
        except Exception as err:  # noqa: BLE001 — shown to the user, logged if unexpected
            return gr.skip(), gr.skip(), _fail(err, "compare"), gr.skip()
        status = (f"{out['context']}  \nSelection with {len(out['table'])} methods: {out['selection_ms']:.0f} ms "
                  "(features cached).")
        if out["full_answer"] is not None:
            status += f"  \n**Answer with all {out['full_tokens']} visual tokens:** {out['full_answer']}"
        return out["gallery"], out["table"], status, out["json"]
    handler.__name__ = "on_compare"
    return handler


def question_view(image: Any, question: Any, other_question: Any, budget: Any, get_pipeline: GetPipeline, *,
                  media: Any = None) -> dict:
    """PruneSID's and CDPruner's kept tokens for two questions about the same picture."""
    images, _, label = _media(image, media)
    pipe = get_pipeline()
    out = pipe.run(studies.question_sensitivity, images, budget, [question, other_question],
                   cost=pipe.encode_cost(images) + Cost(prefills=3))
    pixels = pipe.view_pixels(images, out.feats)[0]
    grid = out.feats.grid or pipe.grid
    items, lines = [], []
    for name, selections in out.selections.items():
        spec = get_method(name)
        for q, sel in zip(out.questions, selections):
            items.append((sel, f"{spec.label} · “{q}”"))
        jaccard = out.jaccard(name)[0]
        moves = "the same tokens for both questions" if jaccard == 1.0 else f"Jaccard {jaccard:.2f} between the questions"
        lines.append(f"- **{spec.label}**: {moves}" + (" (it chooses by the question)" if spec.needs_question else
                                                         " (it chooses from the picture alone)"))
    if "cdpruner" not in out.selections:
        lines.append(f"- CDPruner is not available for {pipe.model_id}: it needs the CLIP text tower its vision "
                     "tower came with.")
    gallery = method_overlays(pixels, [(lbl, sel) for sel, lbl in items], size=336, grid_shape=grid, legend=False)
    text = (f"**Compared on** {label} · K = {out.budget} · model `{pipe.model_id}`  \n" + "\n".join(lines))
    return {"gallery": gallery, "markdown": text,
            "json": {name: out.jaccard(name) for name in out.selections} | {"questions": out.questions}}


def on_question_sensitivity(get_pipeline: GetPipeline):
    def handler(image, question, other_question, budget, media=None, progress=gr.Progress()):
        try:
            out = question_view(image, question, other_question, budget, get_pipeline, media=media)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), _fail(err, "question sensitivity"), gr.skip()
        return out["gallery"], out["markdown"], out["json"]
    handler.__name__ = "on_question_sensitivity"
    return handler


def on_stability(get_pipeline: GetPipeline):
    def handler(image, budget, seeds, media=None, progress=gr.Progress()):
        try:
            out = stability_view(image, budget, seeds, get_pipeline, progress=progress, media=media)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), gr.skip(), _fail(err, "stability"), gr.skip()
        return out["overlay"], out["figure"], out["markdown"], out["json"]
    handler.__name__ = "on_stability"
    return handler


def on_sweep(get_pipeline: GetPipeline):
    def handler(image, question, budgets, methods, with_model, budget, media=None, progress=gr.Progress()):
        try:
            out = sweep_view(image, question, budgets, methods, get_pipeline, with_model=bool(with_model),
                             mark=budget, progress=progress, media=media)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), _fail(err, "sweep"), gr.skip()
        d = out["json"]
        asked = f" · question: “{d['question']}”" if d["question"] else ""
        return (out["figure"], f"**Swept on** {d['media']}{asked} · {len(d['budgets'])} budgets × "
                               f"{len(d['methods'])} methods in {d['seconds']:.1f} s.", d)
    handler.__name__ = "on_sweep"
    return handler


def methods_markdown() -> str:
    """Each method: its rule, source, CLS handling and deviations from its public code."""
    lines = []
    for s in list_methods():
        src = f"[code]({s.code_url})" if s.code_url else "simple baseline"
        lines.append(f"- **{s.label}** (`{s.name}`; {'keeps' if s.keeps_cls else 'no'} CLS; {src}). {s.notes}"
                     + (" **Chooses by the question** (see the Question tab)." if s.needs_question else "")
                     + (f" *Deviations:* {' '.join(s.deviations)}" if s.deviations else "")
                     + (f" — {s.paper}" if s.paper != "—" else ""))
    lines.append("\nPublished figures: PruneSID paper (arXiv 2603.09480) tables, averages over its benchmarks "
                 "for LLaVA-1.5-7B (64 / 192 tokens), LLaVA-NeXT-7B (640 / 320 / 160) and Video-LLaVA (17 per frame);"
                 " \"not reported\" everywhere else. They describe the benchmark suite, not this image.")
    return "\n".join(lines)


INTRO = """Every method gets **the same image, question and token budget** as the Explore tab and hands the
language model the same number of visual tokens (PruneSID-Dyn adapts its own budget to the image).
The *Inside the LLM* tab combines PruneSID with FastV and PyramidDrop. Yellow outlines: patches kept; blue tint: patches merged into VisionZip's contextual tokens; dark: dropped.
*Fidelity* is KL(full ‖ pruned) of the first answer token in nats (0 = pruning changed nothing)."""


# ---- layout --------------------------------------------------------------------------------
def build_compare_tab(image_input, question_input, budget_input, get_pipeline: GetPipeline, media_state=None) -> None:
    """The tab's components and events (call inside ``with gr.Tab("Compare methods"):``).

    ``media_state``: the Explore tab's ``gr.State`` holding the visitor's analysis; when given, the
    comparisons run on its media (the image, or a video's sampled frames) rather than the image input."""
    choices = [(s.label, s.name) for s in list_methods()]
    media = [media_state] if media_state is not None else []
    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        methods = gr.CheckboxGroup(choices, value=[c[1] for c in choices], label="Methods", scale=4,
                                   elem_id="compare-methods")
        with gr.Column(scale=2, min_width=240):
            answers = gr.Checkbox(True, label="Also answer the question with each method's tokens",
                                  elem_id="compare-answers")
            max_new = gr.Slider(1, 64, DEFAULT_MAX_NEW_TOKENS, step=1, label="Answer length (new tokens)",
                                elem_id="compare-max-new")
            native = gr.Checkbox(False, label="Baselines in the model's own dtype, as their authors' code computes "
                                              "(bf16/fp16 on a GPU; a float32 model is unchanged)",
                                 elem_id="compare-native-dtype")
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
        with gr.Tab("Question", id="compare-question-tab"):
            gr.Markdown("Does the question change which tokens are kept? PruneSID chooses from the picture alone; "
                        "CDPruner weighs each token by its relevance to the question (CLIP's text tower).")
            with gr.Row():
                other_question = gr.Textbox("What is in the background?", label="A second question", scale=4,
                                            elem_id="compare-other-question")
                run_question = gr.Button("Compare the two questions", scale=1, elem_id="compare-question")
            question_md = gr.Markdown(elem_id="compare-question-text")
            question_gallery = gr.Gallery(label="Kept tokens per method and question", columns=2, format="png",
                                          object_fit="contain", height=560, elem_id="compare-question-gallery")
        with gr.Tab("Inside the LLM", id="compare-inllm-tab"):
            wire_inllm = build_inllm_tab(image_input, question_input, budget_input, get_pipeline, media)
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
                with_model = gr.Checkbox(True, label="Fidelity from the model (one pruned prefill per point; the full run is shared)", scale=2,
                                         elem_id="compare-with-model")
            sweep_plot = gr.Plot(show_label=False, elem_id="compare-sweep-plot")
    with gr.Accordion("Raw numbers (JSON)", open=False):
        raw = gr.JSON(elem_id="compare-json")
    with gr.Accordion("Methods, sources and deviations", open=False):
        gr.Markdown(methods_markdown())

    private = dict(api_visibility="private", concurrency_id="model", concurrency_limit=1)
    wire_inllm(raw)
    run_compare.click(on_compare(get_pipeline),
                      [image_input, question_input, budget_input, methods, answers, max_new, native] + media,
                      [gallery, table, status, raw], **private)
    run_question.click(on_question_sensitivity(get_pipeline), [image_input, question_input, other_question, budget_input]
                       + media, [question_gallery, question_md, raw], **private)
    run_stability.click(on_stability(get_pipeline), [image_input, budget_input, seeds] + media,
                        [frequency, stability_plot, stability_md, raw], **private)
    run_sweep.click(on_sweep(get_pipeline), [image_input, question_input, sweep_budgets, methods, with_model,
                                             budget_input] + media, [sweep_plot, status, raw], **private)

    # Scripted endpoints (hidden on the page): JSON with method names, budgets and published figures.
    with gr.Row(visible=False):
        api_image = SafeImage(type="filepath", label="image")
        api_question = gr.Textbox(DEFAULT_QUESTION, label="question")
        api_budget = RawNumber(64, label="budget", precision=0)
        api_methods = gr.Textbox("", label="methods (comma-separated registry names; empty = all)")
        api_answers = gr.Checkbox(True, label="answers")
        api_seeds = RawNumber(len(DEFAULT_STABILITY_SEEDS), label="seeds", precision=0)
        api_budgets = gr.Textbox(", ".join(str(k) for k in DEFAULT_SWEEP_BUDGETS), label="budgets")
        api_out = gr.JSON(label="result")
        api_compare = gr.Button("compare")
        api_stability = gr.Button("compare_stability")
        api_sweep = gr.Button("compare_sweep")
        api_inllm = gr.Button("compare_in_llm")

    def _public_json(fn):
        return functools.wraps(fn)(lambda *args: without_cache_fields(fn(*args)))

    def _api_methods(text):
        return None if not str(text or "").strip() else str(text)

    def compare(image: str, question: str, budget: float, methods: str, answers: bool) -> dict:
        return compare_view(image, question, budget, check_methods(_api_methods(methods)), get_pipeline,
                            answers=bool(answers))["json"]

    def compare_stability(image: str, budget: float, seeds: float) -> dict:
        return stability_view(image, budget, seeds, get_pipeline)["json"]

    def compare_sweep(image: str, question: str, budgets: str, methods: str) -> dict:
        return sweep_view(image, question, budgets, check_methods(_api_methods(methods)), get_pipeline)["json"]

    def compare_in_llm(image: str, question: str, budgets: str) -> dict:
        return combination_view(image, question, budgets, get_pipeline)["json"]

    api_compare.click(
        endpoint(_public_json(compare), "compare"),
        [api_image, api_question, api_budget, api_methods, api_answers], api_out, api_name="compare",
        api_description="Every selection method at one budget on one image: tokens, kept indices, answers, "
                        "fidelity and the published relative accuracy (or 'not reported'), as JSON.",
        concurrency_id="model", concurrency_limit=1)
    api_stability.click(
        endpoint(_public_json(compare_stability), "compare_stability"),
        [api_image, api_budget, api_seeds], api_out, api_name="compare_stability", api_visibility="undocumented",
        api_description="Jaccard of PruneSID's kept set: randomised PCA (one run per seed) vs exact, as JSON.",
        concurrency_id="model", concurrency_limit=1)
    api_sweep.click(
        endpoint(_public_json(compare_sweep), "compare_sweep"),
        [api_image, api_question, api_budgets, api_methods], api_out, api_name="compare_sweep",
        api_visibility="undocumented",
        api_description="Per method and budget: tokens, feature coverage and first-token KL, as JSON.",
        concurrency_id="model", concurrency_limit=1)
    api_inllm.click(
        endpoint(_public_json(compare_in_llm), "compare_in_llm"),
        [api_image, api_question, api_budgets], api_out, api_name="compare_in_llm", api_visibility="undocumented",
        api_description="PruneSID alone, FastV alone and PruneSID + FastV / PyramidDrop per budget: image tokens per "
                        "layer, total compression, prefill FLOPs and time, first-token KL, as JSON.",
        concurrency_id="model", concurrency_limit=1)
