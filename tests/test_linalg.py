"""The exact PSCA building blocks: the lower-triangle Gram matrix and the LAPACK eigensolver."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from prunesid.linalg import top_eigenvectors
from prunesid.psca import centred_token_matrix, lower_gram, principal_components
from tests.reference_data import case_tensors


def _aligned(vectors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``vectors`` with each column's sign flipped to match ``reference`` (signs are arbitrary)."""
    signs = torch.sign((vectors * reference).sum(dim=-2, keepdim=True))
    return vectors * signs


@pytest.mark.parametrize("panels", [1, 3, 4, 7])
def test_lower_gram_equals_the_full_product_on_and_below_the_diagonal(panels):
    rows = torch.randn(2, 50, 9, generator=torch.Generator().manual_seed(panels))
    lower = torch.ones(50, 50, dtype=torch.bool).tril()
    assert torch.allclose(lower_gram(rows, panels)[:, lower], (rows @ rows.transpose(1, 2))[:, lower], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_eigenvectors_match_eigh_and_read_only_the_lower_triangle(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 60, generator=g, dtype=dtype)
    full = x @ x.transpose(1, 2)
    expected = torch.linalg.eigh(full).eigenvectors[..., -5:].flip(-1)

    lower = torch.ones(40, 40, dtype=torch.bool).tril()
    poisoned = torch.where(lower, full, torch.full_like(full, float("nan")))  # strict upper: garbage
    kept = poisoned.clone()
    vectors = top_eigenvectors(poisoned, 5)
    assert torch.equal(poisoned.isnan(), kept.isnan()) and torch.equal(poisoned.nan_to_num(), kept.nan_to_num()), \
        "the input must be left alone unless overwrite=True"
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(_aligned(vectors, expected), expected, atol=tol)
    assert vectors.dtype == dtype and vectors.shape == (3, 40, 5)


def test_overwrite_gives_the_same_vectors():
    x = torch.randn(2, 30, 45, generator=torch.Generator().manual_seed(2))
    gram = x @ x.transpose(1, 2)
    assert torch.equal(top_eigenvectors(gram.clone(), 4, overwrite=True), top_eigenvectors(gram, 4))


def test_eigenvectors_are_bitwise_reproducible_across_calls_and_threads():
    hidden, _ = case_tensors(3)
    batch = torch.cat([hidden, case_tensors(5)[0], hidden])  # rows 0 and 2 are the same image
    first = principal_components(batch, 16)
    assert torch.equal(first[0], first[2]), "a row's result must not depend on its batch neighbours"
    with ThreadPoolExecutor(max_workers=2) as pool:  # concurrent callers (e.g. app sessions)
        results = list(pool.map(lambda _: principal_components(batch, 16), range(4)))
    assert all(torch.equal(r, first) for r in results)


def test_exact_components_span_the_top_principal_subspace():
    hidden, _ = case_tensors(7)
    zc = centred_token_matrix(hidden).double()
    expected = torch.linalg.svd(zc.transpose(1, 2), full_matrices=False).Vh.transpose(1, 2)[..., :16]
    got = principal_components(hidden, 16).double()
    # Loadings agree to float32 working precision of the decomposition.
    assert torch.allclose(_aligned(got, expected).abs(), expected.abs(), atol=5e-4)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="eigenvectors"):
        top_eigenvectors(torch.eye(4)[None], 5)
