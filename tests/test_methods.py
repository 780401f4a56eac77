"""Every registered selection method on the synthetic CLIP-like cases: the shared contract
(exact token counts, valid distinct indices, one signature) and each rule's defining
property. VisionZip, DivPrune and VisPruner are also checked against literal ports of
their public code (``yardsticks/authors_baselines.py``), at budgets where that code runs."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from prunesid import select_tokens
from prunesid_eval.methods import METHODS, get_method, list_methods
from prunesid_eval.methods.divprune import divprune_select, max_min_greedy
from prunesid_eval.methods.grid import grid_patches, grid_select
from prunesid_eval.methods.prunesid_rules import dynamic_budgets, prunesid_dynamic_select
from prunesid_eval.methods.random_select import random_select
from prunesid_eval.methods.topk import topk_select
from prunesid_eval.methods.visionzip import contextual_count, visionzip_select
from prunesid_eval.methods.vispruner import vispruner_select

from yardsticks.authors_baselines import divprune_reference, visionzip_reference, vispruner_reference
from yardsticks.reference_data import case_tensors, require_reference

SEEDS = (0, 1, 2)
BUDGETS = (2, 16, 63, 64, 192, 576, 577)
N = 576


@pytest.fixture(scope="module", params=SEEDS)
def case(request):
    require_reference()
    return case_tensors(request.param)


def _check_contract(sel, budget, spec):
    keep = sel.keep[0]
    valid = keep[keep >= 0]
    assert (keep[: valid.numel()] >= 0).all() and (keep[valid.numel():] == -1).all(), "padding only at the end"
    assert valid.numel() == len(set(valid.tolist())), "indices are distinct"
    assert int(valid.min()) >= 0 and int(valid.max()) <= N
    merged = 0 if sel.merged_tokens is None else int(sel.num_tokens[0]) - valid.numel()
    assert int(sel.num_tokens[0]) == valid.numel() + merged
    assert sel.kept_patches.sum() == int((valid > 0).sum())
    assert bool((valid == 0).any()) == (spec.keeps_cls and budget >= 2) or spec.name == "prunesid-dyn"
    assert sel.group.shape == (1, N) and sel.importance.shape == (1, N)
    if not spec.merges:
        assert sel.merged_tokens is None


# ---- the shared contract ---------------------------------------------------------------------
def test_registry_lists_every_method_once():
    names = [s.name for s in list_methods()]
    assert names[0] == "prunesid"
    assert set(names) == {"prunesid", "prunesid-dyn", "random", "grid", "topk", "visionzip", "divprune", "vispruner", "cdpruner"}
    assert len(names) == len(set(names)) == len(METHODS)
    for spec in list_methods():
        assert get_method(spec.name) is spec
        json.dumps(spec.to_dict())
        assert spec.label and spec.notes
    with pytest.raises(ValueError, match="known: prunesid"):
        get_method("nope")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_hands_over_exactly_num_tokens(case, name):
    spec = get_method(name)
    hidden, attention = case
    for budget in BUDGETS:
        sel = spec.fn(hidden, attention, budget, generator=torch.Generator().manual_seed(0))
        assert sel.method == name
        ceiling = N + 1 if spec.keeps_cls else N
        if name != "prunesid-dyn":
            assert int(sel.num_tokens[0]) == min(budget, ceiling), (name, budget)
        _check_contract(sel, budget, spec)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_is_deterministic_and_batches(name):
    require_reference()
    spec = get_method(name)
    (h0, a0), (h1, a1) = case_tensors(0), case_tensors(1)
    hidden, attention = torch.cat([h0, h1]), torch.cat([a0, a1])
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    both = spec.fn(hidden, attention, [32, 64], generator=gen())
    again = spec.fn(hidden, attention, [32, 64], generator=gen())
    assert torch.equal(both.keep, again.keep)
    if spec.randomized:
        return
    for row, (h, a, k) in enumerate(((h0, a0, 32), (h1, a1, 64))):
        alone = spec.fn(h, a, k, generator=gen())
        if name == "prunesid-dyn":  # a batch shares its total in proportion to φ; alone keeps K
            continue
        assert torch.equal(both.keep_row(row), alone.keep_row(0)), (name, row)
        if alone.merged_tokens is not None:
            m = int(alone.num_tokens[0]) - alone.keep_row(0).numel()
            assert torch.allclose(both.merged_tokens[row, :m], alone.merged_tokens[0, :m])


def test_methods_reject_bad_inputs():
    require_reference()
    hidden, attention = case_tensors(0)
    for spec in list_methods():
        with pytest.raises(ValueError):
            spec.fn(hidden, attention, 1)
        with pytest.raises(ValueError):
            spec.fn(hidden, attention[:, :-1], 64)


# ---- PruneSID wrappers -----------------------------------------------------------------------
def test_prunesid_wraps_select_tokens(case):
    hidden, attention = case
    assert torch.equal(get_method("prunesid").fn(hidden, attention, 64).keep, select_tokens(hidden, attention, 64).keep)


def test_dynamic_budget_scales_with_phi():
    require_reference()
    hidden, attention = case_tensors(0)
    phi = float(get_method("prunesid").fn(hidden, attention, 64).phi[0])
    sel = prunesid_dynamic_select(hidden, attention, 64, phi_ref=phi / 1.5)
    assert int(sel.num_tokens[0]) == 96
    assert dynamic_budgets(hidden, 64) == [64]  # a single image without φ_ref keeps K
    assert dynamic_budgets(hidden, 64, phi_ref=phi) == [64]


# ---- simple baselines ------------------------------------------------------------------------
def test_topk_keeps_the_k_largest(case):
    hidden, attention = case
    for budget in (2, 16, 64, 192):
        sel = topk_select(hidden, attention, budget)
        kept = sel.kept_patches[0]
        assert int(kept.sum()) == budget - 1
        assert attention[0, kept].min() >= attention[0, ~kept].max()
        assert sel.keep[0, 0] == 0 and torch.equal(sel.keep[0, 1:], sel.keep[0, 1:].sort().values)


@pytest.mark.parametrize("m", [1, 2, 9, 16, 36, 63, 64, 100, 144, 191, 500, 575, 576])
def test_grid_is_evenly_spaced(m):
    patches = grid_patches(m, 24, 24)
    assert patches.numel() == m == len(set(patches.tolist()))
    rows, cols = patches // 24, patches % 24
    lattice_rows = sorted(set(rows.tolist()))
    counts = [int((rows == r).sum()) for r in lattice_rows]
    assert max(counts) - min(counts) <= 1, "patches split evenly over lattice rows"
    edges = [lattice_rows[0]] + [b - a for a, b in zip(lattice_rows, lattice_rows[1:])] + [23 - lattice_rows[-1]]
    inner = edges[1:-1] or [0]
    assert max(inner) - min(inner) <= 1, "lattice rows evenly spaced"
    for r in lattice_rows:
        c = sorted(cols[rows == r].tolist())
        gaps = [b - a for a, b in zip(c, c[1:])]
        if gaps:
            assert max(gaps) - min(gaps) <= 1, "columns evenly spaced within a row"
        assert abs(c[0] - (23 - c[-1])) <= 1 + (24 // len(c)) // 2, "centred"


def test_grid_64_is_the_8x8_lattice_of_every_third_cell(case):
    hidden, attention = case
    sel = grid_select(hidden, attention, 64)
    kept = sel.kept_patches[0].view(24, 24)
    expected = torch.zeros(24, 24, dtype=torch.bool)
    expected[1::3, 1::3] = True
    assert torch.equal(kept, expected)
    assert int(grid_select(hidden, attention, 65, keep_cls=True).kept_patches.sum()) == 64


def test_random_is_reproducible_with_a_generator(case):
    hidden, attention = case
    a = random_select(hidden, attention, 64, generator=torch.Generator().manual_seed(3))
    b = random_select(hidden, attention, 64, generator=torch.Generator().manual_seed(3))
    c = random_select(hidden, attention, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.keep, b.keep) and not torch.equal(a.keep, c.keep)
    assert torch.equal(random_select(hidden, attention, 64).keep, random_select(hidden, attention, 64).keep)
    gen = torch.Generator().manual_seed(3)
    first, second = random_select(hidden, attention, 64, generator=gen), random_select(hidden, attention, 64, generator=gen)
    assert not torch.equal(first.keep, second.keep), "the generator advances"


def test_random_covers_patches_uniformly():
    require_reference()
    hidden, attention = case_tensors(0)
    gen = torch.Generator().manual_seed(0)
    counts = sum(random_select(hidden, attention, 145, generator=gen).kept_patches[0].long() for _ in range(200))
    expected = 200 * 144 / 576  # 50
    assert counts.float().mean() == pytest.approx(expected)
    assert counts.min() > 20 and counts.max() < 85


# ---- DivPrune ------------------------------------------------------------------------------------
def test_divprune_matches_its_public_code(case):
    hidden, attention = case
    for k in (16, 64, 192):
        ours = divprune_select(hidden, attention, k).keep[0] - 1
        assert torch.equal(ours, divprune_reference(hidden[0, 1:].float(), k)), k


def test_divprune_is_greedy_max_min(case):
    hidden, attention = case
    units = F.normalize(hidden[:, 1:].float(), dim=-1)
    distance = 1.0 - units @ units.transpose(1, 2)
    picks = max_min_greedy(distance, 64)[0]
    d = distance[0]
    nearest = d.masked_fill(torch.eye(N, dtype=torch.bool), float("inf")).amin(dim=0)
    assert nearest[picks[0]] == nearest.max()
    for i in range(1, 64):
        to_set = d[picks[:i]].amin(dim=0)
        to_set[picks[:i]] = float("-inf")
        assert to_set[picks[i]] == to_set.max(), f"pick {i} maximises the distance to the chosen set"
    chosen = set(picks.tolist())
    assert chosen == set((divprune_select(hidden, attention, 64).keep[0] - 1).tolist())

    def min_pairwise(idx):
        sub = d[idx][:, idx] + torch.eye(len(idx)) * 10
        return float(sub.min())

    ours = min_pairwise(picks)
    for seed in range(5):
        other = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:64]
        assert ours > min_pairwise(other)
    for name in ("prunesid", "topk", "grid", "vispruner"):
        kept = get_method(name).fn(hidden, attention, 64).kept_patches[0].nonzero().squeeze(1)
        assert ours >= min_pairwise(kept), name


# ---- VisionZip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("budget,dominant,contextual", [(64, 54, 10), (128, 108, 20), (192, 162, 30)])
def test_visionzip_matches_its_public_code(case, budget, dominant, contextual):
    hidden, attention = case
    assert contextual_count(budget, N) == contextual
    sel = visionzip_select(hidden, attention, budget)
    tokens = torch.cat([hidden[0, sel.keep_row(0)], sel.merged_tokens[0]])
    expected, indices = visionzip_reference(hidden, attention, dominant, contextual)
    assert torch.equal(sel.keep_row(0), indices[0].sort().values)
    assert torch.allclose(tokens, expected[0], atol=1e-5)


def test_visionzip_dominant_and_contextual(case):
    hidden, attention = case
    sel = visionzip_select(hidden, attention, 64)
    keep, merged_into = sel.keep_row(0), sel.merged_into[0]
    assert keep[0] == 0 and keep.numel() == 54 and sel.merged_tokens.shape[1] == 10
    dominant = keep[1:] - 1
    assert torch.equal(dominant, torch.sort(attention[0], descending=True).indices[:53].sort().values)
    assert (merged_into[dominant] == -1).all()
    rest = torch.ones(N, dtype=torch.bool)
    rest[dominant] = False
    assert (merged_into[rest] >= 0).all() and set(merged_into[rest].tolist()) == set(range(10))
    # Each contextual token = its target's state + the mean of the patches assigned to it (the code's rule).
    remaining = rest.nonzero().squeeze(1)
    step = remaining.numel() // 10
    targets = remaining[torch.arange(0, remaining.numel(), step)[:10]]
    assert torch.equal(merged_into[targets], torch.arange(10))
    for slot in range(10):
        members = (merged_into == slot).nonzero().squeeze(1)
        members = members[members != targets[slot]]
        mean = hidden[0, 1 + members].float().mean(dim=0) if members.numel() else torch.zeros(hidden.shape[-1])
        assert torch.allclose(sel.merged_tokens[0, slot].float(), hidden[0, 1 + targets[slot]].float() + mean, atol=1e-5)


def test_visionzip_options():
    require_reference()
    hidden, attention = case_tensors(0)
    none = visionzip_select(hidden, attention, 64, contextual=0)
    assert none.merged_tokens is None and torch.equal(none.keep, topk_select(hidden, attention, 64).keep)
    keys = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(visionzip_select(hidden, attention, 64, metric=keys).merged_into,
                           visionzip_select(hidden, attention, 64).merged_into)


# ---- VisPruner -----------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [16, 64, 128, 192])
def test_vispruner_matches_its_public_code(case, budget):
    hidden, attention = case
    ours = vispruner_select(hidden, attention, budget).kept_patches
    assert torch.equal(ours, vispruner_reference(hidden[:, 1:].float(), attention, budget))


def test_vispruner_important_plus_diverse(case):
    hidden, attention = case
    for budget in (63, 64, 200):  # 63: odd residual, which the public code cannot run
        sel = vispruner_select(hidden, attention, budget)
        kept = sel.kept_patches[0]
        assert int(kept.sum()) == budget and not bool((sel.keep_row(0) == 0).any())
        important = torch.sort(attention[0], descending=True, stable=True).indices[: budget // 2]
        assert kept[important].all()
    # The other half comes from the non-important patches (what survives duplicate removal).
    order = torch.sort(attention[0], descending=True, stable=True).indices
    kept = vispruner_select(hidden, attention, 64).kept_patches[0]
    assert int(kept[order[32:]].sum()) == 32
    assert torch.equal(vispruner_select(hidden, attention, 64, important_ratio=1.0).kept_patches,
                       topk_select(hidden, attention, 64, keep_cls=False).kept_patches)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_takes_half_precision_states(name):
    """The pipeline caches tower states in the model's dtype (bf16/fp16 on a GPU)."""
    require_reference()
    hidden, attention = case_tensors(0)
    spec = get_method(name)
    full = spec.fn(hidden, attention, 64)
    half = spec.fn(hidden.to(torch.bfloat16), attention, 64)
    assert int(half.num_tokens[0]) == int(full.num_tokens[0])
    assert half.keep.dtype == torch.long and torch.isfinite(half.rho).all()
    if half.merged_tokens is not None:
        assert half.merged_tokens.dtype == torch.bfloat16
    overlap = (half.kept_patches & full.kept_patches).sum() / full.kept_patches.sum()
    # Rounding to bf16 flips near-ties; VisPruner's matching rounds and CDPruner's greedy DPP gains
    # reorder after a flip, so they move most (VisPruner's important half uses the float32 attention).
    assert overlap > (0.6 if name in ("vispruner", "cdpruner") else 0.8)


