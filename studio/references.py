"""Reference answers of the app's shapes-world examples, so that a visitor sees which answer is right.

Each example scene is drawn from the world's rules, so its question has one right word
(``assets/shapes/examples.json``). A picture is recognised by its pixels, not its file name: the
browser uploads a copy under another name, and an edited or other picture must not inherit an
answer. The question must be the example's own, unchanged but for case and spaces.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from prunesid_eval.answers import answer_matches
from prunesid_vlm import SHAPES_DEMO_ID

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "shapes" / "examples.json"


def _pixels_key(image: Image.Image) -> str:
    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    return f"{pixels.shape}:{hashlib.sha256(pixels.tobytes()).hexdigest()}"  # the same bytes in another shape differ


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


@lru_cache(maxsize=1)
def example_scenes() -> tuple[tuple[Path, str, str], ...]:
    """``(picture, question, right answer)`` of each example scene that is present, in the listed order."""
    if not EXAMPLES.exists():
        return ()
    listed = [(EXAMPLES.parent / e["file"], e["question"], e["answer"]) for e in json.loads(EXAMPLES.read_text())]
    return tuple(scene for scene in listed if scene[0].exists())


@lru_cache(maxsize=1)
def _references() -> dict[tuple[str, str], str]:
    table = {}
    for path, question, answer in example_scenes():
        with Image.open(path) as picture:
            table[(_pixels_key(picture), _question_key(question))] = answer
    return table


def reference_answer(images: list[Image.Image], question: str) -> str | None:
    """The right one-word answer when ``images`` is one example scene and ``question`` its question."""
    if len(images) != 1 or not _references():
        return None
    return _references().get((_pixels_key(images[0]), _question_key(question)))


def judges_answers(model_id: str) -> bool:
    """Whether a model's answers are marked against the reference word: the shapes model answers this
    world with one word; another model's sentence ("There are three objects.") is left to the reader."""
    return model_id == SHAPES_DEMO_ID


def mark(answer: str, reference: str) -> str:
    """``"✓"`` when ``answer`` says the reference word, else ``"✗"``."""
    return "✓" if answer_matches(answer, reference) else "✗"


def reference_line(reference: str, full_answer: str, pruned_answer: str, one_word_model: bool) -> str:
    """Markdown: the right answer and, for a model that answers this world with one word (the
    shapes model), whether each of the two answers is it. Another model's sentence ("There are
    three objects.") is not marked: the reader compares it."""
    known = f"**Right answer: {reference}** (this example scene is drawn from the shapes world's rules, so its answer is known)"
    if not one_word_model:
        return f"{known}."

    def judged(answer: str) -> str:
        sign = mark(answer, reference)
        return f"{sign} {'right' if sign == '✓' else 'wrong'}"

    return f"{known} — all tokens: **{judged(full_answer)}**; PruneSID: **{judged(pruned_answer)}**."
