"""Properties of ``select_tokens`` and its steps, on synthetic CLIP-like features."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import prunesid.selection as selection_module
from prunesid import Selection, select_tokens
from prunesid.budget import fill_budget, group_bounds, split_budget
from prunesid.nms import intra_group_nms
from prunesid.similarity import redundancy, within_group_similarity
from yardsticks.reference_data import case_tensors


def unit_patches(hidden: torch.Tensor) -> torch.Tensor:
    """The reference's unit vectors: L2-normalised patch states, CLS dropped."""
    return F.normalize(hidden[:, 1:].float(), p=2, dim=-1)


def small_case(seed: int, n: int = 64, d: int = 32, clusters: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A cheap clustered case: [1, 1+n, d] states and [1, n] attention."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, clusters, (n,), generator=g)
    centres = torch.randn(clusters, d, generator=g) * 2
    tokens = centres[label] + 0.7 * torch.randn(n, d, generator=g)
    hidden = torch.cat([tokens.mean(0, keepdim=True), tokens])[None]
    attention = torch.softmax(torch.randn(n, generator=g) * 2, 0)[None]
    return hidden, attention


def check_consistent(sel: Selection, hidden: torch.Tensor) -> None:
    """Invariants every PruneSID selection must satisfy."""
    units = unit_patches(hidden)
    similarity = units @ units.transpose(1, 2)
    for row in range(sel.batch_size):
        keep = sel.keep_row(row)
        k = int(sel.num_tokens[row])
        assert keep.numel() == k and keep[0] == 0
        assert keep.unique().numel() == k, "kept indices must be distinct"
        assert int(sel.group_budget[row].sum()) == k - 1
        assert torch.equal(sel.group_size[row].sum(), torch.tensor(sel.num_patches))
        kept = sel.kept_patches[row]
        assert int(kept.sum()) == k - 1
        # Per group: budget ≤ size, and survivors are exactly the patches with a rank.
        for g in range(int(sel.num_groups[row])):
            members = sel.group[row] == g
            assert int(members.sum()) == int(sel.group_size[row, g])
            assert int((kept & members).sum()) == int(sel.group_budget[row, g])
            ranks = sel.nms_rank[row][members & (sel.nms_rank[row] >= 0)]
            assert sorted(ranks.tolist()) == list(range(int(sel.group_survivors[row, g])))
        # Every suppressed patch points at an earlier pick of its group that is too similar.
        suppressed = (sel.suppressed_by[row] >= 0).nonzero().flatten()
        for j in suppressed.tolist():
            i = int(sel.suppressed_by[row, j])
            assert sel.nms_rank[row, i] >= 0 and sel.nms_rank[row, j] == -1
            assert sel.group[row, i] == sel.group[row, j]
            assert similarity[row, i, j] > sel.tau[row]
            assert sel.importance[row, i] >= sel.importance[row, j]
        assert ((sel.nms_rank[row] >= 0) | (sel.suppressed_by[row] >= 0)).all()


@pytest.mark.parametrize("budget", [16, 64, 192])
def test_selection_invariants_on_clip_like_case(budget):
    hidden, attention = case_tensors(3)
    sel = select_tokens(hidden, attention, budget)
    assert sel.keep.shape == (1, budget) and sel.keep.dtype == torch.long
    check_consistent(sel, hidden)
    assert int(sel.num_groups[0]) == budget // 4
    assert torch.allclose(sel.tau, budget / 32 * sel.rho)
    assert torch.allclose(sel.phi, 1 - sel.rho)


def test_picks_follow_importance_inside_each_group():
    hidden, attention = case_tensors(5)
    sel = select_tokens(hidden, attention, 32)
    for g in range(int(sel.num_groups[0])):
        picks = ((sel.group[0] == g) & (sel.nms_rank[0] >= 0)).nonzero().flatten()
        in_order = picks[sel.nms_rank[0, picks].argsort()]
        scores = attention[0, in_order]
        assert (scores[:-1] >= scores[1:]).all()
        # The group's first pick is its most important member.
        members = (sel.group[0] == g).nonzero().flatten()
        if members.numel():
            assert in_order[0] == members[attention[0, members].argmax()]


def test_deterministic_bit_for_bit():
    hidden, attention = case_tensors(7)
    first = select_tokens(hidden, attention, 64)
    for _ in range(2):
        again = select_tokens(hidden, attention, 64)
        for field in dataclasses.fields(Selection):
            a, b = getattr(first, field.name), getattr(again, field.name)
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, field.name


def test_randomized_mode_is_reproducible_with_a_generator_and_varies_without_one():
    hidden, attention = case_tensors(2)
    a = select_tokens(hidden, attention, 64, pca="randomized", generator=torch.Generator().manual_seed(1))
    b = select_tokens(hidden, attention, 64, pca="randomized", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.keep, b.keep) and a.method == "prunesid-randomized"
    seeds = [select_tokens(hidden, attention, 64, pca="randomized", generator=torch.Generator().manual_seed(s)).keep for s in range(6)]
    assert len({tuple(k.flatten().tolist()) for k in seeds}) > 1, "the randomised PCA should not be stable across seeds"


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [4, 7, 12, 24, 40])
def test_matches_reference_port_when_both_use_the_same_pca(seed, budget, monkeypatch):
    """NMS, bounds, split, fill and pick agree with the reference data flow on many small cases."""
    from yardsticks.reference_port import reference_select

    def exact_svd(hidden_states, num_components, **_):
        z = torch.sigmoid(hidden_states[:, 1:].float()).transpose(1, 2)
        centred = z - z.mean(dim=-2, keepdim=True)
        return torch.linalg.svd(centred, full_matrices=False).Vh.transpose(1, 2)[..., :num_components]

    monkeypatch.setattr(selection_module, "principal_components", exact_svd)
    hidden, attention = small_case(seed)
    expected = reference_select(hidden, attention, budget, pca="exact")
    got = select_tokens(hidden, attention, budget)
    assert got.keep.tolist() == expected.tolist()
    check_consistent(got, hidden)


