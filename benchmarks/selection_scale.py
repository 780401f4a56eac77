"""Selection at scale: time and peak memory of one view against its token count N.

Both rules, one view (B = 1), K = 64 (the Qwen rule scales it to K′ = round(N·64/576)):

* Qwen rule (``select_tokens_qwen``), D = 1,536, against the reference's Qwen selection
  (``Qwen2VisionTransformerPretrainedModel_prunesid.forward`` of
  ``prunesid/prunesid_qwen/modeling_qwen2_vl.py``);
* LLaVA rule (``select_tokens``), D = 1,024, against the reference's LLaVA selection
  (``CLIPVisionTower_PruneSID.forward``, through yardsticks/reference_code.py).

The reference runs from a checkout you point to with ``--reference-code`` (nothing of it is
vendored); its methods run unchanged on stand-ins for ``self`` (the tower hands back the given
states), with its randomised ``torch.pca_lowrank``. Without a checkout only ours is measured.

Every point runs in fresh subprocesses: one per implementation for its **peak memory** (the
growth of the process's resident high-water mark during the first selection at that size, the
kernel's peak reset just before: torch and LAPACK allocations included, which tracemalloc
would miss), and one where the implementations **alternate** for the time (median of
``--repeats``), so machine noise hits them alike. The fitted growth exponent is the
least-squares slope of log(time) and log(memory) against log(N).

    python benchmarks/selection_scale.py --reference-code /path/to/PruneSID
    python benchmarks/selection_scale.py --rules qwen --sizes 5000 --repeats 5 --reference-code ...

Points where the reference would hold more than ``--reference-limit-gb`` (its N×N similarity,
and for the LLaVA rule a copy per group) are skipped for it. Figures: PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SIZES = (576, 1296, 2880, 5000, 10000, 20000)
WIDTH = {"qwen": 1536, "llava": 1024}
QWEN_FILE = Path("prunesid") / "prunesid_qwen" / "modeling_qwen2_vl.py"


# ---- inputs -----------------------------------------------------------------------------------
def grid_shape(n: int) -> tuple[int, int]:
    """The most nearly square rows × cols = n (a picture's grid of merged tokens)."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def clip_like_view(n: int, d: int, seed: int = 0):
    """``(hidden [1, 1+N, D], attention [1, N])``: one view of tower-like states on a rows × cols grid.

    Built like the shared reference cases (``make_case``): regions with their own direction,
    noise, a smooth positional term, a few high-norm artifact tokens and massive channels;
    CLS first (the Qwen rule drops it). Deterministic in ``seed``.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    rows, cols = grid_shape(n)
    regions = 12
    yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    centres = torch.rand(regions, 2, generator=g) * torch.tensor([rows, cols])
    label = torch.cdist(pos, centres).argmin(1)
    means = torch.randn(regions, d, generator=g) * (0.5 + 1.5 * torch.rand(regions, 1, generator=g))
    tokens = means[label] + 0.6 * torch.randn(n, d, generator=g)
    tokens += 0.5 * torch.sin(pos @ (torch.randn(2, d, generator=g) * 0.15))
    tokens[torch.randperm(n, generator=g)[:6]] += 6.0 * torch.randn(1, d, generator=g)
    tokens[:, torch.randperm(d, generator=g)[:3]] += 20.0
    hidden = torch.cat([tokens.mean(0, keepdim=True), tokens])[None]
    attention = torch.softmax(torch.randn(regions, generator=g)[label] * 2 + torch.randn(n, generator=g), 0) * 16
    return hidden, attention[None]


# ---- the implementations ----------------------------------------------------------------------
def load_reference_qwen(path: str | Path) -> Callable:
    """``select(tokens [N, D], budget) -> kept indices`` running the reference's Qwen selection.

    The file imports transformers classes it does not use for the selection (and which newer
    transformers no longer has), so only its two helpers and the vision tower's ``forward`` are
    compiled from the source, with the file's own imports of torch, F, numpy and math.
    """
    path = Path(path)
    source = path / QWEN_FILE if path.is_dir() else path
    if not source.is_file():
        raise FileNotFoundError(f"no {QWEN_FILE} under {path}")
    tree = ast.parse(source.read_text())
    wanted: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("pca_group", "nms"):
            wanted.append(node)
        elif isinstance(node, ast.ClassDef) and node.name == "Qwen2VisionTransformerPretrainedModel_prunesid":
            wanted += [item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "forward"]
    if len(wanted) != 3:
        raise ValueError(f"{source}: expected pca_group, nms and the vision tower's forward")
    header = "import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"
    module = ast.Module(body=ast.parse(header).body + wanted, type_ignores=[])
    namespace: dict = {}
    exec(compile(module, str(source), "exec"), namespace)  # noqa: S102 (the reference's own code)
    forward = namespace["forward"]

    def select(tokens, budget: int):
        import torch

        rows, cols = grid_shape(tokens.shape[0])
        tower = types.SimpleNamespace(
            patch_embed=lambda states: states, rot_pos_emb=lambda grid: None, blocks=[],
            merger=lambda states: states, need_token_num=budget,
        )
        return forward(tower, tokens, torch.tensor([[1, rows, cols]]))[1]

    return select


def runners(rule: str, n: int, budget: int, reference_code: str | None) -> dict[str, Callable[[], object]]:
    import torch

    from prunesid import select_tokens, select_tokens_qwen

    hidden, attention = clip_like_view(n, WIDTH[rule])
    if rule == "qwen":
        tokens = hidden[0, 1:].contiguous()
        del hidden
        runs = {"ours": lambda: select_tokens_qwen(tokens, budget)}
        if reference_code:
            reference = load_reference_qwen(reference_code)
            runs["reference"] = lambda: reference(tokens, budget)
    else:
        runs = {"ours": lambda: select_tokens(hidden, attention, budget)}
        if reference_code:
            from yardsticks.reference_code import load_reference_select

            reference = load_reference_select(reference_code)
            runs["reference"] = lambda: reference(hidden, attention, budget)
    torch.manual_seed(0)  # the reference's pca_lowrank draws from the global generator
    return runs


def warm_up(rule: str) -> None:
    """Load the libraries and compile the kernels on a small view, outside the measurement."""
    from prunesid import select_tokens, select_tokens_qwen, warm_up as prepare

    prepare()
    hidden, attention = clip_like_view(64, WIDTH[rule], seed=1)
    select_tokens_qwen(hidden[0, 1:], 64) if rule == "qwen" else select_tokens(hidden, attention, 16)


# ---- measuring (in a fresh subprocess per point) ------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(rule: str, n: int, budget: int, impl: str, reference_code: str | None) -> dict:
    """Peak resident growth (MB) and time of the first selection of this size by ``impl``."""
    warm_up(rule)
    run = runners(rule, n, budget, reference_code)[impl]
    Path("/proc/self/clear_refs").write_text("5")  # reset the resident high-water mark (VmHWM)
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {"peak_mb": (_status_kb("VmHWM") - before) / 1024, "first_s": seconds}


def measure_time(rule: str, n: int, budget: int, impls: list[str], repeats: int, reference_code: str | None) -> dict:
    """Median seconds per selection of each implementation, run alternately ``repeats`` times."""
    warm_up(rule)
    runs = runners(rule, n, budget, reference_code)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            start = time.perf_counter()
            runs[impl]()
            times[impl].append(time.perf_counter() - start)
    return {impl: {"median_s": statistics.median(values), "min_s": min(values), "all_s": values}
            for impl, values in times.items()}


def _subprocess(args: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_bytes(rule: str, n: int, budget: int) -> float:
    """Rough peak of the reference: its float32 N×N similarity and what it derives from it."""
    if rule == "qwen":
        return 3 * 4 * n * n  # the similarity, its triu copy, the per-group slices
    return 3 * 4 * n * n * max(budget // 4, 1)  # [B, G, N, N] copy of the similarity, and its masks


def growth_exponent(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(N), or None with fewer than two points."""
    points = [(math.log(n), math.log(v)) for n, v in zip(sizes, values) if v and v > 0]
    if len(points) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default="qwen,llava", help="comma-separated: qwen, llava")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated token counts N")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs per point (median)")
    parser.add_argument("--reference-code", help="checkout of github.com/ZhengyaoFang/PruneSID")
    parser.add_argument("--reference-limit-gb", type=float, default=6.0)
    parser.add_argument("--no-memory", action="store_true", help="time only (no per-implementation memory runs)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--worker", choices=("memory", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--rule", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--impls", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "memory":
        print(json.dumps(measure_memory(args.rule, args.n, args.budget, args.impls, args.reference_code)))
        return
    if args.worker == "time":
        impls = args.impls.split(",")
        print(json.dumps(measure_time(args.rule, args.n, args.budget, impls, args.repeats, args.reference_code)))
        return

    import torch

    sizes = [int(s) for s in args.sizes.split(",")]
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"budget={args.budget} repeats={args.repeats} torch={torch.__version__} threads={torch.get_num_threads()}"
          f" cpus={os.cpu_count()} load at start={' '.join(load)}", flush=True)
    results = []
    for rule in args.rules.split(","):
        print(f"\n{rule} rule, D = {WIDTH[rule]}, one view\n"
              f"{'N':>7} {'ours s':>9} {'ours MB':>9} {'ref s':>9} {'ref MB':>9} {'ref/ours':>9}", flush=True)
        for n in sizes:
            impls = ["ours"]
            if args.reference_code and reference_bytes(rule, n, args.budget) <= args.reference_limit_gb * 2**30:
                impls.append("reference")
            common = ["--rule", rule, "--n", str(n), "--budget", str(args.budget)]
            if args.reference_code:
                common += ["--reference-code", args.reference_code]
            row = {"rule": rule, "n": n, "d": WIDTH[rule], "budget": args.budget}
            if not args.no_memory:
                for impl in impls:
                    row[f"{impl}_memory"] = _subprocess(["--worker", "memory", "--impls", impl, *common], args.timeout)
            row["time"] = _subprocess(["--worker", "time", "--impls", ",".join(impls),
                                       "--repeats", str(args.repeats), *common], args.timeout)
            row["load"] = Path("/proc/loadavg").read_text().split()[:3]
            results.append(row)

            def cell(impl: str, what: str) -> str:
                if what == "s":
                    value = row["time"].get(impl, {}).get("median_s")
                    return f"{value:9.2f}" if value is not None else f"{'—':>9}"
                value = row.get(f"{impl}_memory", {}).get("peak_mb")
                return f"{value:9.0f}" if value is not None else f"{'—':>9}"

            ours, ref = row["time"].get("ours", {}).get("median_s"), row["time"].get("reference", {}).get("median_s")
            ratio = f"{ref / ours:8.1f}x" if ours and ref else f"{'—':>9}"
            note = row["time"].get("error", "")
            print(f"{n:>7} {cell('ours', 's')} {cell('ours', 'MB')} {cell('reference', 's')} {cell('reference', 'MB')}"
                  f" {ratio}  load {' '.join(row['load'])} {note}", flush=True)
        for impl in ("ours", "reference"):
            rows = [r for r in results if r["rule"] == rule and impl in r["time"]]
            slope_t = growth_exponent([r["n"] for r in rows], [r["time"][impl]["median_s"] for r in rows])
            memory = [r for r in rows if "peak_mb" in r.get(f"{impl}_memory", {})]
            slope_m = growth_exponent([r["n"] for r in memory], [r[f"{impl}_memory"]["peak_mb"] for r in memory])
            if slope_t is not None:
                print(f"{impl}: time grows as N^{slope_t:.2f}"
                      + (f", peak memory as N^{slope_m:.2f}" if slope_m is not None else "")
                      + f" (log-log least squares over N = {', '.join(str(r['n']) for r in rows)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
