"""PruneSID: training-free visual-token selection for vision-language models.

Public API::

    from prunesid import select_tokens, Selection
    sel = select_tokens(hidden_states, cls_attention, num_tokens=64)

``MAX_TOKENS_PER_VIEW`` is the largest view (tokens per image, crop or frame) that one
selection handles within a few seconds on a small CPU; the functions do not enforce it, callers
may refuse or downscale above it.

``warm_up()`` prepares the CPU eigensolver ahead of the first selection (call it where a
wait is hidden, e.g. while a model loads); ``import prunesid`` itself loads neither SciPy
nor numba.
"""
from ._eigen import warm_up
from .config import DEFAULT_CONFIG, MAX_TOKENS_PER_VIEW, PruneSIDConfig
from .dynamic import allocate_budgets, dynamic_budget, information_score
from .result import Selection
from .qwen import QWEN_CONFIG, QwenConfig, qwen_budget, select_tokens_qwen
from .selection import select_tokens

__all__ = [
    "select_tokens",
    "select_tokens_qwen",
    "qwen_budget",
    "QwenConfig",
    "QWEN_CONFIG",
    "Selection",
    "PruneSIDConfig",
    "DEFAULT_CONFIG",
    "MAX_TOKENS_PER_VIEW",
    "allocate_budgets",
    "dynamic_budget",
    "information_score",
    "warm_up",
]
