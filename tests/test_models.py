"""Model switching and the public allow-list (issue 13, item 1-2): only the picker switches the
model; the model in use serves until its replacement has loaded; a refused or failed switch
changes nothing for anyone; a public deployment serves only its list."""
from __future__ import annotations

import os
import threading

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from studio import handlers as H  # noqa: E402
from studio import models as M  # noqa: E402
from studio.models import MANAGER, ModelManager, ModelPolicy, ModelRefused  # noqa: E402

CAT = os.path.join(os.path.dirname(__file__), "..", "assets", "cat.jpg")
PUBLIC = ModelPolicy.from_env({"SPACE_ID": "someone/prunesid-studio"})


def _never_load(*args, **kwargs):
    raise AssertionError(f"nothing may be loaded here, got {args}")


def test_public_policy_serves_its_list_only():
    assert PUBLIC.public and not PUBLIC.allow_custom
    assert PUBLIC.check(" llava-hf/llava-1.5-7b-hf ") == "llava-hf/llava-1.5-7b-hf"
    assert PUBLIC.check("demo/tiny-llava-next") == "demo/tiny-llava-next"
    for bad in ("someone/any-llava", "/etc/passwd", "../../secrets", "x" * 500, "", None, 42):
        with pytest.raises(ModelRefused) as err:
            PUBLIC.check(bad)
        assert "passwd" not in str(err.value) and "someone" not in str(err.value)  # never echoed
    custom = ModelPolicy.from_env({"SPACE_ID": "s", "PRUNESID_ALLOW_CUSTOM_MODELS": "1"})
    assert custom.check("someone/any-llava") == "someone/any-llava"
    extra = ModelPolicy.from_env({"PRUNESID_PUBLIC": "1", "PRUNESID_ALLOWED_MODELS": "org/a, org/b",
                                  "PRUNESID_MODEL": "org/start"})
    assert {"org/a", "org/b", "org/start"} <= set(extra.listed) and extra.public
    private = ModelPolicy.from_env({})
    assert not private.public and private.check("/some/local/folder") == "/some/local/folder"
    assert [c[1] for c in PUBLIC.choices()] == list(PUBLIC.listed)


def test_a_refused_switch_loads_nothing_and_changes_nothing(llava_pipeline, monkeypatch):
    manager = ModelManager(policy=PUBLIC)
    manager.install(llava_pipeline)
    monkeypatch.setattr(M, "load_pipeline", _never_load)
    for typed in ("/etc/passwd", "attacker/huge-llava", "[x](http://example.invalid)"):
        outcome = manager.switch(typed)
        assert not outcome.changed and outcome.pipe is llava_pipeline and "its list" in outcome.problem
        assert typed not in outcome.problem
    assert manager.current() is llava_pipeline and manager.state.switches == 1  # the install only


def test_a_failed_load_leaves_the_working_model_serving(llava_pipeline):
    manager = ModelManager()
    manager.install(llava_pipeline)
    outcome = manager.switch("no-such-org/no-such-model")
    assert not outcome.changed and "could not be loaded" in outcome.problem
    assert manager.current() is llava_pipeline and manager.state.active == llava_pipeline.model_id
    assert manager.state.fallback_reason is None  # nobody else's banner mentions it
    assert "no-such-model" not in H.banner_text(manager)
    public = ModelManager(policy=ModelPolicy(public=True, allow_custom=True, listed=()))
    public.install(llava_pipeline)
    hidden = public.switch("/no/such/folder/on/this/server").problem
    assert "/no/such/folder" in hidden and "server log" in hidden and "Errno" not in hidden


