"""Comparison, stability and sweep computations (synthetic cases), the published figures,
the comparison pictures, and the Compare tab's handlers and JSON endpoints (tiny demo model)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prunesid_eval.compare import (
    budget_sweep,
    compare_methods,
    coverage,
    jaccard,
    jaccard_matrix,
    method_fn,
    stability,
    sweep_selections,
    take_row,
)
from prunesid_eval.methods import get_method, list_methods
from prunesid_eval.published import (
    LLAVA_15_7B,
    LLAVA_NEXT_7B,
    NOT_REPORTED,
    PUBLISHED,
    published_budgets,
    published_figure,
    published_label,
)
from tests.conftest import make_image
from viz import figure_to_array
from viz.compare import comparison_sheet, draw_keep_frequency, method_overlays, plot_budget_sweep, plot_stability

from yardsticks.reference_data import case_tensors, require_reference
from tests.compare_client import compare_tab_client


@pytest.fixture(scope="module")
def case():
    require_reference()
    return case_tensors(0)


# ---- compare_methods -----------------------------------------------------------------------------
def test_compare_methods_runs_the_whole_registry(case):
    hidden, attention = case
    runs = compare_methods(hidden, attention, 64)
    assert [r.name for r in runs] == [s.name for s in list_methods()]
    for r in runs:
        assert r.selection.method == r.name and r.seconds >= 0
        if r.name != "prunesid-dyn":
            assert r.tokens() == 64
        d = r.to_dict()
        json.dumps(d)
        assert d["method"] == r.name and d["label"] == r.label
    by_name = {r.name: r for r in runs}
    assert by_name["prunesid"].published.relative_accuracy == 95.9
    assert by_name["visionzip"].to_dict()["merged_tokens"] == 10
    assert by_name["random"].to_dict()["published"] == NOT_REPORTED
    # Fresh generator per method: the result does not depend on which methods run before.
    alone = compare_methods(hidden, attention, 64, ["random"])[0]
    assert torch.equal(alone.selection.keep, by_name["random"].selection.keep)


def test_method_fn_binds_seed_and_options(case):
    hidden, attention = case
    fn = method_fn("random", seed=5)
    assert torch.equal(fn(hidden, attention, 32).keep, fn(hidden, attention, 32).keep)
    assert not torch.equal(fn(hidden, attention, 32).keep, method_fn("random", seed=6)(hidden, attention, 32).keep)
    phi = float(get_method("prunesid").fn(hidden, attention, 64).phi[0])
    dyn = method_fn("prunesid-dyn", options={"prunesid-dyn": {"phi_ref": phi / 2}})
    assert int(dyn(hidden, attention, 64).num_tokens[0]) == 128
    with pytest.raises(ValueError):
        compare_methods(hidden, attention, 64, [])
    with pytest.raises(ValueError, match="unknown selection method"):
        compare_methods(hidden, attention, 64, ["bogus"])


# ---- stability -------------------------------------------------------------------------------------
def test_jaccard_basics():
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 1, 1, 0], dtype=torch.bool)
    assert jaccard(a, a) == 1.0 and jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)) == 1.0
    m = jaccard_matrix(torch.stack([a, b, a]))
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1) and m[0, 2] == 1.0


def test_stability_numbers(case):
    hidden, attention = case
    result = stability(hidden, attention, 64, seeds=(0, 1, 2, 3))
    assert result.exact_repeat == 1.0
    assert result.jaccard_vs_exact.shape == (4,) and result.pairwise.shape == (4, 4)
    assert ((result.jaccard_vs_exact >= 0) & (result.jaccard_vs_exact <= 1)).all()
    assert ((result.pairwise >= 0) & (result.pairwise <= 1)).all()
    assert np.allclose(np.diag(result.pairwise), 1) and np.allclose(result.pairwise, result.pairwise.T)
    assert 0 <= result.mean_pairwise <= 1 and 0 <= result.mean_vs_exact <= 1
    assert result.mean_vs_exact < 1.0, "the randomised PCA moves the kept set on CLIP-like cases"
    assert result.keep_frequency.shape == (576,) and result.exact_kept.sum() == 63
    assert np.isclose(result.keep_frequency.sum(), 63)
    again = stability(hidden, attention, 64, seeds=(0, 1, 2, 3))
    assert np.array_equal(again.jaccard_vs_exact, result.jaccard_vs_exact), "each seed is reproducible"
    json.dumps(result.to_dict())
    with pytest.raises(ValueError):
        stability(hidden, attention, 64, seeds=())


# ---- sweep -------------------------------------------------------------------------------------------
def test_sweep_rows_equal_single_calls(case):
    hidden, attention = case
    budgets = (16, 64, 192)
    sweeps = sweep_selections(hidden, attention, budgets, ["prunesid", "visionzip", "divprune", "random", "prunesid-dyn"])
    for name, sel in sweeps.items():
        assert sel.batch_size == len(budgets)
        for i, k in enumerate(budgets):
            alone = method_fn(name)(hidden, attention, k)
            row = take_row(sel, i)
            if name == "random":  # one generator draws all rows of the batch at once
                assert int(row.num_tokens[0]) == k
                continue
            assert torch.equal(row.keep, alone.keep), (name, k)
            if alone.merged_tokens is not None:
                assert torch.allclose(row.merged_tokens, alone.merged_tokens)


def test_budget_sweep_coverage_and_fidelity_callback(case):
    hidden, attention = case
    calls = []

    def fidelity(name, k, sel):
        calls.append((name, k, sel.batch_size, int(sel.num_tokens[0])))
        return 1.0 / k

    seen = []
    result = budget_sweep(hidden, attention, (577, 16, 64), ["prunesid", "grid", "topk"], fidelity=fidelity,
                          fidelity_metric="test", progress=lambda f, d: seen.append(f))
    assert result.budgets == (16, 64, 577)
    assert result.tokens["grid"] == [16, 64, 576] and result.tokens["prunesid"] == [16, 64, 577]
    for name in result.methods:
        cov = result.coverage[name]
        assert all(0 <= c <= 1 + 1e-6 for c in cov) and cov[-1] == pytest.approx(1.0)
        assert result.fidelity[name] == [1 / 16, 1 / 64, 1 / 577]
    assert len(calls) == 9 and all(c[2] == 1 for c in calls)
    assert seen == sorted(seen) and 0 <= seen[0] and seen[-1] <= 1
    json.dumps(result.to_dict())
    assert budget_sweep(hidden, attention, (16,), ["grid"]).fidelity is None


def test_coverage_counts_merged_tokens(case):
    hidden, attention = case
    sel = get_method("visionzip").fn(hidden, attention, 64)
    without = get_method("visionzip").fn(hidden, attention, 64, contextual=0)
    assert float(coverage(hidden, sel)[0]) > 0 and float(coverage(hidden, without)[0]) > 0
    everything = get_method("grid").fn(hidden, attention, 576)
    assert float(coverage(hidden, everything)[0]) == pytest.approx(1.0)


# ---- published figures -------------------------------------------------------------------------------
def test_published_figures_are_sourced_and_exact():
    assert published_figure("prunesid", 64).relative_accuracy == 95.9
    assert published_figure("prunesid-dyn", 64).relative_accuracy == 96.3
    assert published_figure("visionzip", 64).relative_accuracy == 94.0
    assert published_figure("divprune", 64).relative_accuracy == 94.6
    assert published_figure("prunesid", 160, LLAVA_NEXT_7B).relative_accuracy == 92.8
    assert published_figure("vispruner", 64) is None and published_figure("prunesid", 65) is None
    assert published_label("random", 64) == NOT_REPORTED
    assert "95.9%" in published_label("prunesid", 64) and "PruneSID paper" in published_label("prunesid", 64)
    assert published_budgets(LLAVA_15_7B) == [64, 192]
    for fig in PUBLISHED:
        assert fig.source and fig.method in {s.name for s in list_methods()}
        assert 0 < fig.relative_accuracy <= 100


# ---- pictures ---------------------------------------------------------------------------------------
def test_comparison_pictures(case):
    hidden, attention = case
    runs = compare_methods(hidden, attention, 64, ["prunesid", "visionzip", "grid"])
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    tiles = method_overlays(image, [(r.label, r.selection) for r in runs], size=336)
    assert [t[1].split(" · ")[0] for t in tiles] == ["PruneSID", "VisionZip", "Uniform grid"]
    assert "10 merged" in tiles[1][1] and all(t[0].dtype == np.uint8 and t[0].shape[1] == 336 for t in tiles)
    sheet = comparison_sheet(image, [(r.label, r.selection) for r in runs], cols=2)
    assert sheet.ndim == 3 and sheet.shape[1] > 2 * 336
    freq = draw_keep_frequency(image, np.linspace(0, 1, 576), np.arange(576) % 7 == 0, size=336)
    assert freq.shape[1] == 336 and freq.shape[0] > 336
    fig = plot_stability([0.8, 0.7], np.array([[1, 0.6], [0.6, 1]]), [0, 1])
    assert figure_to_array(fig).ndim == 3
    fig = plot_budget_sweep([16, 64], {"A": [0.1, 0.05], "B": [0.2, float("nan")]}, ylabel="KL", marks=[64],
                            ax_extra=("coverage", {"A": [0.8, 0.9], "B": [0.7, 0.9]}))
    assert len(fig.axes) == 2
    with pytest.raises(ValueError):
        plot_budget_sweep([16, 64], {"A": [0.1]}, ylabel="KL")


# ---- the tab (tiny offline demo model) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    from conftest import make_image

    path = tmp_path_factory.mktemp("compare") / "blocks.png"
    make_image(3).save(path)
    return str(path)


def test_compare_view_with_answers(llava_pipeline, image_path):
    from PIL import Image

    from prunesid_vlm import studies
    from studio.compare_tab import TABLE_HEADERS, compare_view

    out = compare_view(image_path, "What is this?", 64, ["prunesid", "visionzip", "divprune"], lambda: llava_pipeline,
                       answers=True, max_new_tokens=2)
    assert len(out["gallery"]) == 3 and len(out["table"]) == 3
    assert all(len(row) == len(TABLE_HEADERS) for row in out["table"])
    d = json.loads(json.dumps(out["json"]))
    assert [m["method"] for m in d["methods"]] == ["prunesid", "visionzip", "divprune"]
    assert [m["tokens"] for m in d["methods"]] == [64, 64, 64]
    assert d["methods"][0]["published"]["relative_accuracy"] == 95.9
    assert d["methods"][1]["merged_tokens"] == 10
    assert d["budget"] == 64 and d["published_budgets"] == [64, 192]
    # The result schema (docs/result-schema.md): the full answer once, each method's pruned answer and fidelity
    # as CompareResult.to_dict() names them.
    made = studies.compare_methods(llava_pipeline, [Image.open(image_path)], 64, ["prunesid", "visionzip", "divprune"],
                                   question="What is this?", max_new_tokens=2)
    assert d["schema"] == "prunesid-result/1" and d["model"]["id"] == llava_pipeline.model_id
    untimed = lambda run: {k: v for k, v in run.items() if k != "timings"}  # noqa: E731 — timings are per call
    assert untimed(d["full"]) == untimed(json.loads(json.dumps(made.results["prunesid"].run_dict("full"))))
    assert d["full"]["answer"] == d["full_answer"] and d["full"]["visual_tokens"] == 576
    assert set(d["full"]["timings"]) == {"vision_s", "selection_s", "project_s", "prefill_s", "decode_s", "total_s"}
    for m in d["methods"]:
        expected = json.loads(json.dumps(made.results[m["method"]].to_dict()))
        for key in ("selection", "budgets", "token_counts"):
            assert m[key] == expected[key], (m["method"], key)
        assert untimed(m["pruned"]) == untimed(expected["pruned"]) and m["pruned"]["timings"]["selection_s"] > 0
        assert m["fidelity"]["first_token_kl_nats"] == pytest.approx(expected["fidelity"]["first_token_kl_nats"])
        assert m["fidelity"]["first_token_agrees"] == m["first_token_agrees"] == expected["fidelity"]["first_token_agrees"]
        assert m["pruned"]["answer"] == m["answer"] and m["pruned"]["visual_tokens"] == m["tokens"] == 64
        assert m["token_counts"]["pruned"]["total"] == 64 and m["selection"][0]["keep"] == m["keep"]
    # Without answers: the same fields, the answers' ones empty.
    bare = compare_view(image_path, "", 64, ["prunesid"], lambda: llava_pipeline, answers=False)["json"]
    (row,) = bare["methods"]
    assert bare["full"] is None and row["pruned"] is None and row["fidelity"] is None and row["prefill"] is None
    assert row["token_counts"] == {"full": {"per_view": [576], "newlines": 0, "total": 576},
                                   "pruned": {"per_view": [64], "newlines": 0, "total": 64}}
    assert row["budgets"] == [64] and len(row["selection"][0]["keep"]) == 64


def test_compare_view_without_answers_and_errors(llava_pipeline, image_path):
    from prunesid_vlm.media import MediaError
    from studio.compare_tab import compare_view, parse_budgets, stability_view, sweep_view

    get = lambda: llava_pipeline  # noqa: E731
    out = compare_view(image_path, "", 32, None, get, answers=False)
    assert len(out["table"]) == len(list_methods()) and out["json"]["full_answer"] is None
    with pytest.raises(MediaError):
        compare_view(None, "q", 64, None, get, answers=False)
    with pytest.raises(ValueError, match="between 2 and 577"):
        compare_view(image_path, "q", 1000, None, get, answers=False)
    with pytest.raises(ValueError, match="question is empty"):
        compare_view(image_path, " ", 64, None, get)
    with pytest.raises(ValueError, match="No method"):
        compare_view(image_path, "q", 64, [], get, answers=False)
    with pytest.raises(ValueError, match="seeds"):
        stability_view(image_path, 64, 1, get)
    with pytest.raises(ValueError):
        sweep_view(image_path, "q", "16, abc", None, get)
    assert parse_budgets("64; 16, 64") == [16, 64]


def test_stability_and_sweep_views(llava_pipeline, image_path):
    from studio.compare_tab import stability_view, sweep_view

    get = lambda: llava_pipeline  # noqa: E731
    st = stability_view(image_path, 64, 3, get)
    assert st["json"]["exact_repeat_jaccard"] == 1.0 and len(st["json"]["jaccard_vs_exact"]) == 3
    assert st["overlay"].dtype == np.uint8 and "Exact PCA" in st["markdown"]
    sw = sweep_view(image_path, "What is this?", "16, 64", ["prunesid", "grid"], get, mark=64)
    d = json.loads(json.dumps(sw["json"]))
    assert d["budgets"] == [16, 64] and d["fidelity_metric"] == "first_token_kl_nats"
    assert all(v >= 0 for vs in d["fidelity"].values() for v in vs)
    assert d["published"]["prunesid"]["64"] == 95.9 and d["published"]["grid"]["16"] == NOT_REPORTED
    assert len(sw["figure"].axes) == 2
    no_model = sweep_view(image_path, "", "16, 64", ["grid"], get, with_model=False)
    assert no_model["json"]["fidelity"] is None


def test_handlers_never_raise(llava_pipeline, image_path):
    from studio.compare_tab import on_compare, on_stability, on_sweep

    get = lambda: llava_pipeline  # noqa: E731
    nothing = lambda *a, **k: None  # noqa: E731
    out = on_compare(get)(None, "q", 64, None, False, 4, progress=nothing)
    assert "No image yet" in out[2]
    out = on_stability(get)(image_path, "many", 4, progress=nothing)
    assert out[2].startswith("⚠ ")
    out = on_sweep(get)(image_path, "q", "", ["grid"], False, 64, progress=nothing)
    assert out[1].startswith("⚠ ")

    def broken():
        raise RuntimeError("boom")

    out = on_compare(broken)(image_path, "q", 64, None, False, 4, progress=nothing)
    assert "went wrong" in out[2] and "boom" not in out[2]
    gallery, table, status, raw, notes = on_compare(get)(image_path, "q", 64, ["grid", "topk"], False, 4,
                                                         progress=nothing)
    assert len(gallery) == 2 and len(table) == 2 and raw["budget"] == 64 and "tokens to the LLM" in notes


def test_compare_endpoint_with_gradio_client(llava_pipeline, image_path):
    gradio_client = pytest.importorskip("gradio_client")
    import gradio as gr

    from studio.compare_tab import build_compare_tab

    with gr.Blocks() as demo:
        image = gr.Image(type="filepath")
        question = gr.Textbox("What is this?")
        budget = gr.Slider(2, 577, 64, step=1)
        with gr.Tab("Compare methods"):
            build_compare_tab(image, question, budget, lambda: llava_pipeline)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(url, verbose=False)
        out = client.predict(gradio_client.handle_file(image_path), "What is this?", 64, "prunesid, grid", False,
                             api_name="/compare")
        assert [m["method"] for m in out["methods"]] == ["prunesid", "grid"]
        assert out["methods"][0]["published"]["relative_accuracy"] == 95.9
        assert out["methods"][1]["published"] == NOT_REPORTED
        assert out["budget"] == 64 and out["published_budgets"] == [64, 192]
        with pytest.raises(Exception, match="between 2 and 577"):
            client.predict(gradio_client.handle_file(image_path), "q", 9999, "", False, api_name="/compare")
        client.close()
    finally:
        demo.close()


def test_sweep_passes_per_row_options(case):
    hidden, attention = case
    features = torch.randn(1, 576, 64, generator=torch.Generator().manual_seed(0))
    options = {"divprune": {"features": features}}
    sel = sweep_selections(hidden, attention, (16, 64), ["divprune"], options=options)["divprune"]
    alone = get_method("divprune").fn(hidden, attention, 64, features=features)
    assert torch.equal(take_row(sel, 1).keep, alone.keep)
    assert not torch.equal(alone.keep, get_method("divprune").fn(hidden, attention, 64).keep)


def test_divprune_runs_on_projected_tokens(llava_pipeline, image_path):
    from PIL import Image

    feats = llava_pipeline.encode([Image.open(image_path)])
    features = llava_pipeline.method_options(feats)["divprune"]["features"]
    hidden = feats.hidden_states
    assert features.shape[:2] == (hidden.shape[0], hidden.shape[1] - 1)
    with torch.inference_mode():
        expected = llava_pipeline.adapter.project(hidden[0, 1:]).float().cpu()
    assert torch.allclose(features[0], expected, atol=1e-5)
    projections = llava_pipeline.stats["projections"]
    assert llava_pipeline.method_options(feats)["divprune"]["features"] is features  # cached per media
    assert llava_pipeline.stats["projections"] == projections


def test_stability_and_sweep_endpoints(llava_pipeline, image_path):
    from gradio_client import handle_file

    with compare_tab_client(llava_pipeline) as client:
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        st = client.predict(handle_file(image_path), 64, 3, api_name="/compare_stability")
        sw = client.predict(handle_file(image_path), "What is this?", "16, 64", "grid, divprune",
                            api_name="/compare_sweep")
        coverage_only = client.predict(handle_file(image_path), "", "16, 64", "grid", api_name="/compare_sweep")
    # Every study is listed (the README points scripts to them), each parameter named and described.
    expected = {"/compare": ["image", "question", "budget", "methods", "answers"],
                "/compare_stability": ["image", "budget", "seeds"],
                "/compare_sweep": ["image", "question", "budgets", "methods"],
                "/compare_in_llm": ["image", "question", "budgets"]}
    assert set(endpoints) == set(expected)
    for name, params in expected.items():
        assert [p["parameter_name"] for p in endpoints[name]["parameters"]] == params, name
        for p in endpoints[name]["parameters"]:
            assert p["label"].startswith(p["parameter_name"] + ": ") and len(p["label"]) > 30, (name, p["label"])
        assert len(endpoints[name]["description"]) > 80, name
    assert st["exact_repeat_jaccard"] == 1.0 and len(st["seeds"]) == 3
    assert sw["methods"] == ["grid", "divprune"] and sw["budgets"] == [16, 64]
    assert sw["handed_tokens"] == {"grid": [16, 64], "divprune": [16, 64]} and sw["fidelity"] is not None
    assert sw["published"]["divprune"]["64"] == 94.6
    assert coverage_only["fidelity"] is None and coverage_only["question"] is None  # empty question: no model run


def test_compare_follows_the_explore_tabs_media_video_frames_included(llava_pipeline, image_path):
    """With the Explore tab's analysis given, Compare runs on its media — here a video's sampled frames —
    not on whatever the image input still holds, and says what it compared."""
    from pathlib import Path

    from studio import handlers as H
    from studio.compare_tab import compare_view, on_compare

    video = Path(__file__).resolve().parents[1] / "assets" / "pan_zoom.mp4"
    if not video.exists():
        pytest.skip("assets/pan_zoom.mp4 is not in the checkout")
    from prunesid_vlm.serving import MANAGER

    MANAGER.install(llava_pipeline)
    state = dict(zip(H.VIEW_KEYS, H.on_prepare("video", None, str(video), 32, False, 1, None,
                                               progress=H._no_progress)))["state"]
    out = compare_view(image_path, "What happens?", 32, ["prunesid", "grid"], lambda: llava_pipeline,
                       answers=False, media=state)
    assert out["json"]["media"] == f"the {len(state.images)} frames sampled from pan_zoom.mp4"
    assert out["json"]["selection_budgets"] == [32] * len(state.images)
    assert "pan_zoom.mp4" in out["context"] and "K = 32" in out["context"]
    status = on_compare(lambda: llava_pipeline)(image_path, "What happens?", 32, ["grid"], False, 4, False, state,
                                                progress=lambda *a, **k: None)[2]
    assert status.startswith("**Compared on** the") and "no answers" in status


def test_native_dtype_reaches_the_baselines_that_take_it(llava_pipeline, images, image_path):
    from prunesid_vlm.studies import with_native_dtype
    from studio.compare_tab import TABLE_HEADERS, compare_view

    feats = llava_pipeline.encode(images[:1])
    options = with_native_dtype(llava_pipeline.method_options(feats, ["divprune", "vispruner", "grid"]),
                                ["divprune", "vispruner", "grid"], torch.bfloat16)
    assert options["divprune"]["native_dtype"] and options["vispruner"]["native_dtype"] and "grid" not in options
    assert options["divprune"]["features"].dtype == torch.bfloat16
    out = compare_view(image_path, "q", 64, ["divprune", "vispruner"], lambda: llava_pipeline, answers=False,
                       native_dtype=True)
    assert all(row["native_dtype"] for row in out["json"]["methods"])
    assert all(len(r) == len(TABLE_HEADERS) for r in out["table"])
    # The agreement with the authors' code is explained under the table (not in a column too long for it).
    assert "Beside its authors' code" in out["notes"] and get_method("divprune").versus_code in out["notes"]


def test_a_tower_alone_compares_methods_and_sweeps_without_answers(llava_pipeline, image_path):
    """Tower-only models have no language model: Compare, stability and the sweep still work, on
    the selections alone, and say so."""
    from dataclasses import replace as dc_replace

    from PIL import Image

    from prunesid_vlm.pipeline import NoAnswers, Pipeline
    from prunesid_vlm.registry import tower_only_spec
    from studio.compare_tab import compare_view, stability_view, sweep_view

    tower = Pipeline(dc_replace(llava_pipeline.loaded, spec=tower_only_spec("org/llava", "llava")))
    get = lambda: tower  # noqa: E731
    out = compare_view(image_path, "What is it?", 64, ["prunesid", "grid"], get, answers=True)
    assert out["json"]["question"] is None and any("vision tower alone" in n for n in out["json"]["notes"])
    assert stability_view(image_path, 64, 3, get)["json"]
    swept = sweep_view(image_path, "What is it?", "16, 64", ["prunesid"], get, with_model=True)
    assert swept["json"]["question"] is None
    with pytest.raises(NoAnswers):
        tower.answer([Image.open(image_path)], "What?")


def test_cdpruner_moves_with_the_question_and_prunesid_does_not(llava_pipeline, image_path):
    from studio.compare_tab import question_view

    out = question_view(image_path, "What animal is this?", "What is in the background?", 64, lambda: llava_pipeline)
    assert out["json"]["prunesid"] == [1.0] and out["json"]["cdpruner"][0] < 1.0
    assert "chooses by the question" in out["markdown"] and len(out["gallery"]) == 4
    with pytest.raises(ValueError, match="empty"):
        question_view(image_path, "What?", "", 64, lambda: llava_pipeline)


def test_opening_the_tab_offers_every_method_the_model_runs(llava_pipeline, image_path):
    """On the tiny LLaVA demo (CLIP tower and text side) every method runs and CDPruner chooses by
    the question (the Question sub-tab keeps its introduction); unticked methods stay unticked."""
    from types import SimpleNamespace

    import gradio as gr
    from PIL import Image

    from studio.compare_tab import on_availability

    feats = llava_pipeline.encode([Image.open(image_path).convert("RGB")])
    methods, intro = on_availability(lambda: llava_pipeline)(["prunesid", "cdpruner"], SimpleNamespace(feats=feats))
    assert [name for _, name in methods["choices"]] == [s.name for s in list_methods()]
    assert methods["value"] == ["prunesid", "cdpruner"] and intro["value"].startswith("Does the question change")
    assert on_availability(lambda: llava_pipeline)(["prunesid"], None) == (gr.update(), gr.update())


def test_select_gives_divprune_and_cdpruner_what_their_code_uses(llava_pipeline):
    """Without explicit options, the pipeline's select projects the tokens for DivPrune and CDPruner and
    weighs CDPruner's by the question: the same sets as with the options spelled out."""
    from conftest import make_image

    pipe = llava_pipeline
    feats = pipe.encode([make_image(21)])
    for method, question in (("divprune", None), ("cdpruner", "What animal is this?")):
        explicit = pipe.select(feats, 32, method=method, options=pipe.method_options(feats, [method], question=question))
        default = pipe.select(feats, 32, method=method, question=question)
        assert torch.equal(default.keep_row(0), explicit.keep_row(0))
    on_states = pipe.select(feats, 32, method="divprune", options={})
    assert not torch.equal(on_states.keep_row(0), pipe.select(feats, 32, method="divprune").keep_row(0))


