"""The one place model work crosses onto the GPU: one crossing per user action.

On Hugging Face **ZeroGPU** a GPU is attached only while a function decorated with
``spaces.GPU`` runs, and that function runs in a *worker process forked from the main one*:
its arguments and its result cross by pickle, and whatever it changes in memory stays in the
worker (which may be reused for later calls, or not). Everywhere else ``spaces`` is absent (or
inert) and the same function is a plain call in the caller's thread: one code path.

So a crossing carries a :class:`DeviceCall` — plain, picklable CPU data: which pipeline (a token,
resolved in the worker among the pipelines that existed when it was forked), what to run (a
pipeline method's name or a module-level function), its arguments, and a **seed** of the caller's
cache entries for the media involved — and brings back a :class:`DeviceReply`: the value and the
**journal** of what the work wrote into the pipeline's caches (features, answers, projections,
first-token logits, the calibration) and counted in its ``stats``. The caller applies the journal
when the work ran in another process, so everything the UI needs afterwards lives in the main
process, keyed by content; nothing is needed from the worker's memory.

Progress callbacks never cross (they are not picklable): they are kept here, by call, and handed
to the work only when it runs in the caller's process.
"""
from __future__ import annotations

import contextvars
import itertools
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol

log = logging.getLogger("prunesid_vlm")


class Pipeline(Protocol):
    """What a crossing needs of a pipeline (:class:`prunesid_vlm.pipeline.Pipeline` is one; named
    here rather than imported, since the pipeline imports this module)."""

    device_token: str
    billions: float

    def cache_seed(self, media: Any) -> dict: ...
    def recording(self, seed: dict, local: bool) -> ContextManager[dict]: ...
    def apply_journal(self, journal: dict) -> None: ...
    def after_fork(self) -> None: ...

MIN_GPU_SECONDS = 15
"""What every crossing asks of ZeroGPU at least: a fresh worker moves the model onto its GPU first."""
MAX_GPU_SECONDS = 300
"""The most one crossing asks for (a sweep of many budgets, or the in-LLM study on a 7B model)."""


def zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU (``SPACES_ZERO_GPU`` set, as ZeroGPU Spaces do)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


@dataclass(frozen=True)
class Cost:
    """What one crossing will do on the device, to size the time asked of ZeroGPU."""

    views: int = 0
    """Tower views to encode (calibration included)."""
    generations: int = 0
    """Greedy answers to generate."""
    new_tokens: int = 0
    """At most this many tokens per answer."""
    prefills: int = 0
    """Prefill-only passes (timed passes, sweep points, multiple-choice scores)."""

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.views + other.views, self.generations + other.generations,
                    max(self.new_tokens, other.new_tokens), self.prefills + other.prefills)


def gpu_seconds(cost: Cost, billions: float) -> int:
    """Seconds to ask ZeroGPU for ``cost`` on a model of ``billions`` parameters.

    Per-step figures for a 7B model in bf16 on a half H100/Blackwell card, with a margin of about
    3×: a tower view 0.05 s, a decoding step 0.05 s, a prefill 0.25 s; they scale with the model's
    size. A fresh worker first moves the weights onto the GPU (``MIN_GPU_SECONDS``)."""
    scale = max(billions, 0.5) / 7.0
    seconds = (MIN_GPU_SECONDS + 0.05 * cost.views
               + scale * (cost.generations * (0.25 + 0.05 * cost.new_tokens) + 0.25 * cost.prefills))
    return int(min(MAX_GPU_SECONDS, round(seconds)))


@dataclass
class DeviceCall:
    """One crossing: plain data only (it is pickled on ZeroGPU)."""

    pipeline: str
    """The token of the pipeline to run on (see :func:`register`)."""
    work: str | Callable
    """A :class:`Pipeline` method's name, or a module-level function taking the pipeline first."""
    args: tuple
    kwargs: dict
    seconds: int
    """What to ask ZeroGPU for (:func:`gpu_seconds`)."""
    seed: dict = field(default_factory=dict)
    """The caller's cache entries for the media involved (``Pipeline.cache_seed``)."""
    caller_pid: int = 0
    progress_id: int | None = None
    """Key of the caller's progress callback in :data:`_PROGRESS` (used only in the caller's process)."""


@dataclass
class DeviceReply:
    """What comes back: the value, and what the work wrote into the pipeline's caches."""

    value: Any
    journal: dict
    pid: int


