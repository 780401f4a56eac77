"""The fidelity report on a folder of images and videos: several methods and budgets, per-item
figures in CSV and JSON, and plots; resumable.

For every picture (or clip: its sampled frames, as the app takes them) and every (method, budget)
point: the answer with all visual tokens (once per item) and with the method's, greedy; whether
the answers are the same and the first answer token agrees; the first-token KL (nats); the visual
tokens handed over; and each run's prefill time (one run each, on this machine: indicative, not a
benchmark). Items already in ``results.jsonl`` under the same settings are skipped, so an
interrupted run continues where it stopped.

**Questions with reference answers.** A ``questions.csv`` in the folder (columns ``file``,
``question``, ``answer``, optional ``kind``; several rows may name one file) replaces the one
question for the files it names: each row is an item of its own, and every answer, with all tokens
and with each method's, is also scored against the reference (lowercase, trailing punctuation
dropped, the whole answer or its first word). The summary then adds accuracy, the accuracy with
all tokens and the relative accuracy (pruned / all tokens) per method and budget, as papers report
it. ``benchmarks/shapes_accuracy.py --write-folder`` writes such a folder of shapes scenes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from prunesid_eval.answers import answer_matches

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv")
MAX_FRAMES = 6
QUESTIONS_FILE = "questions.csv"


@dataclass(frozen=True)
class ReportSettings:
    """What a report computes; its hash decides which earlier results can be reused."""

    model: str
    methods: tuple[str, ...]
    budgets: tuple[int, ...]
    question: str
    max_new_tokens: int = 16

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.__dict__, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass
class ItemResult:
    """One picture or clip: its figures per (method, budget)."""

    item: str
    kind: str
    settings: str
    full_answer: str
    full_tokens: int
    full_prefill_s: float
    points: list[dict] = field(default_factory=list)
    question: str = ""
    """The question asked (``questions.csv``'s, else the settings')."""
    reference: str | None = None
    """The reference answer from ``questions.csv``, if any."""
    question_kind: str = ""
    full_correct: bool | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def media_files(folder: Path) -> list[Path]:
    """The images and videos of ``folder`` (not its subfolders), by name."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no image or video ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
    return files


@dataclass(frozen=True)
class Asked:
    """One row of ``questions.csv``: a question about one file and its reference answer."""

    question: str
    answer: str
    kind: str = ""


def load_questions(folder: Path) -> dict[str, list[Asked]]:
    """``questions.csv`` of ``folder`` by file name (empty without one); a ValueError names a bad row."""
    from prunesid_vlm.pipeline import check_question

    path = folder / QUESTIONS_FILE
    if not path.is_file():
        return {}
    out: dict[str, list[Asked]] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "question", "answer"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path.name} needs the columns file, question and answer; {', '.join(sorted(missing))} "
                             "missing")
        for line, row in enumerate(reader, start=2):
            name, answer = (row.get("file") or "").strip(), (row.get("answer") or "").strip()
            if not (folder / name).is_file() or not name:
                raise ValueError(f"{path.name}, line {line}: no file {name!r} in {folder}")
            if not answer:
                raise ValueError(f"{path.name}, line {line}: the reference answer is empty")
            out.setdefault(name, []).append(Asked(check_question(row.get("question")), answer,
                                                  (row.get("kind") or "").strip()))
    return out


def item_id(path: Path) -> str:
    """Name, size and modification time: an edited file is measured again."""
    stat = path.stat()
    return f"{path.name}|{stat.st_size}|{int(stat.st_mtime)}"


def load_item(path: Path):
    """``(images, kind)``: one picture, or a clip's sampled frames (the app's media rules)."""
    from prunesid_vlm.pipeline import Frames
    from prunesid_vlm.media import load_image, load_video  # the app's decoding rules (no Gradio in that module)

    if path.suffix.lower() in VIDEO_SUFFIXES:
        frames, _, _, _ = load_video(path, max_frames=MAX_FRAMES)
        return Frames(frames), "video"
    image, _ = load_image(path)
    return [image], "image"


