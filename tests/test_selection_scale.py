"""Selection at scale: the paths for views of thousands of tokens give today's answers.

* PSCA from the D×D matrix (``decomposed_side`` = "channels", taken when N > D) against the
  N×N Gram matrix ("tokens"): the same groups, importance, NMS and kept tokens;
* NMS block by block (views above ``NMS_BLOCK_TOKENS``) against one band for the whole view;
* ρ in closed form against the mean of the pairwise similarities, for both rules;
* the bounds' common raise by bisection against the reference's ``while`` loop;
* and no intermediate of a 4,000-token selection has N² entries.
"""
from __future__ import annotations

import math
import tracemalloc

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import prunesid
from prunesid import nms, psca, select_tokens, select_tokens_qwen
from prunesid._eigen import channel_gram_top_eigenvectors, gram_top_eigenvectors
from prunesid.budget import group_bounds

FIELDS = ("keep", "group", "nms_rank", "suppressed_by", "group_size", "group_survivors", "group_budget")


def structured(n: int, d: int, seed: int, regions: int = 6, noise: float = 0.6) -> torch.Tensor:
    """``[1, 1+N, D]`` tower-like states: regions of a rows × cols grid with their own direction,
    noise, a few massive channels; CLS first."""
    g = torch.Generator().manual_seed(seed)
    cols = math.isqrt(n)
    position = torch.stack([torch.arange(n) // cols, torch.arange(n) % cols], 1).float()
    label = torch.cdist(position, torch.rand(regions, 2, generator=g) * cols).argmin(1)
    tokens = torch.randn(regions, d, generator=g)[label] + noise * torch.randn(n, d, generator=g)
    tokens[:, :2] += 8.0
    return torch.cat([tokens.mean(0, keepdim=True), tokens])[None]


def random_states(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(1, 1 + n, d, generator=torch.Generator().manual_seed(seed))


def attention_for(n: int, seed: int) -> torch.Tensor:
    return torch.softmax(torch.randn(1, n, generator=torch.Generator().manual_seed(seed + 1)) * 2, 1)


def on_side(side: str, monkeypatch):
    monkeypatch.setattr(psca, "decomposed_side", lambda n, d: side)


def assert_same(a, b) -> None:
    for field in FIELDS:
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    # Qwen's importance is a loading: equal to the precision of the decomposition (the token side
    # solves in float32 up to 16 components, the channel side always in float64).
    assert torch.allclose(a.importance, b.importance, rtol=0, atol=1e-5)


# ---- PSCA from the smaller problem --------------------------------------------------------------
def test_the_smaller_problem_is_decomposed():
    assert psca.decomposed_side(576, 1024) == "tokens" and psca.decomposed_side(1024, 1024) == "tokens"
    assert psca.decomposed_side(1025, 1024) == "channels" and psca.decomposed_side(16000, 1536) == "channels"


@pytest.mark.parametrize("n, d", [(50, 64), (64, 64), (66, 64), (400, 48)])
@pytest.mark.parametrize("solver", ["library", "auto"])
def test_channel_vectors_are_the_token_vectors(n, d, solver):
    """Eigenvectors of rows·rowsᵀ from the D×D problem equal the N×N ones up to sign (float64)."""
    rows = structured(n, d, seed=n)[:, 1:].double()
    rows = rows - rows.mean(dim=-1, keepdim=True)
    k = min(12, n - 1, d - 1)
    tokens = gram_top_eigenvectors(rows, k, solver=solver)
    channels = channel_gram_top_eigenvectors(rows, k, solver=solver)
    signs = torch.sign((tokens * channels).sum(dim=1, keepdim=True))
    assert torch.allclose(channels * signs, tokens, atol=1e-9)
    assert torch.allclose(channels.norm(dim=1), torch.ones(1, k, dtype=torch.float64), atol=1e-12)


def test_channel_vectors_of_a_batch_equal_those_of_each_row_bitwise():
    rows = torch.cat([structured(300, 40, seed=s)[:, 1:] for s in (1, 2)]).double()
    together = channel_gram_top_eigenvectors(rows, 20)
    for row in range(2):
        assert torch.equal(channel_gram_top_eigenvectors(rows[row : row + 1], 20)[0], together[row])
    assert torch.equal(channel_gram_top_eigenvectors(rows, 20), together)  # deterministic


def test_components_beyond_the_rank_are_zero_columns_not_noise():
    """A view with three distinct tokens has rank ≤ 3: later components are null-space vectors
    (arbitrary in any solver); here they are zero, so every token joins one of the real groups."""
    base = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    tokens = base[torch.arange(200) % 3]
    vectors = channel_gram_top_eigenvectors(tokens[None].double(), 8)
    assert torch.isfinite(vectors).all()
    assert (vectors[0, :, 3:] == 0).all() and (vectors[0, :, :2].norm(dim=0) > 0.99).all()
    flat = torch.zeros(1, 200, 32, dtype=torch.float64)  # nothing to decompose at all
    assert (channel_gram_top_eigenvectors(flat, 4) == 0).all()
    wide = channel_gram_top_eigenvectors(torch.randn(1, 100, 6, dtype=torch.float64), 10)  # k > D
    assert wide.shape == (1, 100, 10) and (wide[..., 6:] == 0).all()
    sel = select_tokens_qwen(tokens, 64)  # the whole rule runs on such a view
    assert int(sel.num_tokens[0]) == int(sel.kept_patches.sum()) and bool((sel.group < 3).all())


CASES = [  # (make, n, d, budget): N < D, N ≈ D, N > D, with G ≤ 16 (float32 token side) and G > 16
    (structured, 200, 256, 64),
    (structured, 256, 256, 192),
    (structured, 260, 256, 128),
    (structured, 900, 96, 64),
    (structured, 1500, 128, 192),
    (random_states, 300, 256, 96),
    (random_states, 700, 64, 160),
]


@pytest.mark.parametrize("make, n, d, budget", CASES)
def test_qwen_rule_keeps_the_same_tokens_from_either_problem(make, n, d, budget, monkeypatch):
    tokens = make(n, d, seed=n + d)[0, 1:]
    on_side("tokens", monkeypatch)
    expected = select_tokens_qwen(tokens, budget)
    on_side("channels", monkeypatch)
    assert_same(select_tokens_qwen(tokens, budget), expected)


@pytest.mark.parametrize("make, n, d, budget", CASES)
def test_llava_rule_keeps_the_same_tokens_from_either_problem(make, n, d, budget, monkeypatch):
    hidden = make(n, d, seed=n * d)
    attention = attention_for(n, seed=n)
    on_side("tokens", monkeypatch)
    expected = select_tokens(hidden, attention, budget)
    on_side("channels", monkeypatch)
    assert_same(select_tokens(hidden, attention, budget), expected)


# ---- NMS block by block --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_nms_by_blocks_of_whole_groups_equals_one_band(seed, monkeypatch):
    g = torch.Generator().manual_seed(seed)
    b, n, d = 2, 300 + 150 * seed, 24 + 20 * seed
    centres = torch.randn(6, d, generator=g)
    hidden = centres[torch.randint(0, 6, (b, 1 + n), generator=g)] + 0.8 * torch.randn(b, 1 + n, d, generator=g)
    importance = torch.rand(b, n, generator=g)
    group = torch.randint(0, 4 + 5 * seed, (b, n), generator=g)
    group[1, : n // 2] = 0  # a group larger than a block
    tau = torch.tensor([0.2 + 0.1 * seed, 0.5])
    monkeypatch.setattr(nms, "NMS_BLOCK_TOKENS", 10**9)
    whole = nms.intra_group_nms(hidden, importance, group, tau)
    monkeypatch.setattr(nms, "NMS_BLOCK_TOKENS", 40 + 30 * seed)
    blocks = nms.intra_group_nms(hidden, importance, group, tau)
    assert int(whole.survives.sum()) < b * n, "the case must suppress something"
    assert torch.equal(blocks.survives, whole.survives) and torch.equal(blocks.suppressed_by, whole.suppressed_by)


def test_group_blocks_hold_whole_groups():
    sorted_group = torch.tensor([0] * 5 + [1] * 2 + [2] * 9 + [3] * 1 + [4] * 3)
    assert nms.group_blocks(sorted_group, 8) == [(0, 7), (7, 16), (16, 20)]
    assert nms.group_blocks(sorted_group, 100) == [(0, 20)]


def test_a_large_view_gives_the_same_selection_with_and_without_blocks(monkeypatch):
    tokens = structured(2500, 96, seed=3)[0, 1:]
    hidden = structured(2500, 96, seed=4)
    attention = attention_for(2500, seed=4)
    monkeypatch.setattr(nms, "NMS_BLOCK_TOKENS", 10**9)
    expected = select_tokens_qwen(tokens, 64), select_tokens(hidden, attention, 96)
    monkeypatch.setattr(nms, "NMS_BLOCK_TOKENS", 2048)
    assert_same(select_tokens_qwen(tokens, 64), expected[0])
    assert_same(select_tokens(hidden, attention, 96), expected[1])
    assert int(expected[0].group_size.max()) > 0 and bool((expected[0].suppressed_by >= 0).any())


# ---- rho in closed form ---------------------------------------------------------------------------
def test_rho_of_both_rules_equals_the_pairwise_means():
    hidden = structured(1200, 64, seed=9)
    units = F.normalize(hidden[0, 1:].double(), dim=-1)
    similarity = units @ units.T
    n = similarity.shape[0]
    upper = torch.triu(similarity, diagonal=1).sum() / (n * (n - 1) / 2)  # LLaVA: pairs i < j
    with_diagonal = torch.triu(similarity, diagonal=0).sum() / (n * n)  # Qwen: triu(0).mean() over N²
    llava = select_tokens(hidden, attention_for(n, 9), 64)
    qwen = select_tokens_qwen(hidden[0, 1:], 64)
    assert abs(float(llava.rho[0]) - float(upper)) < 1e-5
    assert abs(float(qwen.rho[0]) - float(with_diagonal)) < 1e-5
    assert abs(float(qwen.phi[0]) - (1 - float(upper))) < 1e-5  # φ = 1 − mean over pairs, for both


# ---- bounds: the common raise ------------------------------------------------------------------------
def test_bounds_by_bisection_equal_the_references_loop():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        groups = int(torch.randint(1, 30, (1,), generator=g))
        sizes = torch.randint(0, 40, (3, groups), generator=g)
        survivors = torch.minimum(sizes, torch.randint(0, 40, (3, groups), generator=g))
        budget = (torch.rand(3, generator=g) * sizes.sum(1)).long().clamp(min=1)
        budget = torch.minimum(budget, sizes.sum(1))
        if bool((budget < 1).any()):
            continue
        _, upper = group_bounds(budget, sizes, survivors, 5)
        for row in range(3):
            k = int(budget[row])
            expected = torch.minimum(torch.minimum(torch.full_like(sizes[row], 5 * math.ceil(k / 64)), sizes[row]),
                                     survivors[row])
            while int(expected.sum()) < k:
                expected = torch.minimum(expected + 1, sizes[row])
            assert torch.equal(upper[row], expected)


# ---- memory: nothing of size N² ---------------------------------------------------------------------
class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch operation returns (inputs and in-place results included)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.numel = max(self.numel, value.numel())
        return out


@pytest.mark.parametrize("rule", ["qwen", "llava"])
def test_no_intermediate_of_a_4000_token_view_grows_as_n_squared(rule):
    n, d = 4000, 512
    hidden = structured(n, d, seed=5, regions=12)
    attention = attention_for(n, 5)
    run = (lambda: select_tokens_qwen(hidden[0, 1:], 64)) if rule == "qwen" else (lambda: select_tokens(hidden, attention, 256))
    prunesid.warm_up()
    with LargestTensor():  # one-off work outside the measurement: caches, thread pools, the mode's imports
        run()
    largest = LargestTensor()
    tracemalloc.start()  # numpy's buffers (the eigensolver's) are traced; torch's are seen by the mode
    try:
        with largest:
            sel = run()
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert int(sel.kept_patches.sum()) == int(sel.num_tokens[0]) - (1 if rule == "llava" else 0)
    assert largest.numel <= 2 * n * d, f"a torch tensor of {largest.numel:,} entries (N·D = {n * d:,})"
    assert largest.numel < n * n / 4
    assert numpy_peak < n * n, f"numpy held {numpy_peak / 2**20:.0f} MB (an N×N float32 matrix is {4 * n * n / 2**20:.0f} MB)"


def test_the_view_size_limit_is_published():
    assert isinstance(prunesid.MAX_TOKENS_PER_VIEW, int) and 2880 <= prunesid.MAX_TOKENS_PER_VIEW <= 100_000