_PIPELINES: "weakref.WeakValueDictionary[str, Pipeline]" = weakref.WeakValueDictionary()
_TOKENS = itertools.count(1)
_PROGRESS: dict[int, Callable] = {}
_PROGRESS_LOCK = threading.Lock()
_IN_ACTION: contextvars.ContextVar[bool] = contextvars.ContextVar("prunesid_in_device_action", default=False)
CROSSINGS = {"count": 0}
"""Crossings started by this process (tests and the benchmarks read it)."""


def register(pipe: "Pipeline") -> str:
    """A token naming ``pipe`` in this process and in workers forked from it."""
    token = f"{os.getpid()}-{next(_TOKENS)}"
    _PIPELINES[token] = pipe
    return token


def in_action() -> bool:
    """Whether the current code runs inside a crossing (nested model work then runs directly)."""
    return _IN_ACTION.get()


def _requested_seconds(call: DeviceCall) -> int:
    return call.seconds


def _run(call: DeviceCall) -> DeviceReply:
    """Executed where the GPU is (the worker on ZeroGPU, else the caller's thread)."""
    pipe = _PIPELINES.get(call.pipeline)
    if pipe is None:  # a worker forked before this model was loaded (ZeroGPU reuses idle workers)
        raise RuntimeError("the GPU worker does not hold the model in use (it was forked before the model was "
                           "switched); please try again")
    local = os.getpid() == call.caller_pid
    kwargs = dict(call.kwargs)
    if call.progress_id is not None:
        kwargs["progress"] = _PROGRESS.get(call.progress_id) if local else None
    marker = _IN_ACTION.set(True)
    try:
        with pipe.recording(call.seed, local) as journal:
            work = getattr(pipe, call.work) if isinstance(call.work, str) else call.work
            value = work(*call.args, **kwargs) if isinstance(call.work, str) else work(pipe, *call.args, **kwargs)
    finally:
        _IN_ACTION.reset(marker)
    return DeviceReply(value=value, journal=journal, pid=os.getpid())


def gpu_decorator(duration: Callable | int) -> Callable[[Callable], Callable]:
    """``spaces.GPU(duration=...)`` where the ``spaces`` package is importable (it is inert off
    ZeroGPU); the identity elsewhere."""
    try:
        import spaces  # present on Hugging Face Spaces
    except ImportError:
        return lambda fn: fn
    try:
        return spaces.GPU(duration=duration)
    except Exception:  # an unusual `spaces` version must not stop the app
        log.warning("spaces.GPU could not be applied; running without ZeroGPU", exc_info=True)
        return lambda fn: fn


_on_gpu: Callable[[DeviceCall], DeviceReply] = gpu_decorator(duration=_requested_seconds)(_run)
"""The one GPU function: every crossing of every action goes through it."""


def cross(pipe: "Pipeline", work: str | Callable, args: tuple, kwargs: dict, *, cost: Cost,
          media: Any = None) -> Any:
    """Run ``work`` on ``pipe`` with the GPU attached (one crossing) and return its value.

    ``media``: the images the work is about; the caller's cache entries for them go along, so
    that the worker re-encodes and re-answers nothing the caller already has. Inside a crossing
    this is a plain call."""
    if in_action():
        target = getattr(pipe, work) if isinstance(work, str) else (lambda *a, **k: work(pipe, *a, **k))
        return target(*args, **kwargs)
    progress = kwargs.pop("progress", None)
    progress_id = None
    if progress is not None:
        with _PROGRESS_LOCK:
            progress_id = id(progress) ^ next(_TOKENS)
            _PROGRESS[progress_id] = progress
    call = DeviceCall(pipeline=pipe.device_token, work=work, args=tuple(args), kwargs=kwargs,
                      seconds=gpu_seconds(cost, pipe.billions), seed=pipe.cache_seed(media),
                      caller_pid=os.getpid(), progress_id=progress_id)
    CROSSINGS["count"] += 1
    try:
        reply = _on_gpu(call)
    finally:
        if progress_id is not None:
            with _PROGRESS_LOCK:
                _PROGRESS.pop(progress_id, None)
    if reply.pid != os.getpid():
        pipe.apply_journal(reply.journal)
    return reply.value


def _fresh_locks_in_child() -> None:
    """A forked worker starts with one thread: locks another thread held at the fork would never
    be released there, so every pipeline gets new ones."""
    for pipe in list(_PIPELINES.values()):
        pipe.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)
