"""``select_tokens_qwen``: the reference's Qwen2-VL rule, against its outputs on the shared Qwen
cases, and its defining properties."""
from __future__ import annotations

import json

import pytest
import torch

from prunesid import qwen_budget, select_tokens_qwen
from yardsticks.reference_data import REFERENCE_DIR, cases_module, require_reference


def qwen_cases():
    require_reference()
    path = REFERENCE_DIR / "qwen_expected.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = json.loads(path.read_text())
    make = cases_module().make_case
    return [(c, make(c["seed"], grid=c["grid"], dim=data["dim"], regions=tuple(c["regions"]))[0][0, 1:])
            for c in data["cases"]]


def test_parity_with_the_reference_on_the_shared_qwen_cases():
    cases = qwen_cases()
    same_set = same_order = 0
    for case, tokens in cases:
        ours = select_tokens_qwen(tokens, case["need_token_num"]).keep_row(0).tolist()
        expected = case["keep"]
        if expected is None:  # the reference keeps everything (N ≤ 16)
            expected = list(range(tokens.shape[0]))
        same_set += sorted(ours) == sorted(expected)
        same_order += ours == expected
    # Measured: 36 of 36 identical, in the reference's order. At least 95 % must stay so.
    assert same_set >= 0.95 * len(cases) and same_order >= 0.95 * len(cases), (same_set, same_order, len(cases))


def test_budget_scaling_and_small_images():
    assert qwen_budget(144, 64) == 16 and qwen_budget(400, 64) == 44 and qwen_budget(576, 192) == 192
    assert qwen_budget(16, 64) == 16 and qwen_budget(10, 64) == 10  # nothing pruned at N ≤ 16
    assert qwen_budget(900, 64) == 100  # round(900 · 64 / 576) = round(100.0)
    small = torch.randn(12, 32, generator=torch.Generator().manual_seed(0))
    sel = select_tokens_qwen(small, 64)
    assert sel.keep_row(0).tolist() == list(range(12)) and int(sel.num_tokens[0]) == 12


def test_rows_are_frames_and_batching_changes_nothing():
    _, a = qwen_cases()[0]
    _, b = qwen_cases()[12]
    frames = torch.stack([a, b])
    together = select_tokens_qwen(frames, 128)
    for row, tokens in enumerate((a, b)):
        alone = select_tokens_qwen(tokens, 128)
        assert torch.equal(together.keep_row(row), alone.keep_row(0))
        assert torch.equal(together.group[row], alone.group[0])
    assert not together.cls_row and bool((together.kept_patches.sum(1) == together.num_tokens).all())
    assert torch.equal(select_tokens_qwen(frames, 128).keep, together.keep)  # deterministic


def test_many_kept_tokens_come_in_position_order_and_importance_is_the_loading():
    case, tokens = next((c, t) for c, t in qwen_cases() if c["grid"] == 24 and c["need_token_num"] == 192)
    sel = select_tokens_qwen(tokens, 192)
    keep = sel.keep_row(0)
    assert keep.numel() == 192 and torch.equal(keep, keep.sort().values)
    few = select_tokens_qwen(tokens, 64)
    assert not torch.equal(few.keep_row(0), few.keep_row(0).sort().values)  # group order below 150
    assert bool((sel.importance > 0).all()) and bool((sel.importance <= 1).all())
    tower = sel.on_tower_axis()
    assert tower.cls_row and torch.equal(tower.keep_row(0) - 1, keep) and torch.equal(tower.kept_patches, sel.kept_patches)


def test_the_references_randomised_pca_is_unstable_on_these_cases():
    """The reference's pca_lowrank rarely finds the exact answer here (the issue measured 2 of 64,
    mean Jaccard 0.45); with a seeded generator the same scheme is reproducible, and it disagrees."""
    agree, jaccard = 0, []
    for case, tokens in qwen_cases()[:12]:
        exact = set(select_tokens_qwen(tokens, case["need_token_num"]).keep_row(0).tolist())
        g = torch.Generator().manual_seed(case["seed"])
        rand = select_tokens_qwen(tokens, case["need_token_num"], pca="randomized", generator=g)
        got = set(rand.keep_row(0).tolist())
        agree += got == exact
        jaccard.append(len(got & exact) / len(got | exact))
    assert agree <= 6 and sum(jaccard) / len(jaccard) < 0.9, (agree, jaccard)
