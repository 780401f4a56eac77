"""Token-selection methods behind one signature: PruneSID (fixed, dynamic) and baselines.

    from prunesid_eval.methods import get_method, list_methods
    sel = get_method("divprune").fn(hidden_states, cls_attention, 64)

See :mod:`prunesid_eval.methods.registry` for the signature and each method's deviations from
its public code.
"""
from .registry import METHODS, MethodSpec, get_method, list_methods

__all__ = ["METHODS", "MethodSpec", "get_method", "list_methods"]
