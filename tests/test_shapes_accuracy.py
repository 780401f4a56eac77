"""The shapes-world accuracy scoring (prunesid_report.accuracy, behind benchmarks/shapes_accuracy.py)."""
from __future__ import annotations

import pytest

from prunesid_report import accuracy as A
from prunesid_report.report import load_questions


def row(seed, method, budget, kind, correct, tokens=10):
    return {"seed": seed, "scene": 0, "kind": kind, "question": "q", "answer": "a", "method": method,
            "budget": budget, "tokens": tokens, "predicted": "a", "correct": correct}


def test_relative_accuracy_is_pruned_over_full_per_seed_then_averaged():
    rows = [row(1, "full", 0, "count", c) for c in (1, 1, 0, 0)] + [row(1, "prunesid", 4, "count", c, 4) for c in (1, 0, 0, 0)]
    rows += [row(2, "full", 0, "count", c) for c in (1, 1, 1, 1)] + [row(2, "prunesid", 4, "count", c, 4) for c in (1, 1, 0, 0)]
    summary = {(s["method"], s["budget"], s["kind"]): s for s in A.summarise(rows)}
    cell = summary[("prunesid", 4, A.ALL)]
    assert cell["accuracy"] == pytest.approx(0.375) and cell["full_accuracy"] == pytest.approx(0.75)
    assert cell["relative"] == pytest.approx(0.5) and cell["relative_sd"] == pytest.approx(0.0)
    assert cell["accuracy_sd"] == pytest.approx(0.1767767, rel=1e-5) and cell["seeds"] == 2
    assert summary[("prunesid", 4, "count")]["relative"] == pytest.approx(0.5)
    table = A.markdown_table(A.summarise(rows), [4])
    assert "| prunesid | 50.0 ± 0.0 |" in table and "All tokens: 75.0 %" in table


def test_the_table_names_the_tokens_handed_over_where_they_are_not_k():
    """K = 4 handing over 7 tokens (the dynamic ratio) is said; K = 1 + N handing over the N patches is not."""
    rows = []
    for method, budget, tokens in (("prunesid", 4, 4), ("prunesid-dyn", 4, 7), ("prunesid", 577, 576),
                                   ("prunesid-dyn", 577, 300), ("random", 577, 576)):
        rows += [row(1, "full", 0, "count", 1, 576), row(1, method, budget, "count", 1, tokens)]
    table = A.markdown_table(A.summarise(rows), [4, 577])
    assert "| prunesid | 100.0 ± 0.0 | 100.0 ± 0.0 |" in table
    assert "| prunesid-dyn | 100.0 ± 0.0 (7 tok.) | 100.0 ± 0.0 (300 tok.) |" in table, table
    assert "| random | — | 100.0 ± 0.0 |" in table, table
    only_two = [r for r in rows if r["method"] in ("full", "prunesid-dyn", "random")]  # no majority to lean on
    assert "| random | — | 100.0 ± 0.0 |" in A.markdown_table(A.summarise(only_two), [4, 577])


def test_the_scene_folder_is_the_reports_input(tmp_path):
    written = A.write_folder(tmp_path, seed=5, count=3)
    asked = load_questions(tmp_path)
    assert sorted(asked) == [f"scene_5_000{i}.png" for i in range(3)]
    assert sum(len(v) for v in asked.values()) == written and written >= 3 * 3
    assert {a.kind for v in asked.values() for a in v} <= set(__import__("prunesid_vlm.shapes_world").shapes_world.KINDS)


def test_a_model_whose_answers_are_not_one_token_is_refused(llava_pipeline):
    with pytest.raises(ValueError, match="in one token"):
        A.answer_ids(llava_pipeline, {"three", "left"})


def test_scoring_a_scene_on_the_shapes_model(demo_cache):
    """All tokens and PruneSID at K = 1+N hand over the same prompt: same right or wrong, per question."""
    from prunesid_vlm.dinov2_demo import WHEEL, available
    from prunesid_vlm.pipeline import load_pipeline
    from prunesid_vlm.registry import SHAPES_DEMO_ID

    if not available():
        pytest.skip(f"demo/shapes-llava's tower comes from the wheel {WHEEL}, which is not installed")
    pipe = load_pipeline(SHAPES_DEMO_ID, device="cpu")
    scene, asked = A.scene_questions(31, 1)[0]
    rows = A.score_scene(pipe, scene, asked, ["prunesid", "random"], [4, 577])
    assert len(rows) == len(asked) * (1 + 2 * 2)
    for q in asked:
        mine = {(r["method"], r["budget"]): r for r in rows if r["question"] == q.text}
        assert mine[("prunesid", 577)]["correct"] == mine[("full", 0)]["correct"]
        assert mine[("prunesid", 577)]["predicted"] == mine[("full", 0)]["predicted"]
        assert mine[("prunesid", 4)]["tokens"] == 4 and mine[("full", 0)]["tokens"] == 576
        assert all(r["correct"] == int(r["predicted"] == q.answer) for r in mine.values())
