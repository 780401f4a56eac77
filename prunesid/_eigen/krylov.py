"""Top eigenpairs of a symmetric matrix by Lanczos with full reorthogonalisation.

PSCA needs the G ≤ 16 leading eigenvectors of a 576×576 Gram matrix. A direct solver
first reduces the whole matrix to tridiagonal form (4/3·N³ flops, half of them
memory-bound). Lanczos builds the same reduction only as far as the leading eigenpairs
need — a few dozen matrix-vector products on CLIP-like cases — and stops only when they
are converged to below the accuracy the direct solver itself reaches in float32 (its
speed against LAPACK's subset solver: PERFORMANCE.md). The steps are compiled with numba
(``_lanczos_steps``; ``warm_up`` compiles or loads it ahead of time) because,
interpreted, numpy's per-call overhead is a large share of each small step.

This is an accelerator behind the library solver (:mod:`library`): imported only where
numba is installed, by :mod:`solve`, and tested to give the library's group assignments.

Why its vectors can stand in for the direct solver's:

* every step is reorthogonalised twice against the whole basis (classical Gram–Schmidt
  twice), so no spurious copies of converged eigenvalues appear;
* every ``CHECK_EVERY`` steps the small tridiagonal problem is solved and each wanted
  Ritz pair's residual ‖A y − θ y‖ = β_m·|s_mi| (exact in exact arithmetic; Parlett,
  *The Symmetric Eigenvalue Problem*) is compared with ``TOLERANCE``·max|α_j|, a lower
  bound of ``TOLERANCE``·θ₁;
* the start vector is fixed, so the same matrix always gives the same vectors.

When it does not converge within ``max_steps``, or the Krylov space becomes invariant
(a rank-deficient matrix, e.g. a flat image), it returns None and the caller uses LAPACK.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
import scipy.linalg.lapack

TOLERANCE = 1e-8
"""Residual bound relative to the largest eigenvalue (estimated from below by max |α_j|).
It is below float32's own backward error (~6e-8·‖A‖), so on a float32 matrix a converged
result is as exact as a direct float32 solve; it is far above float64's (use a direct
solver there). Measured: on the 82 float32 Gram matrices of the reference cases every
group assignment equals LAPACK's; on 32 CLIP-like matrices, 1e-7 still agreed and 1e-6
changed one."""

CHECK_EVERY = 8
"""Steps between convergence checks (each check solves an m×m tridiagonal problem)."""

_BREAKDOWN = 1e-6
"""β below this fraction of the largest |α| seen: the basis spans an invariant subspace."""

_START_SEED = 2603_09480  # arXiv id of the paper: any fixed value works


@lru_cache(maxsize=8)
def _start_vector(n: int, dtype: str) -> np.ndarray:
    """A fixed unit vector with no special structure (so it overlaps every eigenvector)."""
    vector = np.random.default_rng(_START_SEED).standard_normal(n)
    vector /= np.linalg.norm(vector)
    vector = vector.astype(dtype)
    vector.setflags(write=False)
    return vector


def _compiled(function):
    """``numba.njit`` without the GIL, cached on disk where a cache folder is writable.

    numba refuses ``cache=True`` outright (RuntimeError at decoration, i.e. on import) when
    neither the package's ``__pycache__`` nor the user's cache folder can be written, as in
    a read-only container: there the kernel is compiled once per process instead.
    """
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:
        return numba.njit(nogil=True)(function)


@_compiled
def _lanczos_steps(matrix, basis, alpha, beta, start, stop, scale, breakdown):  # pragma: no cover (compiled)
    """Lanczos steps ``start..stop-1``, compiled and without the GIL: (steps done, scale, broke down).

    Step j multiplies q_j = ``basis[j]`` by the matrix, removes its components along
    q_0..q_j twice (classical Gram–Schmidt twice), and stores α_j, β_j and q_{j+1}.
    ``np.dot`` on contiguous arrays is a BLAS call (gemv), exactly as in numpy.
    """
    w = np.empty(matrix.shape[0], dtype=matrix.dtype)
    for step in range(start, stop):
        np.dot(matrix, basis[step], w)  # A q_j
        previous = basis[: step + 1]
        coefficients = np.dot(previous, w)  # first Gram–Schmidt pass
        w -= np.dot(coefficients, previous)
        correction = np.dot(previous, w)  # second pass restores what the first lost
        w -= np.dot(correction, previous)
        alpha[step] = np.float64(coefficients[step]) + np.float64(correction[step])
        norm = math.sqrt(np.float64(np.dot(w, w)))
        beta[step] = norm
        scale = max(scale, abs(alpha[step]))
        if norm <= breakdown * scale:  # invariant subspace
            return step + 1, scale, True
        basis[step + 1] = w / norm
    return stop, scale, False


def lanczos_top_eigenvectors(matrix: np.ndarray, k: int, max_steps: int | None = None) -> np.ndarray | None:
    """``[n, k]`` top eigenvectors (largest first) of a full symmetric ``n×n`` matrix, or None.

    ``matrix`` is C-contiguous float32/float64 and is not modified. None means the
    iteration did not converge within ``max_steps`` (default n // 2) or broke down; the
    caller then solves the matrix directly. The steps run compiled, without the GIL
    (threads solving different matrices run in parallel), and a matrix gets bitwise the
    same vectors whichever thread solves it and whatever is solved beside it.
    """
    n = matrix.shape[0]
    max_steps = min(max_steps or n // 2, n - 1)
    first_check = max(2 * k, 2 * CHECK_EVERY)
    if k < 1 or first_check > max_steps:
        return None
    basis = np.empty((max_steps + 1, n), dtype=matrix.dtype)  # Lanczos vectors as rows
    basis[0] = _start_vector(n, matrix.dtype.str)
    alpha = np.empty(max_steps)
    beta = np.empty(max_steps)
    size, scale = 0, 0.0  # scale: max |α_j| so far, a lower bound on the largest eigenvalue
    while size < max_steps:
        stop = min(max(first_check, size + CHECK_EVERY), max_steps)
        size, scale, broke_down = _lanczos_steps(matrix, basis, alpha, beta, size, stop, scale, _BREAKDOWN)
        if broke_down:
            return None
        pairs = _ritz_if_converged(alpha[:size], beta[: size - 1], beta[size - 1], k, TOLERANCE * scale)
        if pairs is not None:
            return basis[:size].T @ pairs[:, ::-1].astype(matrix.dtype)  # largest first
    return None


def _ritz_if_converged(alpha: np.ndarray, beta: np.ndarray, next_beta: float, k: int, bound: float) -> np.ndarray | None:
    """The k top eigenvectors of the tridiagonal matrix (ascending) if all k Ritz pairs are
    converged. The k-th largest converges last: it is tested alone first (one vector
    instead of k), and all k only once it passes."""
    size = len(alpha)
    if _converged(alpha, beta, next_beta, size - k, size - k, bound) is None:
        return None
    return _converged(alpha, beta, next_beta, size - k, size - 1, bound)


def _converged(
    alpha: np.ndarray, beta: np.ndarray, next_beta: float, low: int, high: int, bound: float
) -> np.ndarray | None:
    """Eigenvectors ``low..high`` (0-based, ascending) of the tridiagonal matrix, if every
    matching Ritz pair's residual β_m·|s_mi| is at most ``bound``."""
    off_diagonal = np.append(beta, 0.0)  # ?stemr wants n entries and overwrites them
    count, _, vectors, info = scipy.linalg.lapack.dstemr(alpha, off_diagonal, 2, 0.0, 0.0, low + 1, high + 1)
    if info != 0 or count != high - low + 1:
        return None
    vectors = vectors[:, :count]
    return vectors if np.abs(next_beta * vectors[-1, :]).max() <= bound else None


def warm_up() -> None:
    """Compile the Lanczos steps now (or load them from numba's on-disk cache).

    The first compilation takes a few seconds; call this where a wait is hidden (the app
    does, while its model loads) so the first selection does not pay for it.
    """
    matrix = np.eye(8, dtype=np.float32)
    basis = np.zeros((2, 8), dtype=np.float32)
    basis[0, 0] = 1.0
    _lanczos_steps(matrix, basis, np.empty(1), np.empty(1), 0, 1, 0.0, _BREAKDOWN)
