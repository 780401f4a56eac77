"""LAPACK's MRRR eigensolver (``?syevr``) for the top eigenpairs, without the GIL.

The accelerated path's direct solver, behind the library's (:mod:`library`), which runs the
same LAPACK routine through ``scipy.linalg.eigh``. SciPy ships LAPACK (OpenBLAS) and
exposes its routines to compiled code as capsules in ``scipy.linalg.cython_lapack``; this
module calls ``ssyevr``/``dsyevr`` from there through ctypes, which releases the GIL for
the whole solve, so batch rows really run in parallel threads (SciPy's wrapper holds the
GIL and serialises them). It makes the very call the library path makes — the C-ordered
matrix's lower triangle as LAPACK's upper one (a C-ordered symmetric matrix *is* its
Fortran transpose), no copy — so its vectors are bitwise the library's (tested).
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np
import scipy.linalg.cython_lapack as cython_lapack

_INT = ctypes.c_int
_ARGUMENTS = 21  # ?syevr takes 21 pointers (Fortran calling convention)


@lru_cache(maxsize=None)
def _routine(name: str):
    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * _ARGUMENTS))(address)


def _call(matrix: np.ndarray, first: int, last: int, vectors: np.ndarray, values: np.ndarray,
          work: np.ndarray, iwork: np.ndarray, lwork: int, liwork: int) -> int:
    n = matrix.shape[0]
    scalar = ctypes.c_float if matrix.dtype == np.float32 else ctypes.c_double
    routine = _routine("ssyevr" if matrix.dtype == np.float32 else "dsyevr")
    found, info = _INT(0), _INT(0)
    isuppz = np.empty(2 * max(last - first + 1, 1), dtype=np.int32)
    ref = ctypes.byref
    routine(
        ref(ctypes.c_char(b"V")), ref(ctypes.c_char(b"I")), ref(ctypes.c_char(b"U")),  # C lower = F upper
        ref(_INT(n)), matrix.ctypes.data, ref(_INT(n)),
        ref(scalar(0)), ref(scalar(0)), ref(_INT(first)), ref(_INT(last)), ref(scalar(0)),
        ref(found), values.ctypes.data, vectors.ctypes.data, ref(_INT(n)), isuppz.ctypes.data,
        work.ctypes.data, ref(_INT(lwork)), iwork.ctypes.data, ref(_INT(liwork)), ref(info),
    )
    return info.value


@lru_cache(maxsize=16)
def _workspace_sizes(n: int, k: int, dtype: str) -> tuple[int, int]:
    probe = np.zeros((n, n), dtype=dtype)  # never read by a size query; calloc'd, so it takes no memory
    work, iwork = np.empty(1, dtype=dtype), np.empty(1, dtype=np.int32)
    vectors, values = np.empty((k, n), dtype=dtype), np.empty(n, dtype=dtype)
    info = _call(probe, n - k + 1, n, vectors, values, work, iwork, -1, -1)  # size query
    if info != 0:
        raise RuntimeError(f"LAPACK ?syevr workspace query failed (info={info})")
    return int(work[0]), int(iwork[0])


def top_eigenpairs_inplace(matrix: np.ndarray, k: int) -> np.ndarray:
    """``[k, n]`` eigenvectors (as rows) of the k largest eigenvalues, ascending order.

    ``matrix`` is a C-contiguous ``n×n`` float32/float64 array of which only the lower
    triangle is read; it is overwritten (LAPACK works in place).
    """
    n = matrix.shape[0]
    if matrix.dtype not in (np.float32, np.float64) or not matrix.flags.c_contiguous:
        raise ValueError("expected a C-contiguous float32 or float64 square matrix")
    lwork, liwork = _workspace_sizes(n, k, matrix.dtype.str)
    work, iwork = np.empty(lwork, dtype=matrix.dtype), np.empty(liwork, dtype=np.int32)
    vectors, values = np.empty((k, n), dtype=matrix.dtype), np.empty(n, dtype=matrix.dtype)
    info = _call(matrix, n - k + 1, n, vectors, values, work, iwork, lwork, liwork)
    if info != 0:
        raise RuntimeError(f"LAPACK ?syevr failed (info={info})")
    return vectors
