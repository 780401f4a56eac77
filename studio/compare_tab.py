"""The "Compare methods" tab: PruneSID beside the other token-selection rules on the same
image and budget, the stability of the reference's randomised PCA, and budget sweeps.

The app calls :func:`build_compare_tab` inside ``with gr.Tab("Compare methods"):`` with its
image (a file path), question and budget components and a ``get_pipeline()`` callable.
Three layers, as in :mod:`studio.handlers`:

* core steps (:func:`compare_view`, :func:`stability_view`, :func:`sweep_view`) that raise
  ValueError / MediaError / ModelLoadError with a message for a person; tests call these;
* ``on_*`` handlers that never raise (a ``gr.Warning`` and a status line instead);
* JSON endpoints for ``gradio_client``, all listed by ``view_api()`` with every parameter described:
  ``/compare`` (every method at one budget, in the result schema of docs/result-schema.md, with the
  published figures), ``/compare_stability`` (image, budget, seeds), ``/compare_sweep`` (image,
  question, budgets, methods) and ``/compare_in_llm`` (image, question, budgets: the combinations
  with in-LLM pruning).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

import gradio as gr

from prunesid_eval.compare import DEFAULT_STABILITY_SEEDS, DEFAULT_SWEEP_BUDGETS
from prunesid_eval.methods import get_method, list_methods
from prunesid_eval.published import MODEL_LABELS, NOT_REPORTED, published_budgets, published_figure, published_table
from prunesid_eval.answers import answer_matches
from prunesid_vlm import studies
from prunesid_vlm.pipeline import RESULT_SCHEMA, Cost, Pipeline, check_question, handed_per_view
from viz.compare import draw_keep_frequency, method_colors, method_overlays, plot_budget_sweep, plot_stability, token_parts

from .components import RawNumber, SafeImage
from .errors import endpoint
from .limits import without_cache_fields
from .references import judges_answers, mark, reference_answer
from .study_inputs import ANY_PATCHES, MAX_SWEEP_POINTS, failure_text, parse_budgets, reporter, study_media
from .inllm_tab import DEFAULT_BUDGETS as INLLM_BUDGETS
from .inllm_tab import MAX_BUDGETS as INLLM_MAX_BUDGETS
from .inllm_tab import build_inllm_tab, combination_view

DEFAULT_QUESTION = "What is in this picture? Answer in one sentence."
DEFAULT_MAX_NEW_TOKENS = 24
TABLE_HEADERS = ["method", "tokens to the LLM", "answer", "KL (nats)", "select ms", "paper's figure"]
"""Short headers (they must not break mid-word in a narrow panel); :func:`table_notes` explains them
under the table, with each method's agreement with its authors' code."""
TABLE_COLUMN_WIDTHS = ["15%", "22%", "25%", "10%", "9%", "19%"]
MAX_REASON_CHARS = 160
"""A reason longer than this is shortened in its table cell (it is given whole under the table)."""
MAX_SEEDS = 16
logger = logging.getLogger(__name__)
GetPipeline = Callable[[], Pipeline]
ProgressFn = Callable[..., Any]

check_methods = studies.check_methods


# ---- inputs --------------------------------------------------------------------------------
def method_availability(pipe: Pipeline, feats) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``(choices, reasons)``: the registry methods ``pipe`` can run on ``feats`` as checkbox
    choices, and why each other one cannot."""
    reasons = pipe.unavailable_methods(feats)
    return [(s.label, s.name) for s in list_methods() if s.name not in reasons], reasons


QUESTION_INTRO = ("Does the question change which tokens are kept? PruneSID chooses from the picture alone; "
                  "CDPruner weighs each token by its relevance to the question (CLIP's text tower).")


