"""Studies on a loaded model: every method side by side, the randomised PCA's stability, budget sweeps.

The tensor work is :mod:`prunesid_eval`'s; this module adds what needs the model — the
view-aware budgets, the projected tokens DivPrune prunes, answers and first-token fidelity —
through the :class:`~prunesid_vlm.pipeline.Pipeline`, so that nothing is generated twice:

* a comparison of M methods with answers costs one full generation and M pruned ones
  (fewer when the pipeline's answer cache already holds some);
* a sweep point costs one pruned prefill, batched with the other points; the full prompt's
  first-token logits are shared with every point and with any answer to the same question.
"""
from __future__ import annotations

import inspect

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from PIL import Image

from prunesid import select_tokens_qwen
from prunesid.subset import concat_selections
from prunesid.result import Selection
from prunesid_eval.compare import (MethodRun, StabilityResult, SweepResult, budget_sweep, coverage, stability,
                                   take_row)
from prunesid_eval.methods import get_method, list_methods
from prunesid_eval.published import FAMILY_MODEL, LLAVA_15_7B, LLAVA_NEXT_7B, published_figure

from .fidelity import first_token_kl
from .pipeline import Pipeline, check_budget, check_question, selection_budgets, view_budgets
from .rules import budget_patches, keeps_everything
from .results import CompareResult, EncodedImages, TokenCounts

Progress = Callable[[float, str], None]

FIDELITY_METRIC = "first_token_kl_nats"


def check_methods(methods: Sequence[str] | str | None) -> list[str]:
    """Registry names, in registry order; all of them when ``methods`` is None. A string is
    split on commas (the scripted API's form)."""
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


def published_model(pipe: Pipeline) -> str:
    """Which of the paper's models the published figures shown for ``pipe`` belong to."""
    return FAMILY_MODEL.get(pipe.family, LLAVA_15_7B)


def paper_budget(pipe: Pipeline, feats: EncodedImages, num_tokens: int) -> int:
    """The budget K (per view, as the slider) in the counting of the paper's figures shown for ``pipe``:
    K per image for LLaVA-1.5 and per frame for Video-LLaVA; the total over the base image and its
    crops for LLaVA-NeXT (640 / 320 / 160 = 128 / 64 / 32 on each of five views)."""
    if published_model(pipe) == LLAVA_NEXT_7B:
        return sum(view_budgets(feats, num_tokens))
    return int(num_tokens)


def handed_tokens(pipe: Pipeline, feats: EncodedImages, selection: Selection) -> int:
    """The visual tokens the language model receives with ``selection`` on ``feats``: every view's
    kept patches, CLS where kept and merged tokens, plus LLaVA-NeXT's row-end newlines — what the
    prompt holds. A selection that keeps every patch is answered unpruned (all patches, no CLS)."""
    return pipe.token_counts(feats, selection).total


def unavailable_reasons(pipe: Pipeline, feats: EncodedImages, names: Sequence[str]) -> dict[str, str]:
    """Of ``names``, the methods that cannot run on ``feats`` with ``pipe``'s model, each with the
    pipeline's reason (:meth:`Pipeline.unavailable_methods`), in the order given."""
    refused = pipe.unavailable_methods(feats)
    return {name: refused[name] for name in names if name in refused}


def unavailable_text(pipe: Pipeline, unavailable: dict[str, str]) -> str:
    """``"Not run, not available for demo/x — CDPruner: <reason>; VisionZip: <reason>."`` (``""`` when none)."""
    if not unavailable:
        return ""
    return (f"Not run, not available for {pipe.model_id} — "
            + "; ".join(f"{get_method(name).label}: {reason.rstrip('.')}" for name, reason in unavailable.items())
            + ".")


