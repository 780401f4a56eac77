"""Deterministic top eigenvectors of a batch of symmetric PSD matrices.

On the CPU every matrix is solved by Lanczos (:mod:`krylov`), which stops only once the
wanted eigenpairs are converged below float32's own accuracy: 2.5–7 ms for N = 576 and
G = 16, against ~11 ms for LAPACK's direct solve. If it does not converge, or the matrix
is rank-deficient, LAPACK's MRRR driver (``?syevr``, :mod:`lapack`) solves that matrix
directly. On other devices ``torch.linalg.eigh`` is used. Every path is non-random: the
same matrix gives the same vectors on every run, alone or in any batch.

Batch rows are solved one after the other. Lanczos does not scale across the two cores:
its matrix-vector products stream the matrix from the shared cache, and two at once ran
2.3x slower each (measured); eight rows in sequence took 39 ms against 57 ms for LAPACK
two at a time.

SciPy's and numpy's OpenBLAS pools are held to one thread meanwhile: right after a
torch op, torch's OpenMP workers still spin on the same cores, and OpenBLAS's own
workers spin after each call; two pools fighting over two cores made single solves
10-100x slower (seen: 15 ms -> 0.8 s).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS before the pools are listed)
import torch
from threadpoolctl import ThreadpoolController

from .krylov import lanczos_top_eigenvectors
from .lapack import top_eigenpairs_inplace

KRYLOV_MIN_SIZE = 128
"""Smaller matrices go straight to LAPACK (cheap there, and Lanczos gains nothing)."""


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
    with _blas_pools().limit(limits=1, user_api="blas"):
        for row, square in enumerate(batch):
            vectors = lanczos_top_eigenvectors(square, k) if n >= KRYLOV_MIN_SIZE else None
            if vectors is None:
                vectors = top_eigenpairs_inplace(square if overwrite else square.copy(), k)[::-1].T
            out[row] = vectors
    return torch.from_numpy(out)