def on_availability(get_pipeline: GetPipeline):
    """The Compare tab opens: offer only the methods the model in use can run on the visitor's media
    (the others named under the list, with their reasons), and say on the Question sub-tab when none
    of them chooses by the question. (Gradio 6.31 does not hide a ``gr.Tab`` on an update, so the
    sub-tab stays and says why.) Without an analysis yet, nothing changes."""
    def handler(ticked: Sequence[str] | None, media: Any = None):
        feats = getattr(media, "feats", None)
        if feats is None:
            return gr.update(), gr.update()
        try:
            choices, reasons = method_availability(get_pipeline(), feats)
        except Exception:  # noqa: BLE001 - the tab stays as it was; Compare itself says what went wrong
            logger.exception("method availability")
            return gr.update(), gr.update()
        offered = [name for _, name in choices]
        kept = [name for name in (ticked or []) if name in offered]
        note = ("Every registry method runs on this model." if not reasons else "Not offered for this model: "
                + "; ".join(f"{get_method(name).label} ({reason})" for name, reason in reasons.items()) + ".")
        by_question = [name for name in reasons if get_method(name).needs_question]
        intro = QUESTION_INTRO if not by_question else (
            "**No method this model can run chooses by the question**: " + "; ".join(
                f"{get_method(name).label}: {reasons[name]}" for name in by_question)
            + ". PruneSID chooses from the picture alone, so both questions give it the same tokens.")
        return gr.update(choices=choices, value=kept or offered, info=note), gr.update(value=intro)
    return handler


def context_line(label: str, budget: int, question: str | None, model_id: str) -> str:
    """What a comparison was computed on, shown above its results."""
    asked = f" · question: “{question}”" if question else " · no answers"
    return f"**Compared on** {label} · K = {budget} per view{asked} · model `{model_id}`"


# ---- core steps (raise on bad input) -----------------------------------------------------------
def compare_view(image: Any, question: Any, budget: Any, methods: Sequence[str] | None, get_pipeline: GetPipeline,
                 *, answers: bool = True, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 progress: ProgressFn | None = None, media: Any = None, native_dtype: bool = False) -> dict:
    """Every chosen method at one budget: overlays, a table and a JSON summary.

    Returns ``{"gallery": [(uint8 image, caption)], "table": [[...]], "json": {...}, ...}``."""
    names = check_methods(methods)
    asked = check_question(question) if answers or (isinstance(question, str) and question.strip()) else None
    question = asked if answers else None  # checked even when unused: one rule for every endpoint
    images, notes, label = study_media(image, media)
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
                   max_new_tokens=int(max_new_tokens), progress=reporter(progress), native_dtype=bool(native_dtype),
                   instruction=asked, cost=cost)
    model = studies.published_model(pipe)
    pixels = pipe.view_pixels(images, out.feats)[0]
    views = out.feats.num_views
    handed = [out.handed(r.name) for r in out.runs]
    # Short captions (label and the count handed over): the table underneath says where they come from.
    gallery = method_overlays(pixels, [(r.label, r.selection) for r in out.runs], size=336,
                              grid_shape=out.feats.grid or pipe.grid, legend=False, handed=handed, detail=False)
    table, rows = [], []
    full_counts = pipe.token_counts(out.feats)
    # An example scene of the shapes world has one right word; the shapes model's one-word answers are marked.
    reference = reference_answer(images, question) if question is not None else None
    judged = reference is not None and judges_answers(pipe.model_id)

    def answer_cell(answer: str) -> str:
        return f"{answer} {mark(answer, reference)}" if judged else answer

    for r, count in zip(out.runs, handed):
        res = out.results.get(r.name)
        table.append([r.label, token_text(out, r), answer_cell(res.pruned_answer) if res else "—",
                      f"{res.fidelity:.3f}" if res else "—", f"{1000 * r.seconds:.1f}",
                      paper_text(r.name, r.published, out.paper_budget)])
        row = r.to_dict()
        counts = out.counts[r.name]
        row.update({"tokens": count, "tokens_per_view": list(counts.handed), "newlines": counts.newlines,
                    "selected_tokens": int(r.selection.num_tokens.sum()), "unpruned": r.name in out.unpruned,
                    "native_dtype": bool(native_dtype),
                    "published": NOT_REPORTED if r.published is None else r.published.to_dict(),
                    "published_at_tokens": out.paper_budget,
                    "answer": res.pruned_answer if res else None,
                    "right": answer_matches(res.pruned_answer, reference) if res and judged else None,
                    "first_token_agrees": res.first_token_agrees if res else None})
        row.update(schema_fields(out, r, res, full_counts))
        rows.append(row)
    for name, reason in out.unavailable.items():  # ticked, not run: said in place, with the pipeline's reason
        short = reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 1].rstrip() + "…"
        table.append([get_method(name).label, "—", f"not run on this model: {short}", "—", "—", "—"])
    unavailable = studies.unavailable_text(pipe, out.unavailable)
    first = next(iter(out.results.values()), None)
    summary = {
        "schema": RESULT_SCHEMA,
        "model": {"id": pipe.model_id, "family": pipe.family, "device": pipe.device, "is_demo": pipe.is_demo},
        "model_id": pipe.model_id, "family": pipe.family, "is_demo": pipe.is_demo,
        "budget": out.budget, "selection_budgets": out.selection_budgets, "question": question,
        "full": first.run_dict("full") if first is not None else None,
        "full_answer": out.full_answer, "fidelity_metric": studies.FIDELITY_METRIC if answers else None,
        "selection_ms_all_methods": 1000 * out.selection_s, "methods": rows, "generations": out.generations,
        "published_model": MODEL_LABELS[model], "published_budgets": published_budgets(model),
        "published_at_tokens": out.paper_budget, "published": published_table(model), "notes": notes,
        "unavailable": dict(out.unavailable), "views": views, "reference_answer": reference,
    }
    if unavailable:
        summary["notes"] = summary["notes"] + [unavailable]
    summary["media"] = label
    context = context_line(label, out.budget, question, pipe.model_id)
    if views > 1:
        context += f" · {views} views: the pictures show the first, the counts are over all of them"
    if unavailable:
        context += f"  \n{unavailable}"
    if reference is not None:
        full_mark = f" (all tokens: {answer_cell(out.full_answer)})" if judged else ""
        context += f"  \n**Right answer: {reference}**{full_mark}: this example scene is drawn from the shapes world's rules."
    return {"gallery": gallery, "table": table, "json": summary, "full_answer": out.full_answer,
            "full_tokens": out.full_tokens, "selection_ms": 1000 * out.selection_s,
            "notes": table_notes(out, model, [r.spec for r in out.runs]),
            "context": context}


