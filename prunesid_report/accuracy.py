"""Accuracy against the token budget on the shapes world: the scoring behind
``benchmarks/shapes_accuracy.py`` (see there for what it measures and what it does not say).

An answer is right when its first token is the reference word: every answer of the world is one
word, one token of a shapes model's vocabulary, so the first token *is* the greedy answer
(:func:`answer_ids` refuses a model for which that is not so). The first tokens of one picture's
prompts are scored in batched prefills, the tower runs once per picture, and a selection that does
not read the question is made once per picture.
"""
from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

ALL = "all"


def scene_questions(seed: int, count: int):
    """``count`` scenes of ``seed`` and, per scene, one question of each kind that applies."""
    import numpy as np

    from prunesid_vlm.shapes_world import draw_scenes, one_per_kind, questions

    rng = np.random.default_rng([seed, 1])  # the questions' own stream: scenes stay those of draw_scenes(seed)
    return [(scene, one_per_kind(questions(scene, rng), rng)) for scene in draw_scenes(seed, count)]


def answer_ids(pipe, words: set[str]) -> dict[str, int]:
    """Each answer word's single token id, or a ValueError naming the words that are not one token."""
    tokenizer = pipe.processor.tokenizer
    ids = {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in sorted(words)}
    split = [w for w, i in ids.items() if len(i) != 1]
    if split:
        raise ValueError(f"{pipe.model_id} does not answer {', '.join(split)} in one token: first-token scoring "
                         "would not be the greedy answer. Use a model trained on the shapes world.")
    return {w: i[0] for w, i in ids.items()}