@pytest.mark.parametrize("budget", [16, 64, 192])
def test_native_dtype_reproduces_the_authors_bf16_numerics(budget):
    """In bfloat16 the authors' code rounds many similarities to ties; computing in the states'
    own dtype, ours keeps exactly their set (in float32 it keeps the more exact one)."""
    require_reference()
    hidden, attention = case_tensors(3)
    states = hidden.bfloat16()
    theirs = torch.zeros(N, dtype=torch.bool)
    theirs[divprune_reference(states[0, 1:], budget)] = True
    assert torch.equal(divprune_select(states, attention, budget, native_dtype=True).kept_patches[0], theirs)
    theirs = vispruner_reference(states[:, 1:], attention, budget)[0]
    assert torch.equal(vispruner_select(states, attention, budget, native_dtype=True).kept_patches[0], theirs)
    # Default: float32 arithmetic whatever the states' dtype.
    assert torch.equal(vispruner_select(states, attention, budget).kept_patches,
                       vispruner_select(states.float(), attention, budget).kept_patches)



# ---- CDPruner ------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [16, 64, 128])
def test_cdpruner_matches_its_public_code(case, budget):
    from yardsticks.authors_baselines import cdpruner_reference
    from prunesid_eval.methods.cdpruner import cdpruner_select

    hidden, attention = case
    g = torch.Generator().manual_seed(budget)
    projected = hidden[:, 1:] @ torch.randn(hidden.shape[-1], 96, generator=g)  # the LLM's input tokens
    image_embeds = hidden[:, 1:] @ torch.randn(hidden.shape[-1], 48, generator=g)  # CLIP image embeddings
    text_embeds = torch.randn(2, 48, generator=g)  # two 77-token segments of the instruction
    relevance = -(F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T).mean(-1)
    ours = cdpruner_select(hidden, attention, budget, features=projected, relevance=relevance)
    theirs = cdpruner_reference(projected, image_embeds, text_embeds, budget)
    if budget <= projected.shape[-1]:
        assert torch.equal(ours.kept_patches, theirs)
    else:  # past the kernel's rank (the features' width) the code picks round-off, then repeats
        width = projected.shape[-1]
        within_rank = cdpruner_reference(projected, image_embeds, text_embeds, width)
        assert bool((ours.kept_patches | ~within_rank).all()) and int(theirs.sum()) < budget
    assert not bool((ours.keep_row(0) == 0).any()) and int(ours.num_tokens[0]) == budget
    assert int(ours.kept_patches.sum()) == budget  # as many distinct patches as tokens handed over