def schema_fields(out: studies.MethodsComparison, run, result, full_counts) -> dict:
    """A method's entry in the result schema (docs/result-schema.md, :meth:`CompareResult.to_dict`):
    its ``selection`` per view, the ``budgets`` each view hands over, both prompts' ``token_counts``
    and, when the question was answered, its ``pruned`` answer, ``fidelity`` and ``prefill`` (None
    without answers). The full answer is the comparison's ``full``, once for every method."""
    if result is not None:
        fields = result.to_dict()
        return {key: fields[key] for key in ("selection", "budgets", "token_counts", "pruned", "fidelity", "prefill")}
    selection = run.selection
    return {"selection": [selection.to_dict(v) for v in range(selection.batch_size)],
            "budgets": handed_per_view(out.feats, selection),
            "token_counts": {"full": full_counts.to_dict(), "pruned": out.counts[run.name].to_dict()},
            "pruned": None, "fidelity": None, "prefill": None}


def token_text(out: studies.MethodsComparison, run) -> str:
    """The table's token cell: the tokens ``run``'s selection hands the language model and where they
    come from, e.g. ``"64 = CLS + 63 patches"``, ``"408 = 128 (base) + 128+128 (2 crops) + 24 newlines"``
    (several views), ``"576 = every patch (answered unpruned, no CLS)"`` (a selection keeping everything)."""
    counts = out.counts[run.name]
    if run.name in out.unpruned:
        return f"{counts.total} = every patch (answered unpruned, no CLS)"
    if len(counts.handed) == 1 and not counts.newlines:
        if out.feats.rule == "qwen" and run.selection.merged_tokens is None:  # no CLS: the tokens themselves
            return f"{counts.total} = {counts.total} {out.feats.token_noun}"
        return f"{counts.total} = {token_parts(run.selection, 0)}"
    return f"{counts.total} = {counts.breakdown()}"


def paper_text(method: str, figure, budget: int | None) -> str:
    """The table's published cell, naming the budget the paper's figure is for (not this image's count)."""
    if figure is None:
        return NOT_REPORTED + (f" at {budget} tokens" if budget else "")
    at = f"K = {figure.num_tokens} (nominal)" if get_method(method).dynamic else f"{figure.num_tokens} tokens"
    return f"{figure.relative_accuracy:.1f}% at {at}, {MODEL_LABELS[figure.model]}"