def test_per_row_budgets_equal_separate_runs():
    pairs = [small_case(s) for s in range(3)]
    hidden = torch.cat([h for h, _ in pairs])
    attention = torch.cat([a for _, a in pairs])
    budgets = [9, 20, 33]
    batched = select_tokens(hidden, attention, budgets)
    assert batched.keep.shape == (3, 33)
    assert (batched.keep[0, 9:] == -1).all() and (batched.keep[1, 20:] == -1).all()
    for row, budget in enumerate(budgets):
        alone = select_tokens(hidden[row : row + 1], attention[row : row + 1], budget)
        assert torch.equal(batched.keep_row(row), alone.keep_row(0))
        assert torch.equal(batched.group[row], alone.group[0])
    check_consistent(batched, hidden)
    assert torch.equal(select_tokens(hidden, attention, torch.tensor(budgets)).keep, batched.keep)


def test_budget_at_or_above_all_tokens_keeps_everything():
    hidden, attention = small_case(0)
    for budget in (65, 66, 1000):
        sel = select_tokens(hidden, attention, budget)
        assert sel.keep.shape == (1, 65) and int(sel.num_tokens[0]) == 65
        assert sorted(sel.keep[0].tolist()) == list(range(65))
        check_consistent(sel, hidden)


@pytest.mark.parametrize("budget", [2, 3])
def test_budgets_below_one_group_use_a_single_group(budget):
    """⌊K/4⌋ = 0 would crash the reference; we use one group (documented in config)."""
    hidden, attention = small_case(1)
    sel = select_tokens(hidden, attention, budget)
    assert int(sel.num_groups[0]) == 1 and (sel.group == 0).all()
    assert sel.keep.shape == (1, budget)
    # With one group the first pick is the globally most important patch.
    assert int(sel.keep[0, 1]) == int(attention[0].argmax()) + 1
    check_consistent(sel, hidden)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_parity_with_float32(dtype):
    hidden, attention = case_tensors(4)
    reference = select_tokens(hidden.to(dtype).float(), attention.to(dtype).float(), 64)
    sel = select_tokens(hidden.to(dtype), attention.to(dtype), 64)
    assert torch.equal(sel.keep, reference.keep)
    assert sel.importance.dtype == torch.float32 and sel.rho.dtype == torch.float32


