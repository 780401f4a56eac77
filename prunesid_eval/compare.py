"""Pure computations behind "Compare methods": every registered rule on the same cached
features, the stability of PruneSID's randomised PCA, and budget sweeps.

Tensors in, small result objects out; no model or UI code. The one model-dependent
quantity, the sweep's fidelity, comes in as a callable (the app builds it from
``Pipeline.compare``), so this module stays testable on synthetic features.

    from prunesid_eval.compare import compare_methods, stability, budget_sweep
    runs = compare_methods(hidden, attention, 64)            # one MethodRun per method
    stab = stability(hidden, attention, 64, seeds=range(8))  # Jaccard of kept sets
    sweep = budget_sweep(hidden, attention, (16, 64, 192, 576))
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .methods import MethodSpec, get_method, list_methods
from .published import LLAVA_15_7B, NOT_REPORTED, PublishedFigure, published_figure
from prunesid.result import Selection

DEFAULT_SEED = 0
"""Seed of the generator each method gets (a fresh one per method, so order does not matter)."""
DEFAULT_STABILITY_SEEDS = tuple(range(8))
DEFAULT_SWEEP_BUDGETS = (16, 32, 64, 128, 192, 320, 576)
"""Budgets of the sweep (tokens handed to the LLM, CLS included where kept)."""

Options = dict[str, dict]
"""Per-method keyword options, e.g. ``{"prunesid-dyn": {"phi_ref": 0.31}}``."""


def _specs(methods: Iterable[str | MethodSpec] | None) -> list[MethodSpec]:
    if methods is None:
        return list_methods()
    specs = [m if isinstance(m, MethodSpec) else get_method(m) for m in methods]
    if not specs:
        raise ValueError("no methods selected: pick at least one")
    return specs


def method_fn(spec: MethodSpec | str, *, seed: int = DEFAULT_SEED, options: Options | None = None) -> Callable:
    """``spec.fn`` bound to a fresh generator seeded with ``seed`` and its options: a function
    ``(hidden_states, cls_attention, num_tokens) -> Selection`` (what ``Pipeline.compare`` takes).

    A new generator is made on every call, so the bound function is deterministic."""
    spec = get_method(spec) if isinstance(spec, str) else spec
    kwargs = dict((options or {}).get(spec.name, {}))

    def select(hidden_states, cls_attention, num_tokens):
        return spec.fn(hidden_states, cls_attention, num_tokens, generator=torch.Generator().manual_seed(seed), **kwargs)

    select.__name__ = f"select_{spec.name.replace('-', '_')}"
    return select


# ---- 1. all methods at one budget ----------------------------------------------------------
@dataclass(frozen=True)
class MethodRun:
    """One method's selection on the compared features."""

    spec: MethodSpec
    selection: Selection
    seconds: float
    """Wall-clock time of the selection call (features cached)."""
    published: PublishedFigure | None
    """The paper's relative accuracy for this method at the budget asked for, if reported.
    ``published.num_tokens`` is the paper's budget: for PruneSID-Dyn a nominal one (the paper's
    average count), not :meth:`tokens` here, which is what this image's selection handed over."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        return self.spec.label

    def tokens(self, row: int = 0) -> int:
        """Visual tokens handed to the LLM (kept rows + merged tokens)."""
        return int(self.selection.num_tokens[row])

    def to_dict(self, row: int = 0) -> dict:
        sel = self.selection
        keep = sel.keep_row(row)
        return {
            "method": self.name,
            "label": self.label,
            "tokens": self.tokens(row),
            "kept_patches": int((keep > 0).sum()),
            "keeps_cls": bool((keep == 0).any()),
            "merged_tokens": 0 if sel.merged_tokens is None else self.tokens(row) - keep.numel(),
            "keep": keep.tolist(),
            "selection_ms": 1000.0 * self.seconds,
            "published": NOT_REPORTED if self.published is None else self.published.to_dict(),
            "paper": self.spec.paper,
            "code_url": self.spec.code_url,
            "deviations": list(self.spec.deviations),
        }


def compare_methods(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: int | Sequence[int],
    methods: Iterable[str | MethodSpec] | None = None,
    *,
    options: Options | None = None,
    seed: int = DEFAULT_SEED,
    model: str = LLAVA_15_7B,
) -> list[MethodRun]:
    """Every method (default: the whole registry, in order) on the same features and budget.

    Args:
        hidden_states: ``[B, 1+N, D]`` cached tower states (CLS first).
        cls_attention: ``[B, N]``.
        num_tokens: the budget (CLS included where a method keeps it), or one per row.
        options: per-method keyword options (e.g. ``phi_ref`` for ``prunesid-dyn``).
        seed: each method gets a fresh ``torch.Generator`` seeded with it.
        model: whose published figures to attach (:mod:`prunesid_eval.published`).
    """
    budget = num_tokens if isinstance(num_tokens, int) else int(list(num_tokens)[0])
    runs = []
    for spec in _specs(methods):
        select = method_fn(spec, seed=seed, options=options)
        start = time.perf_counter()
        sel = select(hidden_states, cls_attention, num_tokens)
        seconds = time.perf_counter() - start
        runs.append(MethodRun(spec, sel, seconds, published_figure(spec.name, budget, model)))
    return runs


# ---- 2. stability of the randomised PCA ---------------------------------------------------
def jaccard_matrix(masks: torch.Tensor) -> np.ndarray:
    """Float64 ``[S, S]``: Jaccard index |A∩B| / |A∪B| between the rows of a bool ``[S, N]`` (1 if both empty)."""
    m = masks.to(torch.float64)
    inter = m @ m.T
    sizes = m.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - inter
    out = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return out.numpy()


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Jaccard index of two bool ``[N]`` masks."""
    return float(jaccard_matrix(torch.stack([a.bool().cpu(), b.bool().cpu()]))[0, 1])


