"""PruneSID Studio's user interface: small typed handlers (``handlers``), per-session state
(``session``), model loading (``models``) and the Gradio layout (``layout``).

``app.py`` only calls :func:`studio.layout.build_demo`; tests call the handlers directly.
"""
