"""PruneSID combined with pruning inside the language model: the study the paper's reviewers asked for.

For one picture (or clip) and one question, every variant's first answer token is compared with the
unpruned model's, and its prefill is measured, against the total compression:

* **PruneSID alone** at each budget (the image tokens every decoder layer sees);
* **FastV alone**: every visual token enters, FastV's stage (after layer K = 2) keeps as many as
  PruneSID's budget, so the two meet at equal tokens after the stage;
* **PruneSID + FastV** and **PruneSID + PyramidDrop**: PruneSID's budget enters, then the stages
  drop half of what is left (once after K = 2; after each of ¼, ½ and ¾ of the depth).

Total compression is the full prompt's image tokens summed over the decoder layers, divided by the
variant's (what the layers' work on image tokens shrinks by). Prefill FLOPs are estimated from each
layer's sequence length (:func:`~prunesid_vlm.inllm.prefill_flops`); prefill seconds are medians of
passes through the same per-layer loop, every variant in one rotating order per repeat, so that they
are measured side by side.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from prunesid.result import Selection
from prunesid_eval.methods import get_method

from .fidelity import first_token_kl
from .inllm import NO_STAGES, InLLMSchedule
from .pipeline import Pipeline, check_budget, check_question
from .results import Answer, EncodedImages
from .rules import budget_patches

Progress = Callable[[float, str], None]

KINDS = ("prunesid", "fastv", "prunesid+fastv", "prunesid+pyramiddrop")
KIND_LABELS = {"full": "No pruning", "prunesid": "PruneSID alone", "fastv": "FastV alone",
               "prunesid+fastv": "PruneSID + FastV", "prunesid+pyramiddrop": "PruneSID + PyramidDrop"}
DEFAULT_BUDGETS = (192, 128, 64, 32, 16)
MIN_TIMING_SECONDS = 1.0
MAX_REPEATS = 41
"""Timing passes per variant: at least the asked repeats, more while the passes are that quick."""
STAGE_KEEP = 0.5
"""What each in-LLM stage keeps after PruneSID: FastV's and PyramidDrop's published ratio (50 %)."""
SPREAD = (25, 75)
"""Percentiles of the passes a timing's spread is given by (the middle half)."""
CLOCK_RESOLUTION_S = time.get_clock_info("perf_counter").resolution
RESOLVED_TICKS = 1000
"""A prefill shorter than this many ticks of the clock is not resolved (said so instead of a ratio)."""


@dataclass
class VariantRun:
    """One variant at one budget: its tokens per layer, cost and first-token fidelity."""

    kind: str
    budget: int | None
    schedule: InLLMSchedule
    image_tokens_per_layer: list[int]
    tokens_per_layer: list[int]
    flops: float
    prefill_s: float
    first_token_kl: float
    first_token_agrees: bool
    method_label: str = "PruneSID"
    """The pre-LLM method's name in labels (PruneSID unless the study was run with another)."""
    times: list[float] = field(default_factory=list)
    """Prefill seconds of every timing pass (``prefill_s`` is their median)."""

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind].replace("PruneSID", self.method_label)

    @property
    def label(self) -> str:
        budget = "" if self.budget is None else f" {self.budget}"
        return self.kind_label + budget

    @property
    def mean_image_tokens(self) -> float:
        return float(np.mean(self.image_tokens_per_layer))