def table_notes(out: studies.MethodsComparison, model: str, specs: Sequence) -> str:
    """What the table's columns mean, under it, with each method's agreement with its authors' code."""
    lines = [
        "**tokens to the LLM**: the visual tokens the language model receives with the method's selection (kept "
        "patches, the CLS where kept, merged tokens" + (", over all views, and LLaVA-NeXT's row-end newlines"
                                                         if out.feats.num_views > 1 else "") + "). "
        "**KL**: first-token KL(full ‖ pruned) in nats (0 = pruning changed nothing). "
        "**select ms**: the selection alone, features cached.",
        f"**paper's figure**: the PruneSID paper's relative accuracy (% of the unpruned model, averaged over its "
        f"benchmarks) for {MODEL_LABELS[model]} at the budget named in the cell — not measured on this image, and "
        f"not at this image's count where the two differ.",
    ]
    dynamic = [r for r in out.runs if r.spec.dynamic]
    for r in dynamic:
        lines.append(f"{r.label} adapts its count to each image (K × φ / φ_ref): here {out.handed(r.name)} tokens "
                     f"for K = {out.budget}; the paper's figure is at K = {out.paper_budget}, the count its runs "
                     "average over the benchmarks.")
    if out.unpruned:
        lines.append(f"{', '.join(get_method(n).label for n in out.unpruned)}: the selection keeps every patch, so "
                     "the model is answered with its own unpruned prompt (every patch, no CLS).")
    for name, reason in out.unavailable.items():
        lines.append(f"**{get_method(name).label}** did not run on this model: {reason}")
    code = [s for s in specs if s.versus_code]
    if code:
        lines.append("**Beside its authors' code** (synthetic cases):\n" +
                     "\n".join(f"- {s.label}: {s.versus_code}" for s in code))
    return "\n\n".join(lines)


def stability_view(image: Any, budget: Any, seeds: Any, get_pipeline: GetPipeline, *,
                   progress: ProgressFn | None = None, media: Any = None) -> dict:
    """PruneSID's randomised PCA with ``seeds`` seeds vs the exact PCA, on the image (first view)."""
    try:
        count = int(seeds)
    except (TypeError, ValueError):
        raise ValueError(f"The number of seeds must be a whole number, got {seeds!r}.") from None
    if not 2 <= count <= MAX_SEEDS:
        raise ValueError(f"Use between 2 and {MAX_SEEDS} seeds, got {count}.")
    images, _, label = study_media(image, media)
    pipe = get_pipeline()
    feats, result = studies.stability_of(pipe, images, budget, range(count), progress=reporter(progress))
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
    images, _, label = study_media(image, media)
    pipe = get_pipeline()
    if pipe.answers == "none":  # a vision tower alone: feature coverage, no first-token fidelity
        question = None
    points = parse_budgets(budgets, ANY_PATCHES)  # checked against the media's N inside the study
    cost = pipe.encode_cost(images) + Cost(prefills=2 + (len(points) * len(names) + 1 if question else 0))
    result, generations = pipe.run(studies.sweep, images, points, names, question=question,
                                   progress=reporter(progress), cost=cost)
    labels = dict(zip(result.methods, result.labels))
    colors = method_colors(list(result.labels))
    coverage = {labels[m]: result.coverage[m] for m in result.methods}
    x = {labels[m]: result.handed_tokens(m) for m in result.methods}
    note = sweep_note(result)
    above = [k for k in points if k > max(result.budgets)]
    above_note = "" if not above else (
        f"K = {', '.join(map(str, above))} {'is' if len(above) == 1 else 'are'} above this model's "
        f"{max(result.budgets)} tokens per view: swept once, at {max(result.budgets)} (every token).")
    if above_note:
        note += " " + above_note
    # The slider's K, where it is a token count on this axis (some method hands over exactly its budgets).
    exact = [m for m in result.methods if not result.differs_from_budget(m)]
    marks = [int(mark)] if exact and mark is not None and str(mark).strip() else []
    common = dict(marks=marks, mark_label="the Explore tab's K = {k}", colors=colors, x=x, note=note)
    if result.fidelity is not None:
        fig = plot_budget_sweep(result.budgets, {labels[m]: result.fidelity[m] for m in result.methods},
                                ylabel="first-token KL (nats)",
                                title="Fidelity against the tokens handed over, on this image",
                                ax_extra=("feature coverage (higher = better)", coverage), **common)
    else:
        fig = plot_budget_sweep(result.budgets, coverage, ylabel="feature coverage",
                                title="Feature coverage against the tokens handed over, on this image (higher is "
                                      "better)", lower_is_better=False, **common)
    model = studies.published_model(pipe)
    at = dict(zip(result.budgets, result.paper_budgets or result.budgets))
    d = result.to_dict()
    d.update({"model_id": pipe.model_id, "question": question, "generations": generations, "media": label,
              "published_model": MODEL_LABELS[model],
              "published": {m: {str(k): _published_text(m, at[k], model) for k in result.budgets}
                            for m in result.methods},
              "published_at_tokens": {str(k): at[k] for k in result.budgets}})
    if above:
        d["budgets_above_model"] = above
    return {"figure": fig, "json": d, "not_run": studies.unavailable_text(pipe, result.unavailable),
            "above_note": above_note}


