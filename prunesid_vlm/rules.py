"""The rules the pipeline applies to its inputs and to encoded features — one of each, shared
by the API, the app and the studies: what a budget and a question may be, how many tokens
each tower view gets (fixed or dynamic, LLaVA-NeXT crops included), and which tokens a
registry method keeps.

Pure functions of their arguments: no model, no shared state, safe from any thread. A
visitor's redraw is :func:`select` on that visitor's own :class:`EncodedImages`.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import unicodedata
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from prunesid import (QWEN_CONFIG, allocate_budgets, dynamic_budget, information_score, qwen_budget, select_tokens,
                      select_tokens_qwen)
import prunesid.config
from prunesid.config import DEFAULT_MIN_TOKENS
from prunesid.result import Selection
from prunesid.subset import concat_selections, expand_selection, subset_inputs
from prunesid_eval.compare import method_fn
from prunesid_eval.methods import get_method, list_methods

from .results import EncodedImages, TokenCounts

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


PLACEHOLDER_WORDS = ("<image>", "<video>")
"""Text the chat template turns into a picture placeholder: typed in a question, it would ask for
a picture that is not there."""


def budget_patches(feats: EncodedImages) -> int:
    """The N a budget K is checked against: the view's patches, or 576 for Qwen, whose K is a
    budget per 576 tokens scaled to each image (the reference's ``need_token_num``)."""
    return QWEN_CONFIG.reference_tokens if feats.rule == "qwen" else feats.num_patches


def check_question(question: Any) -> str:
    """The question, stripped, or a ValueError for an empty, invisible, over-long one or one that
    holds a picture placeholder. The one rule for every way in (the app, its endpoints, scripts)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("The question is empty: type a question about the image.")
    question = question.strip()
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question is {len(question)} characters long; please keep it under {MAX_QUESTION_CHARS}.")
    if not any(not ch.isspace() and unicodedata.category(ch)[0] not in "CZ" for ch in question):
        raise ValueError("The question has no visible characters (only spaces, zero-width or control characters): "
                         "type a question about the image.")
    for word in PLACEHOLDER_WORDS:
        if word in question.lower():
            raise ValueError(f"The question contains {word}, which the model reads as a picture placeholder; leave it "
                             "out (the picture is attached already).")
    return question


def check_max_new_tokens(max_new_tokens: Any) -> int:
    """``max_new_tokens`` as an int of at least 1, or a ValueError."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}")
    return int(max_new_tokens)


class Frames(list):
    """The sampled frames of one video, as a list of PIL images. Unlike a list of images, on a
    LLaVA-NeXT image model each frame goes in as its base view alone (N tokens, no AnyRes crops),
    so that a clip stays within the language model's context; elsewhere frames are handled as the
    model's own video or multi-image path handles them."""


def check_images(images) -> list[Image.Image]:
    """The images as RGB PIL images (still :class:`Frames` if they were), or a ValueError for none
    or a non-image."""
    if images is None or len(images) == 0:
        raise ValueError("no image given: pass a list with at least one PIL image")
    bad = [type(im).__name__ for im in images if not isinstance(im, Image.Image)]
    if bad:
        raise ValueError(f"images must be PIL images, got {bad[0]}")
    rgb = [im.convert("RGB") if im.mode != "RGB" else im for im in images]
    return Frames(rgb) if isinstance(images, Frames) else rgb


# ---- budgets and selection on encoded features (pure: no model, no shared state) ------------
BUDGET_MODES = ("per_view", "total")
"""``per_view``: K tokens for every tower view; ``total``: K tokens over all views of the media
(the paper's LLaVA-NeXT setting: 640 / 320 / 160 over the base view and its crops)."""


