"""How an answer meets its reference word: one rule for the fidelity report's scoring and the
app's "right answer" line."""
from __future__ import annotations

import string


def normalise_answer(text: str) -> str:
    """Lowercase, surrounding whitespace and punctuation dropped: how answers meet references."""
    return text.strip().lower().strip(string.punctuation + string.whitespace)


def answer_matches(answer: str, reference: str) -> bool:
    """Whether ``answer`` says ``reference``: the whole answer, or its first word (a model that goes on
    after a one-word answer)."""
    said, wanted = normalise_answer(answer), normalise_answer(reference)
    return said == wanted or (said.split() or [""])[0].strip(string.punctuation) == wanted
