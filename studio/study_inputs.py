"""What the study tabs (Compare, in-LLM) share: the media a study runs on, its budgets, its
progress reporter and its failure text. Its own module, so that neither tab imports the other's
internals."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from prunesid_vlm.media import MediaError, load_image
from prunesid_vlm.pipeline import Frames, check_budget

from .errors import message_for, warn

ProgressFn = Callable[..., Any]

ANY_PATCHES = 1 << 20
"""A bound that lets every budget through :func:`parse_budgets` when the media's N is not known yet."""

MAX_SWEEP_POINTS = 12


def parse_budgets(text: Any, num_patches: int = 576) -> list[int]:
    """``"16, 64, 192"`` (or a list) → sorted distinct budgets in [2, 1+N]. The studies check the
    budgets against the media's own N again where they run (one crossing onto the GPU with the
    encoding), so a caller without features may pass a large ``num_patches``."""
    items = text if isinstance(text, (list, tuple)) else str(text or "").replace(";", ",").split(",")
    budgets = sorted({check_budget(str(v).strip(), num_patches) for v in items if str(v).strip()})
    if not budgets:
        raise ValueError("Give at least one budget for the sweep, e.g. 16, 64, 192, 576.")
    if len(budgets) > MAX_SWEEP_POINTS:
        raise ValueError(f"At most {MAX_SWEEP_POINTS} budgets per sweep, got {len(budgets)}.")
    return budgets


def study_media(image: Any, media: Any = None) -> tuple[list, list[str], str]:
    """``(images, notes, label)``: the media of the Explore tab's current analysis when there is
    one (an image, or a video's sampled frames), else the image input's file."""
    if media is not None and getattr(media, "images", None):
        name = Path(str(media.source)).name
        label = f"the {len(media.images)} frames sampled from {name}" if media.kind == "video" else name
        # Frames stay Frames: a clip is compared as the Explore tab analysed it (Qwen: temporal
        # patches; LLaVA-NeXT: base views only), not as that many separate pictures.
        images = Frames(media.images) if isinstance(media.images, Frames) else list(media.images)
        return images, list(media.notes), label
    if image is None or (isinstance(image, str) and not image):
        raise MediaError("No image yet: upload one (or pick an example) in the Explore tab.")
    img, notes = load_image(image)
    return [img], notes, Path(str(image)).name


def reporter(progress: ProgressFn | None):
    return (lambda f, d: progress(f, desc=d)) if progress is not None else None


def failure_text(err: Exception, where: str) -> str:
    message = message_for(err, where)
    warn(message)
    return f"⚠ {message}"
