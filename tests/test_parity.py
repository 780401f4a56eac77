"""Parity with the reference implementation's selections (../shared/reference/expected.json)."""
from __future__ import annotations

from functools import lru_cache

import torch

from prunesid import select_tokens
from prunesid.psca import centred_token_matrix
from yardsticks.reference_data import case_tensors, expected_cases


def _inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [case_tensors(seed, tuple(case["regions"])) for seed in case["seeds"]]
    return torch.cat([h for h, _ in pairs]), torch.cat([a for _, a in pairs])


@lru_cache(maxsize=1)
def _run_all() -> tuple[tuple[int, dict, list[list[int]]], ...]:
    results = []
    for index, case in enumerate(expected_cases()):
        hidden, attention = _inputs(case)
        results.append((index, case, select_tokens(hidden, attention, case["num_tokens"]).keep.tolist()))
    return tuple(results)


def test_kept_sets_and_order_match_reference_in_95_percent_of_cases():
    results = _run_all()
    same_order = [got == case["keep"] for _, case, got in results]
    same_set = [
        all(set(g) == set(e) for g, e in zip(got, case["keep"])) for _, case, got in results
    ]
    assert sum(same_set) >= 0.95 * len(results), f"sets agree in {sum(same_set)}/{len(results)} cases"
    assert sum(same_order) >= 0.95 * len(results), f"order agrees in {sum(same_order)}/{len(results)} cases"
    # The multi-image (batched) cases must agree too: batching must not change a row.
    assert all(ok for ok, (_, case, _) in zip(same_order, results) if len(case["seeds"]) > 1)


def test_every_differing_case_is_a_floating_point_near_tie():
    """Where we differ, the reference's group assignment hinges on a |V| near-tie.

    For each differing case, some patch's two largest PCA loadings differ by less than
    1e-4 (in float64): a rounding-level perturbation of the decomposition can move it to
    the other group, which reshuffles that group's NMS and budget.
    """
    for _, case, got in _run_all():
        if got == case["keep"]:
            continue
        hidden, _ = _inputs(case)
        groups = case["num_tokens"] // 4
        zc = centred_token_matrix(hidden).double()
        _, vectors = torch.linalg.eigh(zc @ zc.transpose(1, 2))
        loadings = vectors[..., -groups:].abs()
        top2 = loadings.topk(2, dim=-1).values
        margin = (top2[..., 0] - top2[..., 1]).min().item()
        assert margin < 1e-4, f"case seeds={case['seeds']} K={case['num_tokens']} differs without a near-tie (margin {margin:.2e})"


def test_reference_port_reproduces_expected_outputs():
    """The benchmark's yardstick is a faithful model of the reference (exact PCA)."""
    from yardsticks.reference_port import reference_select

    for case in expected_cases()[::7]:
        hidden, attention = _inputs(case)
        assert reference_select(hidden, attention, case["num_tokens"], pca="exact").tolist() == case["keep"]
