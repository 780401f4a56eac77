"""A baseline that computes PruneSID the way the reference code does.

Written for this project from the published algorithm (docs/algorithm.md, sections 2–5) to
reproduce the reference's *data flow and cost*: a ``[B, G, N, N]`` per-group similarity tensor, one
Python iteration per NMS pick over all groups, ``while`` loops for the bounds and the
fill, and a Python loop over groups to gather the picks. It is an oracle of the tests
(``test_parity.py``, ``test_selection.py``) and the yardstick of
``benchmarks/selection.py``; it is not used by the app.

``pca`` picks the decomposition: ``"lowrank"`` is ``torch.pca_lowrank(q=G, niter=2)``
(what the reference runs), ``"exact"`` an exact float32 SVD (what ``expected.json`` used).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reference_select(hidden_states: torch.Tensor, cls_attention: torch.Tensor, budget: int, pca: str = "lowrank") -> torch.Tensor:
    """Long ``[B, budget]`` tower indices, CLS first then group by group."""
    groups = budget // 4
    z = torch.sigmoid(hidden_states.float()).transpose(2, 1)[:, :, 1:]  # (B, D, N)
    if pca == "lowrank":
        _, _, vectors = torch.pca_lowrank(z, q=groups, niter=2)
    else:
        centred = z - z.mean(dim=-2, keepdim=True)
        vectors = torch.linalg.svd(centred, full_matrices=False).Vh.transpose(1, 2)[..., :groups]
    member = vectors.abs().argmax(dim=-1)  # (B, N)
    b, n = member.shape
    in_group = member[:, :, None] == torch.arange(groups)[None, None, :]  # (B, N, G)
    scores = torch.where(in_group, cls_attention.float()[:, :, None], torch.zeros(()))  # (B, N, G)

    units = F.normalize(hidden_states[:, 1:].float(), p=2, dim=-1)
    similarity = units @ units.transpose(2, 1)  # (B, N, N)
    upper = torch.triu(torch.ones_like(similarity), diagonal=1).bool()
    rho = (similarity * upper).sum((-1, -2)) / upper.sum((-1, -2))
    tau = budget / 32 * rho

    # Per-group similarity: rows or columns in the group keep their value (B, G, N, N).
    group_similarity = similarity[:, None].repeat(1, groups, 1, 1)
    row_in = in_group.transpose(1, 2)[:, :, :, None]
    col_in = in_group.transpose(1, 2)[:, :, None, :]
    group_similarity = torch.where(row_in | col_in, group_similarity, torch.zeros(()))

    alive = scores.clone()
    ranked = scores.clone()
    mark = 1000.0
    picks = []
    rows = torch.arange(b)[:, None]
    cols = torch.arange(groups)[None, :]
    while alive.sum() > 0:  # one pick per group per iteration
        best, where = alive.max(dim=1)  # (B, G)
        sim_row = group_similarity[rows, cols, where]  # (B, G, N)
        where = torch.where(best == 0, torch.full_like(where, -1), where)
        hit_b, hit_g = torch.where(where != -1)
        ranked[hit_b, where[hit_b, hit_g], hit_g] = mark
        alive[hit_b, where[hit_b, hit_g], hit_g] = 0
        mark -= 1
        picks.append(where)
        alive[(sim_row > tau[:, None, None]).transpose(1, 2)] = 0
    survivors = (torch.stack(picks, -1) != -1).sum(-1)  # (B, G)

    sizes = in_group.sum(1)
    lower = sizes.clamp(max=1)
    upper_b = torch.minimum(torch.minimum(torch.full_like(sizes, 5 * math.ceil(budget / 64)), sizes), survivors)
    while bool((upper_b.sum(-1) < budget).any()):
        short = upper_b.sum(-1) < budget
        upper_b[short] += 1
        upper_b = torch.minimum(upper_b, sizes)
    remaining = (budget - lower.sum(-1) - 1).clamp(min=0)
    cumulative = (torch.cumsum(survivors / survivors.sum(-1, keepdim=True), -1) * remaining[:, None]).round().int()
    portion = cumulative - torch.cat([torch.zeros(b, 1, dtype=cumulative.dtype), cumulative[:, :-1]], -1)
    tokens = torch.minimum(portion + lower, upper_b)
    order = torch.argsort(survivors, dim=-1, descending=True)
    target = remaining + lower.sum(-1)
    for row in range(b):
        step = 0
        while int(tokens[row].sum()) < int(target[row]):
            g = order[row, step]
            tokens[row, g] += min(int(upper_b[row, g] - tokens[row, g]), int(target[row] - tokens[row].sum()))
            step += 1

    by_rank = torch.argsort(ranked, dim=1, descending=True).transpose(1, 2)  # (B, G, N)
    out = []
    for row in range(b):
        chosen = [by_rank[row, g, : int(tokens[row, g])] for g in range(groups)]
        out.append(torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(chosen) + 1]))
    return torch.stack(out)
