"""The smoke task's documents, prompts and metrics (see prunesid_smoke.yaml)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

ASSETS = Path(__file__).resolve().parents[3] / "assets"


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return [Image.open(ASSETS / doc["image"]).convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict:
    """The prunesid model answers this task with JSON: the pruned and the unpruned answer and the
    first-token KL between them."""
    answered = json.loads(results[0])
    return {"answer_agreement": float(answered["answer"] == answered["full_answer"]),
            "first_token_kl": float(answered["first_token_kl"])}
