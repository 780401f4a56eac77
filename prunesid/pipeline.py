"""Compatibility re-export: the model pipeline lives in :mod:`prunesid_vlm.pipeline`.

``from prunesid.pipeline import load_pipeline, DEMO_MODEL_ID`` keeps working for scripts;
importing :mod:`prunesid` itself never loads transformers.
"""
from prunesid_vlm.pipeline import *  # noqa: F401,F403
from prunesid_vlm.pipeline import __all__  # noqa: F401
