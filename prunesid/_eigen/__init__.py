"""PSCA's eigensolver: the exact top eigenvectors of a batch of Gram matrices (private).

``solve`` holds the entry points and the choice of solver (``solve.SOLVER``, from
``PRUNESID_EIGENSOLVER``): ``library`` (SciPy's LAPACK driver, the oracle) or the
accelerated path, ``krylov`` (Lanczos compiled with numba, where numba is installed) and
``lapack`` (the library's LAPACK call without the GIL). SciPy and numba are imported on
first use, not with the package.
"""
from .solve import (
    SOLVERS,
    channel_gram_matrix,
    channel_gram_top_eigenvectors,
    gram_matrix,
    gram_top_eigenvectors,
    top_eigenvectors,
    warm_up,
)

__all__ = [
    "SOLVERS",
    "channel_gram_matrix",
    "channel_gram_top_eigenvectors",
    "gram_matrix",
    "gram_top_eigenvectors",
    "top_eigenvectors",
    "warm_up",
]
