"""The exact PSCA building blocks: the Gram matrix and the eigensolvers.

The library solver (SciPy's ``eigh``) is the oracle; the accelerated path (Lanczos
compiled with numba, and the same LAPACK call made without the GIL) must give its group
assignments, and its vectors up to sign.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from prunesid import select_tokens
from prunesid._eigen import library, solve
from prunesid._eigen.lapack import top_eigenpairs_inplace
from prunesid._eigen.solve import gram_blocks, gram_matrix, gram_top_eigenvectors, top_eigenvectors
from prunesid.psca import FLOAT32_MAX_COMPONENTS, centred_token_matrix, principal_components
from yardsticks.reference_data import REFERENCE_DIR, case_tensors, cases_module, expected_cases

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("library", "auto")

FLOAT32_VECTOR_TOLERANCE = 2e-4
"""Largest loading difference allowed between two float32 solvers. Both are exact to
float32 working precision; a vector's error grows like eps·λ1/gap (largest seen on the
reference cases: below 1e-4)."""


def _krylov():
    """The compiled Lanczos module (skips the calling test where numba is not installed)."""
    pytest.importorskip("numba")
    from prunesid._eigen import krylov

    return krylov


def _aligned(vectors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``vectors`` with each column's sign flipped to match ``reference`` (signs are arbitrary)."""
    signs = torch.sign((vectors * reference).sum(dim=-2, keepdim=True))
    return vectors * signs


def _run(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; its standard output."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---- the Gram matrix ---------------------------------------------------------------------------
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


# ---- every solver: exact, deterministic, blind to the batch -----------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_gram_eigenvectors_of_a_batch_equal_those_of_each_row_bitwise(solver):
    hidden = torch.cat([case_tensors(seed)[0] for seed in (1, 3)])
    zc = centred_token_matrix(hidden)
    together = gram_top_eigenvectors(zc, 16, solver=solver)
    for row in range(2):
        assert torch.equal(gram_top_eigenvectors(zc[row : row + 1], 16, solver=solver)[0], together[row])
        assert torch.equal(gram_matrix(zc[row : row + 1])[0], gram_matrix(zc)[row])


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_top_eigenvectors_match_eigh_and_leave_the_input_alone(dtype, batch, solver):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 200, 300, generator=g, dtype=dtype)  # 200 >= the Lanczos size
    full = x @ x.transpose(1, 2)
    expected = torch.linalg.eigh(full).eigenvectors[..., -5:].flip(-1)
    kept = full.clone()
    vectors = top_eigenvectors(full, 5, solver=solver)
    assert torch.equal(full, kept), "the input must be left alone unless overwrite=True"
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    assert torch.allclose(_aligned(vectors, expected), expected, atol=tol)
    assert vectors.dtype == dtype and vectors.shape == (batch, 200, 5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_overwrite_gives_the_same_vectors(solver):
    x = torch.randn(2, 30, 45, generator=torch.Generator().manual_seed(2))
    gram = x @ x.transpose(1, 2)
    assert torch.equal(top_eigenvectors(gram.clone(), 4, overwrite=True, solver=solver),
                       top_eigenvectors(gram, 4, solver=solver))


@pytest.mark.parametrize("solver", SOLVERS)
def test_eigenvectors_are_bitwise_reproducible_across_calls_and_threads(solver, monkeypatch):
    monkeypatch.setattr(solve, "SOLVER", solver)  # principal_components takes the process-wide setting
    hidden, _ = case_tensors(3)
    batch = torch.cat([hidden, case_tensors(5)[0], hidden])  # rows 0 and 2 are the same image
    first = principal_components(batch, 16)
    assert torch.equal(first[0], first[2]), "a row's result must not depend on its batch neighbours"
    with ThreadPoolExecutor(max_workers=2) as pool:  # concurrent callers (e.g. app sessions)
        results = list(pool.map(lambda _: principal_components(batch, 16), range(4)))
    assert all(torch.equal(r, first) for r in results)


@pytest.mark.parametrize("solver", SOLVERS)
def test_exact_components_span_the_top_principal_subspace(solver, monkeypatch):
    monkeypatch.setattr(solve, "SOLVER", solver)
    hidden, _ = case_tensors(7)
    zc = centred_token_matrix(hidden).double()
    expected = torch.linalg.svd(zc.transpose(1, 2), full_matrices=False).Vh.transpose(1, 2)[..., :16]
    got = principal_components(hidden, 16).double()
    # Loadings agree to float32 working precision of the decomposition.
    assert torch.allclose(_aligned(got, expected).abs(), expected.abs(), atol=5e-4)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="eigenvectors"):
        top_eigenvectors(torch.eye(4)[None], 5)
    with pytest.raises(ValueError, match="unknown eigensolver"):
        top_eigenvectors(torch.eye(4)[None], 2, solver="fast")