def sweep_note(result) -> str:
    """The sweep chart's caption: what a point's x is, and which methods handed over another count than K."""
    moved = [m for m in result.methods if result.differs_from_budget(m)]
    labels = dict(zip(result.methods, result.labels))
    text = "Each point sits at the visual tokens the language model received for it"
    if not moved:
        return (text + f" (here exactly the budget K of every point: {', '.join(map(str, result.budgets))})."
                + not_run_line(result))
    text += f"; budgets asked for: K = {', '.join(map(str, result.budgets))}."
    if len(moved) == len(result.methods) and len(moved) > 1:
        text += (" Every method handed over another count than K here (the model scales K to the picture's own "
                 "tokens, or the media has several views).")
    shown = moved[:3]
    for m in shown:
        text += f"\n{labels[m]}: {', '.join(map(str, result.handed_tokens(m)))} tokens"
        if get_method(m).dynamic:
            text += " (it scales K by the image's φ / φ_ref)"
    if len(moved) > len(shown):
        text += f"\n… and {len(moved) - len(shown)} more methods off their K (see the JSON's handed_tokens)."
    return text + not_run_line(result)


def not_run_line(result) -> str:
    """The caption's last lines: the study's notes (e.g. over how many views), and the methods not run."""
    text = "".join(f"\n{note}" for note in result.notes if not note.startswith("Not run"))
    if not result.unavailable:
        return text
    return text + "\nNot run on this model (reasons above the chart): " + ", ".join(
        get_method(m).label for m in result.unavailable) + "."


def _published_text(method: str, k: int, model: str):
    fig = published_figure(method, k, model)
    return NOT_REPORTED if fig is None else fig.relative_accuracy


# ---- UI handlers (never raise) ---------------------------------------------------------------



def on_compare(get_pipeline: GetPipeline):
    def handler(image, question, budget, methods, answers, max_new_tokens, native_dtype=False, media=None,
                progress=gr.Progress()):
        try:
            out = compare_view(image, question, budget, methods, get_pipeline, answers=bool(answers),
                               max_new_tokens=int(max_new_tokens), progress=progress, media=media,
                               native_dtype=bool(native_dtype))
        except Exception as err:  # noqa: BLE001 — shown to the user, logged if unexpected
            return gr.skip(), gr.skip(), failure_text(err, "compare"), gr.skip(), gr.skip()
        status = (f"{out['context']}  \nSelection with {len(out['json']['methods'])} methods: "
                  f"{out['selection_ms']:.0f} ms (features cached).")
        if out["full_answer"] is not None:
            status += f"  \n**Answer with all {out['full_tokens']} visual tokens:** {out['full_answer']}"
        return out["gallery"], out["table"], status, out["json"], out["notes"]
    handler.__name__ = "on_compare"
    return handler


def question_view(image: Any, question: Any, other_question: Any, budget: Any, get_pipeline: GetPipeline, *,
                  media: Any = None) -> dict:
    """PruneSID's and CDPruner's kept tokens for two questions about the same picture."""
    images, _, label = study_media(image, media)
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
    for name, reason in out.unavailable.items():  # the pipeline's reason, not a guess
        lines.append(f"- **{get_method(name).label}** is not shown: it cannot run on {pipe.model_id} — {reason}")
    handed = [studies.handed_tokens(pipe, out.feats, sel) for sel, _ in items]
    gallery = method_overlays(pixels, [(lbl, sel) for sel, lbl in items], size=336, grid_shape=grid, legend=False,
                              handed=handed, detail=False)
    text = (f"**Compared on** {label} · K = {out.budget} · model `{pipe.model_id}`  \n" + "\n".join(lines))
    return {"gallery": gallery, "markdown": text,
            "json": {name: out.jaccard(name) for name in out.selections} | {"questions": out.questions,
                                                                            "unavailable": dict(out.unavailable)}}


