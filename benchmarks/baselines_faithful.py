"""The registry's baselines beside their authors' selection code, on fresh synthetic cases.

For each method and budget: the share of cases where ours keeps exactly the same set of
patches as the authors' code (``yardsticks/authors_baselines.py``), with the tower states
in float32 and in bfloat16 (the dtype the authors' code then computes in; ours computes in
float32 either way). VisPruner is run twice: as published (``argsort`` without a stable
tie-break) and with a stable sort swapped in, which is this project's rule.

    python -m benchmarks.baselines_faithful [--cases 100] [--budgets 16 64 128 192]

The figures are the "measured effect" the registry's deviations quote.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yardsticks.authors_baselines import divprune_reference, visionzip_reference, vispruner_reference  # noqa: E402
from prunesid_eval.methods.divprune import divprune_select  # noqa: E402
from prunesid_eval.methods.visionzip import contextual_count, visionzip_select  # noqa: E402
from prunesid_eval.methods.vispruner import vispruner_select  # noqa: E402
from yardsticks.reference_data import cases_module  # noqa: E402

FIRST_SEED = 10_000
"""Seeds the tests do not use (they use 0–199)."""


def _patches(keep: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keep[keep > 0] - 1] = True
    return mask


def _overlap(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Jaccard index of two kept-patch masks."""
    return float((ours & theirs).sum()) / max(float((ours | theirs).sum()), 1.0)


def compare_one(hidden: torch.Tensor, attention: torch.Tensor, budget: int, dtype: torch.dtype
                ) -> dict[str, float]:
    """Per method (and VisPruner's two sorts): the Jaccard index of our kept patches and the
    authors' (1.0: the same set)."""
    n = attention.shape[1]
    states = hidden.to(dtype)
    out = {}
    ours = _patches(divprune_select(states, attention, budget).keep[0], n)
    theirs = torch.zeros(n, dtype=torch.bool)
    theirs[divprune_reference(states[0, 1:], budget)] = True
    out["divprune"] = _overlap(ours, theirs)
    if dtype != torch.float32:
        native = _patches(divprune_select(states, attention, budget, native_dtype=True).keep[0], n)
        out["divprune, native_dtype"] = _overlap(native, theirs)
    if budget > contextual_count(budget, n) + 1:
        contextual = contextual_count(budget, n)
        ours = _patches(visionzip_select(states, attention, budget).keep[0], n)
        _, indices = visionzip_reference(states, attention, budget - contextual, contextual)
        out["visionzip"] = _overlap(ours, _patches(indices[0], n))
    ours = vispruner_select(states, attention, budget).kept_patches[0]
    native = vispruner_select(states, attention, budget, native_dtype=True).kept_patches[0]
    for stable in (False, True):
        theirs = vispruner_reference(states[:, 1:], attention, budget, stable=stable)[0]
        out["vispruner" + (", stable sort" if stable else ", as published")] = _overlap(ours, theirs)
        if dtype != torch.float32 and stable:
            out["vispruner, native_dtype"] = _overlap(native, theirs)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 128, 192])
    args = parser.parse_args(argv)
    make_case = cases_module().make_case
    cases = [make_case(FIRST_SEED + i) for i in range(args.cases)]
    print(f"Identical kept sets (mean Jaccard index), ours vs the authors' code, over {args.cases} synthetic cases "
          f"(seeds {FIRST_SEED}–{FIRST_SEED + args.cases - 1}); torch {torch.__version__}, CPU")
    for dtype in (torch.float32, torch.bfloat16):
        rows: dict[str, list[str]] = {}
        for budget in args.budgets:
            scores: dict[str, list[float]] = {}
            for hidden, attention in cases:
                for name, overlap in compare_one(hidden, attention, budget, dtype).items():
                    scores.setdefault(name, []).append(overlap)
            for name, values in scores.items():
                same = sum(v == 1.0 for v in values) / len(values)
                rows.setdefault(name, []).append(f"{100 * same:.0f}% ({sum(values) / len(values):.2f})")
        print(f"\ntower states in {str(dtype).removeprefix('torch.')}:")
        print(f"  {'method':<28}" + "".join(f"{'K=' + str(b):>14}" for b in args.budgets))
        for name, cells in rows.items():
            print(f"  {name:<28}" + "".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