@dataclass(frozen=True)
class StabilityResult:
    """How much PruneSID's kept set moves when its PCA is the reference's randomised one.

    Kept sets are compared as sets of patches (CLS is always kept, so it is left out).
    """

    num_tokens: int
    seeds: tuple[int, ...]
    exact: Selection
    randomized: tuple[Selection, ...]
    jaccard_vs_exact: np.ndarray
    """Float ``[S]``: Jaccard of each seed's kept set with the exact-PCA kept set."""
    pairwise: np.ndarray
    """Float ``[S, S]``: Jaccard between seeds (1 on the diagonal)."""
    exact_repeat: float
    """Jaccard of the exact mode with a second exact run (1.0: deterministic)."""
    keep_frequency: np.ndarray
    """Float ``[N]``: share of the seeds that kept each patch."""
    exact_kept: np.ndarray
    """Bool ``[N]``: patches the exact mode keeps."""
    seconds: float

    @property
    def mean_vs_exact(self) -> float:
        return float(self.jaccard_vs_exact.mean())

    @property
    def mean_pairwise(self) -> float:
        """Mean Jaccard over distinct seed pairs (1.0 with a single seed)."""
        s = len(self.seeds)
        if s < 2:
            return 1.0
        return float(self.pairwise[~np.eye(s, dtype=bool)].mean())

    def to_dict(self) -> dict:
        return {
            "num_tokens": self.num_tokens,
            "seeds": list(self.seeds),
            "jaccard_vs_exact": [float(v) for v in self.jaccard_vs_exact],
            "mean_jaccard_vs_exact": self.mean_vs_exact,
            "min_jaccard_vs_exact": float(self.jaccard_vs_exact.min()),
            "pairwise": self.pairwise.round(6).tolist(),
            "mean_pairwise_jaccard": self.mean_pairwise,
            "exact_repeat_jaccard": self.exact_repeat,
            "always_kept": int((self.keep_frequency == 1).sum()),
            "sometimes_kept": int(((self.keep_frequency > 0) & (self.keep_frequency < 1)).sum()),
            "seconds": self.seconds,
        }


