"""Slider redraw: moving the token-budget slider must redraw within 300 ms on the CPU.

What one slider release costs, for one image whose features are cached: the handler
(``studio.handlers.on_reselect``: PruneSID selection + drawing the visible view) plus
Gradio's postprocessing of its outputs (PNG files, the figure), i.e. everything the
server does before the browser gets the new picture. Network and browser paint are not
included. The default tab is "Kept tokens"; every other tab is timed too (it is what
the slider redraws while that tab is open, and what opening it after a move costs).

Two feature sets: the offline demo model's (width 64) and CLIP-L-wide synthetic features
(width 1024, from ``benchmarks/selection.py``), since the selection cost grows with width.

    python benchmarks/slider.py [--repeats 5] [--budgets 64 128 192 577]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_MS = 300.0
OUTPUT_IDS = {"kept": "kept", "groups": "groups", "groups_note": None, "nms": "nms", "importance": "importance",
              "group_chart": "group-chart", "dynamic_chart": "dynamic-chart", "dynamic_text": "dynamic-text",
              "frame_chart": "frame-chart", "summary": "summary", "status": "status", "gallery": "gallery",
              "stale": "stale"}


def _postprocess(blocks: dict, keys, outputs) -> None:
    """Run each output through its component's postprocess, as Gradio does before sending."""
    for key, value in zip(keys, outputs):
        block = blocks.get(OUTPUT_IDS.get(key))
        if block is None:
            continue
        if isinstance(value, dict) and value.get("__type__") == "update":
            if "value" not in value:
                continue
            value = value["value"]
        block.postprocess(value)


def prepare_cases(image: str) -> tuple[dict, dict]:
    """The app's blocks by elem_id, and the two cached analyses: the demo model's features and
    CLIP-L-wide synthetic ones (same image, same geometry)."""
    import torch

    import app
    from benchmarks.selection import clip_like_batch
    from studio import handlers as H

    blocks = {b.elem_id: b for b in app.demo.blocks.values() if getattr(b, "elem_id", None)}
    out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", image, None, 64, False, 1, None,
                                             progress=H._no_progress)))
    state = out["state"]
    if state is None:
        raise SystemExit(out["status"])
    hidden, attention = clip_like_batch(1)
    wide = dataclasses.replace(state, feats=dataclasses.replace(
        state.feats, hidden_states=hidden.to(torch.float32), cls_attention=attention.float()))
    return blocks, {"demo model (D=64)": state, "CLIP-L width (D=1024)": wide}


def redraw(blocks: dict, state, k: int, part: str) -> None:
    """One slider release on ``part``'s tab, up to what Gradio sends back."""
    from studio import handlers as H

    _postprocess(blocks, H.VIEW_KEYS, H.on_reselect(state, k, False, 1, "image", None, None, part))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 192, 577])
    parser.add_argument("--image", default=str(ROOT / "assets" / "cat.jpg"))
    args = parser.parse_args()

    import torch

    from studio.views import PARTS

    blocks, cases = prepare_cases(args.image)

    print(f"slider redraw, ms (median of {args.repeats}; handler + Gradio postprocess; target {TARGET_MS:.0f} ms)")
    print(f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    worst_default, worst_any = 0.0, 0.0
    for name, st in cases.items():
        print(f"\n{name}")
        print("   K  " + "".join(f"{p:>13}" for p in PARTS))
        for k in args.budgets:
            row = []
            for part in PARTS:
                times = []
                for r in range(args.repeats + 1):
                    start = time.perf_counter()
                    redraw(blocks, st, k, part)
                    if r:  # the first run warms caches
                        times.append(1000 * (time.perf_counter() - start))
                ms = statistics.median(times)
                row.append(ms)
                worst_any = max(worst_any, ms)
                if part == "kept":
                    worst_default = max(worst_default, ms)
            print(f"{k:>4}  " + "".join(f"{v:>10.0f}{'' if v <= TARGET_MS else ' !':<3}" for v in row))
    verdict = "PASS" if worst_default <= TARGET_MS else "MISS"
    print(f"\nworst, default tab (Kept tokens): {worst_default:.0f} ms -> {verdict} (target {TARGET_MS:.0f} ms)")
    print(f"worst, any tab: {worst_any:.0f} ms -> {'PASS' if worst_any <= TARGET_MS else 'MISS'}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
