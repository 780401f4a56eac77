"""Low-level drawing shared by the views: blending, markers, text, legend bands.

All functions take and return uint8 ``H x W x 3`` RGB arrays; none mutate their input
unless the name says ``_inplace``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from .palette import hex_to_rgb

Color = tuple[int, int, int]
MarkerKind = Literal["box", "fill", "dot", "disc", "ring", "line", "square", "palette", "none"]


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (ships with matplotlib, so the same glyphs on every machine)."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size=max(6, int(size)))


def fitted_font(text: str, size: int, width: float) -> ImageFont.FreeTypeFont:
    """The :func:`font` of ``size``, or smaller (down to 6 px), so that ``text`` fits in ``width`` pixels."""
    f = font(size)
    while size > 6 and f.getlength(text) > width:
        size -= 1
        f = font(size)
    return f


def rgb(color: str | Color) -> Color:
    return hex_to_rgb(color) if isinstance(color, str) else tuple(int(c) for c in color)  # type: ignore[return-value]


def blend(base: np.ndarray, over: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """``base * (1 - alpha) + over * alpha`` with ``alpha`` scalar or ``[H, W]``; uint8 out."""
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    out = base.astype(np.float32) * (1.0 - a) + np.asarray(over, dtype=np.float32) * a
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
    """Luma (Rec. 601) copied into three channels, so colour overlays read on top."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


@dataclass(frozen=True)
class LegendItem:
    """One entry of a legend band: a small swatch of ``kind`` in ``color`` and a text."""

    kind: MarkerKind
    color: str | Color
    text: str
    edge: str | Color | None = None
    colors: tuple = ()  # for kind="palette": a row of small squares

    def swatch_width(self, sw: int) -> int:
        if self.kind == "none":
            return 0
        if self.kind == "palette":
            return round(sw * 0.7) * len(self.colors)
        return sw


def legend_band(items: Sequence[LegendItem], width: int, scale: float = 1.0) -> np.ndarray:
    """A white band of legend entries, wrapped onto as many lines as ``width`` needs.

    ``scale`` = display size / 336, so text stays proportionate on larger images.
    """
    fsize = round(12 * scale)
    f = font(fsize)
    sw = round(14 * scale)  # swatch side
    gap, pad = round(12 * scale), round(6 * scale)
    line_h = max(sw, fsize) + round(6 * scale)
    # Lay out: measure each entry and wrap greedily.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = _split_wide(items, width - 2 * pad, sw, round(5 * scale), lambda t: probe.textlength(t, font=f))
    widths = [it.swatch_width(sw) + round(5 * scale) * bool(it.swatch_width(sw)) + int(probe.textlength(it.text, font=f)) for it in items]
    lines: list[list[int]] = [[]]
    x = pad
    for i, w in enumerate(widths):
        if lines[-1] and x + w > width - pad:
            lines.append([])
            x = pad
        lines[-1].append(i)
        x += w + gap
    height = 2 * pad + line_h * len(lines) - round(6 * scale)
    band = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for li, idx in enumerate(lines):
        x, y = pad, pad + li * line_h
        for i in idx:
            it = items[i]
            w = it.swatch_width(sw)
            _swatch(band, draw, it, (x, y, x + sw, y + sw), scale)
            tx = x + w + round(5 * scale) * bool(w)
            draw.text((tx, y + sw / 2), it.text, fill=(20, 20, 20), font=f, anchor="lm")
            x += widths[i] + gap
    return np.asarray(band)


def _split_wide(items: Sequence[LegendItem], room: int, sw: int, space: int, measure) -> list[LegendItem]:
    """Entries wider than a whole line split at spaces into several (the rest without a swatch),
    so the greedy layout puts them on the next lines instead of cutting the text at the edge."""
    out: list[LegendItem] = []
    for it in items:
        lead = it.swatch_width(sw) + space * bool(it.swatch_width(sw))
        words = it.text.split(" ")
        if lead + measure(it.text) <= room or len(words) == 1:
            out.append(it)
            continue
        line, first = "", True
        for word in words:
            trial = f"{line} {word}".strip()
            if line and (lead if first else 0) + measure(trial) > room:
                out.append(replace(it, text=line) if first else LegendItem("none", "", line))
                line, first = word, False
            else:
                line = trial
        out.append(replace(it, text=line) if first else LegendItem("none", "", line))
    return out