def stability(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    num_tokens: int,
    seeds: Iterable[int] = DEFAULT_STABILITY_SEEDS,
    *,
    row: int = 0,
    progress: Callable[[float, str], None] | None = None,
    rule: Callable[..., Selection] | None = None,
) -> StabilityResult:
    """PruneSID with the randomised PCA (one run per seed, each with its own generator)
    against the exact PCA, on one row of the features.

    ``rule(hidden_states, cls_attention, num_tokens, pca=, generator=)``: the PruneSID rule to
    run (default the LLaVA one; the app passes the Qwen rule for Qwen's merged tokens)."""
    from .methods.prunesid_rules import prunesid_select

    prunesid_select = rule or prunesid_select
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("stability needs at least one seed")
    start = time.perf_counter()
    h, a = hidden_states[row : row + 1], cls_attention[row : row + 1]
    exact = prunesid_select(h, a, num_tokens, pca="exact")
    again = prunesid_select(h, a, num_tokens, pca="exact")
    runs = []
    for i, seed in enumerate(seeds):
        if progress is not None:
            progress(i / len(seeds), f"randomised PCA, seed {seed}")
        runs.append(prunesid_select(h, a, num_tokens, pca="randomized", generator=torch.Generator().manual_seed(seed)))
    exact_mask = exact.kept_patches[0].cpu()
    masks = torch.stack([s.kept_patches[0].cpu() for s in runs])  # (S, N)
    both = jaccard_matrix(torch.cat([exact_mask[None], masks]))
    return StabilityResult(
        num_tokens=int(exact.num_tokens[0]),
        seeds=seeds,
        exact=exact.cpu(),
        randomized=tuple(s.cpu() for s in runs),
        jaccard_vs_exact=both[0, 1:],
        pairwise=both[1:, 1:],
        exact_repeat=jaccard(exact_mask, again.kept_patches[0]),
        keep_frequency=masks.double().mean(dim=0).numpy(),
        exact_kept=exact_mask.numpy(),
        seconds=time.perf_counter() - start,
    )


# ---- 3. budget sweep ---------------------------------------------------------------------
def take_row(selection: Selection, row: int) -> Selection:
    """A one-row :class:`Selection` (row ``row`` of a batched one), padding trimmed."""
    values = {}
    for f in fields(selection):
        v = getattr(selection, f.name)
        values[f.name] = v[row : row + 1] if isinstance(v, torch.Tensor) else v
    width = int((values["keep"] >= 0).sum())
    values["keep"] = values["keep"][:, :width]
    values["group_size"] = values["group_size"][:, : int(values["num_groups"][0])]
    values["group_survivors"] = values["group_survivors"][:, : int(values["num_groups"][0])]
    values["group_budget"] = values["group_budget"][:, : int(values["num_groups"][0])]
    if values["merged_tokens"] is not None:
        count = int(values["num_tokens"][0]) - width
        values["merged_tokens"] = values["merged_tokens"][:, :count]
    return Selection(**values)


def sweep_selections(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    budgets: Sequence[int] = DEFAULT_SWEEP_BUDGETS,
    methods: Iterable[str | MethodSpec] | None = None,
    *,
    options: Options | None = None,
    seed: int = DEFAULT_SEED,
    row: int = 0,
) -> dict[str, Selection]:
    """Per method, one batched call on ``len(budgets)`` copies of one image's features with
    one budget per copy: a ``Selection`` whose row ``i`` is the selection at ``budgets[i]``.

    ``prunesid-dyn`` without a ``phi_ref`` option runs one budget at a time (in a batch, it
    would share the total across the copies instead of scaling each by φ)."""
    budgets = [int(k) for k in budgets]
    if not budgets:
        raise ValueError("the sweep needs at least one budget")
    h = hidden_states[row : row + 1].expand(len(budgets), -1, -1)
    a = cls_attention[row : row + 1].expand(len(budgets), -1)
    out = {}
    options = {name: {key: _row_copies(v, hidden_states.shape[0], row, len(budgets)) for key, v in opts.items()}
               for name, opts in (options or {}).items()}
    for spec in _specs(methods):
        select = method_fn(spec, seed=seed, options=options)
        if spec.name == "prunesid-dyn" and "phi_ref" not in (options or {}).get(spec.name, {}):
            rows = [select(h[:1], a[:1], k) for k in budgets]
            out[spec.name] = _stack_rows(rows)
        else:
            out[spec.name] = select(h, a, budgets)
    return out


