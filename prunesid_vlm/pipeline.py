"""The small public API the app calls: load a model once, encode images, compare answers.

    from prunesid_vlm.pipeline import load_pipeline, DEMO_MODEL_ID, ModelLoadError
    pipe = load_pipeline("llava-hf/llava-1.5-7b-hf")        # or DEMO_MODEL_ID, offline
    result = pipe.compare([image], "What is in the picture?", num_tokens=64)
    result.full_answer, result.pruned_answer, result.fidelity, result.to_dict()

One vision-tower pass per image gives the features both runs use (cached by image
content, so a new budget or method reuses them). The full run is the model's ordinary
path on all visual tokens; the pruned run hands the language model exactly the kept
tokens. Both decode greedily.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image

from prunesid import allocate_budgets, dynamic_budget, information_score, select_tokens
from .calibration import phi_reference
from .features import encode_views
from .fidelity import first_token_kl
from .generation import greedy_generate, shrink_placeholders, synchronize
from .adapters.llava import LlavaAdapter, ViewInfo
from .loading import LoadedModel, ModelLoadError, load_model
from .registry import DEMO_MODEL_ID, ModelSpec, list_models
from prunesid.result import Selection

__all__ = ["load_pipeline", "load_pipeline_or_demo", "Pipeline", "EncodedImages", "CompareResult", "DEMO_MODEL_ID", "ModelLoadError",
           "ModelSpec", "list_models"]

SelectFn = Callable[[torch.Tensor, torch.Tensor, "int | Sequence[int] | torch.Tensor"], Selection]
"""A selection rule with ``select_tokens``'s signature (PruneSID or a baseline)."""

FEATURE_CACHE_SIZE = 8
"""Images whose tower outputs stay cached (CPU, ≈ 1.2 MB per CLIP-L view in bf16)."""


@dataclass
class EncodedImages:
    """Vision-tower outputs of a list of images, one row per tower view.

    ``V`` views: one per image for LLaVA-1.5, base + crops per image for LLaVA-NeXT, one per
    frame for LLaVA-NeXT-Video (all frames form one clip, ``image`` 0).
    """

    hidden_states: torch.Tensor
    """``[V, 1+N, D]`` layer −2 states (CPU, model dtype), CLS first. N = 576 for LLaVA-1.5 and
    NeXT views; for NeXT-Video the 2×2-pooled frame tokens (N = 144, the tower's CLS in front)."""
    cls_attention: torch.Tensor
    """Float32 ``[V, N]``: CLS → patch attention of that layer, heads summed."""
    views: list[ViewInfo]
    """Per view: which image it belongs to, its kind and the pixel box it covers."""
    image_sizes: list[tuple[int, int]]
    """``(height, width)`` of each original image."""
    vision_s: float
    """Seconds of tower work for the views that were not cached (0 when all were)."""
    cached: list[bool]
    """Per image: its features came from the cache."""
    tower_s: list[float]
    """Per image: seconds its tower pass took when it ran (a share of the batch's pass)."""

    def view_rows(self, image: int) -> torch.Tensor:
        """Long: the view rows of one image, in order (base first for NeXT)."""
        return torch.tensor([i for i, v in enumerate(self.views) if v.image == image], dtype=torch.long)


