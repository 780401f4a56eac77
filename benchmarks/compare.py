"""Speed of "Compare methods": every registered selection method at one budget on cached
features (what the Compare tab does before any answer is generated).

Issue 6 target: all methods together at most 1 s per image on the CPU (features cached,
answer generation excluded). Prints the median ms per method and for the whole set over
``--repeats`` runs, on the shared synthetic CLIP-like case (or random clustered features
when the shared reference is not available), with ``--threads`` torch threads and the BLAS
pools held to one thread by ``prunesid.warm_up()``, as the app does at start-up.

    python benchmarks/compare.py [--budget 64] [--repeats 5] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prunesid  # noqa: E402
from prunesid_eval.compare import compare_methods  # noqa: E402
from prunesid_eval.methods import list_methods  # noqa: E402

TARGET_MS = 1000.0


def features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(hidden [1, 577, 1024], cls_attention [1, 576], where they came from)."""
    sys.path.insert(0, str(ROOT))
    try:
        from yardsticks.reference_data import REFERENCE_DIR, cases_module

        if (REFERENCE_DIR / "cases.py").is_file():
            hidden, attention = cases_module().make_case(seed)
            return hidden, attention, f"shared synthetic case {seed}"
    except Exception:  # noqa: BLE001 — fall back to local features
        pass
    from benchmarks.selection import clip_like_batch

    hidden, attention = clip_like_batch(1, seed=seed)
    return hidden, attention, "benchmarks.selection.clip_like_batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    prunesid.warm_up()  # BLAS pools at one thread, the Lanczos kernel compiled: as the app starts
    device = torch.device(args.device)
    hidden, attention, source = features()
    hidden, attention = hidden.to(device), attention.to(device)
    names = [s.name for s in list_methods()]
    compare_methods(hidden, attention, args.budget)  # warm-up (allocators, scipy, first-call overheads)

    per_method = {n: [] for n in names}
    totals = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        runs = compare_methods(hidden, attention, args.budget)
        if device.type == "cuda":
            torch.cuda.synchronize()
        totals.append(1000 * (time.perf_counter() - start))
        for r in runs:
            per_method[r.name].append(1000 * r.seconds)

    print(f"all {len(names)} methods at {args.budget} tokens on {device} ({source}, "
          f"{args.threads or 'default'} thread(s)), median of {args.repeats}:")
    for n in names:
        print(f"  {n:14s} {statistics.median(per_method[n]):8.1f} ms")
    total = statistics.median(totals)
    print(f"  {'TOTAL':14s} {total:8.1f} ms  (min {min(totals):.1f}, max {max(totals):.1f}; target <= {TARGET_MS:.0f} ms)"
          f"  -> {'OK' if total <= TARGET_MS else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