def test_cdpruner_depends_on_the_instruction_and_without_one_is_a_plain_dpp(case):
    from prunesid_eval.methods.cdpruner import cdpruner_select, dpp_greedy_map

    hidden, attention = case
    g = torch.Generator().manual_seed(0)
    first, second = torch.rand(1, N, generator=g), torch.rand(1, N, generator=g)
    a = cdpruner_select(hidden, attention, 64, relevance=first).kept_patches
    b = cdpruner_select(hidden, attention, 64, relevance=second).kept_patches
    assert not torch.equal(a, b)
    plain = cdpruner_select(hidden, attention, 64).keep_row(0) - 1
    units = F.normalize(hidden[:, 1:].float(), dim=-1)
    assert torch.equal(plain, dpp_greedy_map(units @ units.transpose(1, 2), 64)[0].sort().values)


def test_cdpruner_past_the_kernels_rank_keeps_distinct_tokens():
    """A kernel of rank 3 over 12 tokens, asked for 8: the code's loop would repeat tokens once the
    rank is used up (the demo's narrow features at K >= 128 handed 576 tokens of which 75 were
    distinct). The first three picks are the DPP's; the rest are distinct, by relevance."""
    from prunesid_eval.methods.cdpruner import cdpruner_select, dpp_greedy_map

    gen = torch.Generator().manual_seed(3)
    features = torch.randn(1, 12, 3, generator=gen)
    relevance = torch.rand(1, 12, generator=gen)
    units = torch.nn.functional.normalize(features, dim=-1)
    r = relevance[0] / relevance[0].max()
    kernel = (r[:, None] * (units[0] @ units[0].T) * r[None, :]).unsqueeze(0)
    picks = dpp_greedy_map(kernel, 8)[0]
    assert picks.unique().numel() == 8
    assert torch.equal(picks[:3], dpp_greedy_map(kernel, 3)[0])
    rest = [int(j) for j in torch.argsort(torch.diagonal(kernel[0]), descending=True) if int(j) not in picks[:3]]
    assert picks[3:].tolist() == rest[:5]
    hidden = torch.randn(1, 13, 3, generator=gen)
    kept = cdpruner_select(hidden, torch.rand(1, 12, generator=gen), 10, features=features, relevance=relevance)
    assert int(kept.kept_patches.sum()) == 10
