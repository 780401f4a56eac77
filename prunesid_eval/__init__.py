"""Baselines and evaluation around PruneSID: the method registry (PruneSID and the
token-pruning methods it is compared with), side-by-side comparison, the stability of the
reference's randomised PCA, budget sweeps, the paper's published figures, and how an answer
meets its reference word (:mod:`prunesid_eval.answers`).

Pure tensor code like :mod:`prunesid`: no model, no UI. Model-dependent numbers (answers,
fidelity) come in as callables built by :mod:`prunesid_vlm`.
"""
