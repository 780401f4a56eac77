"""Where the kept tokens sit: LLaVA's compact positions against their original ones, on the shapes world.

LLaVA-1.5 (and the paper's pruned prompts) hand the kept visual tokens over as a shorter run of
placeholders, so the language model sees them at consecutive positions whatever patches they came
from. This study asks the shapes model (``demo/shapes-llava``, trained on full token sets) the same
questions with PruneSID's kept tokens both ways, through the pipeline's ``positions`` option:
``"compact"`` (as published) and ``"original"`` (each kept patch at its place in the full prompt,
in their patches' order, the text after the picture too; CLS, which the full prompt does not
hold, first, at the first patch's).
Scored by the first answer token, as ``benchmarks/shapes_accuracy.py`` scores.

    python benchmarks/shapes_positions.py --scenes 150 --seed 2027 --budgets 4,64,192

Prints a Markdown table of accuracy (%) per budget, positions and question kind.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ("compact", "original")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=2027, help="scene seed (not a training seed: 0, 1, 2)")
    parser.add_argument("--budgets", default="4,64,192")
    parser.add_argument("--model", default="demo/shapes-llava")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]

    from prunesid_report.accuracy import scene_questions, score_scene
    from prunesid_vlm.pipeline import load_pipeline

    pipe = load_pipeline(args.model, device="cpu")
    right: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for scene, asked in scene_questions(args.seed, args.scenes):
        for positions in MODES:
            for row in score_scene(pipe, scene, asked, ["prunesid"], budgets, positions):
                name = "all tokens" if row["method"] == "full" else positions
                if row["method"] == "full" and positions != MODES[0]:
                    continue  # the full prompt is the same either way
                for kind in (row["kind"], "all"):
                    right[(row["budget"], name, kind)][0] += row["correct"]
                    right[(row["budget"], name, kind)][1] += 1
    kinds = ["all"] + sorted({k for _, _, k in right} - {"all"})
    print(f"{args.scenes} scenes of seed {args.seed}, {right[(0, 'all tokens', 'all')][1]} questions; "
          f"accuracy (%) of {pipe.model_id} with PruneSID's kept tokens")
    print("| K | positions | " + " | ".join(k.replace("_", " ") for k in kinds) + " |")
    print("|---|---|" + "---:|" * len(kinds))
    for budget, name in [(0, "all tokens")] + [(b, m) for b in budgets for m in MODES]:
        cells = [100 * right[(budget, name, k)][0] / right[(budget, name, k)][1] for k in kinds]
        print(f"| {budget or 'all'} | {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
