"""PruneSID: training-free visual-token selection for vision-language models.

Public API::

    from prunesid import select_tokens, Selection
    sel = select_tokens(hidden_states, cls_attention, num_tokens=64)

``warm_up()`` prepares the CPU eigensolver ahead of the first selection (call it where a
wait is hidden, e.g. while a model loads); ``import prunesid`` itself loads neither SciPy
nor numba.
"""
from ._eigen import warm_up
from .config import DEFAULT_CONFIG, PruneSIDConfig
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
    "allocate_budgets",
    "dynamic_budget",
    "information_score",
    "warm_up",
]
