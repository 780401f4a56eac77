"""The combination study (PruneSID alone, FastV alone, PruneSID + FastV / PyramidDrop): its variants'
token schedules, compression, costs and fidelity, and its plot."""
from __future__ import annotations

import math

import numpy as np
import pytest

from prunesid_vlm.combination import KINDS, combination_study, kinds_for
from prunesid_vlm.inllm import stage_keeps
from prunesid_vlm.pipeline import load_pipeline
from tests.conftest import make_image
from viz import figure_to_array
from viz.combination import plot_combination

QUESTION = "What is in the picture?"


def test_study_on_an_eight_layer_replica(deep_llava_pipeline):
    study = combination_study(deep_llava_pipeline, [make_image(1)], QUESTION, budgets=(128, 64, 16), repeats=2)
    assert study.num_layers == 8 and study.full.image_tokens_per_layer == [576] * 8
    assert [r.kind for r in study.runs] == [k for _ in range(3) for k in KINDS]
    for run in study.runs:
        counts = run.image_tokens_per_layer
        if run.kind == "prunesid":
            assert counts == [run.budget] * 8
        elif run.kind == "fastv":  # every token enters; FastV's stage keeps as many as the budget
            assert counts == [576, 576] + [run.budget] * 6
        elif run.kind == "prunesid+fastv":
            assert counts == [run.budget] * 2 + [stage_keeps(run.budget, 0.5)] * 6
        else:
            half = stage_keeps(run.budget, 0.5)
            quarter = stage_keeps(half, 0.5)
            assert counts == [run.budget] * 2 + [half] * 2 + [quarter] * 2 + [stage_keeps(quarter, 0.5)] * 2
        assert study.compression(run) == pytest.approx(576 * 8 / sum(counts))
        assert run.flops < study.full.flops and run.prefill_s > 0
        assert run.first_token_kl >= 0 and math.isfinite(run.first_token_kl)
    # The combinations compress further than PruneSID alone at the same budget, and cost fewer FLOPs.
    for budget in (128, 64, 16):
        alone, fastv, pyramid = (next(r for r in study.runs if r.kind == k and r.budget == budget)
                                 for k in ("prunesid", "prunesid+fastv", "prunesid+pyramiddrop"))
        assert study.compression(fastv) > study.compression(alone) and fastv.flops < alone.flops
        assert study.compression(pyramid) > study.compression(alone)
    assert study.full.first_token_kl == 0.0 and study.full.first_token_agrees
    rows = study.rows()
    assert rows[0]["kind"] == "full" and rows[0]["compression"] == 1.0 and len(rows) == 1 + 12


def test_the_pre_llm_selection_is_the_apps(deep_llava_pipeline):
    image = make_image(2)
    study = combination_study(deep_llava_pipeline, [image], QUESTION, budgets=(64,), kinds=("prunesid",), repeats=1)
    expected = deep_llava_pipeline.select(deep_llava_pipeline.encode([image]), 64)
    assert np.array_equal(study.selections[64].kept_patches.numpy(), expected.kept_patches.numpy())


def test_study_on_the_demo_and_its_plot(llava_pipeline):
    study = combination_study(llava_pipeline, [make_image(3)], QUESTION, budgets=(192, 64, 16), repeats=1)
    assert study.num_layers == 2
    combined = [r for r in study.runs if r.kind == "prunesid+pyramiddrop"]
    assert [r.image_tokens_per_layer for r in combined] == [[192, 96], [64, 32], [16, 8]]
    fig = plot_combination(study.rows(), schedule_budget=64)
    pixels = figure_to_array(fig)
    assert pixels.shape[0] > 400 and pixels.std() > 10
    titles = [ax.get_title() for ax in fig.axes]
    assert "Token schedule at budget 64" in titles


def test_bad_requests_say_why(llava_pipeline):
    image = make_image(4)
    with pytest.raises(ValueError, match="unknown variants"):
        combination_study(llava_pipeline, [image], QUESTION, kinds=("fastv", "sparsevlm"))
    with pytest.raises(ValueError, match="no budget fits"):
        combination_study(llava_pipeline, [image], QUESTION, budgets=(5000,))
    with pytest.raises(ValueError):
        combination_study(llava_pipeline, [image], "   ")
    qwen = load_pipeline("demo/tiny-qwen2.5-vl")
    with pytest.raises(ValueError, match="PruneSID \\+ PyramidDrop: not on .*M-RoPE"):
        combination_study(qwen, [image], QUESTION, kinds=KINDS)


def test_qwen_study_runs_every_variant_but_pyramiddrop(demo_cache):
    qwen = load_pipeline("demo/tiny-qwen2.5-vl")
    assert kinds_for(qwen) == ["prunesid", "fastv", "prunesid+fastv"]
    study = combination_study(qwen, [make_image(6, 280, 420)], QUESTION, budgets=(64, 16), repeats=1)
    assert study.kinds() == ["prunesid", "fastv", "prunesid+fastv"]
    for budget in (64, 16):
        handed = study.selections[budget].num_tokens.sum().item()
        (alone,) = [r for r in study.of_kind("prunesid") if r.budget == budget]
        (fastv,) = [r for r in study.of_kind("fastv") if r.budget == budget]
        (both,) = [r for r in study.of_kind("prunesid+fastv") if r.budget == budget]
        assert alone.image_tokens_per_layer == [handed] * 2
        assert both.image_tokens_per_layer == [handed, stage_keeps(handed, 0.5)]
        assert fastv.image_tokens_per_layer[0] == study.full.image_tokens_per_layer[0]
        assert fastv.image_tokens_per_layer[1] == handed  # FastV alone meets PruneSID's budget after its stage
        assert study.compression(both) > study.compression(alone) > study.compression(fastv) > 1


