"""Several visitors moving their sliders at once: each redraw must stay within 300 ms (p95) on the CPU.

Each visitor is a thread with its own cached analysis (as Gradio runs each event in a worker
thread with that visitor's session state), releasing the budget slider again and again on
the default tab ("Kept tokens") with CLIP-L-wide features; the redraws of different visitors
overlap, as the app's redraw queue allows (``studio.layout.REDRAW_CONCURRENCY``). Printed side
by side in one run: the same redraws one at a time (one visitor), and all visitors at once.

    python benchmarks/concurrent_slider.py [--visitors 4] [--moves 12]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.slider import TARGET_MS, prepare_cases, redraw  # noqa: E402


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def run_visitors(blocks: dict, state, visitors: int, moves: int, seed: int = 0) -> list[float]:
    """Milliseconds of every redraw when ``visitors`` threads each make ``moves`` slider moves at once."""
    times: list[float] = []
    lock = threading.Lock()
    start_line = threading.Barrier(visitors)

    def visitor(index: int) -> None:
        rng = random.Random(seed + index)
        start_line.wait()
        for _ in range(moves):
            k = rng.randrange(16, 321)
            start = time.perf_counter()
            redraw(blocks, state, k, "kept")
            with lock:
                times.append(1000 * (time.perf_counter() - start))

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(visitors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=4)
    parser.add_argument("--moves", type=int, default=12)
    parser.add_argument("--image", default=str(ROOT / "assets" / "cat.jpg"))
    args = parser.parse_args()

    import torch

    blocks, cases = prepare_cases(args.image)
    state = cases["CLIP-L width (D=1024)"]
    run_visitors(blocks, state, 1, 3)  # warm caches and the selection's kernels
    alone = run_visitors(blocks, state, 1, args.moves * args.visitors)
    together = run_visitors(blocks, state, args.visitors, args.moves)
    print(f"slider redraws, CLIP-L width, default tab; torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}")
    for name, times in (("one visitor", alone), (f"{args.visitors} visitors at once", together)):
        print(f"  {name:>18}: {len(times)} redraws, median {statistics.median(times):.0f} ms, "
              f"p95 {_p95(times):.0f} ms, max {max(times):.0f} ms")
    p95 = _p95(together)
    print(f"p95 with {args.visitors} visitors at once / p95 alone: {p95 / _p95(alone):.2f}x")
    verdict = "PASS" if p95 <= TARGET_MS else "MISS"
    print(f"p95 with {args.visitors} visitors: {p95:.0f} ms -> {verdict} (target {TARGET_MS:.0f} ms)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
