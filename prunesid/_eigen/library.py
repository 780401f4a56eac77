"""The library eigensolver: SciPy's LAPACK driver, the oracle the accelerated path answers to.

Imported on first use only (it loads SciPy), by :mod:`solve`.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg


def top_eigenvectors(matrix: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]`` eigenvectors of the k largest eigenvalues, largest first.

    ``matrix`` is a C-contiguous symmetric ``n×n`` float32/float64 array of which only the
    lower triangle is read; it may be overwritten. ``scipy.linalg.eigh`` runs LAPACK's MRRR
    driver ``?syevr`` for the top k only (``subset_by_index``): exact to the matrix's
    precision and deterministic.

    It is handed ``matrix.T``: for a C-ordered array that is the Fortran-ordered view of the
    same memory (no copy), equal to the matrix since it is symmetric, and its upper triangle
    (``lower=False``) is the matrix's lower one. That is exactly the call :mod:`lapack` makes
    without the GIL, so the two give bitwise the same vectors (tested).
    """
    n = matrix.shape[0]
    _, vectors = scipy.linalg.eigh(
        matrix.T, lower=False, subset_by_index=(n - k, n - 1), driver="evr",
        overwrite_a=True, check_finite=False,  # finite by construction: select_tokens checks its inputs
    )
    return vectors[:, ::-1]