def score_scene(pipe, scene, asked, methods: list[str], budgets: list[int], positions: str | None = None
                ) -> list[dict]:
    """One row per question and (method, budget), plus the all-tokens row (method ``full``).

    ``positions``: where the pruned prompts put the kept tokens (``pipeline.POSITION_MODES``; None:
    the model's own way). A selection that hands over merged tokens has no original positions: with
    ``"original"`` its method is left out."""
    from prunesid_eval.methods.registry import get_method

    images = [scene.image]
    feats = pipe.encode(images)
    refused = pipe.unavailable_methods(feats)
    rows = []
    ids = answer_ids(pipe, {q.answer for q in asked})
    runnable = [m for m in methods if m not in refused]
    by_question = {m for m in runnable if get_method(m).needs_question}
    # Selections that do not read the question are made once per picture.
    shared = {(m, b): pipe.select(feats, b, method=m) for m in runnable if m not in by_question for b in budgets}
    positions = pipe.check_positions(positions)
    for q in asked:
        points = [("full", 0, None)]  # every token
        for budget in budgets:  # budget-major: a batch of prefills holds prompts of one length
            for method in runnable:
                sel = (pipe.select(feats, budget, method=method, question=q.text) if method in by_question
                       else shared[(method, budget)])
                try:
                    pipe.check_positions(positions, sel)  # the pipeline's rule: merged tokens have no original place
                except ValueError:
                    continue
                points.append((method, budget, sel))
        logits = pipe.first_token_logits(images, q.text, [sel for _, _, sel in points], positions=positions)
        for (method, budget, sel), row in zip(points, logits):
            predicted = pipe.first_token(row)  # greedy decoding's rule (suppressed tokens never win)
            rows.append({"kind": q.kind, "question": q.text, "answer": q.answer, "method": method, "budget": budget,
                         "positions": positions,
                         "tokens": pipe.token_counts(feats, sel).total,
                         "predicted": pipe.processor.tokenizer.decode([predicted]).strip(),
                         "correct": int(predicted == ids[q.answer])})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (method, budget, kind or ``all``): accuracy, full accuracy and relative accuracy, mean
    and spread over seeds."""
    per_seed: dict[tuple, list[int]] = defaultdict(list)
    for r in rows:
        for kind in (r["kind"], ALL):
            per_seed[(r["seed"], r["method"], r["budget"], kind)].append(r["correct"])
    full = {(seed, kind): statistics.fmean(v) for (seed, method, _, kind), v in per_seed.items() if method == "full"}
    placed = ",".join(sorted({str(r.get("positions", "")) for r in rows}))  # one run, one way
    tokens: dict[tuple, list[int]] = defaultdict(list)
    for r in rows:
        tokens[(r["method"], r["budget"])].append(r["tokens"])
    grouped: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for (seed, method, budget, kind), v in per_seed.items():
        if method == "full":
            continue
        grouped[(method, budget, kind)].append((statistics.fmean(v), full[(seed, kind)]))
    out = []
    for (method, budget, kind), pairs in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        acc = [a for a, _ in pairs]
        ref = [f for _, f in pairs]
        rel = [a / f for a, f in pairs if f > 0]
        out.append({"method": method, "budget": budget, "kind": kind, "positions": placed, "seeds": len(pairs),
                    "mean_tokens": statistics.fmean(tokens[(method, budget)]),
                    "full_tokens": statistics.fmean(tokens[("full", 0)]) if tokens[("full", 0)] else float("nan"),
                    "accuracy": statistics.fmean(acc), "accuracy_sd": _sd(acc),
                    "full_accuracy": statistics.fmean(ref), "full_accuracy_sd": _sd(ref),
                    "relative": statistics.fmean(rel) if rel else float("nan"), "relative_sd": _sd(rel)})
    return out


def answer_counts(rows: list[dict], kind: str) -> list[dict]:
    """Per (method, budget) and answer word of ``kind``'s questions: how often the model said it and
    how often it is the right one (what a skewed count, e.g. every picture called crowded, looks like)."""
    said: dict[tuple, int] = defaultdict(int)
    right: dict[tuple, int] = defaultdict(int)
    for r in rows:
        if r["kind"] == kind:
            said[(r["method"], r["budget"], r["predicted"])] += 1
            right[(r["method"], r["budget"], r["answer"])] += 1
    keys = sorted(set(said) | set(right), key=lambda k: (k[0], int(k[1]), k[2]))
    return [{"method": m, "budget": b, "kind": kind, "answer": w, "said": said[(m, b, w)], "right": right[(m, b, w)]}
            for m, b, w in keys]


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(summary: list[dict], budgets: list[int]) -> str:
    """Relative accuracy (pruned / full, %) per method and budget over all kinds, ± spread over seeds;
    a cell names the mean number of visual tokens handed over where that is not K."""
    cells = {(s["method"], s["budget"]): s for s in summary if s["kind"] == ALL}
    methods = sorted({m for m, _ in cells}, key=lambda m: (m != "prunesid", m != "prunesid-dyn", m))
    full = next(iter(cells.values()))
    lines = [f"All tokens: {100 * full['full_accuracy']:.1f} % ± {100 * full['full_accuracy_sd']:.1f} right "
             f"(mean ± sd over {full['seeds']} seeds).", "",
             "| method | " + " | ".join(f"K = {b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for method in methods:
        row = []
        for b in budgets:
            s = cells.get((method, b))
            if s is None:
                row.append("—")
                continue
            cell = f"{100 * s['relative']:.1f} ± {100 * s['relative_sd']:.1f}"
            tokens, every = s["mean_tokens"], s["full_tokens"]
            # the tokens really handed over, where they are neither K nor, at K = 1 + N, all N of them
            # (the dynamic ratio, merging methods); N is what the all-token answers were handed
            plain = abs(tokens - b) < 0.5 or (abs(b - 1 - every) < 0.5 and abs(tokens - every) < 0.5)
            row.append(cell if plain else f"{cell} ({tokens:.0f} tok.)")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [ALL] + sorted({s["kind"] for s in summary} - {ALL})
    methods = sorted({s["method"] for s in summary}, key=lambda m: (not m.startswith("prunesid"), m))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    columns = 4  # two rows of panels, the legend in a panel of its own: nothing drawn over a curve
    rows = -(-(len(kinds) + 1) // columns)
    fig, grid = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows), sharey=True, squeeze=False)
    axes = list(grid.flat)
    for ax, kind in zip(axes, kinds):
        for method in methods:
            pts = sorted((s["mean_tokens"], s["relative"], s["relative_sd"]) for s in summary
                         if s["method"] == method and s["kind"] == kind)
            if not pts:
                continue
            x, y, e = zip(*pts)
            style = dict(lw=2.4, zorder=3) if method.startswith("prunesid") else dict(lw=1.1, alpha=0.85)
            ax.errorbar(x, [100 * v for v in y], yerr=[100 * v for v in e], label=method, capsize=2, marker=".",
                        color=colours[method], **style)
        ax.set_xscale("log")
        ax.set_title("all questions" if kind == ALL else kind.replace("_", " "), fontsize=10)
        ax.axhline(100, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    for ax in axes[len(kinds) - columns if len(kinds) > columns else 0:len(kinds)]:
        ax.set_xlabel("visual tokens handed over (mean)")
    for row in grid:
        row[0].set_ylabel("relative accuracy (%)")
    legend = axes[len(kinds)]
    legend.axis("off")
    legend.legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=9, frameon=False,
                  title="method (pruned / all tokens)")
    for ax in axes[len(kinds) + 1:]:
        ax.axis("off")
    fig.suptitle(f"{model} on the shapes world: accuracy kept against tokens (mean ± sd over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_folder(folder: Path, seed: int, count: int) -> int:
    """Scenes of ``seed`` as PNGs and ``questions.csv`` (file, question, answer, kind): the report's input."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    with (folder / "questions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "question", "answer", "kind"])
        for index, (scene, asked) in enumerate(scene_questions(seed, count)):
            name = f"scene_{seed}_{index:04d}.png"
            scene.image.save(folder / name)
            for q in asked:
                writer.writerow([name, q.text, q.answer, q.kind])
                written += 1
    return written
