"""The information-aware dynamic ratio."""
from __future__ import annotations

import pytest
import torch

from prunesid import allocate_budgets, dynamic_budget, information_score, select_tokens
from yardsticks.reference_data import case_tensors


def flat_and_varied() -> tuple[torch.Tensor, torch.Tensor]:
    """Two [1, 1+N, D] images: nearly uniform patches vs. many distinct regions."""
    g = torch.Generator().manual_seed(0)
    n, d = 144, 64
    base = torch.randn(1, d, generator=g)
    flat = base + 0.05 * torch.randn(n, d, generator=g)
    varied = torch.randn(12, d, generator=g)[torch.arange(n) % 12] + 0.3 * torch.randn(n, d, generator=g)
    as_tower = lambda t: torch.cat([t.mean(0, keepdim=True), t])[None]  # noqa: E731
    return as_tower(flat), as_tower(varied)


def test_varied_image_is_more_informative_and_gets_more_tokens():
    flat, varied = flat_and_varied()
    phi = torch.cat([information_score(flat), information_score(varied)])
    assert phi[1] > phi[0] + 0.3
    budgets = allocate_budgets(phi, total=128, floor=8, ceiling=145)
    assert budgets[1] > budgets[0]
    assert int(budgets.sum()) == 128


def test_information_score_is_one_minus_rho_of_the_selection():
    hidden, attention = case_tensors(0)
    sel = select_tokens(hidden, attention, 64)
    assert torch.allclose(information_score(hidden), sel.phi, atol=1e-5)


@pytest.mark.parametrize("seed", range(20))
def test_allocation_sums_exactly_and_respects_bounds(seed):
    g = torch.Generator().manual_seed(seed)
    frames = int(torch.randint(1, 12, (1,), generator=g))
    phi = torch.rand(frames, generator=g) ** 3  # skewed: some frames pinned at the floor
    floor, ceiling = 8, 577
    total = int(torch.randint(frames * floor, frames * ceiling + 1, (1,), generator=g))
    budgets = allocate_budgets(phi, total, floor=floor, ceiling=ceiling)
    assert int(budgets.sum()) == total
    assert int(budgets.min()) >= floor and int(budgets.max()) <= ceiling
    # Monotone: a more informative frame never gets fewer tokens.
    order = phi.argsort()
    assert (budgets[order][1:] >= budgets[order][:-1]).all()


def test_allocation_is_proportional_when_no_bound_binds():
    budgets = allocate_budgets([0.2, 0.4, 0.6, 0.8], total=200, floor=1, ceiling=577)
    assert budgets.tolist() == [20, 40, 60, 80]


def test_allocation_pins_at_ceiling_and_redistributes():
    budgets = allocate_budgets([10.0, 1.0, 1.0], total=300, floor=8, ceiling=150)
    assert budgets.tolist() == [150, 75, 75]


def test_allocation_rejects_impossible_totals_and_bad_scores():
    with pytest.raises(ValueError, match="cannot be split"):
        allocate_budgets([0.5, 0.5], total=10, floor=8)
    with pytest.raises(ValueError, match="cannot be split"):
        allocate_budgets([0.5], total=600, ceiling=577)
    with pytest.raises(ValueError, match="at least one"):
        allocate_budgets([], total=10)
    with pytest.raises(ValueError, match="finite"):
        allocate_budgets([float("nan"), 0.5], total=64)


def test_single_image_budget_against_reference_phi():
    assert dynamic_budget(0.5, mean_budget=64, phi_ref=0.5) == 64
    assert dynamic_budget(0.75, mean_budget=64, phi_ref=0.5) == 96
    assert dynamic_budget(0.01, mean_budget=64, phi_ref=0.5, floor=8) == 8
    assert dynamic_budget(5.0, mean_budget=64, phi_ref=0.5, ceiling=577) == 577
    with pytest.raises(ValueError, match="phi_ref"):
        dynamic_budget(0.5, mean_budget=64, phi_ref=0.0)


def test_dynamic_budgets_drive_a_batched_selection():
    hidden = torch.cat([case_tensors(s)[0] for s in range(4)])
    attention = torch.cat([case_tensors(s)[1] for s in range(4)])
    budgets = allocate_budgets(information_score(hidden), total=4 * 64)
    sel = select_tokens(hidden, attention, budgets)
    assert sel.num_tokens.tolist() == budgets.tolist()
    assert int(sel.num_tokens.sum()) == 256


def test_allocation_takes_one_ceiling_per_image():
    """A view with fewer tokens to give (a partly padded LLaVA-NeXT crop) is capped at its own
    ceiling; what it cannot take goes to the others, and the sum stays exact."""
    phi = torch.tensor([0.5, 0.5, 0.5])
    budgets = allocate_budgets(phi, 300, floor=4, ceiling=[577, 40, 577])
    assert int(budgets.sum()) == 300 and int(budgets[1]) == 40 and int(budgets[0]) == int(budgets[2]) == 130
    with pytest.raises(ValueError, match="allowed total"):
        allocate_budgets(phi, 200, floor=4, ceiling=[50, 50, 50])
    with pytest.raises(ValueError, match="one per image"):
        allocate_budgets(phi, 100, floor=4, ceiling=[50, 50])


def test_a_selection_on_a_subset_is_written_back_on_the_whole_axis():
    from prunesid.subset import expand_selection, subset_inputs

    hidden, attention = case_tensors(0)
    n = attention.shape[1]
    patches = torch.arange(n)[torch.arange(n) % 24 < 16]  # the left 16 columns of a 24x24 grid
    sub = select_tokens(*subset_inputs(hidden, attention, patches), 32)
    full = expand_selection(sub, patches, n)
    assert full.group.shape == (1, n) and bool((full.group[0, torch.arange(n) % 24 >= 16] == -1).all())
    kept = full.keep_row(0)
    assert int(kept[0]) == 0 and bool(((kept[1:] - 1) % 24 < 16).all())
    # Same tokens as the subset selection, named on the whole axis.
    assert torch.equal(kept[1:] - 1, patches[sub.keep_row(0)[1:] - 1])
