"""Where the kept tokens sit: LLaVA's compacted positions against their original ones, on the shapes world.

LLaVA-1.5 (and the paper's pruned prompts) hand the kept visual tokens over as a shorter run of
placeholders, so the language model sees them at consecutive positions 0, 1, 2, ... whatever
patches they came from. This study asks the shapes model (``demo/shapes-llava``, trained on full
token sets) the same questions with PruneSID's kept tokens twice: at the compacted positions (the
pipeline's own path; checked equal to ``Pipeline.first_token_logits`` on the way), and with
``position_ids`` giving each kept patch the position it has in the full prompt (the text after the
picture keeps its full-prompt positions too; CLS, which the full prompt does not hold, takes the
first patch's). Scored by the first answer token, as ``benchmarks/shapes_accuracy.py`` scores.

    python benchmarks/shapes_positions.py --scenes 150 --seed 2027 --budgets 16,64,192

Prints a Markdown table of accuracy (%) per budget, positions and question kind. An experiment on
one small model; the app and the pipeline keep LLaVA's compacted positions, as published.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=2027, help="scene seed (not a training seed: 0 and 1)")
    parser.add_argument("--budgets", default="16,64,192")
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]

    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from prunesid_report.accuracy import answer_ids, scene_questions
    from prunesid_vlm.generation import resize_placeholders
    from prunesid_vlm.pipeline import load_pipeline
    from prunesid_vlm.registry import SHAPES_DEMO_ID

    pipe = load_pipeline(SHAPES_DEMO_ID, device="cpu")
    image_token = pipe.adapter.image_token_id
    patches = pipe.num_patches

    @torch.inference_mode()
    def first_token(ids: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> int:
        visual = BaseModelOutputWithPooling(pooler_output=[pipe.adapter.project(rows)])
        out = pipe.model(input_ids=ids, position_ids=positions[None], mm_encoder_outputs={"image": visual},
                         logits_to_keep=1)
        return pipe.first_token(out.logits[0, -1].float())

    right: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for scene, asked in scene_questions(args.seed, args.scenes):
        feats = pipe.encode([scene.image])
        states = feats.hidden_states[0]  # [1 + N, D], CLS first
        wanted = answer_ids(pipe, {q.answer for q in asked})
        selections = {b: pipe.select(feats, b) for b in budgets}
        for q in asked:
            full_ids = pipe.prompt_inputs([scene.image], q.text)["input_ids"]
            start = int((full_ids[0] == image_token).nonzero()[0])  # the first placeholder
            for budget, selection in selections.items():
                keep = selection.keep_row(0)  # rows of `states`
                ids = resize_placeholders(full_ids, image_token, [patches], [len(keep)])
                length, kept = ids.shape[1], len(keep)
                compacted = torch.arange(length)
                original = torch.cat([torch.arange(start), start + (keep - 1).clamp(min=0),
                                      start + patches + torch.arange(length - start - kept)])
                said = {name: first_token(ids, states[keep], positions)
                        for name, positions in (("compacted", compacted), ("original", original))}
                if q is asked[0]:  # the compacted path is the pipeline's own
                    ours = pipe.first_token(pipe.first_token_logits([scene.image], q.text, [selection])[0])
                    assert said["compacted"] == ours, "the compacted prompt differs from the pipeline's"
                for name, token in said.items():
                    for kind in (q.kind, "all"):
                        right[(budget, name, kind)][0] += int(token == wanted[q.answer])
                        right[(budget, name, kind)][1] += 1
    kinds = ["all"] + sorted({k for _, _, k in right} - {"all"})
    print(f"{args.scenes} scenes of seed {args.seed}, {right[(budgets[0], 'compacted', 'all')][1]} questions; "
          "accuracy (%) with PruneSID's kept tokens")
    print("| K | positions | " + " | ".join(k.replace("_", " ") for k in kinds) + " |")
    print("|---|---|" + "---:|" * len(kinds))
    for budget in budgets:
        for name in ("compacted", "original"):
            cells = [100 * right[(budget, name, k)][0] / right[(budget, name, k)][1] for k in kinds]
            print(f"| {budget} | {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
