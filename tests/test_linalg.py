"""The exact PSCA building blocks: the Gram matrix and the eigensolvers (Lanczos, LAPACK)."""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import numpy as np

from prunesid._eigen.krylov import lanczos_top_eigenvectors
from prunesid._eigen.lapack import top_eigenpairs_inplace
from prunesid._eigen.solve import gram_blocks, gram_matrix, gram_top_eigenvectors, top_eigenvectors
from prunesid.psca import centred_token_matrix, principal_components
from tests.reference_data import case_tensors


def _aligned(vectors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``vectors`` with each column's sign flipped to match ``reference`` (signs are arbitrary)."""
    signs = torch.sign((vectors * reference).sum(dim=-2, keepdim=True))
    return vectors * signs


@pytest.mark.parametrize("n", [1, 2, 3, 50, 51, 577])
def test_gram_matrix_equals_the_full_product(n):
    rows = torch.randn(2, n, 9, generator=torch.Generator().manual_seed(n))
    gram = gram_matrix(rows)
    assert torch.allclose(gram, rows @ rows.transpose(1, 2), atol=1e-5)
    assert torch.equal(gram, gram.transpose(1, 2)), "both triangles must be filled, exactly symmetric"


@pytest.mark.parametrize("n", [1, 2, 5, 576, 577])
def test_gram_blocks_tile_the_lower_triangle_exactly_once(n):
    cover = np.zeros((n, n), dtype=int)
    for rows, columns in gram_blocks(n):
        block = cover[rows, columns]
        if rows == columns:
            block += np.tri(len(block), dtype=int)  # a symmetric block counts its lower triangle
        else:
            block += 1
    assert np.array_equal(cover, np.tri(n, dtype=int))


def test_gram_eigenvectors_of_a_batch_equal_those_of_each_row_bitwise():
    hidden = torch.cat([case_tensors(seed)[0] for seed in (1, 3)])
    zc = centred_token_matrix(hidden)
    together = gram_top_eigenvectors(zc, 16)
    for row in range(2):
        assert torch.equal(gram_top_eigenvectors(zc[row : row + 1], 16)[0], together[row])
        assert torch.equal(gram_matrix(zc[row : row + 1])[0], gram_matrix(zc)[row])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_top_eigenvectors_match_eigh_and_leave_the_input_alone(dtype, batch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 200, 300, generator=g, dtype=dtype)  # 200 >= the Lanczos size
    full = x @ x.transpose(1, 2)
    expected = torch.linalg.eigh(full).eigenvectors[..., -5:].flip(-1)
    kept = full.clone()
    vectors = top_eigenvectors(full, 5)
    assert torch.equal(full, kept), "the input must be left alone unless overwrite=True"
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    assert torch.allclose(_aligned(vectors, expected), expected, atol=tol)
    assert vectors.dtype == dtype and vectors.shape == (batch, 200, 5)


def test_lapack_reads_only_the_lower_triangle():
    x = np.random.default_rng(3).standard_normal((40, 60)).astype(np.float32)
    full = x @ x.T
    poisoned = np.where(np.tri(40, dtype=bool), full, np.nan).astype(np.float32)
    expected = np.linalg.eigh(full.astype(np.float64))[1][:, -4:]
    got = top_eigenpairs_inplace(poisoned, 4).T  # rows -> columns, ascending
    assert np.allclose(np.abs(got), np.abs(expected), atol=1e-4)


def test_lanczos_agrees_with_lapack_on_clip_like_gram_matrices():
    """Both solvers are exact to float32 working precision: same groups, loadings within 1e-4."""
    hidden = torch.cat([case_tensors(seed)[0] for seed in (0, 4, 9)])
    gram = gram_matrix(centred_token_matrix(hidden)).numpy()
    for row in gram:
        krylov = lanczos_top_eigenvectors(row, 16)
        assert krylov is not None, "Lanczos should converge on CLIP-like Gram matrices"
        direct = top_eigenpairs_inplace(row.copy(), 16)[::-1].T
        assert np.array_equal(np.abs(krylov).argmax(1), np.abs(direct).argmax(1))
        assert np.abs(np.abs(krylov) - np.abs(direct)).max() < 1e-4


_UNCACHED_LANCZOS = """
import sys
import numpy as np
from numba.core import caching
caching.CacheImpl._locator_classes = []  # as in a read-only container: nowhere to cache
from prunesid._eigen.krylov import lanczos_top_eigenvectors
matrix = np.load(sys.argv[1])
np.save(sys.argv[2], lanczos_top_eigenvectors(matrix, 16))
"""


def test_lanczos_runs_where_numba_cannot_cache_and_gives_the_same_vectors(tmp_path):
    """numba raises on import-time ``cache=True`` when no cache folder is writable; the
    package must still import there, and compile the same kernel in memory."""
    gram = gram_matrix(centred_token_matrix(case_tensors(3)[0])).numpy()[0]
    np.save(tmp_path / "gram.npy", gram)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", _UNCACHED_LANCZOS, str(tmp_path / "gram.npy"), str(tmp_path / "out.npy")],
                   cwd=root, check=True, timeout=300)
    assert np.array_equal(np.load(tmp_path / "out.npy"), lanczos_top_eigenvectors(gram, 16))


def test_lanczos_gives_up_on_rank_deficient_matrices_and_lapack_takes_over():
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(4))
    low_rank = (x @ x.T)[None]  # rank 3 < the 8 vectors asked for
    assert lanczos_top_eigenvectors(low_rank[0].numpy(), 8) is None
    vectors = top_eigenvectors(low_rank, 8)
    assert torch.allclose(vectors.transpose(1, 2) @ vectors, torch.eye(8)[None], atol=1e-4)
    expected = torch.linalg.eigh(low_rank.double()).eigenvectors[..., -3:].flip(-1).float()
    assert torch.allclose(_aligned(vectors[..., :3], expected), expected, atol=1e-4)


def test_lanczos_is_deterministic_and_blind_to_batch_neighbours():
    hidden = torch.cat([case_tensors(seed)[0] for seed in (2, 6, 8)])
    gram = gram_matrix(centred_token_matrix(hidden)).numpy()
    first = [lanczos_top_eigenvectors(row, 16) for row in gram]
    with ThreadPoolExecutor(max_workers=3) as pool:  # the same matrices solved side by side
        again = list(pool.map(lambda row: lanczos_top_eigenvectors(row, 16), gram))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # ... also through the public entry point, which spreads batches over threads.
    single = top_eigenvectors(torch.from_numpy(gram[1:2]), 16)
    assert torch.equal(top_eigenvectors(torch.from_numpy(gram), 16)[1], single[0])


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
