"""Model switching (issue 13, items 1-2; issue 23, item 4): only the picker switches the model,
and only locally; the model in use serves until its replacement has loaded; a refused or failed
switch changes nothing for anyone; a public deployment serves its owner's model, never a visitor's
choice, and only what its hardware's memory holds."""
from __future__ import annotations

import os
import threading

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from prunesid_vlm.pipeline import list_models  # noqa: E402
from studio import handlers as H  # noqa: E402
from prunesid_vlm import serving as M  # noqa: E402
from prunesid_vlm.serving import MANAGER, OWNER_CHOOSES, ModelManager, ModelPolicy, ModelRefused  # noqa: E402

CAT = os.path.join(os.path.dirname(__file__), "..", "assets", "cat.jpg")
PUBLIC = ModelPolicy(public=True, listed=tuple(s.model_id for s in list_models()), gpu_memory_gb=48.0,
                     memory_source="test")


def _never_load(*args, **kwargs):
    raise AssertionError(f"nothing may be loaded here, got {args}")


@pytest.fixture
def no_cuda(monkeypatch):
    """The GPU memory comes from the environment, as on a machine with no CUDA GPU visible."""
    monkeypatch.setattr(M, "_measured_gpu_memory", lambda: None)


def test_visitors_cannot_choose_the_model_of_a_public_deployment(no_cuda):
    policy = ModelPolicy.from_env({"SPACE_ID": "someone/prunesid-studio", "PRUNESID_GPU_MEMORY_GB": "24"})
    assert policy.public and not policy.allow_custom and policy.gpu_memory_gb == 24.0
    for wanted in (" llava-hf/llava-1.5-7b-hf ", "demo/tiny-llava-next", "someone/any-llava", "/etc/passwd",
                   "../../secrets", "x" * 500, "", None, 42):
        with pytest.raises(ModelRefused) as err:
            policy.check(wanted)
        assert str(err.value) == OWNER_CHOOSES and "owner" in str(err.value)  # never echoes what was typed
    assert ModelPolicy.from_env({"PRUNESID_PUBLIC": "1"}).public
    # The retired switches open nothing any more.
    for retired in ({"PRUNESID_ALLOW_CUSTOM_MODELS": "1"}, {"PRUNESID_ALLOWED_MODELS": "org/a, org/b"}):
        with pytest.raises(ModelRefused):
            ModelPolicy.from_env({"SPACE_ID": "s", **retired}).check("org/a")
    # Locally the picker switches among the list or any typed id, as before.
    private = ModelPolicy.from_env({"PRUNESID_MODEL": "org/start"})
    assert not private.public and private.allow_custom and "org/start" in private.listed
    assert private.check(" /some/local/folder ") == "/some/local/folder"
    for bad in ("", None, 42, "x" * 500):
        with pytest.raises(ModelRefused):
            private.check(bad)
    assert [c[1] for c in private.choices()] == list(private.listed)


def test_the_public_list_is_what_the_hardware_holds(no_cuda):
    specs = {s.model_id: s for s in list_models()}
    assert specs["llava-hf/llava-1.5-13b-hf"].memory_gb > 24 >= specs["llava-hf/llava-1.5-7b-hf"].memory_gb
    l4 = ModelPolicy.from_env({"SPACE_ID": "s", "PRUNESID_GPU_MEMORY_GB": "24"})
    assert "llava-hf/llava-1.5-7b-hf" in l4.listed and "llava-hf/llava-1.5-13b-hf" not in l4.listed
    assert set(l4.listed) == {m for m, s in specs.items() if s.memory_gb <= 24}
    t4 = ModelPolicy.from_env({"SPACE_ID": "s", "PRUNESID_GPU_MEMORY_GB": "16"})
    assert not any(m in t4.listed for m in ("llava-hf/llava-1.5-7b-hf", "Qwen/Qwen2-VL-7B-Instruct"))
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in t4.listed and "demo/tiny-llava-1.5" in t4.listed
    zero = ModelPolicy.from_env({"SPACE_ID": "s", "SPACES_ZERO_GPU": "true"})
    assert zero.gpu_memory_gb == M.ZEROGPU_MEMORY_GB and set(zero.listed) == set(specs)  # 48 GB holds them all
    cpu = ModelPolicy.from_env({"SPACE_ID": "s"})
    assert cpu.gpu_memory_gb is None and "llava-hf/llava-1.5-7b-hf" not in cpu.listed
    assert {"bczhou/tiny-llava-v1-hf", "tower/llava-hf/llava-1.5-7b-hf", "demo/tiny-llava-1.5"} <= set(cpu.listed)
    assert l4.start_problem("llava-hf/llava-1.5-7b-hf") is None and l4.start_problem("org/own-checkpoint") is None
    said = l4.start_problem("llava-hf/llava-1.5-13b-hf")
    assert said == "llava-hf/llava-1.5-13b-hf needs about 34.0 GB of GPU memory and this hardware has 24.0 GB"
    assert "needs a GPU" in cpu.start_problem("llava-hf/llava-1.5-7b-hf")
    assert ModelPolicy.from_env({"PRUNESID_GPU_MEMORY_GB": "8"}).start_problem("llava-hf/llava-1.5-13b-hf") is None


