"""PSCA's eigensolver: the exact top eigenvectors of a batch of Gram matrices (private).

``solve`` holds the public entry points; ``krylov`` (compiled Lanczos) and ``lapack``
(GIL-free ``?syevr``) are accelerators behind it.
"""
from .solve import gram_matrix, gram_top_eigenvectors, top_eigenvectors

__all__ = ["gram_matrix", "gram_top_eigenvectors", "top_eigenvectors"]
