"""PruneSID: training-free visual-token selection for vision-language models.

Public API::

    from prunesid import select_tokens, Selection
    sel = select_tokens(hidden_states, cls_attention, num_tokens=64)
"""
from .config import DEFAULT_CONFIG, PruneSIDConfig
from .result import Selection

__all__ = ["Selection", "PruneSIDConfig", "DEFAULT_CONFIG"]