def _swatch(band: Image.Image, draw: ImageDraw.ImageDraw, it: LegendItem, box, scale: float) -> None:
    x0, y0, x1, y1 = box
    if it.kind == "none":
        return
    c = (0, 0, 0) if isinstance(it.color, str) and not it.color else rgb(it.color)
    e = rgb(it.edge) if it.edge is not None else (40, 40, 40)
    lw = max(1, round(1.5 * scale))
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if it.kind == "box":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(128, 128, 128), outline=c, width=lw)
    elif it.kind == "fill":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=c, outline=e, width=1)
    elif it.kind == "square":
        draw.rectangle((x0 + 2, y0 + 2, x1 - 3, y1 - 3), outline=c, width=lw)
    elif it.kind == "disc":
        draw.ellipse((cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8), fill=c, outline=e, width=lw)
    elif it.kind == "dot":
        draw.ellipse((cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), fill=c, outline=e, width=1)
    elif it.kind == "ring":
        draw.ellipse((cx - r * 0.7, cy - r * 0.7, cx + r * 0.7, cy + r * 0.7), outline=c, width=lw)
    elif it.kind == "line":
        draw.line((x0, y1 - 2, x1, y0 + 2), fill=c, width=lw)
    elif it.kind == "palette":
        step = round((x1 - x0) * 0.7)
        for i, col in enumerate(it.colors):
            draw.rectangle((x0 + i * step, y0 + 1, x0 + (i + 1) * step - 2, y1 - 2), fill=rgb(col))


def colorbar_band(
    cmap: str, vmin: float, vmax: float, title: str, width: int, scale: float = 1.0, clipped: bool = False
) -> np.ndarray:
    """A horizontal colour bar under an image: ``title``, then ``vmin [ramp] vmax``."""
    from matplotlib import colormaps

    fsize = round(12 * scale)
    f = font(fsize)
    pad = round(6 * scale)
    bar_h = round(10 * scale)
    lo, hi = _fmt(vmin), ("≥ " if clipped else "") + _fmt(vmax)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    w_lo, w_hi = probe.textlength(lo, font=f), probe.textlength(hi, font=f)
    # Labels beside the bar when there is room, else under its ends (narrow images).
    beside = width - 4 * pad - w_lo - w_hi >= 60 * scale
    height = pad * 3 + fsize + bar_h + (0 if beside else fsize + pad)
    band = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    title_font = fitted_font(title, fsize, width - 2 * pad)  # a long title shrinks rather than being cut off
    draw.text((width / 2, pad + fsize / 2), title, fill=(20, 20, 20), font=title_font, anchor="mm")
    bx0, bx1 = (int(pad * 2 + w_lo), int(width - pad * 2 - w_hi)) if beside else (pad, width - pad)
    by0 = pad * 2 + fsize
    ramp = colormaps[cmap](np.linspace(0, 1, max(2, bx1 - bx0)))[:, :3]
    strip = np.repeat((ramp * 255).round().astype(np.uint8)[None], bar_h, axis=0)
    band.paste(Image.fromarray(strip), (bx0, by0))
    draw.rectangle((bx0 - 1, by0 - 1, bx1, by0 + bar_h), outline=(60, 60, 60), width=1)
    ty = by0 + bar_h / 2 if beside else by0 + bar_h + pad / 2 + fsize / 2
    draw.text((pad, ty), lo, fill=(20, 20, 20), font=f, anchor="lm")
    draw.text((width - pad, ty), hi, fill=(20, 20, 20), font=f, anchor="rm")
    return np.asarray(band)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def stack_below(image: np.ndarray, band: np.ndarray) -> np.ndarray:
    """The image with a band appended underneath, separated by a 1 px light rule."""
    rule = np.full((1, image.shape[1], 3), 210, dtype=np.uint8)
    return np.concatenate([image, rule, band], axis=0)


def label_inplace(image: np.ndarray, text: str, scale: float = 1.0) -> None:
    """A small dark chip with white text at the top-left corner (used on contact sheets)."""
    f = font(round(11 * scale))
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    pad = round(3 * scale)
    x0, y0, x1, y1 = draw.textbbox((pad * 2, pad * 2), text, font=f)
    draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), fill=(0, 0, 0))
    draw.text((pad * 2, pad * 2), text, fill=(255, 255, 255), font=f)
    image[...] = np.asarray(pil)


def with_caption(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (uint8 RGB) under a white band holding ``text``, wrapped to its width."""
    import textwrap

    from PIL import Image, ImageDraw

    size = 14
    face = font(size)
    chars = max(20, int(image.shape[1] / (0.55 * size)))
    lines = textwrap.wrap(text, chars)
    band = Image.new("RGB", (image.shape[1], 12 + len(lines) * (size + 5)), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((8, 6 + i * (size + 5)), line, fill=(30, 30, 30), font=face)
    return np.concatenate([np.asarray(band), image], axis=0)
