"""The Compare tab's "Inside the LLM" view and its scripted endpoint."""
from __future__ import annotations

import pytest

from prunesid_vlm.inllm import stage_keeps
from prunesid_vlm.pipeline import load_pipeline
from studio.inllm_tab import combination_view, depth_note, on_combination
from tests.compare_client import compare_tab_client
from tests.conftest import make_image


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inllm") / "blocks.png"
    make_image(11).save(path)
    return str(path)


def test_the_view_on_the_demo(llava_pipeline, image_path):
    out = combination_view(image_path, "What is it?", "64, 16", lambda: llava_pipeline, mark=64, repeats=1)
    assert len(out["table"]) == 1 + 4 * 2
    assert out["table"][0][0] == "No pruning" and out["table"][0][1] == "576 (every layer)"
    combined = next(r for r in out["table"] if r[0] == "PruneSID + FastV 64")
    assert combined[1] == "64 → 32 (after layer 1)" and combined[2] == "12.0×"  # 2 · 576 / (64 + 32)
    assert "2 decoder layers" in out["markdown"] and "collapse" in out["markdown"]
    assert "not meaningful" in out["markdown"] or "random" in out["markdown"]
    assert out["json"]["num_layers"] == 2 and len(out["json"]["rows"]) == 9
    assert any(ax.get_title() == "Token schedule at budget 64" for ax in out["figure"].axes)


def test_depth_note_on_a_published_depth():
    note = depth_note(32)
    assert "after layer 2" in note and "8, 16, 24" in note and "collapse" not in note


def test_bad_requests_become_messages(llava_pipeline, image_path, demo_cache):
    with pytest.raises(ValueError, match="At most 6 budgets"):
        combination_view(image_path, "What?", "2, 4, 8, 16, 32, 64, 128", lambda: llava_pipeline)
    with pytest.raises(ValueError):
        combination_view(image_path, "", "64", lambda: llava_pipeline)
    _, _, text, _ = on_combination(lambda: llava_pipeline)(None, "What?", "64", 64, progress=None)
    assert text.startswith("⚠") and "image" in text.lower()


def test_qwen_runs_fastv_and_says_why_not_pyramiddrop(image_path, demo_cache):
    qwen = load_pipeline("demo/tiny-qwen2-vl")
    plot, table, text, raw = on_combination(lambda: qwen)(image_path, "What?", "64", 64, progress=None)
    assert [r["kind"] for r in raw["rows"]] == ["full", "prunesid", "fastv", "prunesid+fastv"]
    handed = raw["rows"][1]["image_tokens_per_layer"][0]
    assert raw["rows"][3]["image_tokens_per_layer"] == [handed, stage_keeps(handed, 0.5)]
    assert "PyramidDrop does not run" in text and "M-RoPE" in text and not text.startswith("⚠")
    assert len(table) == 4


def test_the_scripted_endpoint(llava_pipeline, image_path):
    from gradio_client import handle_file

    with compare_tab_client(llava_pipeline) as client:
        out = client.predict(handle_file(image_path), "What is this?", "32", api_name="/compare_in_llm")
    assert [r["kind"] for r in out["rows"]] == ["full", "prunesid", "fastv", "prunesid+fastv", "prunesid+pyramiddrop"]
    assert out["rows"][3]["image_tokens_per_layer"] == [32, 16]


def test_times_within_noise_are_said_to_be(llava_pipeline, image_path):
    """Identical token schedules are named as doing the same work; a time whose spread holds 1 is
    'within noise'; the spread is in every cell (issue 24)."""
    from studio.inllm_tab import TABLE_HEADERS, time_text

    out = combination_view(image_path, "What is it?", "64", lambda: llava_pipeline, repeats=3)
    column = TABLE_HEADERS.index("prefill time vs none (spread)")
    cells = {row[0]: row[column] for row in out["table"]}
    assert cells["No pruning"] == "1 (reference)"
    assert cells["PruneSID + PyramidDrop 64"].endswith("same work as PruneSID + FastV 64")
    for row in out["json"]["rows"][1:]:
        low, high = row["time_vs_full_spread"]
        assert f"({low:.2f}–{high:.2f})" in cells[row["variant"]]
        assert ("within noise" in cells[row["variant"]]) == row["time_within_noise"]
    assert "PruneSID + PyramidDrop 64 = PruneSID + FastV 64" in out["markdown"]
    assert "noise" in out["markdown"]
    assert time_text({"kind": "prunesid", "time_vs_full": 0.5, "time_resolved": False}) == \
        "below the clock's resolution"
