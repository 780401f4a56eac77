"""Which model the app uses: loaded lazily (or in a background thread), once per process.

The picker offers the hub checkpoints and the offline demo model. When the chosen model
cannot be loaded (no network, no GPU memory, a typo) the app falls back to the tiny demo
model and says so in a banner, with the reason.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import prunesid
from prunesid_vlm.pipeline import DEMO_MODEL_ID, ModelLoadError, Pipeline, list_models, load_pipeline

from .errors import log

ENV_MODEL = "PRUNESID_MODEL"
"""Environment variable naming the model to load at start (hub id, local folder or demo id)."""


def default_model_id() -> str:
    """``$PRUNESID_MODEL``; else LLaVA-1.5-7B when a CUDA GPU is visible; else the offline demo."""
    if os.environ.get(ENV_MODEL):
        return os.environ[ENV_MODEL].strip()
    try:
        import torch

        if torch.cuda.is_available():
            return "llava-hf/llava-1.5-7b-hf"
    except Exception:  # pragma: no cover - torch import problems surface elsewhere
        pass
    return DEMO_MODEL_ID


def model_choices() -> list[tuple[str, str]]:
    """``(label, model id)`` pairs for the picker, real checkpoints first."""
    return [(f"{s.description} — {s.model_id}" if not s.is_demo else s.description, s.model_id) for s in list_models()]


@dataclass
class ModelState:
    """What the page shows about the model in use."""

    requested: str
    active: str | None = None
    is_demo: bool = False
    fallback_reason: str | None = None
    loading: bool = False


class ModelManager:
    """Holds at most one loaded :class:`Pipeline` (a 7B model fills a GPU) and switches on request."""

    def __init__(self, model_id: str | None = None):
        self._lock = threading.RLock()
        self._pipe: Pipeline | None = None
        self.state = ModelState(requested=model_id or default_model_id())

    # --- loading -------------------------------------------------------------------------
    def get(self, model_id: str | None = None, progress=None, reasons: list[str] | None = None) -> Pipeline:
        """The pipeline for ``model_id`` (default: the last requested), loading it if needed.

        Falls back to the demo model when loading fails; raises :class:`ModelLoadError` only
        if even the demo model cannot be built. Why a fallback happened is appended to ``reasons``
        (for the visitor who asked); only the start-up model's fallback (``model_id=None``) is kept
        in ``state`` for every visitor's banner, since another visitor's typo is nobody else's news.
        """
        with self._lock:
            wanted = (model_id or self.state.requested or DEMO_MODEL_ID).strip()
            if self._pipe is not None and wanted in (self.state.active, self.state.requested):
                return self._pipe
            self.state.requested = wanted
            self.state.loading = True
            try:
                reason = self._load(wanted, progress)
            finally:
                self.state.loading = False
            self.state.fallback_reason = reason if model_id is None else None
            if reason and reasons is not None:
                reasons.append(reason)
            return self._pipe

    def _load(self, wanted: str, progress) -> str | None:
        """Load ``wanted`` (or the demo model instead); returns why it fell back, or None."""
        if progress is not None:
            progress(0.05, desc=f"Loading {wanted} (first use only)…")
        start = time.perf_counter()
        self._pipe = None  # free the old model before loading the next one
        try:
            pipe = load_pipeline(wanted)
            reason = None
        except (ModelLoadError, ValueError, OSError) as err:
            if wanted == DEMO_MODEL_ID:
                raise ModelLoadError(f"the offline demo model could not be built: {err}") from err
            log.warning("could not load %s, falling back to the demo model: %s", wanted, err)
            reason = f"{wanted} could not be loaded: {err}"
            if progress is not None:
                progress(0.3, desc="Falling back to the offline demo model…")
            pipe = load_pipeline(DEMO_MODEL_ID)
        self._pipe = pipe
        self.state.active = pipe.model_id
        self.state.is_demo = pipe.is_demo
        log.info("model %s ready in %.1f s%s", pipe.model_id, time.perf_counter() - start,
                 f" (fallback: {reason})" if reason else "")
        return reason

    def install(self, pipe: Pipeline) -> None:
        """Use an already loaded pipeline (tests, notebooks) instead of loading one."""
        with self._lock:
            self._pipe = pipe
            self.state.requested = self.state.active = pipe.model_id
            self.state.is_demo = pipe.is_demo
            self.state.fallback_reason = None

    def preload_in_background(self) -> threading.Thread:
        """Start loading the requested model now, and preparing the selection's eigensolver
        (BLAS threads, the compiled kernel where numba is installed), so the first Run waits for neither."""

        def work():
            try:
                self.get()
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


MANAGER = ModelManager()
"""The process-wide model holder the app's handlers use."""
