"""The fidelity report on a folder (issue 16, item 4): per-item figures for every method and
budget, plots, and a run that continues where an interrupted one stopped."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from prunesid_report import report as R
from prunesid_vlm.inllm import stage_keeps

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture
def folder(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(ASSETS / name, media / name)
    (media / "notes.txt").write_text("not media")
    return media


def settings(pipe):
    return R.ReportSettings(model=pipe.model_id, methods=("prunesid", "random"), budgets=(16, 64), question="What?",
                            max_new_tokens=3)


def test_the_report_measures_every_point_and_draws(llava_pipeline, folder, tmp_path):
    out = tmp_path / "out"
    results = R.run_report(folder, out, settings(llava_pipeline), pipe=llava_pipeline)
    assert [r.item.split("|")[0] for r in results] == ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 * 2 * 2 and {r["method"] for r in rows} == {"prunesid", "random"}
    assert all(float(r["first_token_kl"]) >= 0 and r["tokens"] in ("16", "64") for r in rows)
    # The CSV carries the question and both answers, as the model gave them (issue 25).
    answers = {(r.item.split("|")[0], p["method"], p["budget"]): (r.full_answer, p["answer"])
               for r in results for p in r.points}
    for row in rows:
        assert row["question"] == "What?" and row["unavailable_reason"] == ""
        assert (row["full_answer"], row["answer"]) == answers[(row["item"], row["method"], int(row["budget"]))]
    assert any(row["answer"] for row in rows) and all(row["full_answer"] for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_method"]["prunesid"]["64"]["items"] == 3
    assert (out / "fidelity.png").stat().st_size > 10_000 and (out / "worst.png").stat().st_size > 10_000


def test_an_interrupted_report_continues_without_redoing_finished_items(llava_pipeline, folder, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def stop_after_one(items):
        for i, item in enumerate(items):
            if i == 1:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        R.run_report(folder, out, settings(llava_pipeline), pipe=llava_pipeline, progress=stop_after_one)
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    measured = []
    real = R.measure
    monkeypatch.setattr(R, "measure", lambda pipe, images, s, item, kind, *asked: measured.append(item) or
                        real(pipe, images, s, item, kind, *asked))
    results = R.run_report(folder, out, settings(llava_pipeline), pipe=llava_pipeline)
    assert len(results) == 3 and [m.split("|")[0] for m in measured] == ["coffee.jpg", "rocket.jpg"]
    # Other settings do not reuse these results.
    other = R.ReportSettings(model=llava_pipeline.model_id, methods=("prunesid",), budgets=(32,), question="What?")
    measured.clear()
    R.run_report(folder, tmp_path / "out", other, pipe=llava_pipeline)
    assert len(measured) == 3


def test_bad_folders_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        R.media_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image or video"):
        R.media_files(tmp_path)


def test_the_command_runs_on_a_folder(llava_pipeline, folder, tmp_path, monkeypatch):
    import report

    monkeypatch.setattr("prunesid_vlm.pipeline.load_pipeline", lambda *a, **k: llava_pipeline)
    assert report.main([str(folder), "--out", str(tmp_path / "cli"), "--methods", "prunesid", "--budgets", "32",
                        "--model", llava_pipeline.model_id, "--max-new-tokens", "2"]) == 0
    assert (tmp_path / "cli" / "results.csv").exists()
    assert report.main([str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x")]) == 2


def test_in_llm_variants_in_the_report(deep_llava_pipeline, folder, tmp_path):
    """PruneSID alone, FastV alone and the combinations on an 8-layer replica: per-layer token
    counts per point, compression and FLOPs in the summary, and the compression plot."""
    pipe = deep_llava_pipeline
    chosen = R.ReportSettings(model=pipe.model_id, methods=("prunesid", "fastv", "prunesid+fastv",
                                                            "prunesid+pyramiddrop"),
                              budgets=(64,), question="What?", max_new_tokens=3)
    out = tmp_path / "out"
    results = R.run_report(folder, out, chosen, pipe=pipe)
    points = {p["method"]: p for p in results[0].points}
    assert points["prunesid"]["image_tokens_per_layer"] == [64] * 8
    assert points["fastv"]["image_tokens_per_layer"] == [576] * 2 + [64] * 6
    assert points["prunesid+fastv"]["image_tokens_per_layer"] == [64] * 2 + [32] * 6
    assert points["prunesid+pyramiddrop"]["image_tokens_per_layer"] == [64, 64, 32, 32, 16, 16, 8, 8]
    assert points["prunesid+pyramiddrop"]["compression"] == pytest.approx(576 * 8 / 240)
    assert points["fastv"]["keep"] is None and points["prunesid+fastv"]["keep"] == points["prunesid"]["keep"]
    summary = json.loads((out / "summary.json").read_text())
    row = summary["per_method"]["prunesid+fastv"]["64"]
    assert row["mean_compression"] == pytest.approx(576 * 8 / (64 * 2 + 32 * 6))
    assert row["mean_flops_vs_full"] < summary["per_method"]["prunesid"]["64"]["mean_flops_vs_full"] < 1
    assert (out / "combination.png").stat().st_size > 10_000
    rows = R.combination_rows(results, chosen)
    assert rows[0]["kind"] == "full" and len(rows) == 5


def test_qwen_report_runs_fastv_and_marks_pyramiddrop_unavailable(folder, tmp_path, demo_cache):
    from prunesid_vlm.pipeline import load_pipeline

    pipe = load_pipeline("demo/tiny-qwen2-vl")
    chosen = R.ReportSettings(model=pipe.model_id, methods=("prunesid", "prunesid+fastv", "prunesid+pyramiddrop",
                                                            "cdpruner"),
                              budgets=(64,), question="What?", max_new_tokens=2)
    results = R.run_report(folder, tmp_path / "out", chosen, pipe=pipe)
    for item in results:
        points = {p["method"]: p for p in item.points}
        handed = points["prunesid"]["tokens"]
        assert points["prunesid+fastv"]["image_tokens_per_layer"] == [handed, stage_keeps(handed, 0.5)]
        assert points["prunesid+pyramiddrop"]["available"] is False
        assert points["cdpruner"]["available"] is False  # no CLIP text side on Qwen, as the app says
        # Each with the model's own reason (the pipeline's), also in the CSV.
        assert points["prunesid+pyramiddrop"]["reason"] == pipe.in_llm_limits
        assert points["cdpruner"]["reason"] == pipe.unavailable_methods(pipe.encode(R.load_item(
            folder / item.item.split("|")[0])[0]))["cdpruner"]
    rows = {(r["item"], r["method"]): r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert rows[("cat.jpg", "cdpruner")]["unavailable_reason"] == results[0].points[3]["reason"] != ""
    assert (tmp_path / "out" / "combination.png").exists()


def test_unknown_in_llm_stages_are_refused():
    from prunesid_vlm.combination import parse_variant

    assert parse_variant("VisionZip+PyramidDrop") == ("visionzip", "pyramiddrop")
    assert parse_variant("fastv") == (None, "fastv")
    with pytest.raises(ValueError, match="unknown in-LLM stage"):
        parse_variant("prunesid+sparsevlm")
    with pytest.raises(ValueError, match="unknown selection method"):
        parse_variant("nope+fastv")


def test_the_plots_name_the_tokens_handed_over_and_say_what_they_show(llava_pipeline, folder, tmp_path):
    """fidelity.png draws PruneSID-Dyn at the mean count it handed over (not at K), leaves the in-LLM
    variants to combination.png and says so; worst.png has a caption and names each tile's tokens (issue 24)."""
    import numpy as np
    from PIL import Image

    pipe = llava_pipeline
    chosen = R.ReportSettings(model=pipe.model_id, methods=("prunesid", "prunesid-dyn", "prunesid+fastv"),
                              budgets=(16, 64), question="What?", max_new_tokens=2)
    out = tmp_path / "out"
    results = R.run_report(folder, out, chosen, pipe=pipe)
    summary = json.loads((out / "summary.json").read_text())
    for method in ("prunesid", "prunesid-dyn"):
        for budget in (16, 64):
            handed = [p["tokens"] for r in results for p in r.points if p["method"] == method and p["budget"] == budget]
            assert summary["per_method"][method][str(budget)]["mean_tokens"] == pytest.approx(np.mean(handed))
    dyn = [summary["per_method"]["prunesid-dyn"][str(b)]["mean_tokens"] for b in (16, 64)]
    assert dyn != [16, 64], "the demo's φ moves Dyn off K"
    fig = R.fidelity_figure(summary, chosen)
    for axis in (0, 1):
        lines = {ln.get_label(): sorted(ln.get_xdata()) for ln in fig.axes[axis].get_lines()}
        assert lines["prunesid-dyn"] == pytest.approx(sorted(dyn)) and lines["prunesid"] == [16, 64]
        assert "prunesid+fastv" not in lines
    caption = fig.texts[0].get_text()
    assert "prunesid+fastv" in caption and "combination.png" in caption and "not at K" in caption
    assert "tokens handed" in fig.axes[0].get_title() and "handed to the LLM" in fig.axes[-1].get_xlabel()
    # worst.png: the caption band above the sheet, and each tile's chip names the tokens the model received.
    point = next(p for r in results for p in r.points if p["method"] == "prunesid" and p["budget"] == 16)
    assert R.worst_label("cat.jpg", point, 0.5).startswith(f"cat.jpg · {point['tokens']} tokens · KL 0.500")
    text = R.worst_caption("prunesid", 16, 3, 3, pipe.model_id)
    assert "K = 16" in text and "first-token KL" in text and "tokens the model received" in text
    worst = np.asarray(Image.open(out / "worst.png"))
    assert worst.shape[0] > 336 + 40 and (worst[:30] < 100).any()  # dark caption text on the white band on top


