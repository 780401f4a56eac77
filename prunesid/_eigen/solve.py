"""Deterministic Gram matrices and their top eigenvectors, for a batch at once.

PSCA needs the top eigenvectors of the N×N Gram matrix ``zc @ zcᵀ`` of every batch row.

**Gram matrix (CPU).** Each row's N×N product is cut into four lower-triangle blocks of
equal cost: the two diagonal halves (symmetric products, which numpy hands to BLAS
``syrk``, half the flops of a general product) and the off-diagonal half in two row slices
(a ``gemm`` each), mirrored above the diagonal. The blocks are spread over one thread per
core, so even a single image uses every core; a row's blocks are the same BLAS calls
whatever the batch, so its Gram matrix is bitwise the same alone or in any batch.

**Eigenvectors (CPU)**, by one of two solvers, named by ``solver=`` or else by
:data:`SOLVER` (from the environment variable ``PRUNESID_EIGENSOLVER``):

* ``"library"`` (default): SciPy's ``eigh(subset_by_index=..., driver="evr")`` (LAPACK's MRRR
  driver ``?syevr``), row after row (:mod:`library`). The tests' oracle.
* ``"auto"`` (the optional accelerator, ``pip install ".[accel]"``): the same answers by faster
  means. It saves at most ~12 ms of a slider redraw and costs ~0.6 s more on a process's first
  selection (numba's import) and ~210 MB of install (``benchmarks/eigensolver.py``), so it is
  not the default. float32 matrices of PSCA's
  shape (G ≤ 16 components) go to Lanczos compiled with numba (:mod:`krylov`), which
  stops only once the wanted eigenpairs are converged below float32's own accuracy
  (tested: the library's group assignments on every reference case). Everything else —
  float64 matrices (G > 16), matrices on which Lanczos does not converge or which are
  rank-deficient, and every matrix where numba is not installed — goes to the library's
  own LAPACK call, made through ctypes so that it releases the GIL (:mod:`lapack`,
  bitwise the library's vectors, tested). Both release the GIL, so batch rows are solved
  in parallel, one task per row on the Gram matrix's threads.

On other devices the Gram matrix is one batched product and ``torch.linalg.eigh`` solves
it. Every path is non-random: the same input gives the same vectors on every run, and a
row gets bitwise the same vectors alone or in any batch (tested).

SciPy and numba are imported on the first CPU solve (or by :func:`warm_up`), not with the
package: ``import prunesid`` stays light for code that never decomposes on the CPU.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
import torch

log = logging.getLogger(__name__)

SOLVERS = ("auto", "library")
SOLVER: str = os.environ.get("PRUNESID_EIGENSOLVER", "library")
"""The CPU eigensolver of calls that name none: ``"library"`` or ``"auto"`` (see above).
Read from ``PRUNESID_EIGENSOLVER`` on import; assign to it to change it for the process."""

KRYLOV_MIN_SIZE = 128
"""Smaller matrices go straight to LAPACK (cheap there, and Lanczos gains nothing)."""
KRYLOV_MAX_VECTORS = 16
"""More vectors than PSCA asks of a float32 matrix go to LAPACK (the range Lanczos was validated on)."""

Block = tuple[slice, slice]
Lanczos = Callable[[np.ndarray, int], np.ndarray | None]

_setup_lock = threading.Lock()
_blas_limited = False


def _limit_blas_threads() -> None:
    """Hold NumPy's and SciPy's BLAS pools to one thread, once for the whole process (kept).

    This module does its own parallelism, one task per core (Gram blocks, batch rows), so
    BLAS threads on top would only oversubscribe the cores. Worse, OpenBLAS's workers spin
    after each call, as do torch's OpenMP workers after a torch op; on a small machine the
    pools then fight over the same cores and a single solve can take many times as long.
    The limit is set once and never restored: a per-call limit is undone when its call
    ends, so concurrent selections (the app serves several visitors) would lift each
    other's limit mid-solve.
    """
    global _blas_limited
    if _blas_limited:
        return
    with _setup_lock:
        if _blas_limited:
            return
        import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS: a pool not yet loaded cannot be limited)
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        _blas_limited = True


@dataclass(frozen=True)
class _Kernel:
    """The compiled Lanczos solver, or None with the reason it is not available."""

    solve: Lanczos | None
    status: str


_kernel: _Kernel | None = None


def _lanczos_kernel() -> _Kernel:
    """Import numba and compile (or load from numba's cache) the Lanczos steps, once."""
    global _kernel
    if _kernel is not None:
        return _kernel
    with _setup_lock:  # one compilation, even when warm_up and a first selection race
        if _kernel is None:
            _kernel = _load_kernel()
        return _kernel


def _load_kernel() -> _Kernel:
    try:
        import numba

        from . import krylov
    except ImportError as error:  # numba is optional: LAPACK solves every matrix then
        return _Kernel(None, f"unavailable ({error})")
    try:
        krylov.warm_up()
    except Exception as error:  # a numba that imports but cannot compile here must not stop selection
        log.warning("Lanczos kernel failed to compile; solving with LAPACK alone", exc_info=True)
        return _Kernel(None, f"failed to compile ({type(error).__name__}: {error})")
    return _Kernel(krylov.lanczos_top_eigenvectors, f"numba {numba.__version__}")


def _solver_name(solver: str | None) -> str:
    name = SOLVER if solver is None else solver
    if name not in SOLVERS:
        raise ValueError(f"unknown eigensolver {name!r} (PRUNESID_EIGENSOLVER or solver=); use one of {SOLVERS}")
    return name


def warm_up() -> dict[str, str]:
    """Prepare the CPU eigensolver now, where a wait is hidden (the app does it while its
    model loads), so the first selection pays for neither: limit the BLAS pools to one
    thread, and, when the accelerator is chosen (``"auto"``), import numba and compile the
    Lanczos kernel where numba is installed (the first compilation takes seconds; later
    processes load it from numba's cache). The library solver loads no numba.

    Returns what is in use: ``{"solver": "library" or "auto", "lanczos": "numba <version>",
    why it is unavailable, or that it is not used, "blas_threads": "1"}``. Never raises for want of numba;
    raises ValueError when ``PRUNESID_EIGENSOLVER`` names no solver.
    """
    name = _solver_name(None)
    _limit_blas_threads()
    lanczos = _lanczos_kernel().status if name == "auto" else "not used (the library solver is chosen)"
    return {"solver": name, "lanczos": lanczos, "blas_threads": "1"}


@lru_cache(maxsize=4)
def _helpers(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="prunesid-linalg")


if hasattr(os, "register_at_fork"):  # a forked child (a ZeroGPU worker) has none of the parent's threads
    os.register_at_fork(after_in_child=_helpers.cache_clear)


def _workers() -> int:
    return max(torch.get_num_threads(), 1)


def _map(function: Callable, items: Iterable, workers: int) -> list:
    """``[function(item) ...]`` on ``workers`` threads: the caller and ``workers - 1`` helpers
    take the next item as they become free.

    The caller works too rather than waiting: right after a torch op, torch's idle OpenMP
    worker keeps spinning on one core for a few milliseconds, and a helper scheduled there
    stalls; the caller then takes the items the stalled helper would have taken.
    """
    items = list(items)
    if workers == 1 or len(items) <= 1:
        return [function(item) for item in items]
    results: list = [None] * len(items)
    next_index = itertools.count()  # its __next__ is atomic: each index is taken once

    def drain() -> None:
        while (index := next(next_index)) < len(items):
            results[index] = function(items[index])

    helpers = [_helpers(workers - 1).submit(drain) for _ in range(min(workers, len(items)) - 1)]
    try:
        drain()
    finally:
        for helper in helpers:
            helper.result()  # waits, and raises what the helper raised
    return results


@lru_cache(maxsize=8)
def gram_blocks(n: int) -> tuple[Block, ...]:
    """The four blocks of the lower triangle of an ``n×n`` Gram matrix, each ~n²/8 products:
    the two diagonal halves (symmetric) and the off-diagonal half in two row slices."""
    half = n // 2
    quarter = half + (n - half) // 2
    return (
        (slice(0, half), slice(0, half)),
        (slice(half, n), slice(half, n)),
        (slice(half, quarter), slice(0, half)),
        (slice(quarter, n), slice(0, half)),
    )


def _gram_block(rows: np.ndarray, out: np.ndarray, block: Block) -> None:
    """Fill ``out[block]`` (and its mirror image above the diagonal) with ``rows @ rowsᵀ``."""
    row_part, column_part = block
    target = out[row_part, column_part]
    np.matmul(rows[row_part], rows[column_part].T, out=target)  # same operand twice: BLAS syrk
    if row_part != column_part:
        out[column_part, row_part] = target.T


def gram_matrix(rows: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]``: ``rows @ rowsᵀ`` for ``rows`` ``[B, N, D]``, both triangles filled."""
    if rows.device.type != "cpu":
        return torch.bmm(rows, rows.transpose(1, 2))
    _limit_blas_threads()
    batch = rows.detach().contiguous().numpy()
    grams = np.empty((batch.shape[0], batch.shape[1], batch.shape[1]), dtype=batch.dtype)
    blocks = gram_blocks(batch.shape[1])
    tasks = [(row, block) for row in range(len(batch)) for block in blocks]
    _map(lambda task: _gram_block(batch[task[0]], grams[task[0]], task[1]), tasks, _workers())
    return torch.from_numpy(grams)


def gram_top_eigenvectors(rows: torch.Tensor, k: int, *, solver: str | None = None) -> torch.Tensor:
    """``[B, N, k]``: top-k eigenvectors of ``rows @ rowsᵀ`` (largest first, same dtype).

    These are the top right singular vectors of ``rowsᵀ``. ``rows`` is ``[B, N, D]``,
    float32 or float64. ``solver``: ``"auto"`` or ``"library"`` (default :data:`SOLVER`).
    """
    return top_eigenvectors(gram_matrix(rows), k, overwrite=True, solver=solver)  # the Gram matrix is ours


MAPPED_ROWS = 1024
"""Rows of ``rows @ U`` computed per BLAS call in :func:`channel_gram_top_eigenvectors`: small
enough that the calls spread evenly over the cores (20 for a 20,000-token view), large enough
for BLAS to run at full speed; fixed, so that a row's vectors do not depend on the thread count."""


def channel_gram_matrix(rows: torch.Tensor) -> torch.Tensor:
    """``[B, D, D]``: ``rowsᵀ @ rows`` for ``rows`` ``[B, N, D]``, both triangles filled.

    On the CPU the same four lower-triangle blocks as :func:`gram_matrix`, on ``rowsᵀ``
    (the F-ordered view of each row, no copy), one thread per core.
    """
    if rows.device.type != "cpu":
        return torch.bmm(rows.transpose(1, 2), rows)
    _limit_blas_threads()
    batch = rows.detach().contiguous().numpy()
    d = batch.shape[2]
    grams = np.empty((batch.shape[0], d, d), dtype=batch.dtype)
    tasks = [(row, block) for row in range(len(batch)) for block in gram_blocks(d)]
    _map(lambda task: _gram_block(batch[task[0]].T, grams[task[0]], task[1]), tasks, _workers())
    return torch.from_numpy(grams)


def channel_gram_top_eigenvectors(rows: torch.Tensor, k: int, *, solver: str | None = None) -> torch.Tensor:
    """``[B, N, k]``: the top-k eigenvectors of ``rows @ rowsᵀ`` (N×N), found from ``rowsᵀ @ rows`` (D×D).

    The same vectors as :func:`gram_top_eigenvectors` (up to sign, and to the precision of the
    matrix), at the cost of the smaller problem when D < N: if ``rowsᵀ rows u = λ u`` then
    ``rows u`` is an eigenvector of ``rows rowsᵀ`` for the same λ, of length √λ. So the top-k
    eigenvectors U of the D×D matrix are solved for (by the same LAPACK call as the N×N ones) and
    mapped back, ``V = rows @ U``, each column divided by its own computed length. Memory is
    O(N·D + D² + N·k), time O(N·D² + D³); the N×N path is O(N²·D + N³) and holds N² numbers.

    The D×D matrix has at most D non-zero eigenvalues, the N×N one as many: eigenvectors beyond
    the rank (k > D, or eigenvalues at most ``D · eps · λ1``, the backward error of the D×D
    solve) lie in the N×N matrix's null space, where any orthonormal basis is as good as another
    and an N×N solver returns one chosen by rounding; here they are zero columns.

    ``rows``: ``[B, N, D]``, float64 for PSCA (float32 works, with the float32 Gram matrix's
    squared condition and a null-space cut-off ``D · eps`` of float32).
    """
    b, n, d = rows.shape
    if not 1 <= k <= n:
        raise ValueError(f"asked for {k} eigenvectors of a {n}x{n} matrix")
    solved = min(k, d)
    vectors = top_eigenvectors(channel_gram_matrix(rows), solved, overwrite=True, solver=solver)  # (B, D, solved)
    if rows.device.type != "cpu":
        mapped = torch.bmm(rows, vectors)  # (B, N, solved)
    else:
        source, basis = rows.detach().contiguous().numpy(), vectors.numpy()
        out = np.empty((b, n, solved), dtype=source.dtype)
        tasks = [(row, slice(start, start + MAPPED_ROWS)) for row in range(b) for start in range(0, n, MAPPED_ROWS)]
        _map(lambda task: np.matmul(source[task[0]][task[1]], basis[task[0]], out=out[task[0]][task[1]]), tasks, _workers())
        mapped = torch.from_numpy(out)
    lengths = torch.linalg.vector_norm(mapped, dim=1, keepdim=True)  # (B, 1, solved): √λ
    tolerance = d * torch.finfo(mapped.dtype).eps  # relative to λ1: numerically zero
    null = lengths.square() <= tolerance * lengths[:, :, :1].square()
    mapped = torch.where(null, torch.zeros((), dtype=mapped.dtype, device=mapped.device), mapped / lengths.masked_fill(null, 1))
    if solved < k:
        mapped = torch.nn.functional.pad(mapped, (0, k - solved))
    return mapped


def top_eigenvectors(matrix: torch.Tensor, k: int, *, overwrite: bool = False, solver: str | None = None) -> torch.Tensor:
    """``[B, N, k]`` eigenvectors of the k largest eigenvalues, largest first (same dtype).

    ``matrix`` is ``[B, N, N]`` symmetric positive semi-definite (both triangles filled),
    float32 or float64. With ``overwrite=True`` a contiguous CPU ``matrix`` may be used as
    LAPACK's workspace (its contents are then destroyed, a copy saved). ``solver``
    (CPU only): ``"auto"`` or ``"library"``, default :data:`SOLVER`.
    """
    n = matrix.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"asked for {k} eigenvectors of a {n}x{n} matrix")
    name = _solver_name(solver)
    if matrix.device.type != "cpu":
        _, vectors = torch.linalg.eigh(matrix)  # ascending eigenvalues
        return vectors[..., -k:].flip(-1)
    _limit_blas_threads()
    batch = matrix.detach().contiguous().numpy()
    if not overwrite:
        batch = batch.copy()
    out = np.empty((batch.shape[0], n, k), dtype=batch.dtype)
    if name == "library":
        from . import library

        for row in range(len(batch)):  # SciPy holds the GIL while it solves: threads would gain nothing
            out[row] = library.top_eigenvectors(batch[row], k)
    else:
        lanczos = _lanczos_kernel().solve if _lanczos_applies(batch.dtype, n, k) else None
        _map(lambda row: _solve_accelerated(batch[row], k, out[row], lanczos), range(len(batch)), _workers())
    return torch.from_numpy(out)


def _lanczos_applies(dtype: np.dtype, n: int, k: int) -> bool:
    """Whether Lanczos is tried (else numba is not even loaded): float32, large enough, few vectors."""
    return dtype == np.float32 and n >= KRYLOV_MIN_SIZE and k <= KRYLOV_MAX_VECTORS


def _solve_accelerated(matrix: np.ndarray, k: int, out: np.ndarray, lanczos: Lanczos | None) -> None:
    """Top-k eigenvectors of one full symmetric matrix into ``out`` (``[n, k]``), by
    ``lanczos`` where given and it converges, else by LAPACK; the matrix may be overwritten."""
    if lanczos is not None:
        vectors = lanczos(matrix, k)
        if vectors is not None:
            out[:] = vectors
            return
    from .lapack import top_eigenpairs_inplace  # loads SciPy (already loaded by the BLAS limit)

    out[:] = top_eigenpairs_inplace(matrix, k)[::-1].T
