"""A Gradio client on the Compare tab alone, served from this process, for the scripted endpoints' tests."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def compare_tab_client(pipeline) -> Iterator:
    """Serve the Compare tab over ``pipeline`` and yield a connected ``gradio_client.Client``."""
    gradio_client = pytest.importorskip("gradio_client")
    import gradio as gr

    from studio.compare_tab import build_compare_tab

    with gr.Blocks() as demo:
        image = gr.Image(type="filepath")
        build_compare_tab(image, gr.Textbox("q"), gr.Slider(2, 577, 64, step=1), lambda: pipeline)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(url, verbose=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        demo.close()