def test_cdpruner_is_unavailable_when_clips_text_tower_cannot_be_loaded(deep_llava_pipeline, monkeypatch):
    """A CLIP-L/336 tower whose CLIP text side cannot be downloaded (offline, nothing cached): CDPruner
    is left out of the available methods with the reason, and the load is tried once, not per call."""
    import prunesid_vlm.base_pipeline as pipeline_module
    from prunesid_vlm.pipeline import Pipeline
    from prunesid_vlm.relevance import NoTextTower

    from conftest import make_image

    tries, load = [], pipeline_module.text_side_for

    def counted(*args, **kwargs):
        tries.append(1)
        return load(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "text_side_for", counted)
    pipe = Pipeline(deep_llava_pipeline.loaded)  # fresh caches over the same model
    feats = pipe.encode([make_image(5)])
    assert "cdpruner" not in pipe.available_methods(feats) and "divprune" in pipe.available_methods(feats)
    with pytest.raises(NoTextTower, match="openai/clip-vit-large-patch14-336"):
        pipe.text_side()
    assert len(tries) == 1


# ---- issue 24: every figure and label names the tokens actually handed over ---------------------------
def _line_x(fig, label: str, axis: int = 0) -> list[float]:
    """The x data of the line labelled ``label`` in the figure's ``axis``-th axes, ascending."""
    (line,) = [ln for ln in fig.axes[axis].get_lines() if ln.get_label() == label]
    return sorted(float(v) for v in line.get_xdata())


