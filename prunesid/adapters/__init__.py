"""Model adapters: load LLaVA-family models through transformers, extract PruneSID's
features in one tower pass, and generate with all or only the kept visual tokens.

Nothing here imports gradio; :mod:`prunesid.pipeline` is the API the app uses.
"""
from .loading import LoadedModel, ModelLoadError, load_model
from .registry import DEMO_MODEL_ID, DEMO_NEXT_MODEL_ID, KNOWN_MODELS, ModelSpec, list_models

__all__ = ["load_model", "LoadedModel", "ModelLoadError", "list_models", "ModelSpec", "KNOWN_MODELS",
           "DEMO_MODEL_ID", "DEMO_NEXT_MODEL_ID"]
