"""PruneSID before the language model, FastV inside it, and both: fidelity and prefill cost against
total compression for one picture (or clip), with each variant's token schedule.

    python inllm_study.py assets/cat.jpg --model demo/dinov2-small-llava --budgets 192,128,64,32,16 --out study/

Writes ``study.json`` (every variant: image tokens per decoder layer, total compression, estimated
prefill FLOPs and measured prefill time relative to no pruning, first-token KL), ``study.csv`` and
``study.png``, and prints the table. The same study runs in the app (Compare → Inside the LLM) and,
over a folder, in ``report.py --methods prunesid,fastv,prunesid+fastv,prunesid+pyramiddrop``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

COLUMNS = ["variant", "in_llm", "mean_image_tokens", "compression", "prefill_gflops", "flops_vs_full", "prefill_ms",
           "time_vs_full", "first_token_kl", "first_token_agrees"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("media", type=Path, help="an image or a video")
    parser.add_argument("--model", default=None, help="hub id, folder or demo id (default: $PRUNESID_MODEL, else the offline photo-features demo)")
    parser.add_argument("--question", default="Describe the picture in one sentence.")
    parser.add_argument("--budgets", default="192,128,64,32,16", help="PruneSID budgets per view")
    parser.add_argument("--repeats", type=int, default=3, help="prefills per variant at least (more while they take under a second in all; the median is reported)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("inllm-study"))
    args = parser.parse_args(argv)
    from PIL import Image

    from prunesid_report.report import load_item
    from prunesid_vlm.combination import combination_study
    from prunesid_vlm.pipeline import check_budget, load_pipeline, offline_photos_default
    from viz import figure_to_array
    from viz.combination import plot_combination

    try:
        budgets = sorted({check_budget(b.strip()) for b in args.budgets.split(",") if b.strip()}, reverse=True)
        if not args.media.is_file():
            raise ValueError(f"{args.media} is not a file")
        images, _ = load_item(args.media)
        pipe = load_pipeline(args.model or os.environ.get("PRUNESID_MODEL") or offline_photos_default(), device=args.device)
        study = combination_study(pipe, images, args.question, budgets, repeats=args.repeats)
    except ValueError as err:
        print(f"inllm_study: {err}", file=sys.stderr)
        return 2
    rows = study.rows()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(
        {"model": pipe.model_id, "device": pipe.device, "media": str(args.media), "question": study.question,
         "num_layers": study.num_layers, "repeats": study.repeats, "meaning": pipe.meaning, "rows": rows}, indent=2))
    with (args.out / "study.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS + ["image_tokens_per_layer"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "image_tokens_per_layer": " ".join(map(str, r["image_tokens_per_layer"]))}
                         for r in rows)
    figure = plot_combination(rows, title=f"{args.media.name}: before and inside the language model, {pipe.model_id}")
    Image.fromarray(figure_to_array(figure)).save(args.out / "study.png")
    print(f"{pipe.model_id} ({study.num_layers} decoder layers, {pipe.device}), medians of {study.repeats} prefills")
    print(f"{'variant':32} {'compr.':>7} {'FLOPs':>6} {'time':>6} {'KL':>9}  first token")
    for r in rows:
        print(f"{r['variant']:32} {r['compression']:6.1f}x {r['flops_vs_full']:6.3f} {r['time_vs_full']:6.3f} "
              f"{r['first_token_kl']:9.5f}  {'same' if r['first_token_agrees'] else 'changed'}")
    if pipe.meaning:
        print(f"note: {pipe.meaning}")
    print(f"wrote {args.out}/study.json, study.csv, study.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