def test_the_script_writes_the_study(llava_pipeline, tmp_path, capsys):
    import json

    import inllm_study

    image = tmp_path / "blocks.png"
    make_image(5).save(image)
    code = inllm_study.main([str(image), "--model", llava_pipeline.model_id, "--budgets", "64,16", "--repeats", "1",
                             "--out", str(tmp_path / "study")])
    assert code == 0
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["num_layers"] == 2 and len(saved["rows"]) == 1 + 4 * 2
    assert (tmp_path / "study" / "study.png").stat().st_size > 10_000
    assert "PruneSID + PyramidDrop 16" in capsys.readouterr().out
    assert inllm_study.main([str(tmp_path / "missing.png"), "--model", llava_pipeline.model_id]) == 2


def test_another_pre_llm_method_is_named_as_itself(deep_llava_pipeline):
    study = combination_study(deep_llava_pipeline, [make_image(6)], QUESTION, budgets=(64,), method="visionzip",
                              kinds=("prunesid", "prunesid+fastv"), repeats=1)
    assert [r.label for r in study.runs] == ["VisionZip alone 64", "VisionZip + FastV 64"]
    assert study.rows()[2]["kind_label"] == "VisionZip + FastV"


def test_quick_prefills_are_timed_over_more_passes(llava_pipeline):
    """Millisecond prefills (the demo) get more passes than asked, up to MAX_REPEATS, until the timing
    has taken min_seconds; with min_seconds=0 exactly the asked repeats run. Progress is reported once
    per pass, never between two timed prefills."""
    from prunesid_vlm.combination import MAX_REPEATS

    image, calls = make_image(9), []
    exact = combination_study(llava_pipeline, [image], QUESTION, budgets=(64,), kinds=("prunesid",), repeats=2,
                              min_seconds=0.0, progress=lambda f, m: calls.append(m))
    assert exact.repeats == 2 and calls == ["timing pass 1 over 2 variants", "timing pass 2 over 2 variants"]
    more = combination_study(llava_pipeline, [image], QUESTION, budgets=(64,), kinds=("prunesid",), repeats=2,
                             min_seconds=1.0)
    assert 2 < more.repeats <= MAX_REPEATS


def test_timings_come_with_their_spread_and_equal_schedules_are_named(llava_pipeline):
    """On the 2-layer demo PruneSID + FastV and PruneSID + PyramidDrop run the same schedule: their time
    gap is noise, and the rows say so; every time carries the spread of its passes (issue 24)."""
    study = combination_study(llava_pipeline, [make_image(3)], QUESTION, budgets=(64, 16), repeats=3, min_seconds=0.0)
    rows = {r["variant"]: r for r in study.rows()}
    for budget in (64, 16):
        pyramid = rows[f"PruneSID + PyramidDrop {budget}"]
        assert pyramid["same_schedule_as"] == f"PruneSID + FastV {budget}"
        assert rows[f"PruneSID alone {budget}"]["same_schedule_as"] is None
    for run in [study.full, *study.runs]:
        row = rows[run.label]
        assert len(run.times) == study.repeats == row["passes"] == 3
        assert run.prefill_s == pytest.approx(float(np.median(run.times)))
        low, high = row["time_vs_full_spread"]
        ratios = study.time_ratios(run)
        assert low <= row["time_vs_full"] <= high and row["time_vs_full"] == pytest.approx(np.median(ratios), abs=1e-3)
        assert row["time_within_noise"] == (run is not study.full and low <= 1.0 <= high)
        assert row["time_resolved"]
    assert rows["No pruning"]["time_vs_full"] == 1.0 and not rows["No pruning"]["time_within_noise"]
    fig = plot_combination(study.rows(), schedule_budget=64)
    assert any("middle half of the passes" in ax.get_title() for ax in fig.axes)
    legend = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert "PruneSID alone: 64 in (9.0×)" in legend and "No pruning: 576 in" in legend


def test_first_token_agreement_is_the_token_decoding_takes(llava_pipeline, monkeypatch):
    """'Same first token' compares the tokens greedy decoding takes (the generation config's suppressed
    tokens never win), not the logits' raw argmax (issue 24: 'same first token: no' beside identical
    answers). Here the raw argmaxes differ, and every token ranked above the first one both runs rank
    high is suppressed: decoding starts both answers with that token, so they agree."""
    from prunesid_vlm.generation import without_suppressed
    from prunesid_vlm.inllm import NO_STAGES

    pipe, image = llava_pipeline, make_image(3)
    selection = pipe.select(pipe.encode([image]), 64)
    full = pipe.staged_prefill([image], QUESTION, None, NO_STAGES).first_logits
    pruned = pipe.staged_prefill([image], QUESTION, selection, NO_STAGES).first_logits
    assert int(full.argmax()) != int(pruned.argmax()), "the raw rule must disagree for this test to mean anything"
    rank = {name: without_suppressed(pipe.model, logits[None])[0].argsort(descending=True)[:50].tolist()
            for name, logits in (("full", full), ("pruned", pruned))}
    shared = next(t for t in rank["full"] if t in rank["pruned"])
    above = {t for order in rank.values() for t in order[:order.index(shared)]}
    suppress = list(pipe.model.generation_config.suppress_tokens or []) + sorted(above)
    monkeypatch.setattr(pipe.model.generation_config, "suppress_tokens", suppress)
    assert pipe.first_token(full) == pipe.first_token(pruned) == shared
    study = combination_study(pipe, [image], QUESTION, budgets=(64,), kinds=("prunesid",), repeats=1,
                              min_seconds=0.0)
    (run,) = study.runs
    assert run.first_token_agrees and study.rows()[1]["first_token_agrees"]