def test_redundancy_shortcut_equals_pairwise_mean():
    hidden, _ = small_case(2)
    units = unit_patches(hidden)
    similarity = units @ units.transpose(1, 2)
    n = similarity.shape[-1]
    pairwise_mean = torch.triu(similarity, diagonal=1).sum(dim=(1, 2)) / (n * (n - 1) / 2)
    assert torch.allclose(redundancy(hidden), pairwise_mean, atol=1e-6)


@pytest.mark.parametrize("n, tile", [(80, 32), (64, 16), (50, 7), (30, 64)])
def test_within_group_similarity_is_exact_on_every_same_group_pair(n, tile):
    g = torch.Generator().manual_seed(n)
    hidden = torch.randn(3, 1 + n, 12, generator=g)
    units = unit_patches(hidden)
    group = torch.randint(0, 6, (3, n), generator=g)
    group[1] = 0  # one row with a single group
    rank = torch.stack([torch.randperm(n, generator=g) for _ in range(3)])
    banded = within_group_similarity(hidden, group, rank, tile=tile)

    # Layout: group-major, by rank inside a group.
    laid_group = group.gather(1, banded.order)
    laid_rank = rank.gather(1, banded.order)
    assert (laid_group[:, 1:] >= laid_group[:, :-1]).all()
    same_row_group = laid_group[:, :, None] == laid_group[:, None, :]
    assert (laid_rank[:, :, None] < laid_rank[:, None, :])[same_row_group & torch.ones(n, n, dtype=torch.bool).triu(1)].all()

    # Rebuild the dense layout matrix from the band; every same-group pair must be in it, exact.
    t, width, tiles = banded.tile, banded.width, banded.band.shape[1]
    dense = torch.full((tiles * t, tiles * t), float("nan"))
    for k in range(width):
        for m in range(tiles - k):
            dense[m * t : (m + 1) * t, (m + k) * t : (m + k + 1) * t] = banded.band[k, m]
    per_row = banded.tiles_per_row * t
    for row in range(3):
        laid = units[row, banded.order[row]]
        block = dense[row * per_row : row * per_row + n, row * per_row : row * per_row + n]
        wanted = same_row_group[row] & torch.ones(n, n, dtype=torch.bool).triu()
        assert not block[wanted].isnan().any(), "a same-group pair is outside the band"
        assert torch.allclose(block[wanted], (laid @ laid.T)[wanted], atol=1e-6)
    labels = banded.tile_group.flatten()
    assert (labels[1:] >= labels[:-1]).all(), "labels unique and sorted across rows"


def test_nms_equals_sequential_greedy():
    """The fixed-point NMS gives exactly what a pick-by-pick loop gives."""
    g = torch.Generator().manual_seed(0)
    n = 80
    hidden = torch.randn(1, 1 + n, 6, generator=g)
    units = unit_patches(hidden)
    similarity = units @ units.transpose(1, 2)
    importance = torch.rand(1, n, generator=g)
    group = torch.randint(0, 3, (1, n), generator=g)
    tau = torch.tensor([0.3])
    result = intra_group_nms(hidden, importance, group, tau)

    alive = torch.ones(n, dtype=torch.bool)
    survives = torch.zeros(n, dtype=torch.bool)
    suppressor = torch.full((n,), -1)
    for i in importance[0].argsort(descending=True).tolist():
        if not alive[i]:
            continue
        survives[i] = True
        victims = alive & (group[0] == group[0, i]) & (similarity[0, i] > tau)
        victims[i] = False
        suppressor[victims] = i
        alive &= ~victims
        alive[i] = False
    assert torch.equal(result.survives[0], survives)
    assert torch.equal(result.suppressed_by[0], suppressor)


