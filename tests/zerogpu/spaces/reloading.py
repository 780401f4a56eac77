"""``spaces.reloading`` as Gradio calls it on a Space: the stand-in serves no hot reloading."""
from __future__ import annotations


def start_reload_server(prerun=None, postrun=None, stop_event=None) -> None:
    """Gradio starts this in a thread on a Space; hot reloading is not part of what is tested."""
    return None