def _row_copies(value, batch: int, row: int, copies: int):
    """A per-row tensor option (``[B, ...]``, e.g. DivPrune's ``features``) cut to ``row`` and repeated
    ``copies`` times, to go with the sweep's copies of that row; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == batch:
        return value[row : row + 1].expand(copies, *value.shape[1:])
    return value


def _stack_rows(rows: list[Selection]) -> Selection:
    """One Selection from one-row Selections (padded like a batched one)."""
    def pad(ts, value):
        width = max(t.shape[1] for t in ts)
        return torch.cat([F.pad(t, (0, width - t.shape[1]), value=value) if t.dim() == 2 else
                          F.pad(t, (0, 0, 0, width - t.shape[1]), value=value) for t in ts])

    values = {}
    for f in fields(Selection):
        vs = [getattr(r, f.name) for r in rows]
        if f.name in ("keep",):
            values[f.name] = pad(vs, -1)
        elif f.name in ("group_size", "group_survivors", "group_budget"):
            values[f.name] = pad(vs, 0)
        elif isinstance(vs[0], torch.Tensor):
            values[f.name] = torch.cat(vs)
        elif vs[0] is None:
            values[f.name] = None
        else:
            values[f.name] = vs[0]
    return Selection(**values)


def coverage(hidden_states: torch.Tensor, selection: Selection) -> torch.Tensor:
    """Float32 ``[B]``: how well the handed-over tokens cover the image in feature space —
    the mean over all N patches of the largest cosine similarity to any token handed to
    the LLM (kept rows, CLS included, and merged tokens). 1 when every patch is kept.

    A cheap, model-free companion to the model's fidelity (no claim about answers)."""
    b = selection.batch_size
    if hidden_states.shape[0] != b:
        hidden_states = hidden_states.expand(b, -1, -1)
    units = F.normalize(hidden_states.float(), dim=-1)  # (B, 1+N, D)
    keep = selection.keep.to(units.device)
    valid = keep >= 0
    handed = units.gather(1, keep.clamp(min=0)[..., None].expand(-1, -1, units.shape[-1]))  # (B, K, D)
    if selection.merged_tokens is not None:
        merged = F.normalize(selection.merged_tokens.to(units).float(), dim=-1)  # (B, M, D)
        counts = selection.num_tokens.to(units.device) - valid.sum(dim=1)
        merged_valid = torch.arange(merged.shape[1], device=units.device)[None, :] < counts[:, None]
        handed = torch.cat([handed, merged], dim=1)
        valid = torch.cat([valid, merged_valid], dim=1)
    sim = units[:, 1:] @ handed.transpose(1, 2)  # (B, N, K + M)
    sim = sim.masked_fill(~valid[:, None, :], float("-inf"))
    return sim.amax(dim=-1).mean(dim=-1)


FidelityFn = Callable[[str, int, Selection], float]
"""``(method name, budget, one-row Selection) -> fidelity`` (e.g. first-token KL, nats)."""