def test_the_sweep_draws_every_method_at_the_tokens_it_handed_over(llava_pipeline, image_path):
    """PruneSID-Dyn hands over K·φ/φ_ref, not K: its points sit at the counts of its selections (the
    ones the model is prefilled with), in both panels, and the JSON and the chart's caption say them."""
    from PIL import Image

    from prunesid_vlm.studies import handed_tokens
    from studio.compare_tab import sweep_view

    pipe, budgets = llava_pipeline, [16, 64, 192, 576]
    out = sweep_view(image_path, "What is this?", budgets, ["prunesid", "prunesid-dyn", "visionzip"], lambda: pipe,
                     mark=64)
    feats = pipe.encode([Image.open(image_path)])
    selections = {k: pipe.select(feats, k, method="prunesid-dyn") for k in budgets}
    handed = [handed_tokens(pipe, feats, selections[k]) for k in budgets]
    d = out["json"]
    assert d["handed_tokens"]["prunesid-dyn"] == handed and handed != budgets, "the demo's φ moves Dyn off K"
    for k, count in zip(budgets, handed):
        sel = selections[k]
        if bool(sel.kept_patches.all()):  # keeps every patch: answered unpruned, every patch and no CLS
            assert count == feats.num_patches and int(sel.num_tokens.sum()) == feats.num_patches + 1
        else:
            assert count == int(sel.num_tokens.sum())
    # What the model is given with that selection is that count (here at K = 64 and at the top, unpruned).
    for k in (64, 576):
        answer = pipe.answer([Image.open(image_path)], "What is this?", selections[k], max_new_tokens=1)
        assert answer.visual_tokens == handed[budgets.index(k)]
    fig = out["figure"]
    for axis in (0, 1):  # fidelity and coverage panels share the token axis
        assert _line_x(fig, "PruneSID-Dyn", axis) == sorted(float(v) for v in handed)
        assert _line_x(fig, "PruneSID", axis) == [float(k) for k in budgets]
    assert "visual tokens handed to the LLM" in fig.axes[-1].get_xlabel()
    caption = "\n".join(t.get_text() for t in fig.texts)
    assert "PruneSID-Dyn: " + ", ".join(map(str, handed)) in caption
    assert d["published_at_tokens"] == {str(k): k for k in budgets}


