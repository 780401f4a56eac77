"""Rasterising figures, and the dynamic-ratio chart's cached background.

Plain matplotlib: Agg rendering, no pyplot state, nothing about how a figure is shown.
"""
from __future__ import annotations

import threading

import cachetools
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure


def render_rgba(fig: Figure) -> np.ndarray:
    """Agg rendering of ``fig`` at its dpi: a uint8 ``[H, W, 4]`` copy."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


class DynamicRatioFigure(Figure):
    """The dynamic-ratio chart: Agg draws of the same static content reuse one background.

    The first draw at a given size renders the figure without its *dynamic* artists (the
    annotation and the top axis, which depend on the budget), keeps that pixel buffer in
    a small process-wide cache under the figure's key (reference φs, φ, bins, …), then draws
    the dynamic artists over it. Later figures with the same key only restore the buffer and
    draw their dynamic artists: the same pixels as a full draw, in a fraction of the time.
    Every Agg draw goes through it (``savefig`` too). The static artists must not be changed
    after :meth:`set_background_key` (draws after that would show the cached picture); call
    it again with a new key, or with ``None`` to always draw in full.
    """

    _backgrounds: cachetools.LRUCache = cachetools.LRUCache(maxsize=32)
    """Agg buffers of the static artists, by key, size and resolution (shared by every figure)."""
    _lock = threading.Lock()

    _key = None
    _dynamic: tuple = ()

    def set_background_key(self, key, dynamic=()) -> None:
        self._key = key
        self._dynamic = tuple(dynamic)

    def draw(self, renderer):
        if self._key is None or not isinstance(renderer, RendererAgg):
            return super().draw(renderer)
        key = (self._key, self.dpi, tuple(self.bbox.bounds), renderer.width, renderer.height)
        with self._lock:
            background = self._backgrounds.get(key)  # a hit becomes the most recently used
        if background is None:
            visible = [a.get_visible() for a in self._dynamic]
            for a in self._dynamic:
                a.set_visible(False)
            try:
                super().draw(renderer)
            finally:
                for a, v in zip(self._dynamic, visible):
                    a.set_visible(v)
            background = renderer.copy_from_bbox(self.bbox)
            with self._lock:
                self._backgrounds[key] = background  # the least recently used goes past maxsize
        else:
            renderer.restore_region(background)
        for a in sorted(self._dynamic, key=lambda a: a.get_zorder()):  # matplotlib's drawing order
            if a.get_visible():
                a.draw(renderer)
        self.stale = False