def measure(pipe, images, settings: ReportSettings, item: str, kind: str, asked: Asked | None = None) -> ItemResult:
    """Every (method, budget) point of one item (``asked``: its own question and reference answer). A
    method may carry an in-LLM stage (``prunesid+fastv``, ``prunesid+pyramiddrop``) or be FastV alone
    (``fastv``): see :mod:`prunesid_vlm.combination`."""
    from prunesid_vlm.combination import answer_figures, parse_variant, variant_run

    question = settings.question if asked is None else asked.question
    feats = pipe.encode(images)
    full = pipe.answer(images, question, max_new_tokens=settings.max_new_tokens)
    result = ItemResult(item=item, kind=kind, settings=settings.key(), full_answer=full.text,
                        full_tokens=full.visual_tokens, full_prefill_s=full.prefill_s, question=question,
                        reference=None if asked is None else asked.answer,
                        question_kind="" if asked is None else asked.kind,
                        full_correct=None if asked is None else answer_matches(full.text, asked.answer))
    refused = pipe.unavailable_methods(feats)  # the model's reasons: CDPruner needs CLIP's text side, ...
    staged = any(parse_variant(m)[1] for m in settings.methods)
    num_layers = pipe.in_llm_layers() if staged else 0  # per-layer figures for every point, staged or not
    made: dict = {}  # selections by (method, budget), shared by that method's variants
    for method in settings.methods:
        base, stage = parse_variant(method)
        for budget in settings.budgets:
            # A registry method this model has no inputs for, or a stage its language model does not run.
            reason = (refused.get(base) if base is not None else None) or (
                pipe.in_llm_limits or f"{stage} does not run on this model"
                if stage is not None and stage not in pipe.in_llm_styles else None)
            if reason:
                result.points.append({"method": method, "budget": budget, "available": False, "reason": reason})
                continue
            selection, schedule = variant_run(pipe, feats, method, budget, num_layers, question, made)
            pruned = pipe.answer(images, question, selection, max_new_tokens=settings.max_new_tokens,
                                 in_llm=schedule if stage else None)
            result.points.append({
                "method": method, "budget": budget, "available": True, "tokens": pruned.visual_tokens,
                "answer": pruned.text, "prefill_s": pruned.prefill_s,
                "keep": None if selection is None else [selection.keep_row(v).tolist()
                                                        for v in range(selection.batch_size)],
                **answer_figures(pipe, feats, full, pruned, num_layers),
                **({} if asked is None else {"correct": answer_matches(pruned.text, asked.answer)})})
    return result


def run_report(folder: Path, out: Path, settings: ReportSettings, *, pipe=None,
               progress: Callable[[Iterable], Iterable] | None = None) -> list[ItemResult]:
    """Measure every item of ``folder`` not yet in ``out/results.jsonl`` under ``settings``; then
    write the CSV, the summary and the plots from all results. Returns every item's result."""
    from prunesid_vlm.pipeline import load_pipeline

    out.mkdir(parents=True, exist_ok=True)
    log = out / "results.jsonl"
    done = {r.item: r for r in read_results(log) if r.settings == settings.key()}
    files = media_files(folder)
    asked = load_questions(folder)
    # One item per file, or per question of questions.csv about it.
    items = [(path, key, a) for path in files for key, a in (
        [(f"{item_id(path)}|{a.question}", a) for a in asked[path.name]] if path.name in asked
        else [(item_id(path), None)])]
    todo = [(path, key, a) for path, key, a in items if key not in done]
    if todo:
        pipe = pipe or load_pipeline(settings.model)
        if pipe.answers == "none":
            raise ValueError(f"{pipe.model_id} is a vision tower alone: the report compares answers, pick a model "
                             "that answers (a demo model offline).")
        bar = progress(todo) if progress else todo
        for path, key, question in bar:
            images, kind = load_item(path)
            result = measure(pipe, images, settings, key, kind, question)
            with log.open("a") as handle:  # one line per finished item: an interruption loses at most one
                handle.write(result.to_json() + "\n")
            done[result.item] = result
    results = [done[key] for _, key, _ in items]
    write_outputs(results, settings, out, folder, pipe)
    return results


