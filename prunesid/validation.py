"""Input checks shared by every selection rule (PruneSID and the baselines).

Each raises ``ValueError`` with a message that names the problem.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

Budget = int | Sequence[int] | torch.Tensor
"""One budget for the batch, or one per batch row."""


def check_features(hidden_states: torch.Tensor, cls_attention: torch.Tensor, *, scan_values: bool = True) -> None:
    """Raise ValueError unless the tensors are ``[B, 1+N, D]`` and ``[B, N]`` finite floats on one device.

    With ``scan_values=False`` the values of ``hidden_states`` are not scanned: for callers
    that check them on a pass they make anyway (then call :func:`check_finite` on failure).
    """
    for name, tensor, rank in (("hidden_states", hidden_states, 3), ("cls_attention", cls_attention, 2)):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != rank:
            raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    b, tokens, width = hidden_states.shape
    if b == 0:
        raise ValueError("empty batch: hidden_states has 0 rows")
    if tokens < 2 or width < 1:
        raise ValueError(f"hidden_states must be [B, 1+N, D] with N >= 1 and D >= 1, got {tuple(hidden_states.shape)}")
    if cls_attention.shape[0] != b:
        raise ValueError(f"batch size mismatch: hidden_states has {b} rows, cls_attention has {cls_attention.shape[0]}")
    if cls_attention.shape[1] != tokens - 1:
        raise ValueError(
            f"patch count mismatch: hidden_states has 1+{tokens - 1} tokens (CLS first) but "
            f"cls_attention has {cls_attention.shape[1]} entries; expected {tokens - 1}"
        )
    if cls_attention.device != hidden_states.device:
        raise ValueError(f"hidden_states is on {hidden_states.device} but cls_attention is on {cls_attention.device}")
    check_finite("cls_attention", cls_attention)
    if scan_values:
        check_finite("hidden_states", hidden_states)


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError if ``tensor`` holds a NaN or an infinity (one pass, no copy)."""
    low, high = torch.aminmax(tensor)  # NaN propagates to both
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError(f"{name} contains NaN or infinite values")


def budget_tensor(num_tokens: Budget, batch: int, device: torch.device) -> torch.Tensor:
    """Long ``[B]`` budgets from an int, a sequence or a tensor, validated."""
    if isinstance(num_tokens, torch.Tensor):
        if num_tokens.is_floating_point() or num_tokens.dtype == torch.bool or num_tokens.is_complex():
            raise ValueError(f"num_tokens must hold integers, got dtype {num_tokens.dtype}")
        if num_tokens.dim() == 0:
            values = [int(num_tokens)] * batch
        else:
            values = num_tokens.flatten().tolist()
    elif isinstance(num_tokens, numbers.Integral) and not isinstance(num_tokens, bool):
        values = [int(num_tokens)] * batch
    elif isinstance(num_tokens, Sequence) and not isinstance(num_tokens, (str, bytes)):
        values = list(num_tokens)
        for value in values:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"num_tokens must be integers, got {value!r}")
    else:
        raise ValueError(f"num_tokens must be an int or one int per batch row, got {num_tokens!r}")
    if len(values) != batch:
        raise ValueError(f"got {len(values)} budgets for a batch of {batch} rows")
    low = min(int(v) for v in values)
    if low < 2:
        raise ValueError(f"num_tokens must be at least 2 (CLS plus one patch), got {low}")
    return torch.tensor([int(v) for v in values], dtype=torch.long, device=device)
