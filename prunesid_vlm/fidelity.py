"""How far the pruned model's answer distribution moves from the full model's.

We report the KL divergence KL(p_full ‖ p_pruned) of the **first answer token**, in nats.
Why this one: both greedy runs compute these logits in their prefill anyway, so it costs
nothing extra (the mean log-likelihood of the full answer under the pruned model would
need a third, teacher-forced forward pass); it is 0 when pruning changes nothing and
grows as the pruned prompt pushes the model elsewhere, and it is defined even when the
two answers differ from their first token on, unlike a token-match rate.
"""
from __future__ import annotations

import torch


def first_token_kl(full_logits: torch.Tensor, pruned_logits: torch.Tensor) -> float:
    """KL(p_full ‖ p_pruned) in nats from two ``[vocab]`` logit vectors (computed in float32)."""
    log_p = torch.log_softmax(full_logits.float(), dim=-1)
    log_q = torch.log_softmax(pruned_logits.float(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum().clamp(min=0.0))
