"""Deterministic Gram matrices and their top eigenvectors, for a batch at once.

PSCA needs the top eigenvectors of the N×N Gram matrix ``zc @ zcᵀ`` of every batch row. On the CPU:

* **Gram matrix.** Each row's N×N product is cut into four lower-triangle blocks of equal
  cost: the two diagonal halves (symmetric products, which numpy hands to BLAS ``syrk``,
  half the flops of a general product) and the off-diagonal half in two row slices (a
  ``gemm`` each), mirrored above the diagonal. The blocks are spread over one thread per
  core, so even a single image uses both cores; a row's blocks are the same BLAS calls
  whatever the batch, so its Gram matrix is bitwise the same alone or in any batch.
* **Eigenvectors.** float32 matrices (PSCA with G ≤ 16 groups) are solved by Lanczos
  (:mod:`krylov`, compiled, without the GIL), which stops only once the wanted
  eigenpairs are converged below float32's own accuracy; float64 matrices (G > 16), and
  any matrix on which Lanczos does not converge or which is rank-deficient, go to
  LAPACK's MRRR driver (``?syevr``, :mod:`lapack`). One task per row, on the same threads.

On other devices the Gram matrix is one batched product and ``torch.linalg.eigh`` solves
it. Every path is non-random: the same input gives the same vectors on every run, and a
row gets bitwise the same vectors alone or in any batch (tested).

SciPy's and numpy's OpenBLAS pools are held to one thread meanwhile: right after a torch
op, torch's OpenMP workers still spin on the same cores, and OpenBLAS's own workers spin
after each call; two pools fighting over two cores made single solves 10-100x slower
(seen: 15 ms -> 0.8 s).
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS before the pools are listed)
import torch
from threadpoolctl import ThreadpoolController

from .krylov import lanczos_top_eigenvectors
from .lapack import top_eigenpairs_inplace

KRYLOV_MIN_SIZE = 128
"""Smaller matrices go straight to LAPACK (cheap there, and Lanczos gains nothing)."""
KRYLOV_MAX_VECTORS = 16
"""More vectors than PSCA asks of a float32 matrix go to LAPACK (measured range only)."""

Block = tuple[slice, slice]


@lru_cache(maxsize=1)
def _blas_pools() -> ThreadpoolController:
    return ThreadpoolController()  # snapshot after scipy.linalg is imported (its OpenBLAS is loaded)


@lru_cache(maxsize=4)
def _helpers(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="prunesid-linalg")


def _workers() -> int:
    return max(torch.get_num_threads(), 1)


def _map(function: Callable, items: Iterable, workers: int) -> list:
    """``[function(item) ...]`` on ``workers`` threads: the caller and ``workers - 1`` helpers
    take the next item as they become free.

    The caller works too rather than waiting: right after a torch op, torch's idle OpenMP
    worker keeps spinning on one core for a few milliseconds, and a helper scheduled
    there stalls; the caller then takes the items the stalled helper would have taken
    (measured for one image's Gram matrix after the centring: 8.5 ms with two helpers
    and a waiting caller, against 4.3 ms for the Gram alone).
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
    batch = rows.detach().contiguous().numpy()
    grams = np.empty((batch.shape[0], batch.shape[1], batch.shape[1]), dtype=batch.dtype)
    with _blas_pools().limit(limits=1, user_api="blas"):
        _fill_grams(batch, grams, _workers())
    return torch.from_numpy(grams)


def _fill_grams(batch: np.ndarray, grams: np.ndarray, workers: int) -> None:
    blocks = gram_blocks(batch.shape[1])
    tasks = [(row, block) for row in range(len(batch)) for block in blocks]
    _map(lambda task: _gram_block(batch[task[0]], grams[task[0]], task[1]), tasks, workers)


def gram_top_eigenvectors(rows: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, N, k]``: top-k eigenvectors of ``rows @ rowsᵀ`` (largest first, same dtype).

    These are the top right singular vectors of ``rowsᵀ``. ``rows`` is ``[B, N, D]``,
    float32 or float64.
    """
    return top_eigenvectors(gram_matrix(rows), k, overwrite=True)  # the Gram matrix is ours to overwrite


def top_eigenvectors(matrix: torch.Tensor, k: int, *, overwrite: bool = False) -> torch.Tensor:
    """``[B, N, k]`` eigenvectors of the k largest eigenvalues, largest first (same dtype).

    ``matrix`` is ``[B, N, N]`` symmetric positive semi-definite (both triangles filled),
    float32 or float64. With ``overwrite=True`` a contiguous CPU ``matrix`` may be used as
    LAPACK's workspace (its contents are then destroyed, a copy saved).
    """
    n = matrix.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"asked for {k} eigenvectors of a {n}x{n} matrix")
    if matrix.device.type != "cpu":
        _, vectors = torch.linalg.eigh(matrix)  # ascending eigenvalues
        return vectors[..., -k:].flip(-1)
    batch = matrix.detach().contiguous().numpy()
    if not overwrite:
        batch = batch.copy()
    out = np.empty((batch.shape[0], n, k), dtype=batch.dtype)
    with _blas_pools().limit(limits=1, user_api="blas"):
        _map(lambda row: _solve_into(batch[row], k, out[row]), range(len(batch)), _workers())
    return torch.from_numpy(out)


def _solve_into(matrix: np.ndarray, k: int, out: np.ndarray) -> None:
    """Top-k eigenvectors of one full symmetric matrix into ``out`` (``[n, k]``); the
    matrix may be overwritten."""
    n = matrix.shape[0]
    if matrix.dtype == np.float32 and n >= KRYLOV_MIN_SIZE and k <= KRYLOV_MAX_VECTORS:
        vectors = lanczos_top_eigenvectors(matrix, k)
        if vectors is not None:
            out[:] = vectors
            return
    out[:] = top_eigenpairs_inplace(matrix, k)[::-1].T