def on_question_sensitivity(get_pipeline: GetPipeline):
    def handler(image, question, other_question, budget, media=None, progress=gr.Progress()):
        try:
            out = question_view(image, question, other_question, budget, get_pipeline, media=media)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), failure_text(err, "question sensitivity"), gr.skip()
        return out["gallery"], out["markdown"], out["json"]
    handler.__name__ = "on_question_sensitivity"
    return handler


def on_stability(get_pipeline: GetPipeline):
    def handler(image, budget, seeds, media=None, progress=gr.Progress()):
        try:
            out = stability_view(image, budget, seeds, get_pipeline, progress=progress, media=media)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), gr.skip(), failure_text(err, "stability"), gr.skip()
        return out["overlay"], out["figure"], out["markdown"], out["json"]
    handler.__name__ = "on_stability"
    return handler


def on_sweep(get_pipeline: GetPipeline):
    def handler(image, question, budgets, methods, with_model, budget, media=None, progress=gr.Progress()):
        try:
            out = sweep_view(image, question, budgets, methods, get_pipeline, with_model=bool(with_model),
                             mark=budget, progress=progress, media=media)
        except Exception as err:  # noqa: BLE001
            return gr.skip(), failure_text(err, "sweep"), gr.skip()
        d = out["json"]
        asked = f" · question: “{d['question']}”" if d["question"] else ""
        not_run = "".join(f"  \n{line}" for line in (out["not_run"], out["above_note"]) if line)
        return (out["figure"], f"**Swept on** {d['media']}{asked} · {len(d['budgets'])} budgets × "
                               f"{len(d['methods'])} methods in {d['seconds']:.1f} s.{not_run}", d)
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
language model the same number of visual tokens (PruneSID-Dyn adapts its own budget to the image; every count shown
is the one handed over).
The *Inside the LLM* tab combines PruneSID with FastV and PyramidDrop. Yellow outlines: patches kept; blue tint: patches merged into VisionZip's contextual tokens; dark: dropped.
*Fidelity* is KL(full ‖ pruned) of the first answer token in nats (0 = pruning changed nothing)."""


EMPTY_HINT = ("*Nothing compared yet.* The comparisons run on **the Explore tab's picture** (or video): upload "
              "one there (or pick an example), then press **Compare at this budget** — or *Budget sweep*, or open "
              "*Inside the LLM*.")
TABLE_MAX_HEIGHT = 2000
"""Above any table this tab makes (nine methods, wrapped): no row is hidden behind the table's scroll."""

CSS = """
#compare-table .header-content, #compare-table .text, #inllm-table .header-content, #inllm-table .text {
  overflow-wrap: break-word; word-break: normal; white-space: normal; }
#compare-gallery .grid-wrap.fixed-height { max-height: none; min-height: 0; }
#compare-gallery .caption-label { white-space: normal; overflow: visible; text-overflow: clip; max-width: 92%; }
#compare-table-notes { font-size: 0.92em; }
#compare-css { display: none; }
@media (max-width: 700px) {
  #compare-table .table-container, #inllm-table .table-container { overflow-x: auto; }
  #compare-table .table-wrap { min-width: 640px; }
  #inllm-table .table-wrap { min-width: 980px; }
  #compare-gallery .grid-container, #compare-question-gallery .grid-container {
    grid-template-columns: repeat(2, minmax(0, 1fr)); }
}
"""
"""The tab's own rules (the page's CSS is the layout's), injected by a hidden ``gr.HTML``'s ``head``:
the table fits its panel (on a phone it scrolls sideways inside its own box, the method column
pinned), words wrap whole, the gallery grows with its tiles (no fixed height cutting a row off) and
its captions wrap instead of being cut."""


