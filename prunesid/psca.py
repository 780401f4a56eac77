"""PSCA: principal semantic components analysis — split patches into semantic groups.

Reference (``batch_pca``): ``Z = sigmoid(H[1:])ᵀ`` is a D×N matrix whose *channels* are
the samples and whose *tokens* are the variables; every token column is centred over
its D channels; the top-G right singular vectors V (N×G) are computed and token i
belongs to group ``argmax_j |V_ij|``. Groups are numbered by component, largest
singular value first.

The right singular vectors of the centred Z are the eigenvectors of the N×N Gram
matrix ``Zcᵀ Zc`` (``zc @ zcᵀ`` with our token-major ``zc``). They are found from the
smaller of two symmetric problems (:func:`decomposed_side`):

* N ≤ D (a LLaVA image, a small Qwen view): the N×N Gram matrix itself, by LAPACK through
  SciPy, or by its accelerators (Lanczos converged to working precision for G ≤ 16);
* N > D (a Qwen picture at full resolution, thousands of merged tokens): the D×D matrix
  ``Zc Zcᵀ`` (``zcᵀ @ zc``), in float64, whose top eigenvectors U map back to the same
  vectors, ``V = zc @ U`` with each column normalised — O(N·D²) instead of O(N²·D + N³),
  and no N×N matrix.

See :mod:`prunesid._eigen.solve`. All are exact to the precision of the matrix and
deterministic; only ``|V|`` is ever used, so the arbitrary sign of a column (which
differs between the two problems) changes nothing.
"""
from __future__ import annotations

import torch

from ._eigen import channel_gram_top_eigenvectors, gram_top_eigenvectors

FLOAT32_MAX_COMPONENTS = 16
"""Largest G decomposed in float32. Forming the Gram matrix squares the condition of the
problem: the eigenvector error grows like eps·λ1/gap, and beyond ~16 components the kept
eigenvalues are 100× below λ1 and close together, so float32 rounding flips group
assignments (measured on the reference cases: every case with G ≤ 16 agrees in float32,
about a fifth of those with G ≥ 24 do not; in float64 all but one near-tie agree)."""


def decomposed_side(num_tokens: int, channels: int) -> str:
    """Which symmetric problem gives the components: ``"tokens"`` (the N×N Gram matrix) when
    N ≤ D, else ``"channels"`` (the D×D one). Both give the same vectors; the smaller is cheaper
    (a size-n problem costs O(n³) and holds n² numbers)."""
    return "channels" if channels < num_tokens else "tokens"


def centred_token_matrix(hidden_states: torch.Tensor) -> torch.Tensor:
    """Float32 ``[B, N, D]``: sigmoid of the patch states, each token centred over its channels.

    ``hidden_states`` is ``[B, 1+N, D]`` with CLS first; CLS is excluded as in the reference.
    Row i of the result is column i of the reference's centred D×N matrix.
    """
    z = torch.sigmoid(hidden_states[:, 1:].float())  # (B, N, D), a fresh tensor
    return z.sub_(z.mean(dim=-1, keepdim=True))  # in place: one [B, N, D] buffer, not two


def principal_components(
    hidden_states: torch.Tensor,
    num_components: int,
    *,
    method: str = "exact",
    generator: torch.Generator | None = None,
    niter: int = 2,
) -> torch.Tensor:
    """Float32 ``[B, N, num_components]``: top principal directions over the token axis.

    ``method="exact"`` is deterministic (same input, same output, bit for bit).
    ``method="randomized"`` follows the reference's ``torch.pca_lowrank(q, niter)``
    scheme (a Gaussian sketch refined by ``niter`` power iterations), drawing the sketch
    from ``generator`` so that runs are reproducible when the caller wants them to be.
    Signs of the columns are arbitrary (only ``|V|`` is used).
    """
    zc = centred_token_matrix(hidden_states)  # (B, N, D)
    if method == "exact":
        if decomposed_side(zc.shape[1], zc.shape[2]) == "channels":
            zc = zc.double()  # always: the D×D matrix squares the condition as the N×N one does
            return channel_gram_top_eigenvectors(zc, num_components).float()
        if num_components > FLOAT32_MAX_COMPONENTS:
            zc = zc.double()  # see FLOAT32_MAX_COMPONENTS
        return gram_top_eigenvectors(zc, num_components).float()
    if method == "randomized":
        return _randomized_right_vectors(zc, num_components, generator, niter)
    raise ValueError(f"unknown PCA method {method!r}; use 'exact' or 'randomized'")


def _randomized_right_vectors(
    zc: torch.Tensor, q: int, generator: torch.Generator | None, niter: int
) -> torch.Tensor:
    """Randomised range finder (Halko et al.), the scheme behind ``torch.pca_lowrank``.

    ``zc`` is ``[B, N, D]`` (token-major); the reference's matrix is its transpose A = zcᵀ.
    """
    b, n, _ = zc.shape
    a = zc.transpose(1, 2)  # (B, D, N): the reference's centred matrix
    omega = torch.randn(n, q, generator=generator, dtype=zc.dtype, device="cpu").to(zc.device)
    basis = torch.linalg.qr(a @ omega).Q  # (B, D, q)
    for _ in range(niter):
        basis = torch.linalg.qr(zc @ basis).Q  # (B, N, q)
        basis = torch.linalg.qr(a @ basis).Q  # (B, D, q)
    small = basis.transpose(1, 2) @ a  # (B, q, N)
    _, _, vh = torch.linalg.svd(small, full_matrices=False)
    return vh.transpose(1, 2)  # (B, N, q)


def assign_groups(components: torch.Tensor, num_groups: torch.Tensor) -> torch.Tensor:
    """Long ``[B, N]``: group of each token = the component it loads on most (``argmax |V|``).

    ``components`` is ``[B, N, Gmax]``; row b only considers its first ``num_groups[b]``
    columns (batch rows with smaller budgets have fewer groups).
    """
    g_max = components.shape[-1]
    column = torch.arange(g_max, device=components.device)
    usable = column[None, :] < num_groups[:, None]  # (B, Gmax)
    loadings = components.abs().masked_fill(~usable[:, None, :], -1.0)
    return loadings.argmax(dim=-1)
