"""The app as ZeroGPU runs it: every model call in a process forked per call, arguments and
results pickled (``tests/zerogpu/spaces``, a stand-in for Hugging Face's ``spaces`` package).

* The real app (``python app.py``) started as a Space starts it (``SPACE_ID``, ``SYSTEM=spaces``,
  ``SPACES_ZERO_GPU``): ``/analyze``, ``/compare`` and every study return results, and one
  ``/analyze`` crosses onto the GPU once, asking for a duration sized from its work.
* The UI's handlers through the stand-in, in this process, against the same handlers run plainly:
  the same views, answers and pipeline state afterwards. Anything the UI needs that were set only
  inside a GPU call (lost with the worker) makes the two differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "zerogpu"
ASSETS = ROOT / "assets"

gradio_client = pytest.importorskip("gradio_client")


def _log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def space(tmp_path_factory, demo_cache):
    """``python app.py`` as a ZeroGPU Space runs it, on loopback; yields (url, crossing log, server log)."""
    from tests.zerogpu_space import zerogpu_space

    with zerogpu_space(tmp_path_factory.mktemp("zerogpu-space"), "demo/tiny-llava-1.5", demo_cache) as running:
        yield running


@pytest.fixture(scope="module")
def client(space):
    c = gradio_client.Client(space[0], verbose=False)
    yield c
    c.close()


def _no_server_paths(value, space_folder: Path) -> None:
    text = json.dumps(value)
    for path in (str(ROOT), str(space_folder), "/tmp/"):
        assert path not in text, f"a server path ({path}) in a response"


def _calls_during(log: Path, action) -> tuple[object, list[dict]]:
    before = len(_log_lines(log))
    value = action()
    return value, _log_lines(log)[before:]


def test_the_model_is_loaded_before_launch_and_no_call_crossed_yet(space):
    url, log, server_log = space
    printed = server_log.read_text()
    assert "model demo/tiny-llava-1.5 ready" in printed and "Traceback" not in printed
    assert _log_lines(log) == []


def test_analyze_answers_and_crosses_once(space, client):
    url, log, _ = space
    image = gradio_client.handle_file(str(ASSETS / "cat.jpg"))
    result, calls = _calls_during(log, lambda: client.predict(image, "What animal is this?", 64,
                                                               api_name="/analyze"))
    assert result["model"]["id"] == "demo/tiny-llava-1.5" and result["budget"] == 64
    assert len(result["selection"][0]["keep"]) == 64 and result["pruned"]["visual_tokens"] == 64
    assert isinstance(result["full"]["answer"], str) and isinstance(result["pruned"]["answer"], str)
    assert result["pruned"]["timings"]["selection_s"] > 0  # selected inside the crossing, and timed there
    assert len(calls) == 1 and calls[0]["ok"], calls
    # The time asked is sized from the work: the floor plus two short answers on a tiny model, not 120 s.
    assert 15 <= calls[0]["duration"] < 30, calls

    # Again at another budget: the features and the full answer come from the caller's caches,
    # so the worker encodes nothing and generates only the pruned answer.
    again, calls = _calls_during(log, lambda: client.predict(image, "What animal is this?", 32,
                                                              api_name="/analyze"))
    assert len(calls) == 1 and again["full"]["answer"] == result["full"]["answer"]
    assert "answers_cached" not in again  # whether someone else asked is nobody's business
    _no_server_paths([result, again], log.parent)


def test_compare_every_method_with_answers(space, client):
    url, log, _ = space
    image = gradio_client.handle_file(str(ASSETS / "coffee.jpg"))
    out, calls = _calls_during(log, lambda: client.predict(image, "What drink is shown?", 64, "", True,
                                                           api_name="/compare"))
    names = [row["method"] for row in out["methods"]]
    assert "prunesid" in names and "divprune" in names and len(names) >= 8
    assert all(isinstance(row["answer"], str) for row in out["methods"])
    assert isinstance(out["full_answer"], str)
    assert len(calls) == 1 and calls[0]["ok"], calls
    assert "generations" not in out  # on a public server: it would tell what others asked
    _no_server_paths(out, log.parent)


def test_each_study_runs_and_crosses_at_most_once(space, client):
    url, log, _ = space
    image = gradio_client.handle_file(str(ASSETS / "rocket.jpg"))
    sweep, calls = _calls_during(log, lambda: client.predict(image, "What is happening?", "16, 64", "prunesid,random",
                                                             api_name="/compare_sweep"))
    assert sweep["budgets"] == [16, 64] and len(calls) == 1 and calls[0]["ok"]
    stable, calls = _calls_during(log, lambda: client.predict(image, 64, 3, api_name="/compare_stability"))
    assert stable["seeds"] and len(calls) == 0  # the rocket's features are cached in the main process now
    study, calls = _calls_during(log, lambda: client.predict(image, "What is happening?", "16, 64",
                                                             api_name="/compare_in_llm"))
    assert study["rows"] and len(calls) == 1 and calls[0]["ok"]
    _no_server_paths([sweep, stable, study], log.parent)


def test_a_refused_input_is_refused_before_any_crossing(space, client):
    url, log, _ = space
    image = gradio_client.handle_file(str(ASSETS / "cat.jpg"))
    _, calls = _calls_during(log, lambda: pytest.raises(Exception, client.predict, image, "What?", 999,
                                                        api_name="/analyze"))
    assert calls == []


# ---- the handlers through the stand-in, against the same handlers run plainly ----------------------
def _standin_gpu(monkeypatch):
    """Route this process's GPU boundary through the forking, pickling stand-in."""
    import importlib.util

    from prunesid_vlm import device

    spec = importlib.util.spec_from_file_location("zerogpu_standin_spaces", STANDIN / "spaces" / "__init__.py")
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(device, "_on_gpu", standin.GPU(duration=device._requested_seconds)(device._run))