@dataclass
class CombinationStudy:
    """Every variant of :func:`combination_study`, with the unpruned run they are measured against."""

    question: str
    num_layers: int
    full: VariantRun
    runs: list[VariantRun] = field(default_factory=list)
    selections: dict[int, Selection] = field(default_factory=dict)
    """PruneSID's selection per budget (what enters the language model)."""
    repeats: int = 1

    def compression(self, run: VariantRun) -> float:
        """Image tokens over all layers, full over ``run``'s."""
        return sum(self.full.image_tokens_per_layer) / max(sum(run.image_tokens_per_layer), 1)

    def kinds(self) -> list[str]:
        return [k for k in KINDS if any(r.kind == k for r in self.runs)]

    def of_kind(self, kind: str) -> list[VariantRun]:
        return [r for r in self.runs if r.kind == kind]

    def time_ratios(self, run: VariantRun) -> list[float]:
        """Per timing pass: ``run``'s prefill over the unpruned one's in the same pass (paired: both
        were timed moments apart, so a slow moment of a shared machine slows both)."""
        if not run.times or len(run.times) != len(self.full.times):
            return [run.prefill_s / self.full.prefill_s]
        return [t / f for t, f in zip(run.times, self.full.times)]

    def resolved(self, run: VariantRun) -> bool:
        """Whether ``run``'s prefill lasts many ticks of the clock (else its time says nothing)."""
        return run.prefill_s >= RESOLVED_TICKS * CLOCK_RESOLUTION_S

    def same_schedule(self, run: VariantRun) -> VariantRun | None:
        """An earlier run (the unpruned one included) whose layers see exactly ``run``'s tokens: the two
        do the same work, so any gap between their times is run-to-run noise."""
        for other in [self.full, *self.runs]:
            if other is run:
                return None
            if other.tokens_per_layer == run.tokens_per_layer:
                return other
        return None

    def rows(self) -> list[dict]:
        """One row per run (the unpruned one first), for tables and JSON.

        Time: ``time_vs_full`` is the median over passes of the run's prefill over the unpruned one's
        in the same pass, ``time_vs_full_spread`` the middle half of those ratios (percentiles
        ``SPREAD``). ``time_within_noise``: that spread holds 1.0 — the run is not told apart from no
        pruning; ``same_schedule_as``: an earlier row doing exactly the same work (its time gap is noise)."""
        out = []
        for run in [self.full, *self.runs]:
            ratios = self.time_ratios(run)
            low, high = (float(v) for v in np.percentile(ratios, SPREAD))
            ms = [t * 1e3 for t in (run.times or [run.prefill_s])]
            same = self.same_schedule(run)
            out.append({"variant": run.label, "kind": run.kind, "kind_label": run.kind_label, "budget": run.budget, "in_llm": run.schedule.name,
                        "image_tokens_per_layer": run.image_tokens_per_layer,
                        "mean_image_tokens": round(run.mean_image_tokens, 1),
                        "compression": round(self.compression(run), 2),
                        "prefill_gflops": round(run.flops / 1e9, 3),
                        "flops_vs_full": round(run.flops / self.full.flops, 3),
                        "prefill_ms": round(run.prefill_s * 1e3, 2),
                        "prefill_ms_spread": [round(float(v), 2) for v in np.percentile(ms, SPREAD)],
                        "passes": len(ms),
                        "time_vs_full": round(float(np.median(ratios)), 3),
                        "time_vs_full_spread": [round(low, 3), round(high, 3)],
                        "time_within_noise": run is not self.full and low <= 1.0 <= high,
                        "time_resolved": self.resolved(run) and self.resolved(self.full),
                        "same_schedule_as": None if same is None else same.label,
                        "first_token_kl": round(run.first_token_kl, 5),
                        "first_token_agrees": run.first_token_agrees})
        return out


STAGES = {"fastv": InLLMSchedule.fastv_for, "pyramiddrop": InLLMSchedule.pyramiddrop_for}
"""In-LLM stages by name, at the published layers scaled to a model's depth."""


def schedules_for(num_layers: int, keep: float = STAGE_KEEP) -> dict[str, InLLMSchedule]:
    """The in-LLM stage of each combined kind, at the published layers scaled to ``num_layers``."""
    return {f"prunesid+{name}": make(num_layers, keep) for name, make in STAGES.items()}


def parse_variant(label: str) -> tuple[str | None, str | None]:
    """``"prunesid"`` → ``("prunesid", None)``; ``"visionzip+pyramiddrop"`` → ``("visionzip",
    "pyramiddrop")``; ``"fastv"`` → ``(None, "fastv")`` (FastV alone). Registry names are checked."""
    label = str(label).strip().lower()
    if label in STAGES:
        return None, label
    method, _, stage = label.partition("+")
    if stage and stage not in STAGES:
        raise ValueError(f"unknown in-LLM stage {stage!r} in {label!r}; known: {', '.join(STAGES)}")
    return get_method(method).name, stage or None


def matched_fastv(pipe: Pipeline, feats, selection: Selection, num_layers: int) -> InLLMSchedule:
    """FastV alone, keeping after its stage as many image tokens as PruneSID's ``selection`` hands the
    language model (so that the two meet at equal tokens after the stage)."""
    full = pipe.token_counts(feats).total
    pruned = pipe.token_counts(feats, selection).total
    return InLLMSchedule.fastv_for(num_layers, min(1.0, pruned / full))


def answer_figures(pipe: Pipeline, feats: EncodedImages, full: Answer, pruned: Answer,
                   num_layers: int = 0) -> dict:
    """How ``pruned`` differs from ``full`` (first-token KL, first token, whole answer); with
    ``num_layers``, also the image tokens each layer saw, the total compression and the prefill
    FLOPs relative to no pruning, so that variants with and without in-LLM stages compare on one scale."""
    out = {"first_token_kl": first_token_kl(full.first_logits, pruned.first_logits),
           "first_token_agrees": pipe.same_first_token(full, pruned),  # the rule the answers were decoded by
           "same_answer": full.tokens == pruned.tokens}
    if num_layers:
        full_image = pipe.token_counts(feats).total
        per_layer = list(pruned.image_tokens_per_layer) or [pruned.visual_tokens] * num_layers
        text, full_text = pruned.prompt_tokens - pruned.visual_tokens, full.prompt_tokens - full.visual_tokens
        out.update(image_tokens_per_layer=per_layer, compression=full_image * num_layers / max(sum(per_layer), 1),
                   flops_vs_full=pipe.prefill_flops([text + n for n in per_layer])
                   / pipe.prefill_flops([full_text + full_image] * num_layers))
    return out


