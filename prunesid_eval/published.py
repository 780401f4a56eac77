"""Published relative accuracies (% of the unpruned model's score, averaged over the
paper's benchmark suite), for the app's "reported" column and the scripted API.

Only figures with a named source are listed; everything else is "not reported". All
values come from the PruneSID paper's tables (arXiv 2603.09480, ICLR 2026), as listed in
the README's "Published figures" table; they are averages over the paper's benchmarks for
the named model, not a prediction for any single image.

Budgets are the paper's token counts: per image for LLaVA-1.5 (CLS included, as the
reference counts), the total over the base image and crops for LLaVA-NeXT, per frame for
Video-LLaVA.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

PRUNESID_TABLES = "PruneSID paper (Fang et al., ICLR 2026, arXiv 2603.09480), main results tables"

LLAVA_15_7B = "llava-1.5-7b"
LLAVA_NEXT_7B = "llava-next-7b"
VIDEO_LLAVA = "video-llava"

NOT_REPORTED = "not reported"


@dataclass(frozen=True)
class PublishedFigure:
    """One reported relative accuracy."""

    method: str
    """Registry name (``prunesid``, ``prunesid-dyn``, ``visionzip``, ...)."""
    model: str
    num_tokens: int
    relative_accuracy: float
    """Percent of the full model's average score."""
    source: str
    note: str = ""
    """Caveat about how the figure was read, if any."""

    def label(self) -> str:
        """E.g. ``"95.9% (LLaVA-1.5-7B, PruneSID paper)"``."""
        return f"{self.relative_accuracy:.1f}% ({MODEL_LABELS[self.model]}, {SOURCE_SHORT})"

    def to_dict(self) -> dict:
        return asdict(self)


MODEL_LABELS = {LLAVA_15_7B: "LLaVA-1.5-7B", LLAVA_NEXT_7B: "LLaVA-NeXT-7B", VIDEO_LLAVA: "Video-LLaVA"}
SOURCE_SHORT = "PruneSID paper"

_TABLE: tuple[tuple[str, str, int, float], ...] = (
    # LLaVA-1.5-7B, 64 tokens per image (11.1% retention).
    ("prunesid", LLAVA_15_7B, 64, 95.9),
    ("prunesid-dyn", LLAVA_15_7B, 64, 96.3),
    ("visionzip", LLAVA_15_7B, 64, 94.0),
    ("divprune", LLAVA_15_7B, 64, 94.6),
    # LLaVA-1.5-7B, 192 tokens (quoted to this project as "98.5% / 98.6%" without method names;
    # read in the PruneSID / PruneSID-Dyn order of the 64-token line: see READING_192).
    ("prunesid", LLAVA_15_7B, 192, 98.5),
    ("prunesid-dyn", LLAVA_15_7B, 192, 98.6),
    # LLaVA-NeXT-7B, total tokens over base + 4 crops (640 / 320 / 160 of 2880).
    ("prunesid", LLAVA_NEXT_7B, 640, 98.4),
    ("prunesid", LLAVA_NEXT_7B, 320, 95.8),
    ("prunesid", LLAVA_NEXT_7B, 160, 92.8),
    ("visionzip", LLAVA_NEXT_7B, 640, 97.5),
    ("visionzip", LLAVA_NEXT_7B, 320, 94.3),
    ("visionzip", LLAVA_NEXT_7B, 160, 90.3),
    # Video-LLaVA, 17 tokens per frame.
    ("prunesid", VIDEO_LLAVA, 17, 95.5),
    ("visionzip", VIDEO_LLAVA, 17, 93.2),
)

READING_192 = ("The 192-token figures reached this project as '98.5% / 98.6%' without method names; read in "
               "the PruneSID / PruneSID-Dyn order of the 64-token line (not re-checked against the paper's "
               "table here).")
_NOTES = {(LLAVA_15_7B, 192): READING_192}

PUBLISHED: tuple[PublishedFigure, ...] = tuple(
    PublishedFigure(m, model, k, v, PRUNESID_TABLES, _NOTES.get((model, k), "")) for m, model, k, v in _TABLE
)

FAMILY_MODEL = {"llava": LLAVA_15_7B, "llava_next": LLAVA_NEXT_7B, "llava_next_video": VIDEO_LLAVA}
"""Adapter family → the paper's model whose figures are the closest reference."""


def published_figure(method: str, num_tokens: int, model: str = LLAVA_15_7B) -> PublishedFigure | None:
    """The reported relative accuracy of ``method`` at exactly ``num_tokens`` on ``model``, or None."""
    for fig in PUBLISHED:
        if fig.method == method and fig.model == model and fig.num_tokens == num_tokens:
            return fig
    return None


def published_label(method: str, num_tokens: int, model: str = LLAVA_15_7B) -> str:
    """``"95.9% (LLaVA-1.5-7B, PruneSID paper)"`` or ``"not reported"``."""
    fig = published_figure(method, num_tokens, model)
    return NOT_REPORTED if fig is None else fig.label()


def published_budgets(model: str = LLAVA_15_7B) -> list[int]:
    """Budgets with at least one reported figure for ``model``, ascending."""
    return sorted({f.num_tokens for f in PUBLISHED if f.model == model})


def published_table(model: str | None = None) -> list[dict]:
    """Every figure (optionally for one model) as plain dicts, for JSON output."""
    return [f.to_dict() for f in PUBLISHED if model is None or f.model == model]
