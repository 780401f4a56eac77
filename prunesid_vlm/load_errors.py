"""The one error loading raises: its message says what to do. A module of its own, so that the
family backends (which load their own processors) need not import the loader."""
from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message explains why and what to try."""