@dataclass
class MethodsComparison:
    """Every chosen method's selection on one media item at one budget, with answers if asked."""

    feats: EncodedImages
    budget: int
    selection_budgets: list[int]
    runs: list[MethodRun]
    results: dict[str, CompareResult] = field(default_factory=dict)
    """Per method name: its pruned answer against the (shared) full answer."""
    question: str | None = None
    full_answer: str | None = None
    full_tokens: int | None = None
    generations: dict[str, int] = field(default_factory=dict)
    """Generations this comparison ran (``full``, ``pruned``); cached answers are not counted."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """Methods asked for that cannot run on this model, each with the pipeline's reason
    (:meth:`Pipeline.unavailable_methods`: CLS-attention ones on Qwen, CDPruner without CLIP's text tower)."""
    counts: dict[str, TokenCounts] = field(default_factory=dict)
    """Per method: the visual tokens its selection hands the language model, per view (and newlines)."""
    unpruned: list[str] = field(default_factory=list)
    """Methods whose selection keeps every patch: the model is then answered unpruned (no CLS)."""
    paper_budget: int | None = None
    """The budget the paper's figures are looked up at (:func:`paper_budget`)."""

    def handed(self, name: str) -> int:
        """The visual tokens method ``name`` handed to the language model (all views)."""
        return self.counts[name].total

    @property
    def selection_s(self) -> float:
        return sum(r.seconds for r in self.runs)


def with_native_dtype(options: dict, names: Sequence[str], dtype) -> dict:
    """``options`` asking every method in ``names`` that has a ``native_dtype`` switch to use it
    (DivPrune's projected features cast to ``dtype``, the model's)."""
    out = {name: dict(opts) for name, opts in options.items()}
    for name in names:
        if "native_dtype" in inspect.signature(get_method(name).fn).parameters:
            out.setdefault(name, {})["native_dtype"] = True
            if "features" in out[name]:
                out[name]["features"] = out[name]["features"].to(dtype)
    return out


def compare_methods(pipe: Pipeline, images: Sequence[Image.Image], num_tokens: int,
                    methods: Sequence[str] | str | None = None, *, question: str | None = None,
                    max_new_tokens: int = 24, progress: Progress | None = None,
                    native_dtype: bool = False, instruction: str | None = None) -> MethodsComparison:
    """Each method's selection at ``num_tokens`` per view; with a ``question``, each method's
    answer too (one full generation shared by all).

    ``native_dtype``: the baselines that take it (DivPrune, VisPruner) compute in the model's
    dtype, as their authors' code does, instead of float32 (it matters for bf16/fp16 models).
    ``instruction``: what CDPruner conditions on (default: ``question``; with neither, a plain DPP)."""
    names = check_methods(methods)
    if question is not None:
        question = check_question(question)
    feats = pipe.encode(images)
    k = check_budget(num_tokens, budget_patches(feats))
    unavailable = unavailable_reasons(pipe, feats, names)
    names = [n for n in names if n not in unavailable]
    model = published_model(pipe)
    at = paper_budget(pipe, feats, k)
    options = pipe.method_options(feats, names, question=instruction or question)
    if native_dtype:
        options = with_native_dtype(options, names, feats.hidden_states.dtype)
    runs = []
    for name in names:
        start = time.perf_counter()
        sel = pipe.select(feats, k, method=name, options=options)
        seconds = time.perf_counter() - start
        # The paper's figure at the budget asked for (for PruneSID-Dyn a nominal one), never at the count handed over.
        runs.append(MethodRun(get_method(name), sel, seconds, published_figure(name, at, model)))
    out = MethodsComparison(feats=feats, budget=k, selection_budgets=selection_budgets(feats, view_budgets(feats, k)),
                            runs=runs, question=question, unavailable=unavailable,
                            counts={r.name: pipe.token_counts(feats, r.selection) for r in runs},
                            unpruned=[r.name for r in runs if keeps_everything(feats, r.selection)],
                            paper_budget=at)
    if question is None:
        return out
    before = dict(pipe.stats)
    full = pipe.answer(images, question, max_new_tokens=max_new_tokens)
    for i, run in enumerate(runs):
        if progress is not None:
            progress(0.3 + 0.7 * i / len(runs), f"answering with {run.label}'s tokens")
        pruned = pipe.answer(images, question, run.selection, max_new_tokens=max_new_tokens)
        out.results[run.name] = pipe.result(feats, full, pruned, run.selection, run.seconds)
    out.full_answer, out.full_tokens = full.text, full.visual_tokens
    out.generations = _generations_since(pipe, before)
    return out


def stability_of(pipe: Pipeline, images: Sequence[Image.Image], num_tokens: int, seeds: Sequence[int],
                 progress: Progress | None = None) -> tuple[EncodedImages, StabilityResult]:
    """PruneSID's kept set with the reference's randomised PCA (one run per seed) against the
    exact PCA, on the first tower view."""
    feats = pipe.encode(images)
    k = check_budget(num_tokens, budget_patches(feats))
    rule = _qwen_rule if feats.rule == "qwen" else None
    return feats, stability(feats.hidden_states, feats.cls_attention, k, seeds, progress=progress, rule=rule)


def _qwen_rule(hidden_states, _cls_attention, num_tokens, *, pca="exact", generator=None):
    """The Qwen rule on the merged tokens behind the zero row, on the tower axis."""
    return select_tokens_qwen(hidden_states[:, 1:], num_tokens, pca=pca, generator=generator).on_tower_axis()


def sweep(pipe: Pipeline, images: Sequence[Image.Image], budgets: Sequence[int],
          methods: Sequence[str] | str | None = None, *, question: str | None = None,
          progress: Progress | None = None) -> tuple[SweepResult, dict[str, int]]:
    """Feature coverage (and, with a ``question``, first-token fidelity) against the tokens handed
    over, per method and budget. Returns the result and the generations it ran.

    Every point is the pipeline's selection on every view — the tokens the model is given — so its
    fidelity, its coverage and its count (``result.handed``) describe the same selection. Methods
    this model cannot run are left out with the pipeline's reason (``result.unavailable``)."""
    names = check_methods(methods)
    feats = pipe.encode(images)
    unavailable = unavailable_reasons(pipe, feats, names)
    names = [n for n in names if n not in unavailable]
    if not names:
        raise ValueError(f"None of the chosen methods runs here. {unavailable_text(pipe, unavailable)}")
    most = budget_patches(feats) + 1  # every token: a budget above it (the UI's default 576 on a
    # 144-patch model) is swept once, at this count; the caller says so
    points = sorted({check_budget(min(k, most) if isinstance(k, int) else k, most - 1) for k in budgets})
    options = pipe.method_options(feats, names, question=question)
    before = dict(pipe.stats)
    chosen, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        for k in points:
            chosen[(name, k)] = pipe.select(feats, k, method=name, options=options)
        seconds[name] = time.perf_counter() - start
    fidelity = None
    if question is not None:
        question = check_question(question)
        # The model sees every view, so each point is selected on all of them (deterministic), and
        # all points are prefilled together; the full prompt's logits are shared with every point
        # (and with the Explore tab's answer to the same question, when there is one).
        logits = pipe.first_token_logits(images, question, [None, *chosen.values()])
        kl = {point: first_token_kl(logits[0], row) for point, row in zip(chosen, logits[1:])}

        def point_fidelity(name: str, k: int, _row_selection) -> float:
            return kl[(name, k)]

        fidelity = point_fidelity

    # Coverage on the first view from budget_sweep; the same selections, one row per budget.
    made = {name: concat_selections([take_row(chosen[(name, k)], 0) for k in points]) for name in names}
    result = budget_sweep(feats.hidden_states, feats.cls_attention, points, names, fidelity=fidelity,
                          fidelity_metric=FIDELITY_METRIC if fidelity else None, options=options, progress=progress,
                          selections=made)
    notes = list(result.notes)
    cover = result.coverage
    if feats.num_views > 1:  # the tokens handed over come from every view: cover every view
        cover = {name: [float(coverage(feats.hidden_states, chosen[(name, k)]).mean()) for k in points]
                 for name in names}
        notes.append(f"Coverage is the mean over the {feats.num_views} views, and tokens are counted over all of "
                     "them.")
    if unavailable:
        notes.append(unavailable_text(pipe, unavailable))
    handed = {name: [handed_tokens(pipe, feats, chosen[(name, k)]) for k in points] for name in names}
    result = replace(result, handed=handed, coverage=cover, unavailable=unavailable, notes=tuple(notes),
                     selection_seconds=seconds, paper_budgets=tuple(paper_budget(pipe, feats, k) for k in points))
    return result, _generations_since(pipe, before)


def _generations_since(pipe: Pipeline, before: dict[str, int]) -> dict[str, int]:
    """Model runs since ``before`` (a copy of ``pipe.stats``): full and pruned generations,
    prefill-only prompts and the forward passes they took."""
    names = {"full": "full_generations", "pruned": "pruned_generations", "prefills": "prefills",
             "prefill_batches": "prefill_batches"}
    return {short: pipe.stats[key] - before.get(key, 0) for short, key in names.items()}


@dataclass
class QuestionSensitivity:
    """Each method's kept tokens for each of several questions about one media item."""

    feats: EncodedImages
    budget: int
    questions: list[str]
    selections: dict[str, list]
    """Per method: one selection per question."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """Methods asked for that cannot run on this model, each with the pipeline's reason."""

    def jaccard(self, method: str) -> list[float]:
        """Per question after the first: the Jaccard index of its kept patches with the first's (view 0)."""
        first = self.selections[method][0].kept_patches[0]
        out = []
        for other in self.selections[method][1:]:
            mask = other.kept_patches[0]
            out.append(float((first & mask).sum()) / max(float((first | mask).sum()), 1.0))
        return out


def question_sensitivity(pipe: Pipeline, images: Sequence[Image.Image], num_tokens: int, questions: Sequence[str],
                         methods: Sequence[str] = ("prunesid", "cdpruner")) -> QuestionSensitivity:
    """Whether a method's kept tokens move when only the question changes: CDPruner chooses by the
    question; PruneSID (and every other method here) from the picture alone."""
    questions = [check_question(q) for q in questions]
    if len(questions) < 2:
        raise ValueError("give at least two questions to compare")
    feats = pipe.encode(images)
    k = check_budget(num_tokens, budget_patches(feats))
    names = check_methods(list(methods))
    unavailable = unavailable_reasons(pipe, feats, names)
    chosen = {name: [pipe.select(feats, k, method=name, options=pipe.method_options(feats, [name], question=q))
                     for q in questions] for name in names if name not in unavailable}
    return QuestionSensitivity(feats=feats, budget=k, questions=questions, selections=chosen,
                               unavailable=unavailable)