@dataclass(frozen=True)
class SweepResult:
    """Per method and budget: tokens handed over, feature coverage and (optionally) fidelity.

    ``budgets`` are the budgets asked for (K); what each point handed over is ``tokens`` (or, when a
    model counted it, ``handed``): a method whose count differs from K (PruneSID-Dyn, which scales K
    by the image's φ; Qwen's K′; several views) is drawn and labelled at its count, not at K."""

    budgets: tuple[int, ...]
    methods: tuple[str, ...]
    labels: tuple[str, ...]
    tokens: dict[str, list[int]]
    """Per method and budget: tokens of the swept row's selection (kept rows + merged tokens)."""
    coverage: dict[str, list[float]]
    fidelity: dict[str, list[float]] | None
    fidelity_metric: str | None
    selection_seconds: dict[str, float]
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    handed: dict[str, list[int]] | None = None
    """Per method and budget: the visual tokens the language model receives for the point, all views
    together (a model's count, :meth:`Pipeline.token_counts`); None when no model counted them (then
    ``tokens`` is what is handed over)."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """Methods asked for that did not run on this model, each with the reason."""
    paper_budgets: tuple[int, ...] | None = None
    """Per budget: the same budget in the counting of the published figures (LLaVA-NeXT's are totals
    over the base image and its crops); None: the budgets themselves."""

    def handed_tokens(self, method: str) -> list[int]:
        """Per budget: the tokens ``method`` handed over — where its points belong on a token axis."""
        return list((self.handed or self.tokens)[method])

    def differs_from_budget(self, method: str) -> bool:
        """Whether ``method`` handed over another count than the budget asked for at some point."""
        return self.handed_tokens(method) != list(self.budgets)

    def to_dict(self) -> dict:
        return {
            "budgets": list(self.budgets),
            "methods": list(self.methods),
            "labels": list(self.labels),
            "tokens": self.tokens,
            "handed_tokens": {m: self.handed_tokens(m) for m in self.methods},
            "coverage": self.coverage,
            "fidelity": self.fidelity,
            "fidelity_metric": self.fidelity_metric,
            "selection_ms": {k: 1000.0 * v for k, v in self.selection_seconds.items()},
            "seconds": self.seconds,
            "notes": list(self.notes),
            "unavailable": dict(self.unavailable),
        }


def budget_sweep(
    hidden_states: torch.Tensor,
    cls_attention: torch.Tensor,
    budgets: Sequence[int] = DEFAULT_SWEEP_BUDGETS,
    methods: Iterable[str | MethodSpec] | None = None,
    *,
    fidelity: FidelityFn | None = None,
    fidelity_metric: str | None = None,
    options: Options | None = None,
    seed: int = DEFAULT_SEED,
    row: int = 0,
    progress: Callable[[float, str], None] | None = None,
    selections: dict[str, Selection] | None = None,
) -> SweepResult:
    """Every method at every budget on one image: selections in one batched call per method,
    feature coverage for all of them at once, and ``fidelity(name, budget, selection)`` per
    point when given (the model part; one call per method and budget).

    ``selections``: per method, its selections already made (one row per budget), for rules this
    module does not run itself (Qwen's)."""
    specs = _specs(methods)
    budgets = tuple(sorted({int(k) for k in budgets}))
    start = time.perf_counter()
    given, made, seconds = dict(selections or {}), {}, {}
    selections = made
    for i, spec in enumerate(specs):
        if progress is not None:
            progress(0.2 * i / len(specs), f"selecting: {spec.label}")
        t0 = time.perf_counter()
        made[spec.name] = (given[spec.name] if spec.name in given else
                           sweep_selections(hidden_states, cls_attention, budgets, [spec], options=options,
                                            seed=seed, row=row)[spec.name])
        seconds[spec.name] = time.perf_counter() - t0
    h = hidden_states[row : row + 1]
    cover = {name: [float(v) for v in coverage(h, sel)] for name, sel in selections.items()}
    tokens = {name: [int(v) for v in sel.num_tokens] for name, sel in selections.items()}
    fid = None
    if fidelity is not None:
        fid = {}
        total = len(specs) * len(budgets)
        for i, spec in enumerate(specs):
            fid[spec.name] = []
            for j, k in enumerate(budgets):
                if progress is not None:
                    progress(0.2 + 0.8 * (i * len(budgets) + j) / total, f"fidelity: {spec.label} at {k} tokens")
                fid[spec.name].append(float(fidelity(spec.name, k, take_row(selections[spec.name], j))))
    return SweepResult(
        budgets=budgets,
        methods=tuple(s.name for s in specs),
        labels=tuple(s.label for s in specs),
        tokens=tokens,
        coverage=cover,
        fidelity=fid,
        fidelity_metric=fidelity_metric if fidelity is not None else None,
        selection_seconds=seconds,
        seconds=time.perf_counter() - start,
    )
