"""The rules the pipeline applies to its inputs and to encoded features — one of each, shared
by the API, the app and the studies: what a budget and a question may be, how many tokens
each tower view gets (fixed or dynamic, LLaVA-NeXT crops included), and which tokens a
registry method keeps.

Pure functions of their arguments: no model, no shared state, safe from any thread. A
visitor's redraw is :func:`select` on that visitor's own :class:`EncodedImages`.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
from PIL import Image

from prunesid import allocate_budgets, dynamic_budget, select_tokens
from prunesid.result import Selection
from prunesid_eval.compare import method_fn
from prunesid_eval.methods import get_method

from .results import EncodedImages

MAX_QUESTION_CHARS = 2000
"""Longer questions are refused (LLaVA-1.5's context is 4096 tokens, most of it image)."""


# ---- input rules (one of each, shared by the API and the app) ------------------------------
def check_budget(num_tokens: Any, num_patches: int = 576) -> int:
    """The budget as an int in [2, 1+N] (CLS included), or a ValueError that says why.

    Accepts ints, integral floats and numeric strings (what a slider or a form sends)."""
    if isinstance(num_tokens, bool):
        raise ValueError(f"The token budget must be a number, got {num_tokens!r}.")
    try:
        value = float(num_tokens)
    except (TypeError, ValueError):
        raise ValueError(f"The token budget must be a number, got {num_tokens!r}.") from None
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"The token budget must be a whole number, got {num_tokens!r}.")
    k = int(value)
    if not 2 <= k <= num_patches + 1:
        raise ValueError(f"The token budget must be between 2 and {num_patches + 1} (CLS included); got {k}.")
    return k


def check_question(question: Any) -> str:
    """The question, stripped, or a ValueError for an empty or over-long one."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("The question is empty: type a question about the image.")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question is {len(question)} characters long; please keep it under {MAX_QUESTION_CHARS}.")
    return question


def check_max_new_tokens(max_new_tokens: Any) -> int:
    """``max_new_tokens`` as an int of at least 1, or a ValueError."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}")
    return int(max_new_tokens)


def check_images(images) -> list[Image.Image]:
    """The images as RGB PIL images, or a ValueError for none or a non-image."""
    if images is None or len(images) == 0:
        raise ValueError("no image given: pass a list with at least one PIL image")
    bad = [type(im).__name__ for im in images if not isinstance(im, Image.Image)]
    if bad:
        raise ValueError(f"images must be PIL images, got {bad[0]}")
    return [im.convert("RGB") if im.mode != "RGB" else im for im in images]


# ---- budgets and selection on encoded features (pure: no model, no shared state) ------------
def view_budgets(feats: EncodedImages, num_tokens: int, dynamic: bool = False) -> list[int]:
    """One budget per view (CLS included).

    Fixed: ``num_tokens`` each. Dynamic: a single view gets ``num_tokens · φ / φ_ref``
    (clamped); several views of one media item (crops, frames) share ``num_tokens × V`` ∝ φ.
    """
    k = check_budget(num_tokens, feats.num_patches)
    views, ceiling = feats.num_views, feats.num_patches + 1
    if not dynamic:
        return [k] * views
    if views == 1:
        return [dynamic_budget(float(feats.phi[0]), k, feats.phi_ref, ceiling=ceiling)]
    return [int(b) for b in allocate_budgets(feats.phi, k * views, ceiling=ceiling)]


def selection_budgets(feats: EncodedImages, budgets: Sequence[int]) -> list[int]:
    """The budgets handed to the selection: a view whose CLS is dropped afterwards gets one more."""
    ceiling = feats.num_patches + 1
    return [min(int(b) + int(drop), ceiling) for b, drop in zip(budgets, feats.drops_cls or [False] * len(budgets))]


def select(feats: EncodedImages, num_tokens: int, *, dynamic: bool = False, method: str = "prunesid",
           options: dict | None = None, seed: int = 0) -> Selection:
    """A registry method's selection on ``feats`` at ``num_tokens`` per view (CPU).

    A dynamic method (``prunesid-dyn``) gets its budgets from :func:`view_budgets` with
    ``dynamic=True`` — the same rule as PruneSID with ``dynamic=True`` — and runs PruneSID's
    fixed-budget rule with them, so the two always agree.
    """
    spec = get_method(method)
    budgets = selection_budgets(feats, view_budgets(feats, num_tokens, dynamic or spec.dynamic))
    hidden, attention = feats.hidden_states, feats.cls_attention
    if spec.dynamic:
        return replace(select_tokens(hidden, attention, budgets), method=spec.name)
    return method_fn(spec, seed=seed, options=options)(hidden, attention, budgets).cpu()


def selection_key(selection: Selection) -> str:
    """Content hash of what a selection hands over (kept indices, counts, merged tokens)."""
    digest = hashlib.sha1(selection.keep.cpu().numpy().tobytes())
    digest.update(selection.num_tokens.cpu().numpy().tobytes())
    if selection.merged_tokens is not None:
        digest.update(selection.merged_tokens.float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def unseen_note(feats: EncodedImages) -> str | None:
    """A sentence when the tower views leave part of an image out (LLaVA-1.5 and video frames keep
    only the centre square), else None. Boxes and sizes are in the image's own pixels."""
    for source, (height, width) in enumerate(feats.image_sizes):
        views = [v for v, s in zip(feats.views, feats.sources) if s == source]
        covered = max((min(v.box[2], width) - max(v.box[0], 0)) * (min(v.box[3], height) - max(v.box[1], 0))
                      for v in views)
        if covered < 0.995 * width * height:
            side = int(round(min(width, height)))
            what = "frame" if views[0].kind == "frame" else "image"
            return (f"The model sees only the middle {side}×{side} px square of this {width}×{height} {what} "
                    f"({100 * covered / (width * height):.0f}% of it); the rest is cut off before the tower.")
    return None

