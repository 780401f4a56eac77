"""Model adapters: load LLaVA-family models through transformers, extract PruneSID's
features in one tower pass, and generate with all or only the kept visual tokens.

Nothing here imports gradio; :mod:`prunesid_vlm.pipeline` is the API the app uses.

Modules (one job each):
    registry          known hub ids → family; the demo ids
    demo_model        tiny random-weight LLaVA / NeXT / NeXT-Video checkpoints, built offline once
    loading           ``from_pretrained`` by hub id / folder / demo id; device and dtype; ModelLoadError
    features          one sdpa tower pass → layer −2 states + the CLS attention row (q/k hooks)
    llava             LLaVA-1.5: 576 tokens per image; pruned = kept rows (CLS incl.) in selection order
    llava_next        AnyRes: per-view budgets, crop tokens restored in raster order on the unpadded map
    llava_next_video  frames pooled 2×2 to 144 tokens; selection on the pooled tokens
    generation        placeholder shrinking, greedy generate via ``mm_encoder_outputs``, stage timings
    fidelity          KL of the first answer token (full ‖ pruned)
    calibration       φ_ref for the single-image dynamic ratio
"""
from .loading import LoadedModel, ModelLoadError, load_model
from .registry import DEMO_MODEL_ID, DEMO_NEXT_MODEL_ID, DEMO_NEXT_VIDEO_MODEL_ID, KNOWN_MODELS, ModelSpec, list_models

__all__ = ["load_model", "LoadedModel", "ModelLoadError", "list_models", "ModelSpec", "KNOWN_MODELS",
           "DEMO_MODEL_ID", "DEMO_NEXT_MODEL_ID", "DEMO_NEXT_VIDEO_MODEL_ID"]