# ---- the accelerators against the library -----------------------------------------------------
@pytest.mark.parametrize("solve_direct", [top_eigenpairs_inplace, library.top_eigenvectors], ids=["lapack", "library"])
def test_direct_solvers_read_only_the_lower_triangle(solve_direct):
    x = np.random.default_rng(3).standard_normal((40, 60)).astype(np.float32)
    full = x @ x.T
    poisoned = np.where(np.tri(40, dtype=bool), full, np.nan).astype(np.float32)
    expected = np.linalg.eigh(full.astype(np.float64))[1][:, -4:][:, ::-1]
    got = solve_direct(poisoned, 4)
    got = got[::-1].T if solve_direct is top_eigenpairs_inplace else got  # rows, ascending -> columns, largest first
    assert np.allclose(np.abs(got), np.abs(expected), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_gil_free_lapack_call_is_bitwise_the_library_call(dtype):
    hidden = torch.cat([case_tensors(seed)[0] for seed in (0, 4)])
    for row in gram_matrix(centred_token_matrix(hidden).to(dtype)).numpy():
        for k in (1, 16, 48):
            assert np.array_equal(top_eigenpairs_inplace(row.copy(), k)[::-1].T, library.top_eigenvectors(row.copy(), k))


def test_lanczos_agrees_with_the_library_on_clip_like_gram_matrices():
    """Both are exact to float32 working precision: same groups, loadings within tolerance."""
    krylov = _krylov()
    hidden = torch.cat([case_tensors(seed)[0] for seed in (0, 4, 9)])
    gram = gram_matrix(centred_token_matrix(hidden)).numpy()
    for row in gram:
        lanczos = krylov.lanczos_top_eigenvectors(row, 16)
        assert lanczos is not None, "Lanczos should converge on CLIP-like Gram matrices"
        direct = library.top_eigenvectors(row.copy(), 16)
        assert np.array_equal(np.abs(lanczos).argmax(1), np.abs(direct).argmax(1))
        assert np.abs(np.abs(lanczos) - np.abs(direct)).max() < FLOAT32_VECTOR_TOLERANCE


def _reference_inputs() -> list[tuple[str, torch.Tensor, int]]:
    """(name, hidden states with CLS first, PSCA components) for every shared reference case:
    the LLaVA cases of expected.json and the Qwen2-VL merged tokens of qwen_expected.json."""
    inputs = []
    for case in expected_cases():
        hidden = torch.cat([case_tensors(seed, tuple(case["regions"]))[0] for seed in case["seeds"]])
        inputs.append((f"seeds={case['seeds']} K={case['num_tokens']}", hidden, case["num_tokens"] // 4))
    qwen_file = REFERENCE_DIR / "qwen_expected.json"
    qwen = json.loads(qwen_file.read_text()) if qwen_file.is_file() else {"cases": []}
    for case in qwen["cases"]:
        # make_case's first row plays CLS; centred_token_matrix drops it, leaving Qwen's merged tokens
        hidden = cases_module().make_case(case["seed"], grid=case["grid"], dim=qwen["dim"], regions=tuple(case["regions"]))[0]
        inputs.append((f"qwen seed={case['seed']} grid={case['grid']}", hidden, max(case["need_token_num"] // 4, 1)))
    return inputs


@pytest.mark.slow
def test_the_accelerated_path_gives_the_library_groups_on_every_reference_case():
    krylov = _krylov()
    lanczos_rows = 0
    for name, hidden, groups in _reference_inputs():
        zc = centred_token_matrix(hidden)
        if groups > FLOAT32_MAX_COMPONENTS:
            zc = zc.double()  # as principal_components does
        gram = gram_matrix(zc)  # the input both solvers are given (top_eigenvectors leaves it alone)
        oracle = top_eigenvectors(gram, groups, solver="library")
        accelerated = top_eigenvectors(gram, groups, solver="auto")
        assert torch.equal(accelerated.abs().argmax(-1), oracle.abs().argmax(-1)), f"{name}: groups differ"
        if zc.dtype == torch.float64:
            assert torch.equal(accelerated, oracle), f"{name}: float64 goes to the library's own LAPACK call"
            continue
        assert (_aligned(accelerated, oracle) - oracle).abs().max() < FLOAT32_VECTOR_TOLERANCE, name
        lanczos_rows += sum(krylov.lanczos_top_eigenvectors(row, groups) is not None for row in gram.numpy())
    assert lanczos_rows >= 90, "the float32 cases should be solved by Lanczos, not by its LAPACK fallback"


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
    kernel must still load there, and compile the same code in memory."""
    krylov = _krylov()
    gram = gram_matrix(centred_token_matrix(case_tensors(3)[0])).numpy()[0]
    np.save(tmp_path / "gram.npy", gram)
    _run(_UNCACHED_LANCZOS, str(tmp_path / "gram.npy"), str(tmp_path / "out.npy"))
    assert np.array_equal(np.load(tmp_path / "out.npy"), krylov.lanczos_top_eigenvectors(gram, 16))


def test_lanczos_gives_up_on_rank_deficient_matrices_and_lapack_takes_over():
    krylov = _krylov()
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(4))
    low_rank = (x @ x.T)[None]  # rank 3 < the 8 vectors asked for
    assert krylov.lanczos_top_eigenvectors(low_rank[0].numpy(), 8) is None
    vectors = top_eigenvectors(low_rank, 8, solver="auto")
    assert torch.equal(vectors, top_eigenvectors(low_rank, 8, solver="library"))
    assert torch.allclose(vectors.transpose(1, 2) @ vectors, torch.eye(8)[None], atol=1e-4)
    expected = torch.linalg.eigh(low_rank.double()).eigenvectors[..., -3:].flip(-1).float()
    assert torch.allclose(_aligned(vectors[..., :3], expected), expected, atol=1e-4)


def test_lanczos_is_deterministic_and_blind_to_batch_neighbours():
    krylov = _krylov()
    hidden = torch.cat([case_tensors(seed)[0] for seed in (2, 6, 8)])
    gram = gram_matrix(centred_token_matrix(hidden)).numpy()
    first = [krylov.lanczos_top_eigenvectors(row, 16) for row in gram]
    with ThreadPoolExecutor(max_workers=3) as pool:  # the same matrices solved side by side
        again = list(pool.map(lambda row: krylov.lanczos_top_eigenvectors(row, 16), gram))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # ... also through the public entry point, which spreads batches over threads.
    single = top_eigenvectors(torch.from_numpy(gram[1:2]), 16, solver="auto")
    assert torch.equal(top_eigenvectors(torch.from_numpy(gram), 16, solver="auto")[1], single[0])
    assert torch.equal(single[0], torch.from_numpy(first[1]))


# ---- the process: lazy imports, BLAS threads, no numba ------------------------------------------
_FRESH_PROCESS = """
import json, sys, threading
import prunesid
before = sorted(m for m in ("numba", "scipy") if m in sys.modules)
import torch
from threadpoolctl import threadpool_info
generator = torch.Generator().manual_seed(3)  # synthetic: this check needs no shared reference cases
hidden, attention = torch.randn(1, 577, 64, generator=generator), torch.rand(1, 576, generator=generator)
worker = threading.Thread(target=lambda: prunesid.select_tokens(hidden, attention, 64))  # first use off the main thread, as in the app
worker.start(); worker.join()
after = sorted(m for m in ("numba", "scipy") if m in sys.modules)
blas = sorted({pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"})
print(json.dumps({"before": before, "after": after, "blas_threads": blas}))
"""


def test_import_loads_neither_numba_nor_scipy_and_the_first_solve_limits_blas_once():
    """The eigensolver's libraries load on its first use (SciPy; numba only for the optional
    accelerator); that use holds every BLAS pool to one thread for good, even when it happens
    on a worker thread."""
    report = json.loads(_run(_FRESH_PROCESS).strip().splitlines()[-1])
    assert report["before"] == [], f"import prunesid loaded {report['before']}"
    assert report["after"] == ["scipy"]  # the default solver is SciPy's: numba is never imported
    assert report["blas_threads"] == [1]


_WITHOUT_NUMBA = """
import json, os, sys
sys.modules["numba"] = None  # as if numba were not installed: importing it raises ImportError
os.environ["PRUNESID_EIGENSOLVER"] = "auto"  # the accelerator asked for, and missing
import prunesid
import torch
status = prunesid.warm_up()
cases = torch.load(sys.argv[1])
keeps = [prunesid.select_tokens(hidden, attention, budget).keep.tolist() for hidden, attention, budget in cases]
print(json.dumps({"status": status, "keeps": keeps}))
"""


def test_without_numba_selection_falls_back_to_lapack_and_keeps_the_same_tokens(tmp_path, monkeypatch):
    pytest.importorskip("numba")  # the comparison needs the accelerated run here
    monkeypatch.setattr(solve, "SOLVER", "auto")
    pairs = [case_tensors(seed) for seed in (0, 3, 5)]
    batch = (torch.cat([h for h, _ in pairs]), torch.cat([a for _, a in pairs]))
    cases = [(*pairs[0], 16), (*pairs[1], 64), (*batch, 64), (*pairs[2], 192)]
    torch.save(cases, tmp_path / "cases.pt")
    report = json.loads(_run(_WITHOUT_NUMBA, str(tmp_path / "cases.pt")).strip().splitlines()[-1])
    assert report["status"]["solver"] == "auto" and report["status"]["lanczos"].startswith("unavailable")
    with_numba = [select_tokens(hidden, attention, budget).keep.tolist() for hidden, attention, budget in cases]
    assert report["keeps"] == with_numba


def test_warm_up_names_the_solver_in_use(monkeypatch):
    monkeypatch.setattr(solve, "SOLVER", "library")
    assert solve.warm_up() == {"solver": "library", "lanczos": "not used (the library solver is chosen)",
                               "blas_threads": "1"}
    pytest.importorskip("numba")
    monkeypatch.setattr(solve, "SOLVER", "auto")
    status = solve.warm_up()
    assert status == {"solver": "auto", "lanczos": f"numba {sys.modules['numba'].__version__}", "blas_threads": "1"}


_LIBRARY_WARM_UP = """
import json, sys
import prunesid
prunesid.warm_up()
print(json.dumps({"numba": "numba" in sys.modules}))
"""


def test_the_default_warm_up_loads_no_numba():
    """The app warms the eigensolver at start-up: with the default (library) solver that must not
    import numba (its import and cached kernel cost most of a second; benchmarks/eigensolver.py)."""
    assert json.loads(_run(_LIBRARY_WARM_UP).strip().splitlines()[-1]) == {"numba": False}