def check_budget_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`BUDGET_MODES`, else a ValueError that names them."""
    if mode not in BUDGET_MODES:
        raise ValueError(f"The budget mode must be one of {', '.join(BUDGET_MODES)}; got {mode!r}.")
    return mode


def check_total_budget(num_tokens: Any, num_views: int, num_patches: int = 576) -> int:
    """A total budget over ``num_views`` views as an int in [2·V, V·(1+N)], or a ValueError."""
    if num_views == 1:
        return check_budget(num_tokens, num_patches)
    k = check_budget(num_tokens, num_views * (num_patches + 1) - 1)
    if not 2 * num_views <= k <= num_views * (num_patches + 1):
        raise ValueError(f"A total budget over {num_views} views must be between {2 * num_views} and "
                         f"{num_views * (num_patches + 1)}; got {k}.")
    return k


def view_ceilings(feats: EncodedImages) -> list[int]:
    """Per view: the most tokens it can hand over (CLS included where it keeps its CLS) — its
    patches the language model receives, plus its CLS (none for Qwen's merged tokens)."""
    if feats.rule == "qwen":
        return received_counts(feats)
    drops = feats.drops_cls or (False,) * feats.num_views
    counts = [feats.num_patches] * feats.num_views if feats.visible is None else feats.visible.sum(1).tolist()
    return [int(c) + (0 if d else 1) for c, d in zip(counts, drops)]


def received_counts(feats: EncodedImages) -> list[int]:
    """Per view: how many of its tokens the language model receives (all, unless padding is dropped)."""
    if feats.visible is None:
        return [feats.num_patches] * feats.num_views
    return [int(c) for c in feats.visible.sum(1).tolist()]


def view_budgets(feats: EncodedImages, num_tokens: int, dynamic: bool = False, mode: str = "per_view") -> list[int]:
    """One budget per view (CLS included), never above what the view can hand over.

    ``per_view`` fixed: ``num_tokens`` each. ``per_view`` dynamic: a single view gets
    ``num_tokens · φ / φ_ref`` (clamped); several views of one media item (crops, frames) share
    ``num_tokens × V`` ∝ φ. ``total``: ``num_tokens`` over all views, split evenly (fixed) or ∝ φ
    (dynamic).
    """
    views, ceilings = feats.num_views, view_ceilings(feats)
    if feats.rule == "qwen":
        return _qwen_budgets(feats, num_tokens, dynamic or check_budget_mode(mode) == "total")
    if check_budget_mode(mode) == "total" and views > 1:
        wanted = check_total_budget(num_tokens, views, feats.num_patches)
        weights = feats.phi if dynamic else torch.ones(views)
        return _shares(weights, wanted, ceilings)
    k = check_budget(num_tokens, feats.num_patches)
    if not dynamic:
        return [min(k, c) for c in ceilings]
    if views == 1:
        return [dynamic_budget(float(feats.phi[0]), k, feats.phi_ref, ceiling=ceilings[0])]
    return _shares(feats.phi, k * views, ceilings)


def _qwen_budgets(feats: EncodedImages, num_tokens: int, share: bool) -> list[int]:
    """The CLS-free rule: K is per 576 tokens; each view keeps K′ = max(round(N·K/576), 16) of the
    N tokens it hands over (the reference's scaling). Dynamic: a single view scales K by φ / φ_ref
    first; several views (a clip's temporal patches, a picture's crops) share Σ K′ in proportion to φ."""
    k = check_budget(num_tokens, QWEN_CONFIG.reference_tokens)
    views, counts = feats.num_views, received_counts(feats)
    if share and views == 1:
        k = dynamic_budget(float(feats.phi[0]), k, feats.phi_ref, ceiling=QWEN_CONFIG.reference_tokens + 1)
    each = [qwen_budget(n, k) for n in counts]
    if not share or views == 1:
        return each
    return _shares(feats.phi, sum(each), counts)


def _shares(weights, total: int, ceilings: list[int]) -> list[int]:
    floor = min(DEFAULT_MIN_TOKENS, *ceilings)
    total = max(min(total, sum(ceilings)), floor * len(ceilings))
    return [int(b) for b in allocate_budgets(weights, total, floor=floor, ceiling=ceilings)]


def selection_budgets(feats: EncodedImages, budgets: Sequence[int]) -> list[int]:
    """The budgets handed to the selection: a view whose CLS is dropped afterwards gets one more."""
    ceiling = feats.num_patches + (0 if feats.rule == "qwen" else 1)
    return [min(int(b) + int(drop), ceiling) for b, drop in zip(budgets, feats.drops_cls or [False] * len(budgets))]


def view_phis(hidden_states: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 ``[V]``: φ of every view, measured on the patches the language model receives."""
    phi = information_score(hidden_states)
    if visible is not None:
        for view in (~visible.all(dim=1)).nonzero().flatten().tolist():  # the few partly padded crops
            patches = visible[view].nonzero().flatten()
            tower = torch.cat([patches.new_zeros(1), patches + 1])
            phi[view] = information_score(hidden_states[view:view + 1, tower])[0]
    return phi


def check_view_size(feats: EncodedImages) -> None:
    """A ValueError that says why, for views of more than ``prunesid.MAX_TOKENS_PER_VIEW`` tokens."""
    largest = feats.hidden_states.shape[1] - 1  # a view's tokens, less its CLS (Qwen: a zero row)
    limit = prunesid.config.MAX_TOKENS_PER_VIEW  # read here, so that tests may lower it
    if largest > limit:
        raise ValueError(f"A view of {largest:,} tokens is more than a selection handles in seconds "
                         f"(prunesid.MAX_TOKENS_PER_VIEW = {limit:,}): use a smaller picture "
                         f"(Qwen models: a lower max_pixels, Pipeline.set_pixel_range).")


def select(feats: EncodedImages, num_tokens: int, *, dynamic: bool = False, method: str = "prunesid",
           options: dict | None = None, seed: int = 0, mode: str = "per_view") -> Selection:
    """A registry method's selection on ``feats`` at ``num_tokens`` per view (or in all, ``mode="total"``), CPU.

    A dynamic method (``prunesid-dyn``) gets its budgets from :func:`view_budgets` with
    ``dynamic=True`` — the same rule as PruneSID with ``dynamic=True`` — and runs PruneSID's
    fixed-budget rule with them, so the two always agree. Views with patches the language
    model does not receive are selected on the received ones only (``feats.visible``). Views
    larger than ``prunesid.MAX_TOKENS_PER_VIEW`` are refused (:func:`check_view_size`).
    """
    check_view_size(feats)
    spec = get_method(method)
    budgets = selection_budgets(feats, view_budgets(feats, num_tokens, dynamic or spec.dynamic, mode))
    if feats.rule == "qwen":
        return _select_qwen(feats, spec, budgets, options, seed)
    if spec.dynamic:
        rule = lambda h, a, b, _opts: replace(select_tokens(h, a, b), method=spec.name)  # noqa: E731
    else:
        rule = lambda h, a, b, opts: method_fn(spec, seed=seed, options=opts)(h, a, b).cpu()  # noqa: E731
    hidden, attention, visible = feats.hidden_states, feats.cls_attention, feats.visible
    if visible is None or bool(visible.all()):
        return rule(hidden, attention, budgets, options)
    whole = visible.all(dim=1)
    rows: dict[int, Selection] = {}
    if bool(whole.any()):
        index = whole.nonzero().flatten()
        together = rule(hidden[index], attention[index], [budgets[i] for i in index.tolist()],
                        _rows_of(options, index))
        rows.update({int(v): _row(together, r) for r, v in enumerate(index.tolist())})
    for view in (~whole).nonzero().flatten().tolist():  # a few partly padded crops: one call each
        patches = visible[view].nonzero().flatten()
        sub_hidden, sub_attention = subset_inputs(hidden[view:view + 1], attention[view:view + 1], patches)
        sub_options = _rows_of(options, torch.tensor([view]), patches)
        if "grid_shape" in inspect.signature(spec.fn).parameters:  # a spatial rule: the received rectangle
            sub_options = {**(sub_options or {}), spec.name: {**(sub_options or {}).get(spec.name, {}),
                                                               "grid_shape": _rectangle(patches, feats.num_patches)}}
        made = rule(sub_hidden, sub_attention, [budgets[view]], sub_options)
        rows[view] = expand_selection(made, patches, feats.num_patches)
    return concat_selections([rows[v] for v in range(feats.num_views)])


def _row(selection: Selection, row: int) -> Selection:
    """Row ``row`` of a selection, as a one-row selection."""
    picked = {}
    for name in ("keep", "num_tokens", "group", "num_groups", "nms_rank", "suppressed_by", "group_size",
                 "group_survivors", "group_budget", "importance", "rho", "tau", "phi", "merged_tokens",
                 "merged_into"):
        value = getattr(selection, name)
        picked[name] = None if value is None else value[row:row + 1]
    return replace(selection, **picked)


def _select_qwen(feats: EncodedImages, spec, budgets: list[int], options: dict | None, seed: int) -> Selection:
    """A method on a CLS-free family's tokens: PruneSID is the reference's CLS-free (Qwen) rule; the
    baselines that rank by CLS attention are not available; the others keep no CLS. Views with
    tokens the language model does not receive (padded crops) are selected on the received ones."""
    visible = feats.visible
    if visible is not None and not bool(visible.all()):
        rows = []
        for view in range(feats.num_views):  # a handful of views, not tokens
            patches = visible[view].nonzero().flatten()
            part = replace(feats, hidden_states=feats.hidden_states[view:view + 1, torch.cat([patches.new_zeros(1), patches + 1])],
                           cls_attention=feats.cls_attention[view:view + 1, patches], map_rows=None,
                           views=feats.views[view:view + 1], grid=_rectangle(patches, feats.num_patches),
                           phi=None if feats.phi is None else feats.phi[view:view + 1])
            made = _select_qwen(part, spec, budgets[view:view + 1], _rows_of(options, torch.tensor([view]), patches), seed)
            rows.append(expand_selection(made, patches, feats.num_patches))
        return concat_selections(rows)
    tokens = feats.hidden_states[:, 1:]
    if spec.name in ("prunesid", "prunesid-dyn"):
        chosen = select_tokens_qwen(tokens, budgets, scale=False)
        return replace(chosen, method=spec.name).on_tower_axis().cpu()
    if spec.needs_cls_attention:
        raise ValueError(f"{spec.label} is not available for this model: it ranks patches by the CLS token's "
                         "attention, and this model's vision tokens have no CLS token.")
    extra = {}
    parameters = inspect.signature(spec.fn).parameters
    if "keep_cls" in parameters:
        extra["keep_cls"] = False
    if "grid_shape" in parameters:
        extra["grid_shape"] = feats.grid
    opts = {**(options or {})}
    opts[spec.name] = {**opts.get(spec.name, {}), **extra}
    return method_fn(spec, seed=seed, options=opts)(feats.hidden_states, feats.cls_attention, budgets).cpu()


def unavailable_methods(feats: EncodedImages) -> dict[str, str]:
    """Per registry method that cannot run on ``feats``: why, in a sentence (the tokens' rule alone;
    the pipeline adds what the model lacks)."""
    out = {}
    if feats.rule == "qwen":
        for s in list_methods():
            if s.needs_cls_attention:
                out[s.name] = ("it ranks patches by the CLS token's attention, and this model's vision tokens have "
                               "no CLS token")
            elif s.needs_question:
                out[s.name] = ("it weighs patches by CLIP's text–image relevance, and this model's tower is not "
                               "CLIP")
    return out


def available_methods(feats: EncodedImages) -> list[str]:
    """The registry methods that can run on ``feats`` (all but the CLS-attention ones on Qwen)."""
    refused = unavailable_methods(feats)
    return [s.name for s in list_methods() if s.name not in refused]


def _rectangle(patches: torch.Tensor, num_patches: int) -> tuple[int, int]:
    """``(rows, cols)`` of the rectangle of a square patch grid that ``patches`` (raster order) fill:
    unpadding cuts whole rows or whole columns off a crop, so what it receives is one."""
    side = math.isqrt(num_patches)
    rows, cols = (patches // side).unique().numel(), (patches % side).unique().numel()
    if rows * cols != patches.numel():
        raise ValueError(f"{patches.numel()} received patches do not form a rectangle of the {side}x{side} grid")
    return rows, cols


def _rows_of(options: dict | None, views: torch.Tensor, patches: torch.Tensor | None = None) -> dict | None:
    """Per-method options (``{method: {key: value}}``) for some views and, given ``patches``, those
    patches only: the per-view tensors among them (:data:`PER_VIEW_OPTIONS`)."""
    if not options:
        return options
    out = {}
    for name, opts in options.items():
        for key in PER_VIEW_OPTIONS:
            if opts.get(key) is not None:
                rows = opts[key][views]
                opts = {**opts, key: rows if patches is None else rows[:, patches]}
        out[name] = opts
    return out


PER_VIEW_OPTIONS = ("features", "relevance")
"""Options that hold one row per view and one entry per patch: the projected ``features``
``[V, N, D]`` (DivPrune, CDPruner) and CDPruner's instruction ``relevance`` ``[V, N]``."""


def keeps_everything(feats: EncodedImages, selection: Selection) -> bool:
    """Whether ``selection`` keeps every patch the model receives, merging nothing (a budget of
    1+N or more): the model is then answered through its own, unpruned path."""
    if selection.merged_tokens is not None:
        return False
    kept = selection.kept_patches.cpu()
    return bool(kept.all()) if feats.visible is None else bool((kept | ~feats.visible).all())


def handed_per_view(feats: EncodedImages, selection: Selection) -> list[int]:
    """Per view, the tokens ``selection`` hands the language model: its budget less the CLS of views
    that drop it after selection (LLaVA-NeXT crops)."""
    drops = feats.drops_cls or (False,) * feats.num_views
    return [int(n) - int(d) for n, d in zip(selection.num_tokens.tolist(), drops)]


def token_counts(feats: EncodedImages, selection: Selection | None = None) -> TokenCounts:
    """Where a prompt's visual tokens come from: all of them (``selection=None``: every received
    patch, no CLS) or ``selection``'s (its budgets, less the CLS of views that drop it), plus one
    newline per crop-map row that is sent (LLaVA-NeXT). Pure: from ``feats.map_rows`` alone."""
    rows = feats.map_rows
    if selection is not None and keeps_everything(feats, selection):
        selection = None
    if selection is None:
        handed = torch.full((feats.num_views,), feats.num_patches) if rows is None else (rows >= -1).sum(1)
        sent = rows
    else:
        handed = handed_per_view(feats, selection)
        sent = None if rows is None else rows[selection.kept_patches.cpu()]
    newlines = 0 if sent is None else int(sent[sent >= 0].unique().numel())
    return TokenCounts(handed=tuple(int(h) for h in handed), newlines=newlines,
                       kinds=tuple(v.kind for v in feats.views))


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
        spans = [(min(v.box[2], width) - max(v.box[0], 0), min(v.box[3], height) - max(v.box[1], 0)) for v in views]
        seen_w, seen_h = max(spans, key=lambda s: s[0] * s[1])
        if seen_w * seen_h < 0.995 * width * height:
            # In shares of the picture, which stay true when the app shrank a large upload first.
            what = "frame" if views[0].kind == "frame" else "image"
            return (f"The model sees only the middle square of this {what}: {100 * seen_w / width:.0f}% of its "
                    f"width × {100 * seen_h / height:.0f}% of its height ({100 * seen_w * seen_h / (width * height):.0f}% "
                    f"of it); the rest is cut off before the tower (see 'On the original').")
    return None