def test_bounds_split_and_fill_by_hand():
    sizes = torch.tensor([[10, 3, 0, 5]])
    survivors = torch.tensor([[4, 3, 0, 1]])
    budget = torch.tensor([12])
    lower, upper = group_bounds(budget, sizes, survivors, cap_per_64=5)
    assert lower.tolist() == [[1, 1, 0, 1]]
    # min(5, c, n) = [4, 3, 0, 1] sums to 8 < 12: raise all by t=2 (capped at c) -> [6, 3, 0, 3] = 12.
    assert upper.tolist() == [[6, 3, 0, 3]]
    tokens = split_budget(budget, lower, upper, survivors)
    # R = 12 - 1 - 3 = 8; cumulative shares [4/8, 7/8, 7/8, 1] -> [4, 7, 7, 8] -> portions [4, 3, 0, 1].
    assert tokens.tolist() == [[5, 3, 0, 2]]
    filled = fill_budget(tokens, upper, survivors, torch.tensor([11]))
    assert filled.tolist() == [[6, 3, 0, 2]]


@pytest.mark.parametrize(
    "hidden_shape, attention_shape, budget, message",
    [
        ((577, 1024), (1, 576), 64, "3 dimensions"),
        ((1, 577, 1024), (576,), 64, "2 dimensions"),
        ((2, 577, 1024), (1, 576), 64, "batch size mismatch"),
        ((1, 577, 1024), (1, 575), 64, "patch count mismatch"),
        ((0, 577, 1024), (0, 576), 64, "empty batch"),
        ((1, 577, 1024), (1, 576), 1, "at least 2"),
        ((1, 577, 1024), (1, 576), 0, "at least 2"),
        ((1, 577, 1024), (1, 576), 64.0, "int"),
        ((1, 577, 1024), (1, 576), True, "int"),
        ((1, 577, 1024), (1, 576), "64", "int"),
        ((2, 577, 1024), (2, 576), [64], "1 budgets for a batch of 2"),
        ((2, 577, 1024), (2, 576), [64, 32.5], "integers"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(hidden_shape, attention_shape, budget, message):
    hidden = torch.randn(*hidden_shape)
    attention = torch.rand(*attention_shape)
    with pytest.raises(ValueError, match=message):
        select_tokens(hidden, attention, budget)


def test_non_finite_and_non_float_inputs_are_rejected():
    hidden, attention = small_case(0)
    bad = hidden.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        select_tokens(bad, attention, 16)
    inf_attention = attention.clone()
    inf_attention[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        select_tokens(hidden, inf_attention, 16)
    with pytest.raises(ValueError, match="floating-point"):
        select_tokens(hidden.long(), attention, 16)
    with pytest.raises(ValueError, match="integers"):
        select_tokens(hidden, attention, torch.tensor([16.0]))
    with pytest.raises(ValueError, match="unknown PCA method"):
        select_tokens(hidden, attention, 16, pca="svd")


@pytest.mark.parametrize("where", ["cls", "patch"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_states_are_named_wherever_they_are(where, value):
    hidden, attention = small_case(5)
    hidden[0, 0 if where == "cls" else 7, 3] = value
    with pytest.raises(ValueError, match="hidden_states.*NaN or infinite"):
        select_tokens(hidden, attention, 16)


def test_finite_but_overflowing_states_get_a_clear_message():
    hidden, attention = small_case(6)
    hidden[0, 4] = 1e30  # finite, but its square overflows float32
    with pytest.raises(ValueError, match="too large"):
        select_tokens(hidden, attention, 16)