def variant_run(pipe: Pipeline, feats, label: str, budget: int, num_layers: int, question: str | None = None,
                made: dict[tuple[str, int], Selection] | None = None) -> tuple[Selection | None, InLLMSchedule]:
    """What enters the language model and what its layers drop, for a variant label at ``budget``
    (``question``: for a method that chooses by it, CDPruner). ``made``: the selections already made
    on ``feats`` by (method, budget), filled in as they are made, so that the variants of one method
    at one budget (and FastV alone, matched to PruneSID's) share one selection."""
    method, stage = parse_variant(label)
    made = {} if made is None else made
    key = (method or "prunesid", budget)
    if key not in made:
        made[key] = pipe.select(feats, budget, method=key[0], question=question)
    if method is None:
        return None, matched_fastv(pipe, feats, made[key], num_layers)
    return made[key], (STAGES[stage](num_layers, STAGE_KEEP) if stage else NO_STAGES)


def kinds_for(pipe: Pipeline) -> list[str]:
    """The variants whose in-LLM stage runs on ``pipe``'s language model (on Qwen, not PyramidDrop)."""
    return [k for k in KINDS if (stage := parse_variant(k)[1]) is None or stage in pipe.in_llm_styles]


def combination_study(pipe: Pipeline, images: Sequence[Image.Image], question: str,
                      budgets: Sequence[int] = DEFAULT_BUDGETS, *, kinds: Sequence[str] | None = None,
                      repeats: int = 3, method: str = "prunesid", progress: Progress | None = None,
                      min_seconds: float = MIN_TIMING_SECONDS) -> CombinationStudy:
    """Run every variant of ``kinds`` (default: :func:`kinds_for` the model) at every budget (per
    view, as the app's slider) on ``images``.

    Budgets beyond the model's patches are dropped; ``method`` is the pre-LLM method (PruneSID by
    default; any registry method composes the same way).

    ``repeats`` passes per variant at least; more (up to ``MAX_REPEATS``) while all of them together
    have taken under ``min_seconds``, so that millisecond prefills (the demo models) are medians of
    many passes and a moment of contention on a shared CPU does not decide them.

    Raises:
        ValueError: no usable budget, an unknown kind or one whose stage this model does not run, or a
        model the in-LLM stages do not cover."""
    question = check_question(question)
    runnable = kinds_for(pipe)
    kinds = runnable if kinds is None else list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(KINDS)}")
    refused = [k for k in kinds if k not in runnable]
    if refused:
        raise ValueError(f"{', '.join(KIND_LABELS[k] for k in refused)}: not on {pipe.model_id}; "
                         f"{pipe.in_llm_limits}")
    spec = get_method(method)
    method, method_label = spec.name, spec.label
    num_layers = pipe.in_llm_layers()
    feats = pipe.encode(images)
    patches = budget_patches(feats)
    points = sorted({check_budget(b, patches) for b in budgets if int(b) <= patches}, reverse=True)
    if not points:
        raise ValueError(f"no budget fits this model's {patches} patches per view")
    plan: list[tuple[str, int | None, Selection | None, InLLMSchedule]] = [("full", None, None, NO_STAGES)]
    made: dict[tuple[str, int], Selection] = {}
    for k in points:
        made[(method, k)] = pipe.select(feats, k, method=method, question=question)
        for kind in kinds:
            variant = kind.replace("prunesid", method) if kind != "fastv" else kind
            plan.append((kind, k, *variant_run(pipe, feats, variant, k, num_layers, question, made)))
    selections = {k: made[(method, k)] for k in points}
    runs, timings, passes = pipe.staged_prefills(images, question, [entry[2:] for entry in plan], repeats=repeats,
                                                 min_seconds=min_seconds, max_repeats=MAX_REPEATS, progress=progress)
    full = runs[0]
    # The first token greedy decoding takes (suppressed tokens never win), as for every answer shown.
    full_first = pipe.first_token(full.first_logits)
    variants = []
    for (kind, k, _selection, schedule), run, times in zip(plan, runs, timings):
        variants.append(VariantRun(
            kind=kind, budget=k, schedule=schedule, image_tokens_per_layer=list(run.image_tokens_per_layer),
            tokens_per_layer=list(run.tokens_per_layer), flops=pipe.prefill_flops(run.tokens_per_layer),
            prefill_s=float(np.median(times)), times=[float(t) for t in times],
            first_token_kl=first_token_kl(full.first_logits, run.first_logits),
            first_token_agrees=pipe.first_token(run.first_logits) == full_first,
            method_label=method_label))
    return CombinationStudy(question=question, num_layers=num_layers, full=variants[0], runs=variants[1:],
                            selections=selections, repeats=passes)
