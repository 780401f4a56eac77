"""Process-level plumbing: CPU thread limits, the optional ZeroGPU decorator, logging.

Why limit threads: on a small shared CPU (2 cores, other processes busy) OpenBLAS and
torch's intra-op pool spin-wait for each other, and PruneSID's 576×576 eigen solve went
from ~40 ms to ~3.5 s. One thread for the selection step is always fast; the language
model keeps torch's default pool.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import threading
from typing import Callable, TypeVar

log = logging.getLogger("prunesid.studio")

F = TypeVar("F", bound=Callable)

_blas_done = False
_torch_threads_lock = threading.Lock()


def limit_blas_threads(n: int = 1) -> bool:
    """Set the OpenBLAS pools that NumPy and SciPy bundle to ``n`` threads (at run time).

    Best effort: returns False where no bundled OpenBLAS was found (e.g. MKL builds).
    """
    global _blas_done
    if _blas_done:
        return True
    found = False
    for package in ("scipy", "numpy"):
        try:
            module = __import__(package)
        except ImportError:
            continue
        libs = os.path.join(os.path.dirname(os.path.dirname(module.__file__)), f"{package}.libs")
        for path in glob.glob(os.path.join(libs, "*openblas*")):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                         "openblas_set_num_threads64_", "openblas_set_num_threads"):
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn(ctypes.c_int(n))
                    found = True
                    break
    _blas_done = found
    return found


@contextlib.contextmanager
def single_thread():
    """Run a small CPU computation (the selection) on one torch thread, then restore."""
    import torch

    with _torch_threads_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def gpu(duration: int = 60) -> Callable[[F], F]:
    """``spaces.GPU(duration=...)`` on Hugging Face ZeroGPU; a no-op everywhere else."""
    try:
        import spaces  # noqa: F401  (only present on Spaces)
    except ImportError:
        return lambda fn: fn
    try:
        return spaces.GPU(duration=duration)
    except Exception:  # an unusual `spaces` version must not stop the app
        log.warning("spaces.GPU could not be applied; running without ZeroGPU", exc_info=True)
        return lambda fn: fn
