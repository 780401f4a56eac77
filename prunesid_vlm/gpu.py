"""The one place model work crosses onto the GPU on Hugging Face ZeroGPU.

On ZeroGPU a GPU is attached only while a function decorated with ``spaces.GPU`` runs;
everywhere else the decorator does not exist and :func:`run_on_gpu` is a plain call. The
pipeline sends every tower pass, projection and generation through here, so there is
exactly one marked boundary and the UI needs no decorator of its own.
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

log = logging.getLogger("prunesid_vlm")

T = TypeVar("T")

GPU_SECONDS = 120
"""ZeroGPU's time limit per call: a 7B model's two generations of 64 tokens fit well inside."""


def gpu_decorator(duration: int = GPU_SECONDS) -> Callable[[Callable], Callable]:
    """``spaces.GPU(duration=...)`` on ZeroGPU; the identity elsewhere."""
    try:
        import spaces  # only present on Hugging Face Spaces
    except ImportError:
        return lambda fn: fn
    try:
        return spaces.GPU(duration=duration)
    except Exception:  # an unusual `spaces` version must not stop the app
        log.warning("spaces.GPU could not be applied; running without ZeroGPU", exc_info=True)
        return lambda fn: fn


@gpu_decorator()
def run_on_gpu(work: Callable[..., T], *args, **kwargs) -> T:
    """``work(*args, **kwargs)`` with the GPU attached (on ZeroGPU); results should be CPU data."""
    return work(*args, **kwargs)
