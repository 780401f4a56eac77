"""The one colour palette of the project.

Group colours: the first 12 are colour-blind-aware (Okabe & Ito's 7 hues without
black, plus 5 from Paul Tol's "muted" scheme that stay apart from them under the
common colour-vision deficiencies). PSCA makes up to 144 groups (K = 576 -> G = 144),
far more than any set of mutually distinguishable hues, so the rest are generated:
hues step by the golden angle (consecutive groups land far apart on the hue
circle) while lightness and saturation cycle through three levels each, so two
groups with similar hue still differ in brightness. Fully deterministic.
"""
from __future__ import annotations

import colorsys

import numpy as np

# Okabe & Ito (2008) without black, then Paul Tol "muted": indigo, wine, teal, olive, rose.
_BASE_HEX: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#332288",  # indigo
    "#882255",  # wine
    "#44AA99",  # teal
    "#999933",  # olive
    "#CC6677",  # rose
)
NUM_COLORBLIND_SAFE = len(_BASE_HEX)

KEPT_HEX = "#FFD21F"
"""Outline of kept tokens: a saturated yellow that reads on dimmed and bright cells."""
IMPORTANCE_CMAP = "inferno"
"""Perceptually uniform, readable in gray scale and by colour-blind viewers."""


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def rgb_to_hex(rgb: np.ndarray | tuple[int, int, int]) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02X}{g:02X}{b:02X}"


def _generated(i: int) -> tuple[int, int, int]:
    """Colour number ``i`` (>= 12) of the generated tail."""
    j = i - NUM_COLORBLIND_SAFE
    hue = (0.07 + j * 0.381966) % 1.0  # golden-angle steps (1 - 1/phi of a turn)
    light = (0.55, 0.38, 0.70)[j % 3]
    sat = (0.85, 0.65, 0.95)[(j // 3) % 3]
    r, g, b = colorsys.hls_to_rgb(hue, light, sat)
    return round(r * 255), round(g * 255), round(b * 255)


def group_colors(n: int) -> np.ndarray:
    """Uint8 ``[n, 3]``: RGB colour of groups ``0 .. n-1`` (group g always gets the same)."""
    if n < 0:
        raise ValueError(f"number of colours must be >= 0, got {n}")
    out = [hex_to_rgb(_BASE_HEX[i]) if i < NUM_COLORBLIND_SAFE else _generated(i) for i in range(n)]
    return np.asarray(out, dtype=np.uint8).reshape(n, 3)


def group_hex(n: int) -> list[str]:
    """``#RRGGBB`` strings of groups ``0 .. n-1`` (for matplotlib and ``gr.AnnotatedImage``)."""
    return [rgb_to_hex(c) for c in group_colors(n)]


def group_colors_float(n: int) -> np.ndarray:
    """Float ``[n, 3]`` in 0..1 (matplotlib's ``color=``)."""
    return group_colors(n).astype(np.float64) / 255.0
