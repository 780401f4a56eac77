"""Selection speed: ``select_tokens`` vs. the reference's data flow, side by side in one run.

Prints ms per image for B in {1, 8} and K in {16, 64, 192} on CLIP-like features
(N = 576, D = 1024), and for a LLaVA-NeXT image (base view + 4 crops = 5 x 576 patches,
each sub-image selected with its own budget). All implementations run interleaved, and
the median of the repetitions is reported, so machine noise hits them alike.

Yardsticks: ``port`` is yardsticks/reference_port.py (the reference's data flow, written for
this project, always available); ``ref code`` is the reference implementation itself, run
from a checkout you point to with ``--reference-code`` (see reference_code.py).
``ours`` runs the default eigensolver (``auto``: the compiled accelerators where
installed), ``library`` the same selection on SciPy's solver alone (the tests' oracle);
``eig`` is the exact eigensolve alone (centring, Gram matrix, default eigensolver), the
floor of the exact mode. Figures measured so far: PERFORMANCE.md.

    python benchmarks/selection.py [--repeats 11] [--device cpu|cuda] [--reference-code PATH] [--targets-only]
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

from yardsticks.reference_code import load_reference_select  # noqa: E402
from prunesid import select_tokens, warm_up  # noqa: E402
from prunesid._eigen import solve  # noqa: E402
from prunesid.psca import centred_token_matrix  # noqa: E402
from yardsticks.reference_port import reference_select  # noqa: E402
from yardsticks.solver import on_solver  # noqa: E402

TARGETS_MS = {(1, 64): 20.0, (8, 64): 100.0}  # issue 3: per call, CPU
TARGET_SPEEDUP = {"port": {1: 2.0, 8: 3.0}, "code": {1: 4.0, 8: 4.0}}  # issues 3 and 11, by yardstick


def clip_like_batch(batch: int, n: int = 576, d: int = 1024, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered patch states with massive channels, and a peaked CLS attention row."""
    g = torch.Generator().manual_seed(seed)
    side = int(n**0.5)
    regions = 12
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    hidden, attention = [], []
    for _ in range(batch):
        centres = torch.rand(regions, 2, generator=g) * side
        label = torch.cdist(pos, centres).argmin(1)
        tokens = torch.randn(regions, d, generator=g)[label] + 0.6 * torch.randn(n, d, generator=g)
        tokens[:, :3] += 14.0  # massive-activation channels; rho ~0.4 like the reference cases
        hidden.append(torch.cat([tokens.mean(0, keepdim=True), tokens]))
        attention.append(torch.softmax(torch.randn(regions, generator=g)[label] * 2 + torch.randn(n, generator=g), 0) * 16)
    return torch.stack(hidden), torch.stack(attention)


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(batch: int, budget: int, repeats: int, device: torch.device, label: str, reference_code=None) -> dict:
    hidden, attention = clip_like_batch(batch)
    hidden, attention = hidden.to(device), attention.to(device)
    generator = torch.Generator().manual_seed(0)
    runs = {
        "ours": on_solver("auto", lambda: select_tokens(hidden, attention, budget)),
        "library": on_solver("library", lambda: select_tokens(hidden, attention, budget)),
        # Same vectorised pipeline with the reference's randomised PCA: isolates what exactness costs.
        "ours_rand": lambda: select_tokens(hidden, attention, budget, pca="randomized", generator=generator),
        "eig": lambda: solve.gram_top_eigenvectors(centred_token_matrix(hidden), max(budget // 4, 1), solver="auto"),
        "port": lambda: reference_select(hidden.cpu(), attention.cpu(), budget),  # the reference's data flow
    }
    if reference_code is not None:
        runs["code"] = lambda: reference_code(hidden, attention, budget)
    for run in runs.values():
        run(), run()  # warm-up: allocator, LAPACK workspaces, thread pools
    times = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so noise hits all alike
        for name, run in runs.items():
            times[name].append(_time(run, device))
    row = {"case": label, "B": batch, "K": budget}
    row.update({f"{name}_ms": statistics.median(values) * 1000 for name, values in times.items()})
    return row


def _verdict(row: dict, yardstick: str) -> str:
    limit = TARGETS_MS[(row["B"], row["K"])]
    need = TARGET_SPEEDUP[yardstick][row["B"]]
    speedup = row[f"{yardstick}_ms"] / row["ours_ms"]
    ok = row["ours_ms"] <= limit and speedup >= need
    return f"{'PASS' if ok else 'MISS'} vs {yardstick} (<= {limit:.0f} ms/call, >= {need:.0f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference-code", help="checkout of github.com/ZhengyaoFang/PruneSID (or its clip_encoder.py)")
    parser.add_argument("--targets-only", action="store_true", help="only the two cases with targets (K=64, B=1 and 8)")
    args = parser.parse_args()
    device = torch.device(args.device)
    reference_code = load_reference_select(args.reference_code) if args.reference_code else None
    solver = warm_up() if device.type == "cpu" else {"solver": "torch.linalg.eigh"}  # as the app does at start-up
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats} (median)"
          f" eigensolver={solver}")
    rows = []
    for batch in (1, 8):
        for budget in (64,) if args.targets_only else (16, 64, 192):
            rows.append(compare(batch, budget, args.repeats, device, f"LLaVA-1.5 B={batch}", reference_code))
    for budget in () if args.targets_only else (32, 64, 128):  # 160 / 320 / 640 tokens, base + 4 crops
        rows.append(compare(5, budget, args.repeats, device, "LLaVA-NeXT 5x576", reference_code))

    code = reference_code is not None
    print(f"{'case':<18}{'K':>4}{'ours ms/call':>13}{'ours ms/img':>12}{'eig ms/img':>11}{'port ms/img':>12}{'x':>6}"
          + (f"{'ref code ms/img':>16}{'x':>6}" if code else "") + f"{'library ms/img':>15}{'x':>6}"
          + f"{'rand-PCA ms/img':>16}{'x':>6}  target")
    for row in rows:
        per = lambda name: row[f"{name}_ms"] / row["B"]  # noqa: E731
        line = (f"{row['case']:<18}{row['K']:>4}{row['ours_ms']:>13.1f}{per('ours'):>12.1f}{per('eig'):>11.1f}"
                f"{per('port'):>12.1f}{row['port_ms'] / row['ours_ms']:>5.1f}x")
        if code:
            line += f"{per('code'):>16.1f}{row['code_ms'] / row['ours_ms']:>5.1f}x"
        yardstick = "code" if code else "port"
        line += f"{per('library'):>15.1f}{row[f'{yardstick}_ms'] / row['library_ms']:>5.1f}x"
        line += f"{per('ours_rand'):>16.1f}{row['port_ms'] / row['ours_rand_ms']:>5.1f}x"
        if row["case"].startswith("LLaVA-1.5") and (row["B"], row["K"]) in TARGETS_MS:
            line += "  " + "; ".join(_verdict(row, name) for name in (("port", "code") if code else ("port",)))
        print(line)
    print("x = yardstick / ours, same run. eig = the exact eigensolve alone (centring, Gram, eigensolver). 'library' = our"
          f" selection on SciPy's eigensolver alone, x against the {'ref code' if code else 'port'}. 'rand-PCA' = our"
          " pipeline with the reference's randomised PCA (not deterministic), x against the port.")


if __name__ == "__main__":
    main()
