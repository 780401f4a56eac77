"""Model plumbing for PruneSID: the only package that imports transformers.

Load a LLaVA-family model, extract PruneSID's features in one tower pass, and generate with
all or only the kept visual tokens. :mod:`prunesid_vlm.pipeline` is the one door the app
and scripts use; everything else here is behind it.

Modules (one job each):
    pipeline          the public door: load_pipeline (picks the class), the names scripts and the app use
    base_pipeline     Pipeline: encode, budgets, select, answer, compare; caches, lock, GPU boundary
    predictor         MediaPredictor (``pipe.media(images)``): encode once, select and answer many times
    token_pipeline    the same Pipeline over a CLS-free family's backend
    results           EncodedImages, Answer, CompareResult (CPU data only)
    studies           methods side by side, stability and budget sweeps on a loaded model
    families          model families: checkpoint type → transformers class and adapter or backend
    adapters/         CLS towers (LLaVA-1.5, NeXT, NeXT-Video) behind the ``Adapter`` protocol
    backends/         CLS-free families behind the ``TokenBackend`` protocol; ``PromptInputs``
    registry          known hub ids and the offline demo ids, for the model picker
    shapes_world      the shapes world's exact rules: scenes drawn with PIL, one-word questions
    demo_model, demos/  tiny random-weight checkpoints of every family, built offline once
    loading           ``from_pretrained`` by hub id / folder / demo id; device and dtype; ModelLoadError
    features          one sdpa tower pass → layer −2 states + the CLS attention row (q/k hooks)
    generation        placeholder runs, greedy choice as ``generate`` makes it, continuation scores
    positioned_generation  greedy decoding, (batched) prefill and scoring of a ``PromptInputs``
    inllm             pruning inside the language model (FastV, PyramidDrop): the staged loop
    timing            the side-by-side timing harness behind every reported speed
    fidelity          KL of the first answer token (full ‖ pruned)
    calibration       the calibration images and their φ (φ_ref for the single-image dynamic ratio)
    device            the one ZeroGPU boundary
"""
from .loading import LoadedModel, ModelLoadError, load_model
from .registry import (DEMO_MODEL_ID, DEMO_NEXT_MODEL_ID, DEMO_NEXT_VIDEO_MODEL_ID, KNOWN_MODELS, SHAPES_DEMO_ID, ModelSpec,
                       list_models, spec_for)

__all__ = ["load_model", "LoadedModel", "ModelLoadError", "list_models", "ModelSpec", "KNOWN_MODELS",
           "DEMO_MODEL_ID", "DEMO_NEXT_MODEL_ID", "DEMO_NEXT_VIDEO_MODEL_ID", "SHAPES_DEMO_ID", "spec_for"]
