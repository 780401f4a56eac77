"""Literal ports of the baselines' public selection code, written from reading it (nothing is
vendored): the yardsticks the registry's methods are tested against (``tests/test_methods.py``)
and run beside (``benchmarks/baselines_faithful.py``).

* DivPrune — github.com/vbdi/divprune, ``DivPrune`` (one image) and its final sort;
* VisionZip — github.com/dvlab-research/VisionZip, ``CLIPVisionTower_VisionZip.forward`` after
  the tower (the layer −2 hidden states as the metric);
* VisPruner — github.com/Theia-4869/VisPruner, ``encode_images``'s selection.

Each computes in the dtype it is given, as the authors' code does in the model's dtype.
"""
from __future__ import annotations

import torch


def divprune_reference(features: torch.Tensor, k: int) -> torch.Tensor:
    """Literal port of vbdi/divprune ``DivPrune`` (one image, [N, D]) + its final sort."""
    norm = features / features.norm(dim=1, keepdim=True)
    cosine_matrix = 1.0 - norm @ norm.t()
    s = torch.empty(k, dtype=torch.long, device=features.device)
    for i in range(k):
        m2 = cosine_matrix if i == 0 else torch.index_select(cosine_matrix, 0, s[:i])
        scores = torch.topk(m2, 2, dim=0, largest=False).values[1, :] if i == 0 else torch.min(m2, dim=0).values
        s[i] = torch.argmax(scores)
    return s.sort().values


def visionzip_reference(hidden_states, attention, dominant, contextual):
    """Literal port of dvlab-research/VisionZip ``CLIPVisionTower_VisionZip.forward`` after the
    tower (metric = hidden states; ``dominant`` counts CLS as in ``visionzip(model, dominant=...)``)."""
    metric = hidden_states
    dominant_num = dominant - 1
    b, t, d = hidden_states.shape
    topk_indices = attention.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros((b, 1), dtype=topk_indices.dtype), topk_indices], dim=1)
    mask = torch.ones_like(hidden_states[:, :, 0], dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden_states.masked_select(~mask.unsqueeze(-1)).view(b, dominant_num + 1, d)
    metric_filtered = metric[mask].view(b, t - (dominant_num + 1), metric.shape[2])
    hidden_filtered = hidden_states.masked_select(mask.unsqueeze(-1)).view(b, t - (dominant_num + 1), d)
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    length = metric_normalized.shape[1]
    step = max(1, length // contextual)
    target_indices = torch.arange(0, length, step)[:contextual]
    target_tokens = metric_normalized[:, target_indices, :]
    others = ~torch.isin(torch.arange(length), target_indices)
    similarity = torch.bmm(metric_normalized[:, others, :], target_tokens.transpose(1, 2))
    assign_one_hot = torch.zeros(b, int(others.sum()), contextual, dtype=hidden_filtered.dtype)
    assign_one_hot.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated = torch.bmm(assign_one_hot.transpose(1, 2), hidden_filtered[:, others, :]) / counts
    contextual_tokens = hidden_filtered[:, target_indices, :] + aggregated
    return torch.cat([dominant_tokens, contextual_tokens], dim=1), all_indices


def vispruner_reference(features, attention, visual_token_num, important_ratio=0.5, stable=True):
    """Literal port of Theia-4869/VisPruner ``encode_images`` selection ([B, N, C] patch states).

    ``stable=False`` is the code as published: ``argsort(descending=True)`` leaves the order of
    exactly tied scores to the sort kernel. ``stable=True`` swaps in a stable sort (ties: earlier
    position first), the one change, which is this project's rule."""
    b, n, c = features.shape
    important_token_num = int(visual_token_num * important_ratio)
    diverse_token_num = visual_token_num - important_token_num
    token_indices = attention.argsort(dim=-1, descending=True, stable=stable)
    important_indices = token_indices[:, :important_token_num]
    residual_indices = token_indices[:, important_token_num:]
    image_normalized = features / features.norm(dim=-1, keepdim=True)
    while diverse_token_num > 0:
        r_len = residual_indices.shape[1]
        r = min(8, r_len - diverse_token_num)
        if r <= 0:
            break
        residual_tokens = image_normalized[torch.arange(b).unsqueeze(-1).expand(-1, r_len), residual_indices]
        a, bb = residual_tokens[..., ::2, :], residual_tokens[..., 1::2, :]
        scores = (a @ bb.transpose(-1, -2)).max(dim=-1).values
        distinct_indices = scores.argsort(dim=-1, descending=True, stable=stable)[:, r:]
        residual_indices = torch.cat([
            residual_indices[..., ::2][torch.arange(b).unsqueeze(-1).expand(-1, r_len // 2 - r), distinct_indices],
            residual_indices[..., 1::2]], dim=-1)
    selected = torch.cat([important_indices, residual_indices], dim=-1) if diverse_token_num > 0 else important_indices
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, selected, True)
    return mask


def cdpruner_reference(image_features, image_embeds, text_embeds, visual_token_num):
    """Literal port of Theia-4869/CDPruner ``encode_images`` after the tower: ``image_features``
    ``[B, N, D]`` projected tokens, ``image_embeds`` ``[B, N, C]`` CLIP image embeddings,
    ``text_embeds`` ``[M, C]`` CLIP text embeddings of the instruction's segments; returns the index
    mask ``[B, N]``."""
    B, N, C = image_features.shape
    device = image_features.device
    image_normalized = image_features / image_features.norm(dim=-1, keepdim=True)
    image_normalized = image_normalized.float()
    similarity = torch.matmul(image_normalized, image_normalized.transpose(1, 2))
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    relevance = torch.matmul(image_embeds, text_embeds.t())
    relevance = (-relevance).mean(dim=-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
    cis = torch.zeros((visual_token_num, B, N), device=device)
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    select_idx = torch.empty((visual_token_num, B), dtype=torch.long, device=device)
    for i in range(visual_token_num):
        j = torch.argmax(di2s, dim=-1)
        select_idx[i] = j
        eis = (kernel[torch.arange(B), j] - torch.einsum('tb,tbn->bn', cis[:i, torch.arange(B), j], cis[:i])) \
            / torch.sqrt(di2s[torch.arange(B), j]).unsqueeze(-1)
        cis[i, :, :] = eis
        di2s -= torch.square(eis)
        di2s[torch.arange(B), j] = -float('inf')
    select_idx = torch.sort(select_idx.t()).values
    index_masks = torch.zeros(B, N, dtype=torch.bool, device=device)
    index_masks.scatter_(1, select_idx, True)
    return index_masks
