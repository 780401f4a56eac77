"""Does the hand-written eigensolver make a difference a user would notice?

PSCA's exact top-G eigenvectors come from SciPy's LAPACK (``PRUNESID_EIGENSOLVER=library``) or,
by default (``auto``), from a Lanczos solver compiled with numba for float32 matrices with G ≤ 16
(``prunesid/_eigen``). Three things a user meets, both solvers side by side in one run:

1. **a slider redraw** (the handler plus Gradio's postprocessing, as ``benchmarks/slider.py``), on
   the demo model's features and CLIP-L-wide ones, the solvers alternating per repeat;
2. **the first selection of a fresh process** (a new server's first visitor), in subprocesses:
   ``auto`` pays for numba's import and its compiled kernel (from numba's cache after the first
   compilation), ``library`` for SciPy's import alone;
3. **what it installs**: numba and llvmlite on disk.

    python benchmarks/eigensolver.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SOLVERS = ("auto", "library")

FIRST_SELECTION = """
import json, time, torch
from benchmarks.selection import clip_like_batch
hidden, attention = clip_like_batch(1)
start = time.perf_counter()
import prunesid
prunesid.select_tokens(hidden, attention, 64)
print(json.dumps({"first_s": time.perf_counter() - start}))
"""


def redraw_times(repeats: int, budgets: list[int]) -> dict:
    from benchmarks.slider import prepare_cases, redraw
    from prunesid._eigen import solve

    blocks, cases = prepare_cases(str(ROOT / "assets" / "cat.jpg"))
    out = {}
    for name, state in cases.items():
        for k in budgets:
            times = {s: [] for s in SOLVERS}
            for repeat in range(repeats + 1):
                for solver in SOLVERS if repeat % 2 == 0 else SOLVERS[::-1]:
                    solve.SOLVER = solver
                    start = time.perf_counter()
                    redraw(blocks, state, k, "kept")
                    if repeat:  # the first round warms caches and compiles
                        times[solver].append(1000 * (time.perf_counter() - start))
            out[(name, k)] = {s: statistics.median(t) for s, t in times.items()}
    return out


def first_selection(solver: str, runs: int) -> list[float]:
    env = {**os.environ, "PRUNESID_EIGENSOLVER": solver, "PYTHONPATH": str(ROOT)}
    return [json.loads(subprocess.run([sys.executable, "-c", FIRST_SELECTION], env=env, capture_output=True,
                                      text=True, check=True, cwd=ROOT).stdout.strip().splitlines()[-1])["first_s"]
            for _ in range(runs)]


def installed_mb(package: str) -> float:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return 0.0
    folder = Path(list(spec.submodule_search_locations)[0])
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 192])
    parser.add_argument("--fresh-runs", type=int, default=3)
    args = parser.parse_args()

    import torch

    print(f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(f"\n1. slider redraw, Kept tokens tab, ms (median of {args.repeats}, solvers alternating)")
    print(f"{'features':<24}{'K':>5}{'auto':>9}{'library':>9}{'library/auto':>14}")
    for (name, k), t in redraw_times(args.repeats, args.budgets).items():
        print(f"{name:<24}{k:>5}{t['auto']:>9.1f}{t['library']:>9.1f}{t['library'] / t['auto']:>13.2f}x")
    print(f"\n2. first selection in a fresh process (CLIP-L width, K = 64), s, {args.fresh_runs} runs each")
    for solver in SOLVERS:
        times = first_selection(solver, args.fresh_runs)
        print(f"{solver:<9}" + "  ".join(f"{t:.2f}" for t in times))
    print("\n3. installed size, MB: " + ", ".join(f"{p} {installed_mb(p):.0f}" for p in ("numba", "llvmlite", "scipy")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
