"""Parity with the reference's selections, computed on a CUDA GPU.

The same cases and the same thresholds as the CPU test (:mod:`tests.test_parity`): its
assertions are run as they are, on the keeps ``select_tokens`` returns for CUDA inputs.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from prunesid import select_tokens
from tests import test_parity as cpu
from yardsticks.reference_data import expected_cases

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (torch.cuda.is_available() is False)"),
]


@lru_cache(maxsize=1)
def _run_all_on_cuda() -> tuple[tuple[int, dict, list[list[int]]], ...]:
    """What :func:`tests.test_parity._run_all` returns, with the features on ``cuda``."""
    results = []
    for index, case in enumerate(expected_cases()):
        hidden, attention = cpu._inputs(case)
        sel = select_tokens(hidden.cuda(), attention.cuda(), case["num_tokens"])
        assert sel.keep.is_cuda, "the selection left the GPU"
        results.append((index, case, sel.keep.tolist()))
    return tuple(results)


@pytest.fixture
def on_cuda(monkeypatch):
    monkeypatch.setattr(cpu, "_run_all", _run_all_on_cuda)


def test_kept_sets_and_order_match_reference_on_cuda(on_cuda):
    cpu.test_kept_sets_and_order_match_reference_in_95_percent_of_cases()


def test_every_differing_case_on_cuda_is_a_floating_point_near_tie(on_cuda):
    cpu.test_every_differing_case_is_a_floating_point_near_tie()
