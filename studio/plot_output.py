"""``gr.Plot`` for the charts redrawn on every slider move: the PNG written fast.

The stock ``gr.Plot`` turns a matplotlib figure into a data URL with
``fig.savefig(buffer, format=...)`` (PNG at zlib's default level 6) and recognises a figure
by ``"matplotlib" in type(value).__module__``. :class:`ChartPlot` instead renders any
:class:`~matplotlib.figure.Figure` (subclasses defined anywhere included) with
:func:`viz.figure_to_array` — Agg at the figure's dpi, where the dynamic-ratio chart reuses
its cached background — and writes the PNG itself at zlib level 1: the same pixels as
``savefig``, without its per-call overhead, and never slower to encode than the default
level on these flat-coloured charts (figures in PERFORMANCE.md, "Views and overlays").
Any other format, non-default savefig settings, and the other plot libraries go to
``gr.Plot`` unchanged.
"""
from __future__ import annotations

import base64
import io

import gradio as gr
import matplotlib
from gradio.components.plot import PlotData
from matplotlib.figure import Figure
from PIL import Image

import viz

PNG_COMPRESS_LEVEL = 1
"""zlib level of the chart PNGs: flat-coloured charts compress nearly as well at 1 as at the default 6."""


def _default_savefig_settings() -> bool:
    """Whether ``savefig`` would render at the figure's own dpi and colours, uncropped —
    what :func:`viz.figure_to_array` draws."""
    rc = matplotlib.rcParams
    return (rc["savefig.dpi"] == "figure" and rc["savefig.bbox"] is None and not rc["savefig.transparent"]
            and rc["savefig.facecolor"] == "auto" and rc["savefig.edgecolor"] == "auto")


def png_data_url(fig: Figure) -> str:
    """``data:image/png;base64,…`` of ``fig`` as ``gr.Plot`` sends it, encoded at :data:`PNG_COMPRESS_LEVEL`."""
    buffer = io.BytesIO()
    Image.fromarray(viz.figure_to_array(fig, alpha=True), "RGBA").save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ChartPlot(gr.Plot):
    """``gr.Plot`` that encodes matplotlib figures itself (see the module doc); use ``format="png"``."""

    def get_block_name(self) -> str:
        return "plot"  # the stock front end renders it

    def postprocess(self, value):
        if isinstance(value, Figure) and (self.format or "png") == "png" and _default_savefig_settings():
            return PlotData(type="matplotlib", plot=png_data_url(value))
        return super().postprocess(value)
