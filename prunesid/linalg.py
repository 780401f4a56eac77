"""Deterministic top eigenvectors of a batch of symmetric PSD matrices.

On the CPU:

* float32 matrices (PSCA with G ≤ 16 groups) are solved by Lanczos (:mod:`krylov`),
  row by row, which stops only once the wanted eigenpairs are converged below float32's
  own accuracy: 5.9 ms for 16 vectors of a 576×576 matrix, against 12 ms for LAPACK on
  one core, and 39 ms for 8 rows against 57 ms for LAPACK two rows at a time (measured);
* float64 matrices (G > 16), and any matrix on which Lanczos does not converge or which
  is rank-deficient, go to LAPACK's MRRR driver (``?syevr``, :mod:`lapack`), two batch
  rows at a time in threads (its ctypes call releases the GIL). Lanczos stops at a
  residual that suits float32, not float64's far smaller one.

Lanczos gets nothing from a second thread: its many short numpy calls hand the GIL back
and forth, and two rows at once ran 2.3x slower each. On other devices
``torch.linalg.eigh`` is used. Every path is non-random: the same input gives the same
vectors on every run, and a row gives the same vectors alone or in a batch.

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
    use_krylov = batch.dtype == np.float32 and n >= KRYLOV_MIN_SIZE and k <= KRYLOV_MAX_VECTORS

    def solve(row: int) -> None:
        vectors = lanczos_top_eigenvectors(batch[row], k) if use_krylov else None
        if vectors is None:
            vectors = top_eigenpairs_inplace(batch[row] if overwrite else batch[row].copy(), k)[::-1].T
        out[row] = vectors

    workers = 1 if use_krylov else min(len(batch), max(torch.get_num_threads(), 1))
    with _blas_pools().limit(limits=1, user_api="blas"):
        if workers == 1:
            for row in range(len(batch)):
                solve(row)
        else:  # LAPACK rows in parallel: the ctypes call releases the GIL, one core each
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(solve, range(len(batch))))
    return torch.from_numpy(out)
