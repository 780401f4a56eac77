"""Accuracy against the token budget, per method, on the shapes world (a model that truly sees).

For every scene (drawn by :mod:`prunesid_vlm.shapes_world` from each ``--seeds`` seed; none of
them the training seed) one question of each kind that applies is asked; each registry method
keeps K tokens per picture (``--budgets``; K = 577 hands over every token) and the model answers.
An answer is right when its first token is the reference word: every answer of this world is
one word, one token of the model's vocabulary, so the first token *is* the greedy answer (the
script refuses a model for which that is not so). The first tokens of one picture's prompts are
scored in batched prefills (:meth:`Pipeline.first_token_logits`), the tower runs once per picture.

Figures, per method, budget and question kind: accuracy with the method's tokens, accuracy with
all tokens, and the **relative accuracy** pruned / full, as the paper reports it; each a mean over
the seeds with its spread (the standard deviation of the per-seed figures). ``--positions
original`` hands the kept tokens over at their places in the full prompt instead of LLaVA's
compact run (``Pipeline.answer``'s ``positions``).

    python benchmarks/shapes_accuracy.py --scenes 100 --seeds 2027,2028,2029 --out benchmarks/results/shapes

Writes ``answers.csv`` (one row per question, method and budget), ``summary.csv``,
``count_objects_answers.csv`` (how often each count was said and is right), ``table.md``
(the README's table) and ``accuracy.png``. ``--write-folder DIR`` instead writes the scenes of the
first seed as PNG files with ``questions.csv`` beside them: the fidelity report's input
(``python report.py DIR --model demo/shapes-llava``), which then scores answers against the
reference words as well.

What it does not say: these are pictures of flat shapes and a model trained on nothing else. It
shows what each method's tokens still carry of *where and what the objects are* for a model that
provably uses them; it does not measure any real model's accuracy on real pictures.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_BUDGETS = (4, 8, 16, 32, 64, 128, 192, 288, 577)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo/shapes-llava")
    parser.add_argument("--scenes", type=int, default=100, help="scenes per seed")
    parser.add_argument("--seeds", default="2027,2028,2029", help="scene seeds (none of them the training seed)")
    parser.add_argument("--methods", default="", help="registry names (default: every method)")
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shapes")
    parser.add_argument("--write-folder", type=Path, default=None)
    parser.add_argument("--positions", choices=("compact", "original"), default=None,
                        help="where pruned prompts put the kept tokens (default: the model's own way; LLaVA: "
                             "compact, as published). Methods that merge tokens do not run with 'original'")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.write_folder is not None:
        from prunesid_report.accuracy import write_folder

        print(f"{write_folder(args.write_folder, seeds[0], args.scenes)} questions written to {args.write_folder}")
        return 0

    from prunesid_eval.methods.registry import METHODS
    from prunesid_report.accuracy import answer_counts, markdown_table, plot, scene_questions, score_scene, summarise
    from prunesid_vlm.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or list(METHODS)
    budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    args.out.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.perf_counter()
    for seed in seeds:
        for index, (scene, asked) in enumerate(scene_questions(seed, args.scenes)):
            for row in score_scene(pipe, scene, asked, methods, budgets, args.positions):
                rows.append({"seed": seed, "scene": index, **row})
            if index % 10 == 9:
                print(f"seed {seed}: {index + 1}/{args.scenes} scenes, {time.perf_counter() - start:.0f} s", flush=True)
    with (args.out / "answers.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    with (args.out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    with (args.out / "count_objects_answers.csv").open("w", newline="") as handle:
        counts = answer_counts(rows, "count_objects")
        writer = csv.DictWriter(handle, fieldnames=list(counts[0]))
        writer.writeheader()
        writer.writerows(counts)
    table = markdown_table(summary, budgets)
    (args.out / "table.md").write_text(table)
    placed = pipe.check_positions(args.positions)
    plot(summary, args.out / "accuracy.png", f"{pipe.model_id}, kept tokens at {placed} positions")
    print(table)
    print(f"{len(rows)} answers in {time.perf_counter() - start:.0f} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