def test_questions_with_reference_answers_are_items_and_are_scored(llava_pipeline, folder, tmp_path):
    """questions.csv: one item per row, each answer scored against its reference (the summary adds
    accuracy, all-token accuracy and their ratio); files it does not name keep the one question."""
    from PIL import Image

    said = llava_pipeline.answer([Image.open(folder / "cat.jpg").convert("RGB")], "What is it?", max_new_tokens=3).text
    with (folder / R.QUESTIONS_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "question", "answer", "kind"])
        writer.writerow(["cat.jpg", "What is it?", said.upper() + ".", "what"])  # case and punctuation do not count
        writer.writerow(["cat.jpg", "Is it a dog?", "certainly-not-said", "yes/no"])
        writer.writerow(["coffee.jpg", "What is it?", "certainly-not-said", "what"])
    out = tmp_path / "out"
    results = R.run_report(folder, out, settings(llava_pipeline), pipe=llava_pipeline)
    assert [(r.item.split("|")[0], r.question) for r in results] == [
        ("cat.jpg", "What is it?"), ("cat.jpg", "Is it a dog?"), ("coffee.jpg", "What is it?"), ("rocket.jpg", "What?")]
    assert [r.full_correct for r in results] == [True, False, False, None]
    assert all("correct" in p for r in results[:3] for p in r.points) and all("correct" not in p for p in results[3].points)
    summary = json.loads((out / "summary.json").read_text())["per_method"]["prunesid"]["64"]
    points = [p for r in results[:3] for p in r.points if p["method"] == "prunesid" and p["budget"] == 64]
    assert summary["scored_items"] == 3 and summary["full_accuracy"] == pytest.approx(1 / 3)
    assert summary["accuracy"] == pytest.approx(sum(p["correct"] for p in points) / 3)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["question"] for r in rows} == {"What is it?", "Is it a dog?", "What?"}
    assert {r["reference"] for r in rows if r["item"] == "coffee.jpg"} == {"certainly-not-said"}


@pytest.mark.parametrize("content, message", [
    ("file,question\ncat.jpg,What?\n", "answer missing"),
    ("file,question,answer\nnope.jpg,What?,cat\n", "no file 'nope.jpg'"),
    ("file,question,answer\ncat.jpg,What?,\n", "reference answer is empty"),
    ("file,question,answer\ncat.jpg,,cat\n", "question")])
def test_a_bad_questions_file_is_refused_clearly(folder, content, message):
    (folder / R.QUESTIONS_FILE).write_text(content)
    with pytest.raises(ValueError, match=message):
        R.load_questions(folder)


def test_answers_meet_references_without_case_or_punctuation():
    assert R.answer_matches("Yes.", "yes") and R.answer_matches("  three ", "Three")
    assert R.answer_matches("red, I think", "red") and not R.answer_matches("reddish", "red")
    assert not R.answer_matches("", "red")
