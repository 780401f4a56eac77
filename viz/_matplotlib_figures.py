"""Transitional: the dynamic-ratio figure class under a module name that contains "matplotlib".

The stock ``gr.Plot`` recognises a matplotlib figure by ``"matplotlib" in type(value).__module__``,
so a Figure subclass defined in ``viz._figures`` would not be shown by it. The app's charts move
to ``studio.plot_output.ChartPlot``, which accepts any Figure; once they have, delete this file
and import :class:`DynamicRatioFigure` in :mod:`viz.plots` from :mod:`viz._figures`.
"""
from __future__ import annotations

from ._figures import DynamicRatioFigure as _DynamicRatioFigure


class DynamicRatioFigure(_DynamicRatioFigure):
    """:class:`viz._figures.DynamicRatioFigure`, unchanged (same background cache)."""
