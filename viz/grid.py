"""The one place that maps patch indices to pixels on a displayed image.

Conventions (used by every view in :mod:`viz`):

* A **patch index** ``p`` counts cells of a ``rows x cols`` grid in raster order:
  ``p = r * cols + c`` with row ``r`` from the top and column ``c`` from the left
  (CLIP ViT-L/14-336: 24 x 24 cells of 14 x 14 px on the 336 x 336 input).
* Pixel coordinates are ``(x, y)`` with the origin at the top-left pixel corner;
  arrays are indexed ``image[y, x]``. A cell's rectangle is half-open:
  ``y0 <= y < y1``, ``x0 <= x < x1``.
* When the displayed size is not a multiple of the grid, cell edges are rounded
  from ``linspace(0, size, n + 1)`` so cells differ by at most one pixel and tile
  the image exactly (no gaps, no overlaps).

Like segment-anything's ``ResizeLongestSide``, :class:`PatchGrid` also owns the
resize that prepares an image for display (:meth:`PatchGrid.fit`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np


@dataclass(frozen=True)
class PatchGrid:
    """A ``rows x cols`` patch grid laid over a ``height x width`` pixel image."""

    height: int
    width: int
    rows: int = 24
    cols: int = 24

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"grid must have at least one row and column, got {self.rows}x{self.cols}")
        if self.height < self.rows or self.width < self.cols:
            raise ValueError(
                f"a {self.height}x{self.width} px image is too small for a {self.rows}x{self.cols} grid "
                "(each cell needs at least one pixel)"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def for_display(cls, size: int = 336, rows: int = 24, cols: int = 24) -> "PatchGrid":
        """A square grid whose side is ``size`` rounded up to a multiple of the grid,
        so every cell is the same whole number of pixels (crisp overlays)."""
        cell = max(1, -(-size // max(rows, cols)))  # ceil(size / n)
        return cls(height=cell * rows, width=cell * cols, rows=rows, cols=cols)

    @classmethod
    def for_image(cls, image: np.ndarray, rows: int = 24, cols: int = 24) -> "PatchGrid":
        """The grid over an existing ``H x W (x C)`` array."""
        return cls(height=int(image.shape[0]), width=int(image.shape[1]), rows=rows, cols=cols)

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    # ---- geometry -----------------------------------------------------------------------
    @cached_property
    def y_edges(self) -> np.ndarray:
        """Int ``[rows + 1]``: pixel row where each cell row starts (last = height)."""
        return np.round(np.linspace(0, self.height, self.rows + 1)).astype(np.int64)

    @cached_property
    def x_edges(self) -> np.ndarray:
        """Int ``[cols + 1]``: pixel column where each cell column starts (last = width)."""
        return np.round(np.linspace(0, self.width, self.cols + 1)).astype(np.int64)

    @property
    def cell_size(self) -> float:
        """Mean cell side in pixels (the smaller of height and width per cell)."""
        return min(self.height / self.rows, self.width / self.cols)

    def rowcol(self, patch: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Grid row and column of patch indices (any shape)."""
        patch = np.asarray(patch)
        self._check(patch)
        return patch // self.cols, patch % self.cols

    def rect(self, patch: np.ndarray | int) -> np.ndarray:
        """Int ``[..., 4]``: half-open pixel rectangles ``(x0, y0, x1, y1)`` of patches."""
        r, c = self.rowcol(patch)
        return np.stack(
            [self.x_edges[c], self.y_edges[r], self.x_edges[c + 1], self.y_edges[r + 1]], axis=-1
        )

    def center(self, patch: np.ndarray | int) -> np.ndarray:
        """Float ``[..., 2]``: ``(x, y)`` pixel centres of patches (continuous coords)."""
        x0, y0, x1, y1 = np.moveaxis(self.rect(patch), -1, 0)
        return np.stack([(x0 + x1) / 2.0, (y0 + y1) / 2.0], axis=-1)

    def patch_at(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Patch index under pixel coordinates ``(x, y)`` (e.g. a ``gr.Image.select``
        event's ``evt.index``); coordinates outside the image are clipped to the edge."""
        x = np.clip(np.asarray(x, dtype=np.float64), 0, self.width - 1e-9)
        y = np.clip(np.asarray(y, dtype=np.float64), 0, self.height - 1e-9)
        c = np.searchsorted(self.x_edges, x, side="right") - 1
        r = np.searchsorted(self.y_edges, y, side="right") - 1
        return (r * self.cols + c).astype(np.int64)

    @cached_property
    def cell_map(self) -> np.ndarray:
        """Int ``[H, W]``: patch index of every pixel. Indexing a per-patch array with
        it (``values[grid.cell_map]``) paints per-patch values onto pixels."""
        r = np.searchsorted(self.y_edges, np.arange(self.height), side="right") - 1
        c = np.searchsorted(self.x_edges, np.arange(self.width), side="right") - 1
        return r[:, None] * self.cols + c[None, :]

    @cached_property
    def center_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """Float ``[H, W]`` pair ``(dx, dy)``: offset of every pixel's centre from its
        own cell's centre. Markers centred on cells are drawn from these in one
        vectorised pass (a marker smaller than a cell never crosses into another)."""
        cx = (self.x_edges[:-1] + self.x_edges[1:]) / 2.0
        cy = (self.y_edges[:-1] + self.y_edges[1:]) / 2.0
        c = np.searchsorted(self.x_edges, np.arange(self.width), side="right") - 1
        r = np.searchsorted(self.y_edges, np.arange(self.height), side="right") - 1
        dx = (np.arange(self.width) + 0.5) - cx[c]
        dy = (np.arange(self.height) + 0.5) - cy[r]
        return np.broadcast_to(dx[None, :], (self.height, self.width)), np.broadcast_to(
            dy[:, None], (self.height, self.width)
        )

    def border_mask(self, thickness: int = 1) -> np.ndarray:
        """Bool ``[H, W]``: pixels within ``thickness`` px of their own cell's edge
        (inside the cell, so drawing there never touches a neighbouring cell)."""
        ys, xs = np.arange(self.height), np.arange(self.width)
        r = np.searchsorted(self.y_edges, ys, side="right") - 1
        c = np.searchsorted(self.x_edges, xs, side="right") - 1
        near_y = np.minimum(ys - self.y_edges[r], self.y_edges[r + 1] - 1 - ys) < thickness
        near_x = np.minimum(xs - self.x_edges[c], self.x_edges[c + 1] - 1 - xs) < thickness
        return near_y[:, None] | near_x[None, :]

    def paint(self, values: np.ndarray) -> np.ndarray:
        """Per-patch ``[N, ...]`` values -> per-pixel ``[H, W, ...]`` (nearest, exact cells)."""
        values = np.asarray(values)
        if values.shape[0] != self.num_patches:
            raise ValueError(f"expected {self.num_patches} per-patch values, got {values.shape[0]}")
        return values[self.cell_map]

    # ---- display preparation ------------------------------------------------------------
    def fit(self, image: np.ndarray) -> np.ndarray:
        """Resize an ``H x W x 3`` uint8 image to this grid's pixel size.

        An exact integer upscale is done by pixel repetition (nearest), so a 336 px
        tower input shown at 672 px keeps its 14 px patches crisp; other shrinks use
        area averaging (no aliasing) and other enlargements bicubic interpolation.
        """
        image = as_rgb_uint8(image)
        h, w = image.shape[:2]
        if (h, w) == (self.height, self.width):
            return image.copy()
        if self.height % h == 0 and self.width % w == 0 and self.height // h == self.width // w:
            f = self.height // h
            return np.repeat(np.repeat(image, f, axis=0), f, axis=1)
        shrink = self.height < h and self.width < w
        interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        return cv2.resize(image, (self.width, self.height), interpolation=interp)

    def _check(self, patch: np.ndarray) -> None:
        if patch.size and (patch.min() < 0 or patch.max() >= self.num_patches):
            raise ValueError(
                f"patch index out of range for a {self.rows}x{self.cols} grid: "
                f"got {int(patch.min())}..{int(patch.max())}, expected 0..{self.num_patches - 1}"
            )


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate and normalise an image array to ``H x W x 3`` uint8 (gray -> RGB, RGBA -> RGB)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 image array, got shape {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and image.max() <= 1.0:
            image = image * 255.0  # float images in [0, 1]
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])