def test_a_public_start_model_that_does_not_fit_falls_back_to_the_demo_with_the_reason(llava_pipeline, monkeypatch,
                                                                                      no_cuda):
    loaded = []

    def load(model_id, *args, **kwargs):
        assert model_id.startswith("demo/"), f"{model_id} does not fit and may not be loaded"
        loaded.append(model_id)
        return llava_pipeline

    monkeypatch.setattr(M, "load_pipeline", load)
    policy = ModelPolicy.from_env({"SPACE_ID": "s", "PRUNESID_GPU_MEMORY_GB": "24"})
    manager = ModelManager("llava-hf/llava-1.5-13b-hf", policy=policy)
    assert manager.current() is llava_pipeline and loaded and manager.state.is_demo
    assert "34.0 GB" in manager.state.fallback_reason and "24.0 GB" in manager.state.fallback_reason
    assert "34.0 GB" in H.banner_text(manager)
    # The picker on a public deployment: the model in use and the demos it falls back to.
    ids = [c[1] for c in policy.choices("llava-hf/llava-1.5-13b-hf")]
    assert ids[0] == "llava-hf/llava-1.5-13b-hf" and "demo/tiny-llava-1.5" in ids
    assert policy.picker_info and "owner" in policy.picker_label


def test_a_public_deployment_refuses_every_switch_and_loads_nothing(llava_pipeline, monkeypatch):
    manager = ModelManager(policy=PUBLIC)
    manager.install(llava_pipeline)
    monkeypatch.setattr(M, "load_pipeline", _never_load)
    for typed in ("llava-hf/llava-1.5-7b-hf", "demo/tiny-llava-next", "/etc/passwd", "attacker/huge-llava",
                  "[x](http://example.invalid)"):
        outcome = manager.switch(typed)
        assert not outcome.changed and outcome.pipe is llava_pipeline and outcome.problem == OWNER_CHOOSES
        assert typed not in outcome.problem
    assert not manager.switch(llava_pipeline.model_id).problem  # asking for the model in use: nothing to do
    assert manager.current() is llava_pipeline and manager.state.switches == 1  # the install only
    # The same through the picker's handler, as a visitor (or a script calling it) would.
    previous = MANAGER.loaded
    monkeypatch.setattr(MANAGER, "policy", PUBLIC)
    MANAGER.install(llava_pipeline)
    try:
        warned = []
        monkeypatch.setattr(H, "warn", warned.append)
        banner = H.on_model_change("llava-hf/llava-1.5-7b-hf", None, progress=H._no_progress)[0]
        assert MANAGER.current() is llava_pipeline and warned == [OWNER_CHOOSES] and "owner" in banner
    finally:
        MANAGER.install(previous or llava_pipeline)


def test_a_failed_load_leaves_the_working_model_serving(llava_pipeline):
    manager = ModelManager()
    manager.install(llava_pipeline)
    outcome = manager.switch("no-such-org/no-such-model")
    assert not outcome.changed and "could not be loaded" in outcome.problem
    assert manager.current() is llava_pipeline and manager.state.active == llava_pipeline.model_id
    assert manager.state.fallback_reason is None  # nobody else's banner mentions it
    assert "no-such-model" not in H.banner_text(manager)
    public = ModelManager("/no/such/folder/on/this/server", policy=PUBLIC)  # an owner's typo
    public.current()
    hidden = public.state.fallback_reason
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