def _visit(pipe) -> dict:
    """What a visitor does on the Explore and Compare tabs, and what the UI keeps of it."""
    from studio import handlers as H
    from studio.compare_tab import compare_view, stability_view, sweep_view
    from prunesid_vlm.serving import MANAGER

    MANAGER.install(pipe)
    image = str(ASSETS / "cat.jpg")
    views = H.on_prepare.__wrapped__("image", image, None, 64, False, 1, None, progress=H._no_progress)
    state = views[H.VIEW_KEYS.index("state")]
    answered = H.on_answer.__wrapped__(state, "What is this?", 64, False, 16, progress=H._no_progress)
    state = answered[H.ANSWER_KEYS.index("state")]
    moved = H.on_reselect.__wrapped__(state, 32, False, 1, "image", image, None)
    state = moved[H.VIEW_KEYS.index("state")]
    again = H.on_answer.__wrapped__(state, "What is this?", 32, False, 16, progress=H._no_progress)
    state = again[H.ANSWER_KEYS.index("state")]
    compared = compare_view(image, "What is this?", 64, ["prunesid", "divprune", "random"], lambda: pipe,
                            max_new_tokens=8, media=state)
    swept = sweep_view(image, "What is this?", "16, 64", ["prunesid", "divprune"], lambda: pipe, media=state)
    stable = stability_view(image, 64, 3, lambda: pipe, media=state)
    return {
        "kept": state.selection.keep.tolist(), "budgets": state.budgets, "phi_ref": state.phi_ref,
        "reference_phis": state.reference_phis,
        "answers": {k: state.answered["texts"][k] for k in ("full_answer", "pruned_answer", "full_head",
                                                              "pruned_head")},
        "compare": [(row["method"], row["answer"], row["keep"]) for row in compared["json"]["methods"]],
        "compare_full": compared["json"]["full_answer"],
        "sweep": {m: swept["json"]["fidelity"][m] for m in swept["json"]["methods"]},
        "stability": stable["json"]["jaccard_vs_exact"],
        # What the pipeline holds for later (the caller's caches) and what it says ran:
        "caches": {name: sorted(map(repr, cache.keys())) for name, cache in pipe._caches().items()},
        "calibrated": pipe._calibration is not None,
        "stats": dict(pipe.stats),
    }


def test_the_ui_needs_nothing_that_stays_in_a_gpu_worker(monkeypatch, demo_cache):
    from prunesid_vlm import device
    from prunesid_vlm.pipeline import DEMO_MODEL_ID, load_pipeline
    from prunesid_vlm.serving import MANAGER

    previous = MANAGER.loaded
    try:
        plain = _visit(load_pipeline(DEMO_MODEL_ID, device="cpu"))
        _standin_gpu(monkeypatch)
        before = device.CROSSINGS["count"]
        forked = _visit(load_pipeline(DEMO_MODEL_ID, device="cpu"))
        crossings = device.CROSSINGS["count"] - before
    finally:
        if previous is not None:
            MANAGER.install(previous)
    assert forked == plain
    # Upload, Run, Run at another K, Compare, the sweep: one crossing each (the stability study
    # uses the features already cached).
    assert crossings == 5
    # The second Run reused the full answer: one full generation in all besides Compare's own.
    assert forked["stats"]["full_generations"] == 2 and forked["stats"]["tower_images"] == 1


def test_an_unpicklable_argument_fails_as_on_zerogpu(monkeypatch, llava_pipeline):
    """The stand-in is as strict as ZeroGPU: a lock in the arguments cannot cross."""
    import threading

    from prunesid_vlm import device

    _standin_gpu(monkeypatch)
    with pytest.raises(TypeError, match="pickle"):
        device.cross(llava_pipeline, "calibration", (threading.Lock(),), {}, cost=device.Cost())