@dataclass
class CompareResult:
    """Both answers of one question, with token counts, timings and fidelity.

    Timings (seconds) per run (``"full"``, ``"pruned"``): ``vision_s`` the tower pass
    (measured when it ran, even if the features were cached since: both runs share it),
    ``selection_s`` choosing the tokens (0 for the full run), ``project_s`` the projector,
    ``prefill_s`` the first language-model forward, ``decode_s`` the remaining greedy steps,
    ``total_s`` their sum. GPU timings are taken after ``cuda.synchronize``.

    ``fidelity``: KL(p_full ‖ p_pruned) of the first answer token in nats (0 = the pruned
    prompt leaves the first-token distribution unchanged; see ``adapters/fidelity.py``).
    """

    full_answer: str
    pruned_answer: str
    visual_tokens_full: int
    visual_tokens_pruned: int
    prompt_tokens: dict[str, int]
    timings: dict[str, dict[str, float]]
    fidelity: float
    first_token_agrees: bool
    same_answer: bool
    budgets: list[int]
    """Per image: the budget given to the selection (CLS included; NeXT: per view)."""
    selection: Selection
    model_id: str
    family: str
    features_cached: bool
    full_tokens: list[int] = field(default_factory=list)
    pruned_tokens: list[int] = field(default_factory=list)

    @property
    def prefill_speedup(self) -> float:
        return self.timings["full"]["prefill_s"] / max(self.timings["pruned"]["prefill_s"], 1e-12)

    def to_dict(self) -> dict:
        """JSON-ready (plain Python types; the selection as per-row summaries)."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "selection"}
        out["selection"] = [self.selection.to_dict(row) for row in range(self.selection.batch_size)]
        out["prefill_speedup"] = self.prefill_speedup
        out["fidelity_metric"] = "first_token_kl_nats"
        return out


class Pipeline:
    """A loaded model plus the PruneSID plumbing around it. Build with :func:`load_pipeline`."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.adapter = _adapter_for(loaded)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, list[ViewInfo], float]] = OrderedDict()
        self._phi_ref: float | None = None

    # --- facts the app shows -------------------------------------------------------------
    @property
    def is_demo(self) -> bool:
        return self.loaded.is_demo

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def family(self) -> str:
        return self.loaded.family

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` of one view (24×24 for CLIP-L/336)."""
        return self.adapter.grid

    @property
    def num_patches(self) -> int:
        return self.adapter.num_patches

    @property
    def phi_ref(self) -> float:
        """Mean φ of the calibration images for this model (computed once, cached on disk)."""
        if self._phi_ref is None:
            key = f"{self.loaded.path}|{self.loaded.dtype}"
            self._phi_ref = phi_reference(key, self._information_uncached)
        return self._phi_ref

    def _information_uncached(self, images: list[Image.Image]) -> torch.Tensor:
        # Calibration images must not evict the user's images from the feature cache.
        pixels = torch.cat([self.adapter.preprocess(im)[0] for im in images])
        hidden, _ = self.adapter.postprocess(*encode_views(self.model, pixels))
        return information_score(hidden.cpu())

    # --- features ------------------------------------------------------------------------
    def encode(self, images: Sequence[Image.Image]) -> EncodedImages:
        """Tower outputs for ``images`` (one pass over the uncached ones; LRU cache by content)."""
        images = _check_images(images)
        keys = [_image_key(im) for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        vision_s = 0.0
        if missing:
            pixels, views = zip(*(self.adapter.preprocess(images[i]) for i in missing))
            counts = [p.shape[0] for p in pixels]
            synchronize(self.loaded.device)
            start = time.perf_counter()
            hidden, cls = self.adapter.postprocess(*encode_views(self.model, torch.cat(pixels)))
            synchronize(self.loaded.device)
            vision_s = time.perf_counter() - start
            for i, h, a, v in zip(missing, hidden.cpu().split(counts), cls.cpu().split(counts), views):
                self._cache[keys[i]] = (h, a, v, vision_s * len(v) / sum(counts))
        entries = [self._cache[k] for k in keys]
        for k in keys:
            self._cache.move_to_end(k)
        while len(self._cache) > max(FEATURE_CACHE_SIZE, len(set(keys))):
            self._cache.popitem(last=False)
        media = (lambda i: 0) if self.adapter.one_clip else (lambda i: i)  # frames of a clip share one run
        views = [ViewInfo(media(i), v.kind, v.box, v.crop_row, v.crop_col) for i, e in enumerate(entries) for v in e[2]]
        return EncodedImages(
            hidden_states=torch.cat([e[0] for e in entries]), cls_attention=torch.cat([e[1] for e in entries]),
            views=views, image_sizes=[(im.height, im.width) for im in images], vision_s=vision_s,
            cached=[i not in missing for i in range(len(images))], tower_s=[e[3] for e in entries])

    # --- budgets ---------------------------------------------------------------------------
    def budgets(self, feats: EncodedImages, num_tokens: int, dynamic: bool = False) -> list[int]:
        """One budget per view (CLS included). Fixed: ``num_tokens`` each. Dynamic: a single
        view gets ``num_tokens · φ / φ_ref``; several views share ``num_tokens × V`` ∝ φ."""
        views = feats.hidden_states.shape[0]
        ceiling = self.num_patches + 1
        if not dynamic:
            return [num_tokens] * views
        phi = information_score(feats.hidden_states)
        if views == 1:
            return [dynamic_budget(float(phi[0]), num_tokens, self.phi_ref, ceiling=ceiling)]
        return [int(b) for b in allocate_budgets(phi, num_tokens * views, ceiling=ceiling)]

    # --- the comparison --------------------------------------------------------------------
    def compare(self, images: Sequence[Image.Image], question: str, num_tokens: int, *, dynamic: bool = False,
                max_new_tokens: int = 64, selection: SelectFn | None = None) -> CompareResult:
        """Answer ``question`` about ``images`` twice, with all visual tokens and with ``num_tokens`` per view.

        Args:
            num_tokens: visual tokens per view handed to the LLM, CLS included (2 … 1+N).
            dynamic: share the budget ∝ φ across images/views (see :meth:`budgets`).
            selection: a rule with ``select_tokens``'s signature; PruneSID by default.
        """
        question = _check_question(question)
        num_tokens = self._check_budget(num_tokens)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        select = selection or select_tokens
        images = _check_images(images)
        feats = self.encode(images)
        device = self.loaded.device
        budgets = self.budgets(feats, num_tokens, dynamic)

        def choose():  # on the model's device: the selection's linear algebra is fastest there
            return select(feats.hidden_states.to(device), feats.cls_attention.to(device),
                          self.adapter.selection_budgets(feats.views, budgets))

        sel, selection_s = _timed(choose, device)
        per_image = [feats.view_rows(i) for i in range(1 if self.adapter.one_clip else len(images))]
        hidden = [feats.hidden_states[rows].to(device) for rows in per_image]
        keep = [[sel.keep_row(int(r)) for r in rows] for rows in per_image]
        merged = None if sel.merged_tokens is None else [[_merged_row(sel, int(r)) for r in rows] for rows in per_image]
        with torch.inference_mode():
            full_feats, project_full_s = _timed(lambda: self.adapter.full_features(hidden, feats.image_sizes), device)
            pruned_feats, project_pruned_s = _timed(
                lambda: self.adapter.pruned_features(hidden, keep, feats.image_sizes, full_feats, merged), device)

        input_ids = self._prompt_ids(images, question)
        full_counts = [f.shape[0] for f in full_feats]
        pruned_ids = shrink_placeholders(input_ids, self.adapter.image_token_id, full_counts,
                                         [f.shape[0] for f in pruned_feats])
        as_input = (lambda f: f) if self.adapter.modality == "image" else (lambda f: torch.cat(f)[None])  # video: [1,T,D]
        run = lambda ids, f: greedy_generate(self.model, ids, as_input(f), modality=self.adapter.modality,
                                              max_new_tokens=max_new_tokens)
        full = run(input_ids, full_feats)
        pruned = run(pruned_ids, pruned_feats)

        vision_s = sum(feats.tower_s)
        timings = {
            "full": _timing(vision_s, 0.0, project_full_s, full.prefill_s, full.decode_s),
            "pruned": _timing(vision_s, selection_s, project_pruned_s, pruned.prefill_s, pruned.decode_s),
        }
        decode = self.processor.tokenizer.decode
        return CompareResult(
            full_answer=decode(full.tokens, skip_special_tokens=True).strip(),
            pruned_answer=decode(pruned.tokens, skip_special_tokens=True).strip(),
            visual_tokens_full=sum(full_counts), visual_tokens_pruned=sum(f.shape[0] for f in pruned_feats),
            prompt_tokens={"full": full.prompt_tokens, "pruned": pruned.prompt_tokens}, timings=timings,
            fidelity=first_token_kl(full.first_logits, pruned.first_logits),
            first_token_agrees=bool(full.first_logits.argmax() == pruned.first_logits.argmax()),
            same_answer=full.tokens.tolist() == pruned.tokens.tolist(), budgets=budgets, selection=sel.cpu(),
            model_id=self.model_id, family=self.family, features_cached=all(feats.cached),
            full_tokens=full.tokens.tolist(), pruned_tokens=pruned.tokens.tolist())

    def prompt_inputs(self, images: Sequence[Image.Image], question: str) -> dict:
        """What the processor gives for the chat prompt (input_ids, pixel_values, ...): the plain path.
        For LLaVA-NeXT-Video the images are the frames of one clip (``pixel_values_videos``)."""
        return self.adapter.prompt_inputs(list(images), question)

    def _prompt_ids(self, images, question) -> torch.Tensor:
        # The processor expands each <image> to the full placeholder run; its pixels are not used.
        return self.prompt_inputs(images, question)["input_ids"]

    def _check_budget(self, num_tokens) -> int:
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
            raise ValueError(f"num_tokens must be an int, got {type(num_tokens).__name__}")
        if not 2 <= num_tokens <= self.num_patches + 1:
            raise ValueError(f"num_tokens must be between 2 and {self.num_patches + 1} (CLS included), got {num_tokens}")
        return num_tokens


def load_pipeline(model_id_or_path: str, device: str | None = None, dtype=None) -> Pipeline:
    """Load a model (hub id, local folder, or ``DEMO_MODEL_ID``) and wrap it.

    Raises:
        ModelLoadError: the model cannot be loaded; the message says what to do.
    """
    return Pipeline(load_model(model_id_or_path, device, dtype))


def load_pipeline_or_demo(model_id_or_path: str, device: str | None = None, dtype=None) -> tuple[Pipeline, str | None]:
    """Like :func:`load_pipeline`, but falls back to the offline demo model when loading fails.

    Returns the pipeline and ``None``, or the demo pipeline and the reason the requested model
    was not loaded (for the app to show).
    """
    try:
        return load_pipeline(model_id_or_path, device, dtype), None
    except ModelLoadError as err:
        return load_pipeline(DEMO_MODEL_ID, device, dtype), f"{err} — showing the offline demo model instead."


def _adapter_for(loaded: LoadedModel):
    if loaded.family == "llava":
        return LlavaAdapter(loaded.model, loaded.processor)
    from .adapters.llava_next import LlavaNextAdapter
    from .adapters.llava_next_video import LlavaNextVideoAdapter

    if loaded.family == "llava_next":
        return LlavaNextAdapter(loaded.model, loaded.processor)
    if loaded.family == "llava_next_video":
        return LlavaNextVideoAdapter(loaded.model, loaded.processor)
    raise ModelLoadError(f"the {loaded.family!r} family is not wired into the pipeline yet")


def _merged_row(sel: Selection, row: int) -> torch.Tensor:
    """``[M_row, D]``: a row's merged tokens (its budget minus its kept indices; padding dropped)."""
    count = int(sel.num_tokens[row]) - sel.keep_row(row).numel()
    return sel.merged_tokens[row, :count]


def _timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def _timing(vision, selection, project, prefill, decode) -> dict[str, float]:
    return {"vision_s": vision, "selection_s": selection, "project_s": project, "prefill_s": prefill,
            "decode_s": decode, "total_s": vision + selection + project + prefill + decode}


def _image_key(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _check_images(images) -> list[Image.Image]:
    if images is None or len(images) == 0:
        raise ValueError("no image given: pass a list with at least one PIL image")
    bad = [type(im).__name__ for im in images if not isinstance(im, Image.Image)]
    if bad:
        raise ValueError(f"images must be PIL images, got {bad[0]}")
    return [im.convert("RGB") if im.mode != "RGB" else im for im in images]


def _check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty: type a question about the image")
    return question.strip()