def test_the_compare_table_and_gallery_name_the_tokens_handed_over(llava_pipeline, image_path):
    """Token column and gallery captions are the selections' counts (PruneSID-Dyn's own one); the
    published column names the budget the paper's figure is for, never the count beside it."""
    from PIL import Image

    from prunesid_vlm import studies
    from studio.compare_tab import TABLE_HEADERS, compare_view

    pipe = llava_pipeline
    out = compare_view(image_path, "What is this?", 64, None, lambda: pipe, answers=False)
    made = studies.compare_methods(pipe, [Image.open(image_path)], 64, None, instruction="What is this?")
    counts = {r.label: int(r.selection.num_tokens.sum()) for r in made.runs}
    assert counts["PruneSID-Dyn"] != 64, "the demo's φ moves Dyn off K"
    column = TABLE_HEADERS.index("tokens to the LLM")
    for row in out["table"]:
        assert int(row[column].split(" = ")[0]) == counts[row[0]], row
    for (_, caption), (label, count) in zip(out["gallery"], counts.items()):
        assert caption == f"{label} · {count} tokens"
    paper = {row[0]: row[TABLE_HEADERS.index("paper's figure")] for row in out["table"]}
    assert paper["PruneSID"] == "95.9% at 64 tokens, LLaVA-1.5-7B"
    assert paper["PruneSID-Dyn"] == "96.3% at K = 64 (nominal), LLaVA-1.5-7B"  # not at its own count
    assert paper["Random"] == "not reported at 64 tokens"
    dyn = next(m for m in out["json"]["methods"] if m["method"] == "prunesid-dyn")
    assert dyn["tokens"] == counts["PruneSID-Dyn"] and dyn["published"]["num_tokens"] == 64
    assert f"here {counts['PruneSID-Dyn']} tokens for K = 64" in out["notes"]
    # At the top of the slider the selection keeps everything: the model gets its unpruned prompt, said so.
    top = compare_view(image_path, "", 577, ["prunesid"], lambda: pipe, answers=False)
    assert top["table"][0][column] == "576 = every patch (answered unpruned, no CLS)"
    assert top["gallery"][0][1] == "PruneSID · 576 tokens"


