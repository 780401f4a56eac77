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
    monkeypatch.setattr(R, "measure", lambda pipe, images, s, item, kind: measured.append(item) or
                        real(pipe, images, s, item, kind))
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
