"""Figure classes for the charts redrawn on every slider move (see :mod:`viz.plots`).

They live in a module whose name contains "matplotlib" on purpose: ``gr.Plot`` recognises a
matplotlib figure by ``"matplotlib" in type(value).__module__``.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from PIL import Image


def render_rgba(fig: Figure) -> np.ndarray:
    """Agg rendering of ``fig`` at its dpi: a uint8 ``[H, W, 4]`` copy."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


class ChartFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` whose plain PNG ``savefig`` (what ``gr.Plot`` calls:
    ``fig.savefig(buffer, format="png")``) rasterises with Agg at the figure's dpi and writes
    the PNG at zlib level 1 (several times faster than the default level, same pixels).
    Any other ``savefig`` (other format, dpi, bbox, …) is matplotlib's own."""

    def savefig(self, fname, *args, **kwargs):
        fmt = kwargs.pop("format", None)
        if fmt is None and isinstance(fname, (str, os.PathLike)):
            fmt = os.path.splitext(os.fspath(fname))[1].lstrip(".").lower() or None
        rc = matplotlib.rcParams
        plain = (not args and not kwargs and (fmt or rc["savefig.format"]) == "png"
                 and rc["savefig.dpi"] == "figure" and rc["savefig.bbox"] is None
                 and not rc["savefig.transparent"] and rc["savefig.facecolor"] == "auto")
        if not plain:
            if fmt is not None:
                kwargs["format"] = fmt
            return super().savefig(fname, *args, **kwargs)
        Image.fromarray(render_rgba(self), "RGBA").save(fname, format="PNG", compress_level=1)


class DynamicRatioFigure(ChartFigure):
    """The dynamic-ratio chart: Agg draws of the same static content reuse one background.

    The first draw at a given size renders the figure without its *dynamic* artists (the
    annotation and the top axis, which depend on the budget), keeps that pixel buffer in
    a small process-wide cache under the figure's key (reference φs, φ, bins, …), then draws
    the dynamic artists over it. Later figures with the same key only restore the buffer and
    draw their dynamic artists: the same pixels as a full draw, in a fraction of the time.
    The static artists must not be changed after :meth:`set_background_key` (draws after
    that would show the cached picture); call it again with a new key, or with ``None``
    to always draw in full.
    """

    _backgrounds: "OrderedDict[tuple, object]" = OrderedDict()
    _lock = threading.Lock()
    MAX_BACKGROUNDS = 32

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
            background = self._backgrounds.get(key)
            if background is not None:
                self._backgrounds.move_to_end(key)
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
                self._backgrounds[key] = background
                while len(self._backgrounds) > self.MAX_BACKGROUNDS:
                    self._backgrounds.popitem(last=False)
        else:
            renderer.restore_region(background)
        for a in sorted(self._dynamic, key=lambda a: a.get_zorder()):  # matplotlib's drawing order
            if a.get_visible():
                a.draw(renderer)
        self.stale = False