def test_a_method_counted_over_several_views_is_drawn_at_its_total(llava_pipeline, image_path):
    """Two frames (two views): the sweep's x and the table's count are the totals over both."""
    from prunesid_vlm import studies
    from tests.conftest import make_image

    frames = [make_image(31), make_image(32)]
    result, _ = studies.sweep(llava_pipeline, frames, [16, 64], ["prunesid", "prunesid-dyn"])
    feats = llava_pipeline.encode(frames)
    for name in ("prunesid", "prunesid-dyn"):
        assert result.handed_tokens(name) == [int(llava_pipeline.select(feats, k, method=name).num_tokens.sum())
                                              for k in (16, 64)]
    assert result.handed_tokens("prunesid") == [32, 128]
    assert any("mean over the 2 views" in n for n in result.notes)


def test_plot_budget_sweep_takes_each_methods_own_token_counts():
    fig = plot_budget_sweep([16, 64], {"A": [0.2, 0.1], "B": [0.3, 0.2]}, ylabel="KL", x={"B": [40, 150]},
                            note="B hands over its own count")
    assert _line_x(fig, "A") == [16.0, 64.0] and _line_x(fig, "B") == [40.0, 150.0]
    assert "B hands over" in fig.texts[0].get_text()
    with pytest.raises(ValueError, match="token counts"):
        plot_budget_sweep([16, 64], {"A": [0.2, 0.1]}, ylabel="KL", x={"A": [16]})