def test_switches_are_serialised_and_each_is_true(llava_pipeline, llava_next_pipeline, monkeypatch):
    loaded = {llava_pipeline.model_id: llava_pipeline, llava_next_pipeline.model_id: llava_next_pipeline}
    inside = threading.Semaphore(1)
    seen = []

    def load(model_id, *args, **kwargs):
        assert inside.acquire(blocking=False), "two loads at once"
        try:
            seen.append(model_id)
            threading.Event().wait(0.05)
            return loaded[model_id]
        finally:
            inside.release()

    monkeypatch.setattr(M, "load_pipeline", load)
    manager = ModelManager()
    manager.install(llava_pipeline)
    outcomes = {}
    threads = [threading.Thread(target=lambda m=m: outcomes.setdefault(m, manager.switch(m)))
               for m in (llava_next_pipeline.model_id, llava_pipeline.model_id)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whatever the order, each switch that reported a change really happened, one after the other.
    final = manager.current().model_id
    assert final in loaded and manager.state.active == final
    changed = [m for m, o in outcomes.items() if o.changed]
    assert changed and changed[-1] == final  # the last switch to finish is the model in use


def test_uploads_slider_and_run_never_switch(llava_pipeline, llava_next_pipeline):
    previous = MANAGER.loaded
    MANAGER.install(llava_pipeline)
    try:
        switches = MANAGER.state.switches
        out = dict(zip(H.VIEW_KEYS, H.on_prepare("image", CAT, None, 64, False, 1, None, progress=H._no_progress)))
        state = out["state"]
        H.on_reselect(state, 100, False, 1, "image", CAT, None, "kept")
        H.on_answer(state, "What?", 64, False, 2, progress=H._no_progress)
        assert MANAGER.state.switches == switches and MANAGER.current() is llava_pipeline
        # Another visitor switches: this visitor's next Run re-encodes with the new model and says so,
        # and answering about the old analysis is refused with a reason instead of mixing models.
        MANAGER.install(llava_next_pipeline)
        refused = dict(zip(H.ANSWER_KEYS, H.on_answer(state, "What?", 64, False, 2, progress=H._no_progress)))
        assert "model in use changed" in refused["fidelity"]
        again = dict(zip(H.VIEW_KEYS, H.on_prepare("image", CAT, None, 64, False, 1, state,
                                                   progress=H._no_progress)))
        assert again["state"].model_id == llava_next_pipeline.model_id and "encoded again" in again["status"]
    finally:
        MANAGER.install(previous or llava_pipeline)


class _FakeGpuPipe:
    """Just what a GPU switch touches: where the model is, and the lock around model work."""

    def __init__(self, name, fail_on_cuda=False):
        import contextlib

        self.model_id, self.device, self.fail_on_cuda, self.moves = name, "cuda", fail_on_cuda, []
        self.loaded = type("Loaded", (), {"dtype": "bf16"})()
        self.is_demo, self.meaning = False, ""
        self.model_work = contextlib.nullcontext

    def move_to(self, device):
        if device == "cuda" and self.fail_on_cuda:
            raise RuntimeError("CUDA out of memory")
        self.moves.append(device)
        self.device = device


def test_a_gpu_switch_stages_on_the_cpu_and_restores_the_old_model_if_the_new_one_does_not_fit(monkeypatch):
    old = _FakeGpuPipe("org/old")
    manager = ModelManager()
    manager.install(old)
    staged = _FakeGpuPipe("org/too-big", fail_on_cuda=True)
    calls = []
    monkeypatch.setattr(M, "load_pipeline", lambda m, device=None, dtype=None: calls.append((m, device)) or staged)
    outcome = manager.switch("org/too-big")
    assert calls == [("org/too-big", "cpu")]  # loaded into CPU memory while the old model served
    assert not outcome.changed and "out of memory" in outcome.problem
    assert manager.current() is old and old.moves == ["cpu", "cuda"] and old.device == "cuda"
    fits = _FakeGpuPipe("org/fits")
    monkeypatch.setattr(M, "load_pipeline", lambda m, device=None, dtype=None: fits)
    assert manager.switch("org/fits").changed and manager.current() is fits and fits.device == "cuda"
