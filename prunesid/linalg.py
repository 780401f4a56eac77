"""Deterministic top eigenvectors of a batch of symmetric PSD matrices.

On the CPU:

* float32 matrices (PSCA with G ≤ 16 groups) are solved by Lanczos (:mod:`krylov`),
  which stops only once the wanted eigenpairs are converged below float32's own
  accuracy. The batch is cut into one chunk of rows per core; each chunk advances in
  lockstep in a thread (numpy's BLAS calls release the GIL). Measured for 576×576 and 16
  vectors, each pair in one run: one matrix 5.9 ms against 11.9 ms for LAPACK; eight in
  sequence 39 ms against 57 ms for LAPACK two rows at a time; eight as two chunks 22 ms
  against 34 ms in sequence (the second core helps less when the host is busy: 1.15x).
* float64 matrices (G > 16), and any matrix on which Lanczos does not converge or which
  is rank-deficient, go to LAPACK's MRRR driver (``?syevr``, :mod:`lapack`), two rows at
  a time in threads (its ctypes call releases the GIL). Lanczos stops at a residual
  that suits float32, not float64's far smaller one.

On other devices ``torch.linalg.eigh`` is used. Every path is non-random: the same input
gives the same vectors on every run, and a row gives bitwise the same vectors alone or in
any batch (tested).

SciPy's and numpy's OpenBLAS pools are held to one thread meanwhile: right after a
torch op, torch's OpenMP workers still spin on the same cores, and OpenBLAS's own
workers spin after each call; two pools fighting over two cores made single solves
10-100x slower (seen: 15 ms -> 0.8 s).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

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


@lru_cache(maxsize=1)
def _blas_pools() -> ThreadpoolController:
    return ThreadpoolController()  # snapshot after scipy.linalg is imported (its OpenBLAS is loaded)


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
    out = np.empty((batch.shape[0], n, k), dtype=batch.dtype)
    workers = min(len(batch), max(torch.get_num_threads(), 1))
    use_krylov = batch.dtype == np.float32 and n >= KRYLOV_MIN_SIZE and k <= KRYLOV_MAX_VECTORS

    def krylov(rows: np.ndarray) -> list[np.ndarray | None]:  # a chunk of rows in lockstep
        return lanczos_top_eigenvectors(batch[rows[0] : rows[-1] + 1], k)

    def direct(row: int) -> None:  # LAPACK for one row
        square = batch[row] if overwrite else batch[row].copy()
        out[row] = top_eigenpairs_inplace(square, k)[::-1].T

    with _blas_pools().limit(limits=1, user_api="blas"):
        unsolved = list(range(len(batch)))
        if use_krylov:
            chunks = np.array_split(np.arange(len(batch)), workers)  # one per core
            unsolved = []
            for rows, found in zip(chunks, _map(krylov, chunks, workers)):
                for row, vectors in zip(rows.tolist(), found):
                    if vectors is None:
                        unsolved.append(row)
                    else:
                        out[row] = vectors
        _map(direct, unsolved, workers)
    return torch.from_numpy(out)


def _map(function, items: list, workers: int) -> list:
    """``[function(item) ...]``, on ``workers`` threads when there is more than one item."""
    if workers == 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))