def test_unavailable_methods_carry_the_pipelines_reasons(llava_pipeline, image_path, monkeypatch):
    """Whatever the pipeline says a method lacks is what Compare, the sweep and the Question tab say —
    in the status line, the table, the notes and the JSON — and nothing is silently dropped."""
    from studio.compare_tab import compare_view, on_sweep, question_view, sweep_view

    pipe = llava_pipeline
    reasons = {"cdpruner": "a test reason only the pipeline knows", "visionzip": "another reason of the pipeline's"}
    monkeypatch.setattr(pipe, "unavailable_methods", lambda feats: dict(reasons))
    out = compare_view(image_path, "What is this?", 64, ["prunesid", "visionzip", "cdpruner"], lambda: pipe,
                       answers=False)
    assert out["json"]["unavailable"] == reasons
    assert [m["method"] for m in out["json"]["methods"]] == ["prunesid"]
    for reason in reasons.values():
        assert reason in out["context"] and reason in out["notes"] and any(reason in n for n in out["json"]["notes"])
    rows = {row[0]: row for row in out["table"]}
    assert reasons["cdpruner"] in rows["CDPruner"][2] and rows["CDPruner"][1] == "—"
    assert "no CLS token" not in out["context"]
    swept = sweep_view(image_path, "", "16, 64", ["prunesid", "cdpruner"], lambda: pipe, with_model=False)
    assert swept["json"]["unavailable"] == {"cdpruner": reasons["cdpruner"]} and reasons["cdpruner"] in swept["not_run"]
    status = on_sweep(lambda: pipe)(image_path, "", "16, 64", ["prunesid", "cdpruner"], False, 64,
                                    progress=lambda *a, **k: None)[1]
    assert reasons["cdpruner"] in status
    asked = question_view(image_path, "What animal is this?", "What is in the background?", 64, lambda: pipe)
    assert reasons["cdpruner"] in asked["markdown"] and asked["json"]["unavailable"] == {"cdpruner": reasons["cdpruner"]}
    assert len(asked["gallery"]) == 2  # PruneSID's two questions; no CDPruner side
    with pytest.raises(ValueError, match="another reason of the pipeline's"):
        sweep_view(image_path, "", "16", ["visionzip"], lambda: pipe, with_model=False)


