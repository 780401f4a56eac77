"""The original image as the model's processor cuts it: which part reaches the vision tower,
where each tower view lies on it, and the kept tokens of one view drawn at the image's own
resolution.

Boxes are ``(x0, y0, x1, y1)`` in the original image's pixels. A box may reach past the image
(LLaVA-NeXT pads its AnyRes canvas): that part is drawn as grey padding. Pixels no box covers
(LLaVA-1.5 keeps only the centre square) are darkened and hatched: the model never sees them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ._draw import LegendItem, blend, font, legend_band, stack_below
from .grid import as_rgb_uint8
from .palette import KEPT_HEX, hex_to_rgb

Box = tuple[float, float, float, float]

PADDING_RGB = (150, 150, 150)
UNSEEN_ALPHA = 0.72
DROPPED_ALPHA = 0.6
VIEW_HEX = "#FFFFFF"
MIN_LEGEND_WIDTH = 480


def draw_on_original(
    image: np.ndarray,
    boxes: Sequence[Box],
    *,
    focus: int = 0,
    kept: np.ndarray | None = None,
    grid_shape: tuple[int, int] = (24, 24),
    max_side: int = 768,
    labels: Sequence[str] | None = None,
    legend: bool = True,
) -> np.ndarray:
    """uint8 ``[H', W', 3]``: ``image`` with the region the tower views cover, every view's box
    outlined (``focus`` thicker), and, when ``kept`` (bool ``[rows·cols]`` of view ``focus``) is
    given, that view's dropped patches dimmed and kept ones outlined in place.

    The picture is scaled so that its longer side is ``max_side`` (larger images are shown
    reduced, smaller ones enlarged)."""
    image = as_rgb_uint8(image)
    height, width = image.shape[:2]
    if not boxes:
        raise ValueError("at least one view box is needed")
    if not 0 <= focus < len(boxes):
        raise ValueError(f"focus {focus} is not one of the {len(boxes)} views")
    spans = np.asarray(boxes, dtype=np.float64)
    left, top = min(0.0, spans[:, 0].min()), min(0.0, spans[:, 1].min())
    right, bottom = max(float(width), spans[:, 2].max()), max(float(height), spans[:, 3].max())
    scale = max_side / max(right - left, bottom - top)
    out_w, out_h = max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x - left) * scale, (y - top) * scale

    canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
    canvas[:] = PADDING_RGB
    x0, y0 = (round(v) for v in to_px(0, 0))
    x1, y1 = (round(v) for v in to_px(width, height))
    resized = np.asarray(Image.fromarray(image).resize((max(1, x1 - x0), max(1, y1 - y0)), Image.BILINEAR))
    canvas[y0:y0 + resized.shape[0], x0:x0 + resized.shape[1]] = resized

    ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float32) + 0.5
    img_x, img_y = xs / scale + left, ys / scale + top  # pixel centres in image coordinates
    inside_image = (img_x >= 0) & (img_x < width) & (img_y >= 0) & (img_y < height)
    seen = np.zeros((out_h, out_w), dtype=bool)
    for bx0, by0, bx1, by1 in spans:
        seen |= (img_x >= bx0) & (img_x < bx1) & (img_y >= by0) & (img_y < by1)
    unseen = inside_image & ~seen
    hatch = ((xs + ys).astype(np.int32) // 6) % 4 == 0
    canvas = blend(canvas, np.zeros(3, np.float32), np.where(unseen, UNSEEN_ALPHA, 0.0))
    canvas[unseen & hatch] = (90, 90, 90)

    rows, cols = grid_shape
    bx0, by0, bx1, by1 = spans[focus]
    col = np.floor((img_x - bx0) / (bx1 - bx0) * cols).astype(np.int64)
    row = np.floor((img_y - by0) / (by1 - by0) * rows).astype(np.int64)
    in_focus = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    if kept is not None:
        kept = np.asarray(kept, dtype=bool).reshape(-1)
        if kept.size != rows * cols:
            raise ValueError(f"kept has {kept.size} entries for a {rows}x{cols} grid")
        cell = np.where(in_focus, row.clip(0, rows - 1) * cols + col.clip(0, cols - 1), -1)
        kept_px = in_focus & kept[cell.clip(min=0)]
        canvas = blend(canvas, np.zeros(3, np.float32), np.where(in_focus & ~kept_px, DROPPED_ALPHA, 0.0))
        # Outline each kept cell inside its own pixels: an edge where the neighbouring pixel is another cell.
        edge = np.zeros_like(kept_px)
        edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
        edge[:, :-1] |= cell[:, :-1] != cell[:, 1:]
        edge[1:] |= cell[1:] != cell[:-1]
        edge[:-1] |= cell[:-1] != cell[1:]
        canvas[kept_px & edge] = hex_to_rgb(KEPT_HEX)

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for v, (vx0, vy0, vx1, vy1) in enumerate(spans):
        if v == focus:
            continue
        draw.rectangle([*to_px(vx0, vy0), *(c - 1 for c in to_px(vx1, vy1))], outline=VIEW_HEX, width=1)
    draw.rectangle([*to_px(bx0, by0), *(c - 1 for c in to_px(bx1, by1))], outline=KEPT_HEX,
                   width=max(2, round(max_side / 256)))
    if labels is not None:
        label_font = font(max(10, round(13 * max_side / 504)))
        for (vx0, vy0, _, _), text in zip(spans, labels):
            px, py = to_px(max(vx0, left), max(vy0, top))
            draw.text((px + 5, py + 4), text, fill=(255, 255, 255), font=label_font, stroke_width=2,
                      stroke_fill=(0, 0, 0))
    out = np.asarray(picture)
    if not legend:
        return out
    items = [LegendItem("box", KEPT_HEX, "the view shown" + (": kept tokens outlined" if kept is not None else ""))]
    if len(spans) > 1:
        items.append(LegendItem("box", VIEW_HEX, "other views", edge="#000000"))
    if bool(unseen.any()):
        items.append(LegendItem("fill", (40, 40, 40), f"not seen by the model ({100 * unseen.sum() / max(inside_image.sum(), 1):.0f}%)"))
    if bool((~inside_image).any()):
        items.append(LegendItem("fill", PADDING_RGB, "padding added by the processor"))
    if out.shape[1] < MIN_LEGEND_WIDTH:  # a tall picture: widen with white so the legend stays readable
        side = (MIN_LEGEND_WIDTH - out.shape[1]) // 2
        out = np.pad(out, ((0, 0), (side, MIN_LEGEND_WIDTH - out.shape[1] - side), (0, 0)), constant_values=255)
    return stack_below(out, legend_band(items, out.shape[1], max_side / 448))
