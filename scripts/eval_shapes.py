"""Accuracy of ``demo/shapes-llava`` on fresh shapes-world scenes, with all visual tokens and pruned.

    PYTHONPATH=. python scripts/eval_shapes.py --seed 2027 --scenes 150 --budgets 64 4

Everything goes through the project's public pipeline: ``load_pipeline("demo/shapes-llava")``,
``pipe.encode``, ``pipe.select(feats, K)`` (PruneSID) and ``pipe.answer(images, question,
selection)`` (``selection=None``: all 576 tokens). Each scene is asked one question of every kind
that applies to it (drawn with a generator seeded from ``--seed``; ``--all-questions`` asks them
all). Reports accuracy per kind and overall, and the relative accuracy pruned / full as the paper
does; writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from prunesid_vlm.shapes_world import KINDS, draw_scenes, one_per_kind, questions

TRAIN_SEED = 0
"""The training scenes' seed (``scripts/train_shapes.py --seed``): never evaluated on."""


def evaluate(pipe, seed: int, count: int, budgets: list[int], all_questions: bool = False, log=print) -> dict:
    """``{"full": {...}, "K=64": {...}, ...}``: per setting, accuracy per kind and overall, and counts."""
    if seed == TRAIN_SEED:
        raise ValueError("the training seed draws the training scenes: evaluate on another seed")
    scenes = draw_scenes(seed, count)
    qrng = np.random.default_rng([seed, 1])
    right: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    asked: dict[str, int] = defaultdict(int)
    examples = []
    start = time.perf_counter()
    for n, scene in enumerate(scenes):
        qs = questions(scene, qrng)
        qs = qs if all_questions else one_per_kind(qs, qrng)
        feats = pipe.encode([scene.image])
        settings = {"full": None} | {f"K={k}": pipe.select(feats, k) for k in budgets}
        for q in qs:
            asked[q.kind] += 1
            for name, selection in settings.items():
                said = pipe.answer([scene.image], q.text, selection, max_new_tokens=4).text
                right[name][q.kind] += said == q.answer
                if len(examples) < 40 and name == "full" and said != q.answer:
                    examples.append({"scene": n, "question": q.text, "expected": q.answer, "said": said})
        if n % 25 == 24:
            log(f"{n + 1}/{count} scenes  {time.perf_counter() - start:.0f} s", flush=True)
    total = sum(asked.values())
    out: dict = {"seed": seed, "scenes": count, "questions": total, "asked_per_kind": dict(asked),
                 "seconds": round(time.perf_counter() - start, 1), "wrong_full_examples": examples}
    for name in ["full"] + [f"K={k}" for k in budgets]:
        per_kind = {k: right[name][k] / asked[k] for k in KINDS if asked[k]}
        out[name] = {"overall": sum(right[name].values()) / total, "per_kind": per_kind}
    for k in budgets:
        out[f"K={k}"]["relative"] = out[f"K={k}"]["overall"] / max(out["full"]["overall"], 1e-9)
    return out


def table(result: dict, budgets: list[int]) -> str:
    names = ["full"] + [f"K={k}" for k in budgets]
    rows = ["| kind | asked | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for kind, n in result["asked_per_kind"].items():
        rows.append(f"| {kind} | {n} | " + " | ".join(f"{result[s]['per_kind'][kind]:.1%}" for s in names) + " |")
    rows.append(f"| **overall** | {result['questions']} | "
                + " | ".join(f"**{result[s]['overall']:.1%}**" for s in names) + " |")
    rows.append("| relative (pruned / full) | | 100% | "
                + " | ".join(f"{result[f'K={k}']['relative']:.1%}" for k in budgets) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2027, help="scenes' seed (not the training seed)")
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 4], help="PruneSID budgets K")
    parser.add_argument("--all-questions", action="store_true", help="every question of a scene, not one per kind")
    parser.add_argument("--model", default="demo/shapes-llava")
    parser.add_argument("--out", default="assets/shapes_llava/eval_seed2027.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    from prunesid_vlm.pipeline import load_pipeline

    pipe = load_pipeline(args.model, device="cpu")
    result = evaluate(pipe, args.seed, args.scenes, args.budgets, args.all_questions)
    result["model"] = args.model
    print(table(result, args.budgets))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