# ---- layout --------------------------------------------------------------------------------
def build_compare_tab(image_input, question_input, budget_input, get_pipeline: GetPipeline,
                      media_state=None) -> Callable[[Any], None]:
    """The tab's components and events (call inside ``with gr.Tab("Compare methods"):``).

    ``media_state``: the Explore tab's ``gr.State`` holding the visitor's analysis; when given, the
    comparisons run on its media (the image, or a video's sampled frames) rather than the image input.
    Returns ``on_open(tab)``: wires ``tab.select`` to offer only the methods the model in use can run
    (the Question sub-tab says when none of them chooses by the question)."""
    choices = [(s.label, s.name) for s in list_methods()]
    media = [media_state] if media_state is not None else []
    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        methods = gr.CheckboxGroup(choices, value=[c[1] for c in choices], label="Methods", scale=4,
                                   info="A method the model in use cannot run is listed with the reason when you "
                                        "compare (e.g. CDPruner needs CLIP's text tower).",
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
    status = gr.Markdown(EMPTY_HINT, elem_id="compare-status")
    with gr.Tabs():
        with gr.Tab("Side by side", id="compare-side"):
            # No fixed height: every tile (nine methods: three rows of four) and every table row stays in view.
            gallery = gr.Gallery(label="Kept tokens; captions: tokens to the LLM", columns=4,
                                 format="png", object_fit="contain", height="auto", allow_preview=True,
                                 elem_id="compare-gallery")
            table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["str"] * len(TABLE_HEADERS), wrap=True,
                                 interactive=False, column_widths=TABLE_COLUMN_WIDTHS, max_height=TABLE_MAX_HEIGHT,
                                 pinned_columns=1, elem_id="compare-table")
            table_md = gr.Markdown(elem_id="compare-table-notes")
        with gr.Tab("Question", id="compare-question-tab"):
            question_intro = gr.Markdown(QUESTION_INTRO)
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
            with gr.Row():  # two columns, so that on a phone they stack instead of squeezing the checkbox
                with gr.Column(scale=3, min_width=240):
                    sweep_budgets = gr.Textbox(", ".join(str(k) for k in DEFAULT_SWEEP_BUDGETS), label="Budgets K",
                                               elem_id="compare-budgets")
                with gr.Column(scale=2, min_width=240):
                    with_model = gr.Checkbox(True, label="Fidelity from the model (one pruned prefill per point; the "
                                                         "full run is shared)", elem_id="compare-with-model")
            sweep_plot = gr.Plot(show_label=False, elem_id="compare-sweep-plot")
    with gr.Accordion("Raw numbers (JSON)", open=False):
        raw = gr.JSON(elem_id="compare-json")
    with gr.Accordion("Methods, sources and deviations", open=False):
        gr.Markdown(methods_markdown())
    gr.HTML("", head=f"<style>{CSS}</style>", elem_id="compare-css", container=False, padding=False)

    private = dict(api_visibility="private", concurrency_id="model", concurrency_limit=1)
    wire_inllm(raw)

    def on_open(tab) -> None:
        tab.select(on_availability(get_pipeline), [methods] + media, [methods, question_intro], queue=False,
                   show_progress="hidden", api_visibility="private")
    run_compare.click(on_compare(get_pipeline),
                      [image_input, question_input, budget_input, methods, answers, max_new, native] + media,
                      [gallery, table, status, raw, table_md], **private)
    run_question.click(on_question_sensitivity(get_pipeline), [image_input, question_input, other_question, budget_input]
                       + media, [question_gallery, question_md, raw], **private)
    run_stability.click(on_stability(get_pipeline), [image_input, budget_input, seeds] + media,
                        [frequency, stability_plot, stability_md, raw], **private)
    run_sweep.click(on_sweep(get_pipeline), [image_input, question_input, sweep_budgets, methods, with_model,
                                             budget_input] + media, [sweep_plot, status, raw], **private)

    # Scripted endpoints (hidden on the page, listed by gradio_client's view_api()): JSON with method names,
    # budgets and published figures. Each label starts with its parameter's name and says what it is.
    methods_label = ("methods: comma-separated registry names (" + ", ".join(s.name for s in list_methods())
                     + "); empty = all")
    with gr.Row(visible=False):
        api_image = SafeImage(type="filepath", label="image: the picture (handle_file(path))")
        api_question = gr.Textbox(DEFAULT_QUESTION, label="question: asked with all visual tokens and with each "
                                                          "method's kept ones")
        api_budget = RawNumber(64, label="budget: K, visual tokens kept per view, CLS included (2 … 1+N)",
                               precision=0)
        api_methods = gr.Textbox("", label=methods_label)
        api_answers = gr.Checkbox(True, label="answers: also answer the question with each method's tokens (false: "
                                              "selections only)")
        api_seeds = RawNumber(len(DEFAULT_STABILITY_SEEDS), label=f"seeds: runs of the randomised PCA, one seed each "
                                                                  f"(2 … {MAX_SEEDS})", precision=0)
        api_sweep_question = gr.Textbox(DEFAULT_QUESTION, label="question: its first answer token's KL, all tokens "
                                                                "vs each point's, is the fidelity (empty: feature "
                                                                "coverage only)")
        api_budgets = gr.Textbox(", ".join(str(k) for k in DEFAULT_SWEEP_BUDGETS),
                                 label=f"budgets: comma-separated K values, per view (at most {MAX_SWEEP_POINTS})")
        api_inllm_question = gr.Textbox(DEFAULT_QUESTION, label="question: the prompt every variant is prefilled with "
                                                                "(first-token KL against no pruning)")
        api_inllm_budgets = gr.Textbox(", ".join(str(k) for k in INLLM_BUDGETS),
                                       label=f"budgets: comma-separated PruneSID budgets K, per view (at most "
                                             f"{INLLM_MAX_BUDGETS}; each costs every variant's timed prefills)")
        api_out = gr.JSON(label="result: JSON, see docs/result-schema.md")
        api_compare = gr.Button("compare")
        api_stability = gr.Button("compare_stability")
        api_sweep = gr.Button("compare_sweep")
        api_inllm = gr.Button("compare_in_llm")

    def _public_json(fn):
        return functools.wraps(fn)(lambda *args: without_cache_fields(fn(*args)))

    def _api_methods(text):
        return None if not str(text or "").strip() else str(text)

    def compare(image: str, question: str, budget: float, methods: str, answers: bool) -> dict:
        """Every chosen method at one budget (result schema: the full answer once, per method its
        selection, pruned answer and fidelity)."""
        return compare_view(image, question, budget, check_methods(_api_methods(methods)), get_pipeline,
                            answers=bool(answers))["json"]

    def compare_stability(image: str, budget: float, seeds: float) -> dict:
        """PruneSID's kept set with the randomised PCA, one run per seed, against the exact PCA."""
        return stability_view(image, budget, seeds, get_pipeline)["json"]

    def compare_sweep(image: str, question: str, budgets: str, methods: str) -> dict:
        """Per method and budget: the tokens handed over, feature coverage and (with a question) first-token KL."""
        asked = isinstance(question, str) and bool(question.strip())
        return sweep_view(image, question, budgets, check_methods(_api_methods(methods)), get_pipeline,
                          with_model=asked)["json"]

    def compare_in_llm(image: str, question: str, budgets: str) -> dict:
        """PruneSID alone, FastV alone and PruneSID + FastV / PyramidDrop at each budget."""
        return combination_view(image, question, budgets, get_pipeline)["json"]

    public = dict(api_visibility="public", concurrency_id="model", concurrency_limit=1)
    api_compare.click(
        endpoint(_public_json(compare), "compare"),
        [api_image, api_question, api_budget, api_methods, api_answers], api_out, api_name="compare",
        api_description="Every selection method at one budget on one image, as JSON in the result schema "
                        "(docs/result-schema.md): the full answer once (`full`); per method its selection per view, "
                        "the tokens handed over, the pruned answer and fidelity (with answers), the selection time "
                        "and the paper's published relative accuracy at the budget it names (or 'not reported'); "
                        "methods this model cannot run under `unavailable`, with the reason.",
        **public)
    api_stability.click(
        endpoint(_public_json(compare_stability), "compare_stability"),
        [api_image, api_budget, api_seeds], api_out, api_name="compare_stability",
        api_description="How stable PruneSID's kept set is under the reference's randomised PCA: the Jaccard of each "
                        "seed's kept patches with the exact PCA's and between seeds, and how many patches every seed "
                        "keeps, on the first view, as JSON.",
        **public)
    api_sweep.click(
        endpoint(_public_json(compare_sweep), "compare_sweep"),
        [api_image, api_sweep_question, api_budgets, api_methods], api_out, api_name="compare_sweep",
        api_description="Per method and budget K: `handed_tokens` (the visual tokens the language model received, "
                        "all views; PruneSID-Dyn's differ from K), feature coverage and, with a question, first-token "
                        "KL (nats), with the paper's figure at the budget it names; methods this model cannot run "
                        "under `unavailable`, with the reason. JSON.",
        **public)
    api_inllm.click(
        endpoint(_public_json(compare_in_llm), "compare_in_llm"),
        [api_image, api_inllm_question, api_inllm_budgets], api_out, api_name="compare_in_llm",
        api_description="PruneSID alone, FastV alone and PruneSID + FastV / PyramidDrop per budget: image tokens per "
                        "decoder layer, total compression, prefill FLOPs, prefill time against no pruning with the "
                        "spread of the timing passes (`time_within_noise`, `time_resolved`, `same_schedule_as` say "
                        "when a time tells nothing apart), first-token KL and agreement, as JSON.",
        **public)
    return on_open