def test_cdpruner_on_the_dinov2_demo_is_refused_for_its_real_reason(dinov2_pipeline, image_path):
    """The DINOv2 demo has a CLS token; what CDPruner lacks there is CLIP's text tower."""
    from PIL import Image

    from studio.compare_tab import compare_view

    reason = dinov2_pipeline.unavailable_methods(dinov2_pipeline.encode([Image.open(image_path)]))["cdpruner"]
    out = compare_view(image_path, "What is this?", 64, ["prunesid", "cdpruner"], lambda: dinov2_pipeline,
                       answers=False)
    assert reason in out["context"] and "CLIP" in reason and "no CLS token" not in out["context"] + out["notes"]


def test_a_sweep_past_the_models_tokens_is_swept_once_at_every_token(llava_next_video_pipeline, image_path):
    """NeXT-Video's frames have 144 patches: the tab's default budgets up to 576 sweep K = 192 and
    576 once, at 145 (every token), and say so, instead of refusing the whole sweep."""
    from studio.compare_tab import sweep_view

    out = sweep_view(image_path, None, "16, 64, 192, 576", ["prunesid", "random"], lambda: llava_next_video_pipeline,
                     with_model=False)
    d = out["json"]
    assert d["budgets"] == [16, 64, 145] and d["budgets_above_model"] == [192, 576]
    assert any("K = 192, 576 are above this model's 145 tokens per view" in t.get_text() for t in out["figure"].texts)


@pytest.mark.parametrize("pipeline_name", ["llava_pipeline", "llava_next_pipeline"])
def test_every_method_answers_at_the_largest_budget(request, pipeline_name):
    """K = 1+N: VisionZip keeps CLS and merges into extra tokens, handing over one token more than
    the model's own path (which drops CLS); the prompt grows to fit instead of crashing."""
    pipe = request.getfixturevalue(pipeline_name)
    images = [make_image(41)]
    feats = pipe.encode(images)
    budget = 1 + feats.hidden_states.shape[1] - 1
    methods = pipe.available_methods(feats)
    selections = [pipe.select(feats, budget, method=m, question="What is this?") for m in methods]
    logits = pipe.first_token_logits(images, "What is this?", selections)
    assert len(logits) == len(methods) and all(torch.isfinite(row).all() for row in logits)
    for method, selection in zip(methods, selections):
        answer = pipe.answer(images, "What is this?", selection, max_new_tokens=2)
        assert answer.visual_tokens == pipe.token_counts(feats, selection).total, method
