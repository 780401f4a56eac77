"""Fidelity report on a folder of images and videos: how much each method and budget changes the
model's answers, per item, with plots. Resumable: run it again to continue.

    python report.py assets/ --out report/ --model demo/dinov2-small-llava \\
        --methods prunesid,visionzip,random --budgets 16,64,192

Writes ``results.jsonl`` (one line per finished item), ``results.csv`` (one row per item, method and
budget: the question, the answer with all visual tokens and with the method's, the tokens handed over,
the figures, and why a point did not run where it did not), ``summary.json``,
``fidelity.png`` (mean first-token KL and unchanged answers per method, each point drawn at the mean
visual tokens the model received — PruneSID-Dyn's own count, not its budget K) and ``worst.png`` (the
items PruneSID's smallest budget moves most, with its kept tokens, under a caption; each tile names
the tokens handed over and the KL).

With in-LLM variants (``--methods prunesid,fastv,prunesid+fastv,prunesid+pyramiddrop``) every point
also records the image tokens each decoder layer saw, the total compression and the prefill FLOPs
relative to no pruning (``summary.json``: mean_compression, mean_flops_vs_full).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _label(method: str | None, stage: str | None) -> str:
    return "+".join(part for part in (method, stage) if part)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, default=Path("report"))
    parser.add_argument("--model", default=None, help="hub id, folder or demo id (default: $PRUNESID_MODEL, else the offline photo-features demo)")
    parser.add_argument("--methods", default="prunesid,prunesid-dyn,visionzip,divprune,random",
                        help="registry names; a name+fastv or name+pyramiddrop adds pruning inside the language model "
                             "after it, and fastv alone is FastV keeping as many tokens as PruneSID's budget")
    parser.add_argument("--budgets", default="16,32,64,128,192")
    parser.add_argument("--question", default="Describe the picture in one sentence.")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    from prunesid_vlm.combination import parse_variant
    from prunesid_report.report import ReportSettings, run_report
    from prunesid_vlm.pipeline import check_budget, check_question, offline_photos_default

    try:
        methods = tuple(_label(*parse_variant(m)) for m in args.methods.split(",") if m.strip())
        budgets = tuple(sorted({check_budget(b.strip()) for b in args.budgets.split(",") if b.strip()}))
        settings = ReportSettings(model=args.model or os.environ.get("PRUNESID_MODEL") or offline_photos_default(),
                                  methods=methods, budgets=budgets, question=check_question(args.question),
                                  max_new_tokens=args.max_new_tokens)
        results = run_report(args.folder, args.out, settings, progress=lambda items: tqdm(items, desc="items"))
    except ValueError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(f"{len(results)} items; results in {args.out}/ (results.csv, summary.json, fidelity.png, worst.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