def read_results(log: Path) -> list[ItemResult]:
    """Earlier results (a line cut short by an interruption is ignored)."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(ItemResult(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


def summarise(results: list[ItemResult], settings: ReportSettings) -> dict:
    """Per method and budget: mean first-token KL, answer and first-token agreement rates, mean tokens."""
    table = {}
    for method in settings.methods:
        rows = {}
        for budget in settings.budgets:
            points = [p for r in results for p in r.points
                      if p["method"] == method and p["budget"] == budget and p.get("available")]
            if not points:
                rows[str(budget)] = None
                continue
            rows[str(budget)] = {
                **_accuracy(results, method, budget),
                "items": len(points), "mean_first_token_kl": float(np.mean([p["first_token_kl"] for p in points])),
                "same_answer_rate": float(np.mean([p["same_answer"] for p in points])),
                "first_token_agreement": float(np.mean([p["first_token_agrees"] for p in points])),
                "mean_tokens": float(np.mean([p["tokens"] for p in points]))}
            if all("compression" in p for p in points):
                rows[str(budget)].update(mean_compression=float(np.mean([p["compression"] for p in points])),
                                         mean_flops_vs_full=float(np.mean([p["flops_vs_full"] for p in points])))
        table[method] = rows
    return {"settings": settings.__dict__, "items": len(results), "per_method": table,
            "note": ("accuracy, full_accuracy, relative_accuracy (where questions.csv gives reference answers): the "
                     "share of answers that say the reference with the method's tokens, with all tokens, and their "
                     "ratio. First-token KL in nats (0 = pruning did not move the model's first answer token); mean_tokens: "
                     "the visual tokens the model received, mean over items (PruneSID-Dyn's differ from the budget); "
                     "prefill times are single runs on this machine.")}


def _accuracy(results: list[ItemResult], method: str, budget: int) -> dict:
    """Accuracy, accuracy with all tokens and relative accuracy over the items with a reference answer
    that ran at (method, budget); empty when none has one."""
    pairs = [(p["correct"], r.full_correct) for r in results if r.reference is not None for p in r.points
             if p["method"] == method and p["budget"] == budget and p.get("available") and "correct" in p]
    if not pairs:
        return {}
    accuracy, full = float(np.mean([c for c, _ in pairs])), float(np.mean([f for _, f in pairs]))
    return {"scored_items": len(pairs), "accuracy": accuracy, "full_accuracy": full,
            "relative_accuracy": accuracy / full if full > 0 else None}


CSV_COLUMNS = ("item", "kind", "method", "budget", "available", "unavailable_reason", "question", "full_answer",
               "answer", "tokens", "full_tokens", "first_token_kl", "first_token_agrees", "same_answer", "prefill_s",
               "full_prefill_s", "compression", "flops_vs_full", "reference", "question_kind", "full_correct",
               "correct")
"""``results.csv``, one row per item and (method, budget): the question, both answers (``answer``: with
the method's tokens), the visual tokens each prompt held and the figures; ``unavailable_reason`` says
why a point did not run on the model."""


def write_outputs(results: list[ItemResult], settings: ReportSettings, out: Path, folder: Path, pipe=None) -> None:
    """``results.csv``, ``summary.json``, ``fidelity.png`` and ``worst.png``."""
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            for p in r.points:
                writer.writerow([r.item.split("|")[0], r.kind, p["method"], p["budget"], p.get("available"),
                                 p.get("reason", ""), r.question or settings.question, r.full_answer, p.get("answer"),
                                 p.get("tokens"), r.full_tokens, p.get("first_token_kl"), p.get("first_token_agrees"),
                                 p.get("same_answer"), p.get("prefill_s"), r.full_prefill_s, p.get("compression"),
                                 p.get("flops_vs_full"), r.reference, r.question_kind, r.full_correct,
                                 p.get("correct")])
    summary = summarise(results, settings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_fidelity(summary, settings, out / "fidelity.png")
    plot_compression(results, settings, out / "combination.png")
    if pipe is not None:
        plot_worst(results, settings, folder, out / "worst.png", pipe)


def plot_fidelity(summary: dict, settings: ReportSettings, path: Path) -> None:
    """``fidelity.png``: :func:`fidelity_figure` (nothing when no point was measured)."""
    from PIL import Image

    from viz import figure_to_array

    fig = fidelity_figure(summary, settings)
    if fig is not None:
        Image.fromarray(figure_to_array(fig)).save(path)


def fidelity_figure(summary: dict, settings: ReportSettings):
    """Mean first-token KL (top) and the share of unchanged answers (bottom) against the mean visual
    tokens handed to the language model — each method at its own count, not at its budget K
    (PruneSID-Dyn scales K by each image's φ; Qwen's K′ and LLaVA-NeXT's crops differ from K too).
    Variants with an in-LLM stage are left out: they hand over K and prune inside the model, and are
    drawn against total compression in ``combination.png``. None when no such point was measured."""
    from prunesid_vlm.combination import parse_variant
    from viz.compare import plot_budget_sweep

    kl, same, tokens, staged = {}, {}, {}, []
    for method, rows in summary["per_method"].items():
        values = [rows[str(b)] for b in settings.budgets]
        if all(v is None for v in values):
            continue
        base, stage = parse_variant(method)
        if base is None or stage is not None:
            staged.append(method)
            continue
        kl[method] = [math.nan if v is None else v["mean_first_token_kl"] for v in values]
        same[method] = [math.nan if v is None else v["same_answer_rate"] for v in values]
        # A missing point (NaN) is not drawn; its x only has to be a positive number.
        tokens[method] = [float(b) if v is None else v["mean_tokens"] for b, v in zip(settings.budgets, values)]
    if not kl:
        return None
    moved = [m for m in kl if tokens[m] != [float(b) for b in settings.budgets]]
    note = (f"Each point: a method at one budget K ({', '.join(map(str, settings.budgets))}), drawn at the mean over "
            f"the {summary['items']} items of the visual tokens the model received (not at K).")
    for m in moved[:4]:
        note += f"\n{m}: {', '.join(f'{t:.4g}' for t in tokens[m])} tokens on average."
    if len(moved) > 4:
        note += f"\n… and {len(moved) - 4} more off their K (summary.json: mean_tokens)."
    if staged:
        note += f"\nNot drawn here: {', '.join(staged)} (pruned inside the LLM: see combination.png)."
    fig = plot_budget_sweep(list(settings.budgets), kl, ylabel="mean first-token KL (nats)",
                            title=f"Fidelity against tokens handed over\n{summary['items']} items, {settings.model}",
                            ax_extra=("share of answers unchanged", same), x=tokens,
                            xlabel="mean visual tokens handed to the LLM (log scale)", note=note)
    return fig


def combination_rows(results: list[ItemResult], settings: ReportSettings) -> list[dict]:
    """Means over items per (method, budget) of the points with per-layer figures, as the rows
    :func:`viz.combination.plot_combination` takes (the unpruned reference first); empty without
    in-LLM variants. No time: the report's prefills are single runs, staged ones through the per-layer
    loop and the others through ``generate`` (``inllm_study.py`` times every variant alike)."""
    rows = []
    for method in settings.methods:
        for budget in settings.budgets:
            points = [(r, p) for r in results for p in r.points if p["method"] == method and p["budget"] == budget
                      and p.get("available") and "compression" in p]
            if not points:
                continue
            layers = np.mean([p["image_tokens_per_layer"] for _, p in points], axis=0)
            rows.append({"kind": method, "kind_label": method, "budget": budget,
                         "compression": float(np.mean([p["compression"] for _, p in points])),
                         "first_token_kl": float(np.mean([p["first_token_kl"] for _, p in points])),
                         "first_token_agrees": float(np.mean([p["first_token_agrees"] for _, p in points])) >= 0.5,
                         "flops_vs_full": float(np.mean([p["flops_vs_full"] for _, p in points])),
                         "time_vs_full": None,  # single runs through different loops: not comparable
                         "image_tokens_per_layer": [round(float(v), 1) for v in layers]})
    if not rows:
        return []
    layers = len(rows[0]["image_tokens_per_layer"])
    full = float(np.mean([r.full_tokens for r in results]))
    return [{"kind": "full", "kind_label": "no pruning", "budget": None, "compression": 1.0, "first_token_kl": 0.0,
             "first_token_agrees": True, "flops_vs_full": 1.0, "time_vs_full": 1.0,
             "image_tokens_per_layer": [full] * layers}, *rows]


def plot_compression(results: list[ItemResult], settings: ReportSettings, path: Path) -> None:
    """With in-LLM variants: mean fidelity and prefill cost against total compression, and the mean
    token schedule at the budget nearest 64 (``combination.png``)."""
    from PIL import Image

    from viz import figure_to_array
    from viz.combination import plot_combination

    rows = combination_rows(results, settings)
    if rows:
        fig = plot_combination(rows, title=f"Before and inside the language model, mean over {len(results)} items, "
                                           f"{settings.model}")
        Image.fromarray(figure_to_array(fig)).save(path)


def plot_worst(results: list[ItemResult], settings: ReportSettings, folder: Path, path: Path, pipe,
               count: int = 6) -> None:
    """The items PruneSID's smallest budget moves most (largest first-token KL), with its kept tokens,
    under a caption saying what the sheet shows; each tile names its item, the tokens handed over
    and its KL."""
    import viz
    from PIL import Image

    method = "prunesid" if "prunesid" in settings.methods else settings.methods[0]
    budget = min(settings.budgets)
    scored = [(p["first_token_kl"], r, p) for r in results for p in r.points
              if p["method"] == method and p["budget"] == budget and p.get("available")]
    scored.sort(key=lambda t: -t[0])
    tiles, labels = [], []
    for kl, r, p in scored[:count]:
        images, _ = load_item(folder / r.item.split("|")[0])
        feats = pipe.encode(images)
        selection = _worst_selection(pipe, feats, method, budget, r.question or settings.question)
        pixels = pipe.view_pixels(images, feats)[0]
        if selection is None:
            tile = viz.as_rgb_uint8(pixels)
        else:
            tile = viz.draw_kept_tokens(pixels, selection, 0, size=336, grid_shape=feats.grid or pipe.grid,
                                        legend=False)
        tiles.append(tile)
        labels.append(worst_label(r.item.split("|")[0], p, kl))
    if tiles:
        sheet = viz.contact_sheet(tiles, labels, cols=3)
        Image.fromarray(viz.with_caption(sheet, worst_caption(method, budget, len(tiles), len(scored), settings.model))
                        ).save(path)


def _worst_selection(pipe, feats, method: str, budget: int, question: str):
    """The selection ``method`` hands the language model at ``budget`` (its pre-LLM part for a variant
    with an in-LLM stage), or None for FastV alone (every token enters)."""
    from prunesid_vlm.combination import parse_variant

    base, _ = parse_variant(method)
    return None if base is None else pipe.select(feats, budget, method=base, question=question)


def worst_label(name: str, point: dict, kl: float) -> str:
    """A tile's chip: ``"cat.jpg · 16 tokens · KL 0.003 · same answer"`` (the tokens the model received)."""
    return (f"{name} · {point['tokens']} tokens · KL {kl:.3f}"
            + (" · same answer" if point.get("same_answer") else " · answer changed"))


def worst_caption(method: str, budget: int, shown: int, items: int, model: str) -> str:
    """What ``worst.png`` shows."""
    return (f"The {shown} of {items} items that {method} at budget K = {budget} changes most ({model}): largest "
            f"first-token KL to the unpruned answer (nats). Outlined: the patches kept in the first view; each chip "
            f"names the item, the visual tokens the model received, the KL and whether the whole answer changed.")


