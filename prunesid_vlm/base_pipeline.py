"""The :class:`Pipeline`: a loaded model plus the PruneSID plumbing around it (the CLS-tower
families run on it as it is; :mod:`.token_pipeline` extends it for the CLS-free ones).

Scripts and the app reach it through :mod:`prunesid_vlm.pipeline`, the public door, which loads a
model and picks the class; see there for the usage.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Callable, Hashable, NamedTuple, Sequence

import cachetools
import numpy as np
import torch
from PIL import Image

from prunesid.result import Selection
from prunesid_eval.methods import get_method, list_methods

from .adapters.base import RECEIVED, Adapter, ViewInfo
from .backends.base import PromptInputs
from .backends.prompt_index import kept_sequence
from .calibration import Calibration, calibration_files, load_or_compute
from .families import adapter_for
from .features import encode_views
from .fidelity import first_token_kl
from .generation import GenerationRun, next_token, placeholder_runs, score_continuation, resize_placeholders
from .device import Cost, cross, in_action, register, zero_gpu
from .timing import clocked, rotated_rounds
from .predictor import MediaPredictor
from .positioned_generation import continuation_with_positions, first_logits_of, first_logits_with_positions, greedy_with_positions
from .inllm import InLLMSchedule, StagedRun, language_model_layers, prefill_flops, staged_generate
from .loading import LoadedModel
from .relevance import NoTextTower, text_side_for
from .results import Answer, CompareResult, EncodedImages, TokenCounts
from .rules import (
    handed_per_view,
    Frames,
    check_images,
    check_max_new_tokens,
    check_question,
    select,
    selection_budgets,
    selection_key,
    available_methods,
    unavailable_methods,
    keeps_everything,
    token_counts,
    unseen_note,
    view_budgets,
    view_phis,
)


POSITION_MODES = ("compact", "original")
"""Where a pruned prompt puts its kept visual tokens: ``"compact"``, at consecutive positions (the
placeholder run shrunk to K tokens, as LLaVA-1.5 and the paper hand them over), or ``"original"``,
each at the position its patch has in the full prompt (text after the picture too; the reference's
Qwen path, and an option for LLaVA-1.5). See docs/algorithm.md#positions."""

MODEL_OPTION_METHODS = tuple(s.name for s in list_methods() if s.needs_projected or s.needs_question)
"""Registry methods that need the model's help (the projected tokens; the question's relevance), as
their registry entries declare."""
QUESTION_METHODS = tuple(s.name for s in list_methods() if s.needs_question)
PROJECTED_METHODS = tuple(s.name for s in list_methods() if s.needs_projected)


class NoAnswers(ValueError):
    """The model in use cannot answer (a vision tower alone); the message says what to pick instead."""


SelectFn = Callable[[torch.Tensor, torch.Tensor, "int | Sequence[int] | torch.Tensor"], Selection]
"""A selection rule with ``select_tokens``'s signature (PruneSID or a baseline)."""

FEATURE_CACHE_SIZE = 8
"""Images whose tower outputs stay cached (CPU, ≈ 1.2 MB per CLIP-L view in bf16)."""
ANSWER_CACHE_SIZE = 64
"""Generations kept (token ids and one vocabulary-sized logit row each)."""
PREFILL_BATCH = 8
"""Prompts per prefill-only forward pass (a sweep's points)."""
FIRST_LOGITS_CACHE_SIZE = 128
"""First-token logit rows kept from prefill-only passes (one vocabulary-sized row each)."""
PROJECTION_CACHE_SIZE = 4
"""Media whose projected patch tokens stay cached (DivPrune prunes those)."""
PROMPT_IDS_CACHE_SIZE = 32
"""Full prompts' ids kept per (media, question): the processor runs once for all the selections
answered, prefilled or scored about them."""
PREFILL_REPEATS = 3
"""Prefill-only passes per run behind a reported prefill time (the median; full and pruned alternate);
``PRUNESID_PREFILL_REPEATS`` sets it, and on ZeroGPU, where every second counts against the
visitor's daily quota, it is 1 unless set."""
CACHE_BYTES = {"features": 768 << 20, "answers": 256 << 20, "projected": 256 << 20, "first_logits": 128 << 20}
"""Bytes each cache may hold besides its entry count (a Qwen picture's merged tokens can be tens of MB)."""


def prefill_repeats() -> int:
    """Timed prefill passes per run (see :data:`PREFILL_REPEATS`)."""
    try:
        return max(1, int(os.environ["PRUNESID_PREFILL_REPEATS"]))
    except (KeyError, ValueError):
        return 1 if zero_gpu() else PREFILL_REPEATS


def device_action(cost: Callable[..., Cost], needed: Callable[..., bool] | None = None):
    """Make a model-work method one crossing onto the GPU (:func:`prunesid_vlm.device.cross`) when
    called from outside one; inside a crossing it runs directly, and so does a call that
    ``needed(self, *args, **kwargs)`` says the caches answer. ``cost(self, *args, **kwargs)``
    sizes the time asked of ZeroGPU. The method's first argument is the media (images, or
    encoded features) whose cached entries go along."""

    def wrap(method):
        @functools.wraps(method)
        def inner(self, *args, **kwargs):
            if in_action() or (needed is not None and not needed(self, *args, **kwargs)):
                return method(self, *args, **kwargs)
            media = args[0] if args else kwargs.get("images", kwargs.get("feats"))
            return cross(self, method.__name__, args, kwargs, cost=cost(self, *args, **kwargs), media=media)

        return inner

    return wrap
TOWER_VIEW_SIDE = 336
"""Side of the square a tower view is drawn on (the CLIP-L/336 input)."""


def tower_view(image: Image.Image, box: tuple[float, float, float, float], side: int = TOWER_VIEW_SIDE) -> np.ndarray:
    """The ``side``×``side`` pixels a tower view covers: ``box`` of ``image`` (padded grey past
    its edges, as the processors pad), resized. For LLaVA-1.5 ``box`` is the centre square."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    if x0 >= 0 and y0 >= 0 and x1 <= image.width and y1 <= image.height:
        region = image.crop((x0, y0, x1, y1))
    else:
        region = Image.new("RGB", (max(1, x1 - x0), max(1, y1 - y0)), (122, 116, 104))
        region.paste(image, (-x0, -y0))
    return np.asarray(region.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))


def nbytes(value) -> int:
    """Bytes held by the tensors, arrays and pictures in ``value`` (a cache entry or a visitor's
    analysis: tensors, PIL images, tuples, lists, dicts, dataclasses)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if hasattr(value, "__dataclass_fields__"):
        return sum(nbytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


class _Prompt(NamedTuple):
    """One prompt as the model takes it, with the full prompt it was cut from."""

    input_ids: torch.Tensor
    """Long ``[1, L]``: placeholders shrunk to the kept tokens."""
    features: object
    """As ``mm_encoder_outputs`` takes them (per picture ``[T_i, D]``, or a clip's ``[1, T, D]``)."""
    visual_tokens: int
    project_s: float
    full_ids: torch.Tensor
    """Long ``[1, L_full]``: the same prompt with every visual token."""
    selection: Selection | None
    """The hand-over (None: every token, also when the selection keeps everything)."""


class _LRU(cachetools.LRUCache):
    """Least recently used first out (cachetools' ``LRUCache``), bounded by bytes (``max_bytes``, as
    :func:`nbytes` counts them) and by entries (``size``). An entry larger than the byte bound on its
    own is not kept. While ``journal`` is a list, every entry put is also appended to it (what a
    crossing hands back to the caller)."""

    def __init__(self, size: int, max_bytes: int | None = None):
        super().__init__(maxsize=math.inf if max_bytes is None else max_bytes, getsizeof=nbytes)
        self.size = size
        self.journal: list | None = None

    def put(self, key: Hashable, value, keep: int = 0) -> None:
        """Cache ``value``; the entry bound gives way to ``keep`` (the entries one call puts together,
        e.g. every frame of a clip, which must not evict each other)."""
        try:
            self[key] = value  # evicts the least recently used entries until the bytes fit
        except ValueError:  # too large alone: not cached (an older value under the key goes too)
            self.pop(key, None)
            return
        while len(self) > max(self.size, keep):
            self.popitem()
        if self.journal is not None:
            self.journal.append((key, value))

    def peek_items(self) -> list[tuple[Hashable, object]]:
        """Every entry, without marking any as used (reading a cache to carry or search it is not a use)."""
        return [(key, cachetools.Cache.__getitem__(self, key)) for key in list(self)]


class Pipeline:
    """A loaded model plus the PruneSID plumbing around it. Build with :func:`load_pipeline`."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.adapter: Adapter = adapter_for(loaded.family, loaded.model, loaded.processor)
        self._lock = threading.RLock()  # model work and the caches below
        self._features = _LRU(FEATURE_CACHE_SIZE, CACHE_BYTES["features"])
        self._answers = _LRU(ANSWER_CACHE_SIZE, CACHE_BYTES["answers"])
        self._projected = _LRU(PROJECTION_CACHE_SIZE, CACHE_BYTES["projected"])
        self._first_logits = _LRU(FIRST_LOGITS_CACHE_SIZE, CACHE_BYTES["first_logits"])
        self._full_ids = _LRU(PROMPT_IDS_CACHE_SIZE)  # derived from the processor alone: not carried across crossings
        self._calibration: Calibration | None = None
        self._warm = False  # this process has run a timed prefill pass (the first pays for kernels and buffers)
        self._text_side = None
        self.prefill_repeats = prefill_repeats()
        self.stats: Counter[str] = Counter()
        """What really ran: ``tower_images``, ``full_generations``, ``pruned_generations``, ``prefills``
        (prefill-only prompts), ``prefill_batches`` (their forward passes), ``projections``."""
        self.device_token = register(self)
        """This pipeline's name across the GPU boundary (:mod:`prunesid_vlm.device`)."""
        self._billions: float | None = None

    # --- the GPU boundary: what crosses, and what comes back -------------------------------
    @property
    def billions(self) -> float:
        """Parameters of the model, in billions (sizes the time asked of ZeroGPU)."""
        if self._billions is None:
            self._billions = sum(p.numel() for p in self.model.parameters()) / 1e9
        return self._billions

    def _caches(self) -> dict[str, _LRU]:
        return {"features": self._features, "answers": self._answers, "projected": self._projected,
                "first_logits": self._first_logits}

    def media_keys(self, media) -> set[str]:
        """Every cache key naming ``media`` (images, frames of a clip, or their encoded features): the
        features of each image and the media keys answers, projections and logits are cached by."""
        if media is None:
            return set()
        if isinstance(media, EncodedImages):
            return {media.media_key}
        try:
            images = list(media)
        except TypeError:
            return set()
        if not images or not all(isinstance(im, Image.Image) for im in images):
            return set()
        keys = [_image_key(im) for im in images]
        out = set()
        for suffix in ("", "|frame"):
            variant = [k + suffix for k in keys]
            out.update(variant)
            out.add(hashlib.sha1("|".join(variant).encode()).hexdigest())
        return out

    def cache_seed(self, media) -> dict:
        """The cached entries about ``media`` (and the calibration) that a crossing carries, so that
        the worker on the other side recomputes nothing the caller has."""
        keys = self.media_keys(media)

        def about(key) -> bool:
            if isinstance(key, tuple):
                return any(isinstance(part, str) and part in keys for part in key[:2])
            return key in keys

        with self._lock:
            seed = {name: [(k, v) for k, v in cache.peek_items() if about(k)] for name, cache in self._caches().items()}
            seed["calibration"] = self._calibration
        return seed

    @contextlib.contextmanager
    def recording(self, seed: dict, local: bool):
        """Hold the model for one crossing's work; in another process (``local`` False) first take
        the caller's ``seed``, and record what the work caches, counts and calibrates (the journal)."""
        with self._lock:
            if local:
                yield {}
                return
            caches = self._caches()
            for name, entries in seed.items():
                if name in caches:
                    for key, value in entries:
                        caches[name].put(key, value)
            if seed.get("calibration") is not None:
                self._calibration = seed["calibration"]
            journal: dict = {name: [] for name in caches}
            for name, cache in caches.items():
                cache.journal = journal[name]
            before, calibrated = Counter(self.stats), self._calibration
            try:
                yield journal
            finally:
                for cache in caches.values():
                    cache.journal = None
                journal["stats"] = dict(self.stats - before)
                journal["calibration"] = self._calibration if self._calibration is not calibrated else None

    def apply_journal(self, journal: dict) -> None:
        """Take what a crossing's work cached, counted and calibrated in the worker."""
        with self._lock:
            caches = self._caches()
            for name, entries in journal.items():
                if name in caches:
                    for key, value in entries:
                        caches[name].put(key, value)
            self.stats.update(journal.get("stats", {}))
            if journal.get("calibration") is not None:
                self._calibration = journal["calibration"]

    def after_fork(self) -> None:
        """In a forked worker: a lock another thread held at the fork would never be released."""
        self._lock = threading.RLock()

    def run(self, work: Callable, images, *args, cost: Cost | None = None, **kwargs):
        """``work(self, images, *args, **kwargs)`` as one crossing onto the GPU: a study that encodes,
        selects and answers several times asks ZeroGPU once. ``work`` must be a module-level
        function (it is named, not pickled, across the boundary), its arguments and its value
        plain data; a ``progress`` callback is used only where the work runs in this process.
        ``cost`` sizes the time asked (default: encoding the images plus one answer)."""
        if cost is None:
            cost = self.encode_cost(images) + Cost(generations=1, new_tokens=64, prefills=2)
        return cross(self, work, (images,) + args, kwargs, cost=cost, media=images)

    def encode_cost(self, images) -> Cost:
        """Tower views still to encode for ``images`` (and the calibration if it has not run)."""
        try:
            keys = [] if isinstance(images, EncodedImages) else self._feature_keys(check_images(images))
        except (TypeError, ValueError):
            keys = []
        views = sum(key not in self._features for key in keys) * self.views_per_image
        return Cost(views=views + (0 if self._calibration is not None else self._calibration_views()))

    def _calibration_views(self) -> int:
        return len(calibration_files()) * self.views_per_image

    @property
    def views_per_image(self) -> int:
        """Tower views one picture takes at most (LLaVA-NeXT: a base view and up to four crops)."""
        return int(getattr(self.adapter, "max_views_per_image", 1))

    # --- facts the app shows -------------------------------------------------------------
    @property
    def is_demo(self) -> bool:
        return self.loaded.is_demo

    @property
    def random_features(self) -> bool:
        """The vision tower's weights are random: groups, importance and φ mean nothing."""
        return bool(self.loaded.spec and self.loaded.spec.random_features)

    @property
    def answers(self) -> str:
        """``"real"``, ``"random"`` (a random language model: its answers are gibberish) or ``"none"``
        (a vision tower alone: it cannot answer)."""
        return self.loaded.spec.answers if self.loaded.spec else "real"

    @property
    def meaning(self) -> str:
        """One sentence on what this model's pictures and answers mean ("" for a real checkpoint)."""
        return self.loaded.spec.meaning if self.loaded.spec else ""

    def _check_answers(self) -> None:
        if self.answers == "none":
            raise NoAnswers(f"{self.model_id} is a vision tower alone: {self.meaning}.")

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def family(self) -> str:
        return self.loaded.family

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``: where the model runs."""
        return self.loaded.device.type

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` of one view (24×24 for CLIP-L/336)."""
        return tuple(self.adapter.grid)

    @property
    def num_patches(self) -> int:
        return self.adapter.num_patches

    @property
    def one_clip(self) -> bool:
        """True when the images given are the frames of one clip (LLaVA-NeXT-Video)."""
        return self.adapter.one_clip

    def clear_caches(self) -> None:
        """Forget cached features, answers and projections (the calibration is kept)."""
        with self._lock:
            self._features.clear()
            self._answers.clear()
            self._projected.clear()
            self._first_logits.clear()
            self._full_ids.clear()

    @contextlib.contextmanager
    def model_work(self):
        """Hold the model: no tower pass, projection or generation runs meanwhile (for moving it)."""
        with self._lock:
            yield self

    def move_to(self, device: str | torch.device) -> None:
        """Move the model to ``device`` (its dtype kept), once work in progress on it has finished;
        later work runs there. Cached features and answers are CPU data and stay valid."""
        with self._lock:
            device = torch.device(device)
            self.model.to(device)
            self.loaded.device = device
            self._warm = False  # the next timed prefill warms up on the new device

    # --- the only way in -------------------------------------------------------------------
    def _on_model(self, work: Callable, *args):
        """Model work: one at a time (the lock). Where the GPU is lent (ZeroGPU) this runs inside a
        crossing already (see :func:`device_action`)."""
        with self._lock:
            return work(*args)

    # --- calibration -------------------------------------------------------------------------
    @device_action(lambda self: Cost(views=self._calibration_views()),
                   needed=lambda self: self._calibration is None)
    def calibration(self) -> Calibration:
        """φ of the calibration images through the same path as a user's image; φ_ref is their mean.
        Computed once per model (a tower pass over the calibration photos) and cached on disk."""
        with self._lock:
            if self._calibration is None:
                key = f"{self.loaded.path}|{self.loaded.dtype}"  # + φ version and photos hash (calibration_key)
                self._calibration = load_or_compute(key, lambda images: self._on_model(self._phis_of, images))
            return self._calibration

    @property
    def phi_ref(self) -> float:
        return self.calibration().phi_ref

    def _phis_of(self, images: list[Image.Image]) -> torch.Tensor:
        # Not through the feature cache: calibration images must not evict the user's images.
        pixels = [self.adapter.preprocess(im)[0] for im in images]
        hidden, _ = self.adapter.postprocess(*encode_views(self.model, torch.cat(pixels)))
        rows = [self.adapter.map_rows(p.shape[0], (im.height, im.width)) for p, im in zip(pixels, images)]
        return view_phis(hidden.cpu(), _received(_joined_map_rows(rows, [p.shape[0] for p in pixels],
                                                                  self.num_patches)))

    # --- features ------------------------------------------------------------------------
    def _feature_keys(self, images: Sequence[Image.Image]) -> list[str]:
        """The keys ``images``' features are cached under (one per image; per frame of a clip)."""
        frames = isinstance(images, Frames) and self.adapter.frame_views_differ
        return [_image_key(im) + ("|frame" if frames else "") for im in images]

    def _needs_encoding(self, images: Sequence[Image.Image]) -> bool:
        """Whether encoding ``images`` would run the model (features or the calibration not cached)."""
        if self._calibration is None:
            return True
        try:
            images = check_images(images)
        except ValueError:
            return False  # refused where it runs, without a crossing
        with self._lock:
            return any(key not in self._features for key in self._feature_keys(images))

    @device_action(lambda self, images: self.encode_cost(images), needed=lambda self, images: self._needs_encoding(images))
    def encode(self, images: Sequence[Image.Image]) -> EncodedImages:
        """Tower outputs for ``images`` (one pass over the uncached ones; LRU cache by content)."""
        images = check_images(images)
        phi_ref = self.phi_ref  # before the user's images: calibrated inside the same GPU boundary
        frames = isinstance(images, Frames) and self.adapter.frame_views_differ
        keys = self._feature_keys(images)
        with self._lock:
            known = {k: self._features.get(k) for k in set(keys) if k in self._features}
            missing = [i for i, k in enumerate(keys) if k not in known]
            vision_s = 0.0
            if missing:
                new, vision_s = self._on_model(self._encode_views_of, [images[i] for i in missing],
                                               [keys[i] for i in missing], frames)
                known.update(new)
            for k in keys:
                self._features.put(k, known[k], keep=len(known))
            entries = [known[k] for k in keys]
        media = (lambda i: 0) if self.one_clip else (lambda i: i)  # frames of a clip share one run
        views = [ViewInfo(media(i), v.kind, v.box, v.crop_row, v.crop_col) for i, e in enumerate(entries) for v in e[2]]
        return EncodedImages(
            hidden_states=torch.cat([e[0] for e in entries]), cls_attention=torch.cat([e[1] for e in entries]),
            views=views, image_sizes=[(im.height, im.width) for im in images], vision_s=vision_s,
            cached=[i not in missing for i in range(len(images))], tower_s=[e[3] for e in entries],
            media_key=hashlib.sha1("|".join(keys).encode()).hexdigest(), phi=torch.cat([e[4] for e in entries]),
            phi_ref=phi_ref, drops_cls=tuple(self.adapter.drops_cls(v) for v in views),
            sources=tuple(i for i, e in enumerate(entries) for _ in e[2]),
            map_rows=_joined_map_rows([e[5] for e in entries], [e[0].shape[0] for e in entries], self.num_patches))

    def _encode_views_of(self, images: list[Image.Image], keys: list[str], frames: bool = False
                         ) -> tuple[dict, float]:
        """One tower pass over ``images`` (``frames``: each as a video frame's views): per key,
        (hidden, attention, views, seconds, φ, map rows); and the seconds."""
        prepare = self.adapter.preprocess_frame if frames else self.adapter.preprocess
        pixels, views = zip(*(prepare(im) for im in images))
        counts = [p.shape[0] for p in pixels]
        (hidden, cls), vision_s = clocked(
            lambda: self.adapter.postprocess(*encode_views(self.model, torch.cat(pixels))), self.loaded.device)
        hidden = hidden.cpu()
        rows = [None if frames else self.adapter.map_rows(c, (im.height, im.width)) for c, im in zip(counts, images)]
        phi = view_phis(hidden, _received(_joined_map_rows(rows, counts, self.num_patches)))
        self.stats["tower_images"] += len(images)
        return {key: (h, a, v, vision_s * len(v) / sum(counts), p, m) for key, h, a, p, v, m in
                zip(keys, hidden.split(counts), cls.cpu().split(counts), phi.split(counts), views, rows)}, vision_s

    def media(self, images: Sequence[Image.Image]) -> MediaPredictor:
        """``images`` encoded once and bound to this pipeline: select and answer about them many times
        without passing them again (:class:`~prunesid_vlm.predictor.MediaPredictor`)."""
        images = check_images(images)
        return MediaPredictor(self, images, self.encode(images))

    def media_notes(self, feats: EncodedImages) -> list[str]:
        """Sentences on what the model does not see as the visitor might expect: the part of an
        image cut off before the tower, and frames sent without their AnyRes crops."""
        notes = [n for n in (unseen_note(feats),) if n]
        if self.adapter.frame_views_differ and feats.views and all(v.kind == "frame" for v in feats.views):
            notes.append(f"Each frame goes to {self.model_id} as its base view alone ({self.num_patches} tokens, the "
                         f"whole frame resized): its AnyRes crops would multiply the tokens past the model's context.")
        return notes

    def view_pixels(self, images: Sequence[Image.Image], feats: EncodedImages,
                    side: int = TOWER_VIEW_SIDE) -> list[np.ndarray]:
        """Per view: uint8 ``[side, side, 3]``, the pixels its patch grid covers."""
        images = check_images(images)
        return [tower_view(images[source], v.box, side) for source, v in zip(feats.sources, feats.views)]

    # --- budgets and selection (pure; safe to call from any thread, no lock) ------------------
    def budgets(self, feats: EncodedImages, num_tokens: int, dynamic: bool = False, mode: str = "per_view"
                ) -> list[int]:
        """See :func:`view_budgets`."""
        return view_budgets(feats, num_tokens, dynamic, mode)

    def select(self, feats: EncodedImages, num_tokens: int, *, dynamic: bool = False, method: str = "prunesid",
               options: dict | None = None, seed: int = 0, mode: str = "per_view",
               question: str | None = None) -> Selection:
        """See :func:`select`. Given no ``options``, DivPrune and CDPruner get what their code uses —
        the projected tokens and, for CDPruner, their relevance to ``question`` (model work, cached:
        see :meth:`method_options`); every other method is pure (no model, any thread)."""
        if options is None and method in MODEL_OPTION_METHODS and method in self.available_methods(feats):
            options = self.method_options(feats, [method], question=question)
        return select(feats, num_tokens, dynamic=dynamic, method=method, options=options, seed=seed, mode=mode)

    def token_counts(self, feats: EncodedImages, selection: Selection | None = None) -> TokenCounts:
        """Where the visual tokens of a prompt come from, without running the model: all of them
        (``selection=None``: every received patch, no CLS) or ``selection``'s (its budgets, less
        the CLS of views that drop it), plus LLaVA-NeXT's newline tokens."""
        return token_counts(feats, selection)

    @device_action(lambda self, feats: Cost(prefills=1),
                   needed=lambda self, feats: feats.media_key not in self._projected)
    def projected_patches(self, feats: EncodedImages) -> torch.Tensor:
        """Float32 CPU ``[V, N, D_text]``: every view's patch rows through the projector (cached)."""
        with self._lock:
            hit = self._projected.get(feats.media_key)
            if hit is None:
                hit = self._on_model(self._project_patches, feats.hidden_states)
                self._projected.put(feats.media_key, hit)
            return hit

    def _project_patches(self, hidden: torch.Tensor) -> torch.Tensor:
        v, tokens, d = hidden.shape
        with torch.inference_mode():
            rows = self.adapter.project(hidden[:, 1:].reshape(-1, d))  # (V·N, D_text)
        self.stats["projections"] += 1
        return rows.float().cpu().reshape(v, tokens - 1, -1).clone()

    def _options_needed(self, feats: EncodedImages, methods: Sequence[str] | None = None,
                        question: str | None = None) -> bool:
        wanted = set(methods) if methods is not None else set(MODEL_OPTION_METHODS)
        if not wanted & set(MODEL_OPTION_METHODS):
            return False
        if feats.media_key not in self._projected:
            return True
        return bool(wanted & set(QUESTION_METHODS)) and question is not None and (
            ("relevance", feats.media_key, question) not in self._projected)

    @device_action(lambda self, feats, *a, **k: Cost(prefills=2), needed=_options_needed)
    def method_options(self, feats: EncodedImages, methods: Sequence[str] | None = None,
                       question: str | None = None) -> dict[str, dict]:
        """Per-method options the registry's rules need from the model: DivPrune and CDPruner measure
        similarity on the *projected* tokens, as their code does (projected once, cached); CDPruner
        also weighs each token by its relevance to ``question`` (none given: a plain DPP)."""
        wanted = set(methods) if methods is not None else set(MODEL_OPTION_METHODS)
        options: dict[str, dict] = {}
        if wanted & set(PROJECTED_METHODS):
            projected = self.projected_patches(feats)
            options = {name: {"features": projected} for name in wanted & set(PROJECTED_METHODS)}
        if question is not None:
            for name in wanted & set(QUESTION_METHODS):
                options.setdefault(name, {})["relevance"] = self.instruction_relevance(feats, question)
        return options

    def prepare(self) -> None:
        """Load now what the pipeline otherwise loads on first use and keeps (CLIP's text side for
        CDPruner, where the tower has one): on ZeroGPU, GPU workers forked later find it here."""
        try:
            self.text_side()
        except NoTextTower:
            pass

    def text_side(self):
        """CLIP's text side for CDPruner's instruction relevance (loaded once; NoTextTower if none,
        remembered, so that asking again does not try the load again)."""
        with self._lock:
            if self._text_side is None:
                vision = self.model.config.vision_config
                try:
                    self._text_side = text_side_for(vision, demo=self.is_demo, tokenizer=self.processor.tokenizer)
                except NoTextTower as err:
                    self._text_side = err
            if isinstance(self._text_side, NoTextTower):
                raise NoTextTower(str(self._text_side))
            return self._text_side

    @device_action(lambda self, feats, question: Cost(prefills=1),
                   needed=lambda self, feats, question: ("relevance", feats.media_key, question) not in self._projected)
    def instruction_relevance(self, feats: EncodedImages, question: str) -> torch.Tensor:
        """Float32 ``[V, N]``: CDPruner's raw relevance of every patch to ``question`` (cached)."""
        question = check_question(question)
        key = ("relevance", feats.media_key, question)
        with self._lock:
            hit = self._projected.get(key)
            if hit is None:
                side = self.text_side()
                tower = self.model.model.vision_tower
                hit = self._on_model(side.relevance, feats.hidden_states, tower.post_layernorm, question)
                self._projected.put(key, hit)
            return hit

    def unavailable_methods(self, feats: EncodedImages) -> dict[str, str]:
        """Per registry method that cannot run on ``feats`` with this model: why, in a sentence
        (CLS-attention methods on merged tokens without CLS; CDPruner without CLIP's text side)."""
        refused = unavailable_methods(feats)
        for name in QUESTION_METHODS:  # they weigh tokens by the question through CLIP's text side
            if name not in refused:
                try:
                    self.text_side()
                except NoTextTower as err:
                    refused[name] = str(err)
        return refused

    def available_methods(self, feats: EncodedImages) -> list[str]:
        """The registry methods that can run on ``feats`` with this model (see :meth:`unavailable_methods`)."""
        refused = self.unavailable_methods(feats)
        return [n for n in available_methods(feats) if n not in refused]

    # --- answers ---------------------------------------------------------------------------
    @device_action(lambda self, images, *a, max_new_tokens=64, **k: self.encode_cost(images) + Cost(
        generations=1, new_tokens=max_new_tokens))
    def answer(self, images: Sequence[Image.Image], question: str, selection: Selection | None = None, *,
               max_new_tokens: int = 64, in_llm: InLLMSchedule | None = None, positions: str | None = None
               ) -> Answer:
        """Greedy answer with all visual tokens (``selection=None``) or with ``selection``'s, and
        with ``in_llm``'s stages inside the language model when given (see :mod:`.inllm`).
        ``positions``: where the kept tokens sit (:data:`POSITION_MODES`; None: the family's own way,
        :attr:`positions_default`).

        Cached: once per (media, question, max_new_tokens) for the full answer, and once per
        selection, positions and schedule as well otherwise (a hit comes back with ``cached=True``)."""
        self._check_answers()
        question = check_question(question)
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        staged = self._has_stages(in_llm)
        positions = self.check_positions(positions, selection, staged)  # before any model work
        images = check_images(images)
        feats = self.encode(images)
        self._check_selection(feats, selection)
        chosen = self._slot(selection, positions)
        # The schedule joins the selection's slot: first_token_logits reuses answers by (media, question, slot).
        key = (feats.media_key, question, (chosen, in_llm.key()) if staged else chosen, max_new_tokens)
        with self._lock:
            hit = self._answers.get(key)
            if hit is not None:
                return replace(hit, cached=True)
            if staged:
                made = self._on_model(self._generate_staged, images, feats, question, selection, in_llm, max_new_tokens)
            else:
                made = self._on_model(self._generate, images, feats, question, selection, max_new_tokens, positions)
            self._answers.put(key, made)
            return made

    @staticmethod
    def _check_selection(feats: EncodedImages, selection: Selection | None) -> None:
        if selection is not None and selection.batch_size != feats.num_views:
            raise ValueError(f"The selection has {selection.batch_size} rows but the media has {feats.num_views} "
                             "tower views: select again on these features.")

    # --- where kept tokens sit in a pruned prompt --------------------------------------------
    positions_default: str = "compact"
    """Where this family's pruned prompts put the kept tokens unless told (:data:`POSITION_MODES`):
    LLaVA hands them over as a shorter placeholder run, at consecutive positions, as published."""

    @property
    def position_modes(self) -> tuple[str, ...]:
        """The :data:`POSITION_MODES` this model's pruned prompts can take."""
        return POSITION_MODES if getattr(self.adapter, "run_offsets", None) is not None else (self.positions_default,)

    def check_positions(self, positions: str | None, selection: Selection | None = None, staged: bool = False) -> str:
        """``positions``, or the family's own way for None; a clear error for one this model or this
        hand-over cannot take."""
        if positions is None:
            return self.positions_default
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {', '.join(POSITION_MODES)}, not {positions!r}")
        if positions not in self.position_modes:
            why = getattr(self.adapter, "positions_limit", "")
            raise ValueError(f"{self.model_id} hands kept tokens over at {self.position_modes[0]} positions only"
                             + (f": {why}" if why else "") + f"; leave positions unset or ask for "
                             f"{self.position_modes[0]!r}.")
        if positions != self.positions_default:
            if staged:
                raise ValueError(f"Pruning inside the language model runs with {self.positions_default} positions only; "
                                 "leave positions unset to combine it with a selection.")
            if selection is not None and selection.merged_tokens is not None:
                raise ValueError(f"The {get_method(selection.method).label} selection merges tokens, which have no place "
                                 f"in the full prompt: it runs with {self.positions_default} positions only.")
        return positions

    def _slot(self, selection: Selection | None, positions: str) -> str | None:
        """The caches' name for a hand-over: the selection, and its positions where not the family's own."""
        if selection is None:
            return None
        return selection_key(selection) + ("" if positions == self.positions_default else f"@{positions}")

    # --- pruning inside the language model ----------------------------------------------------
    in_llm_styles: tuple[str, ...] = ("fastv", "pyramiddrop")
    """The in-LLM rules this pipeline's staged loop runs (see :mod:`.inllm`)."""
    in_llm_limits: str = ""
    """Why a rule missing from ``in_llm_styles`` does not run here (said when one is asked for)."""

    def check_in_llm(self, in_llm: InLLMSchedule) -> None:
        """Refuse, before any model work, a language model or a rule the staged loop does not cover."""
        self.in_llm_layers()
        if in_llm.active and in_llm.style not in self.in_llm_styles:
            raise ValueError(f"{in_llm.name} does not run on {self.model_id}: {self.in_llm_limits} "
                             f"The stages that run here: {', '.join(self.in_llm_styles)}.")

    def _has_stages(self, in_llm: InLLMSchedule | None) -> bool:
        """Whether ``in_llm`` drops anything, after refusing what the staged loop does not cover."""
        if in_llm is None or not in_llm.active:
            return False
        self.check_in_llm(in_llm)
        return True

    def in_llm_layers(self) -> int:
        """Decoder layers of the language model, which in-LLM schedules count in.

        Raises:
            ValueError: the staged loop does not cover this model's language model."""
        self._check_answers()
        return len(language_model_layers(self.model))

    def prefill_flops(self, tokens_per_layer: Sequence[int]) -> float:
        """Estimated prefill FLOPs of this language model when its layers see these sequence lengths."""
        return prefill_flops(list(tokens_per_layer), self.model.model.language_model.config)

    def staged_prefill(self, images: Sequence[Image.Image], question: str, selection: Selection | None,
                       in_llm: InLLMSchedule) -> StagedRun:
        """The first answer token's logits and the prefill with ``selection`` (None: every visual token)
        and ``in_llm``'s stages, through the per-layer loop — also with no stage, so that runs with and
        without stages are timed by the same code. Not cached: a study times it."""
        return self.staged_prefills(images, question, [(selection, in_llm)])[0][0]

    @device_action(lambda self, images, question, variants, *, repeats=1, max_repeats=1, **k: self.encode_cost(
        images) + Cost(prefills=len(variants) * max(repeats, min(max_repeats, 3 * repeats))))
    def staged_prefills(self, images: Sequence[Image.Image], question: str,
                        variants: Sequence[tuple[Selection | None, InLLMSchedule]], *, repeats: int = 1,
                        min_seconds: float = 0.0, max_repeats: int = 1,
                        progress: Callable[[float, str], None] | None = None
                        ) -> tuple[list[StagedRun], list[list[float]], int]:
        """Every variant's prefill through the per-layer loop (as :meth:`staged_prefill`), timed side by
        side: passes over all variants, each pass in a rotated order so that each leads in turn, at
        least ``repeats`` of them and more (up to ``max_repeats``) while all passes together have taken
        under ``min_seconds``. Each prompt is built once, before the passes.

        Returns each variant's last run, its prefill seconds per pass, and the number of passes.
        ``progress(fraction, text)`` is called once per pass, never between two timed prefills: what
        it sets off (a page redrawing its progress bar) would land on the next prefill's clock."""
        question = check_question(question)
        images = check_images(images)
        feats = self.encode(images)
        for selection, in_llm in variants:
            self._check_selection(feats, selection)
            self.check_in_llm(in_llm)
        with self._lock:
            return self._on_model(self._time_staged_prefills, images, feats, question, list(variants), repeats,
                                  min_seconds, max_repeats, progress or (lambda *_: None))

    def _time_staged_prefills(self, images, feats: EncodedImages, question: str,
                              variants: list[tuple[Selection | None, InLLMSchedule]], repeats: int,
                              min_seconds: float, max_repeats: int, progress: Callable[[float, str], None]):
        def prefill(inputs: dict, schedule: InLLMSchedule):
            run = staged_generate(self.model, schedule=schedule, prefill_only=True, **inputs)
            return run, run.prefill_s  # the loop's own clock: its prefill, not the call around it

        passes = [functools.partial(prefill, self._staged_inputs(images, feats, question, selection)[0], in_llm)
                  for selection, in_llm in variants]  # each prompt built once, before the rounds
        return rotated_rounds(passes, repeats=repeats, min_seconds=min_seconds, max_repeats=max_repeats,
                              progress=progress)

    def _staged_inputs(self, images, feats: EncodedImages, question: str, selection: Selection | None
                       ) -> tuple[dict, int, float]:
        """``staged_generate``'s prompt arguments for ``selection``'s prompt (the family's own positions:
        stages are refused with others), its visual tokens and projection seconds."""
        prompt, project_s = self._hand_over(images, feats, question, selection, self.positions_default)
        return ({"input_ids": prompt.input_ids, "features": torch.cat(next(iter(prompt.features.values()))),
                 "token_id": prompt.token_id, "positions": prompt.positions, "next_position": prompt.next_position},
                prompt.visual_tokens, project_s)

    def _staged_run(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                    in_llm: InLLMSchedule, max_new_tokens: int,
                    forced: list[int] | None = None) -> tuple[StagedRun, int, float]:
        inputs, visual_tokens, project_s = self._staged_inputs(images, feats, question, selection)
        run = staged_generate(self.model, schedule=in_llm, max_new_tokens=max_new_tokens, forced=forced, **inputs)
        return run, visual_tokens, project_s

    def _generate_staged(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                         in_llm: InLLMSchedule, max_new_tokens: int) -> Answer:
        run, visual_tokens, project_s = self._staged_run(images, feats, question, selection, in_llm, max_new_tokens)
        self.stats["staged_generations"] += 1
        return self._answer(run, visual_tokens, project_s, run.image_tokens_per_layer)

    def _answer(self, run: GenerationRun, visual_tokens: int, project_s: float,
                image_tokens_per_layer: Sequence[int] = ()) -> Answer:
        """The :class:`Answer` of a greedy ``run`` (and the image tokens per layer of a staged one)."""
        return Answer(text=self.processor.tokenizer.decode(run.tokens, skip_special_tokens=True).strip(),
                      tokens=tuple(run.tokens.tolist()), first_logits=run.first_logits, visual_tokens=visual_tokens,
                      prompt_tokens=run.prompt_tokens, project_s=project_s, prefill_s=run.prefill_s,
                      decode_s=run.decode_s,
                      image_tokens_per_layer=tuple(image_tokens_per_layer))

    @device_action(lambda self, images, question, selections, **k: self.encode_cost(images) + Cost(
        prefills=len(selections)))
    def first_token_logits(self, images: Sequence[Image.Image], question: str,
                           selections: Sequence[Selection | None], *, positions: str | None = None
                           ) -> list[torch.Tensor]:
        """Float32 ``[vocab]`` per selection (``None``: all visual tokens): the first answer token's
        logits, which do not depend on the answer's length — from any cached answer to the same
        prompt, else from prefill-only forward passes, ``PREFILL_BATCH`` prompts at a time.
        ``positions``: as for :meth:`answer`."""
        self._check_answers()
        question = check_question(question)
        for sel in selections:
            self.check_positions(positions, sel)  # before any model work
        positions = self.check_positions(positions)
        images = check_images(images)
        feats = self.encode(images)
        for sel in selections:
            self._check_selection(feats, sel)
        prompts = [(feats.media_key, question, self._slot(s, positions)) for s in selections]
        with self._lock:
            found = {key[:3]: answer.first_logits for key, answer in self._answers.peek_items()}
            found.update(self._first_logits.peek_items())
            todo = {p: s for p, s in zip(prompts, selections) if p not in found}
            batch = list(todo.items())
            for start in range(0, len(batch), PREFILL_BATCH):
                chunk = batch[start:start + PREFILL_BATCH]
                logits = self._on_model(self._prefill_batch, images, feats, question, [s for _, s in chunk], positions)
                for (prompt, _), row in zip(chunk, logits):
                    found[prompt] = row
                    self._first_logits.put(prompt, row)
            return [found[p] for p in prompts]

    @device_action(lambda self, images, *a, **k: self.encode_cost(images) + Cost(prefills=1))
    def loglikelihood(self, images: Sequence[Image.Image], question: str, continuation: str | Sequence[int],
                      selection: Selection | None = None, *, in_llm: InLLMSchedule | None = None,
                      positions: str | None = None) -> tuple[float, bool]:
        """``(log P(continuation | prompt), whether greedy decoding would produce it)``, with all
        visual tokens or ``selection``'s, and ``in_llm``'s stages inside the language model when given
        (the stages drop prompt image tokens; the continuation is scored token by token from the
        staged cache): what multiple-choice benchmarks score. ``continuation`` is text (tokenised
        without special tokens) or token ids."""
        self._check_answers()
        question = check_question(question)
        positions = self.check_positions(positions, selection, self._has_stages(in_llm))  # before any model work
        images = check_images(images)
        feats = self.encode(images)
        if isinstance(continuation, str):
            ids = self.processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = torch.tensor([list(continuation)], dtype=torch.long)
        if ids.shape[1] == 0:
            raise ValueError("the continuation is empty")
        self._check_selection(feats, selection)
        staged = self._has_stages(in_llm)
        with self._lock:
            if staged:
                return self._on_model(self._loglikelihood_staged, images, feats, question, selection, ids, in_llm)
            return self._on_model(self._loglikelihood, images, feats, question, selection, ids, positions)

    def _loglikelihood_staged(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                              continuation: torch.Tensor, in_llm: InLLMSchedule) -> tuple[float, bool]:
        run = self._staged_run(images, feats, question, selection, in_llm, continuation.shape[1],
                               forced=continuation[0].tolist())[0]
        return score_continuation(self.model, torch.stack(run.step_logits), continuation[0])

    def _loglikelihood(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                       continuation: torch.Tensor, positions: str) -> tuple[float, bool]:
        return continuation_with_positions(self.model, self._hand_over(images, feats, question, selection, positions)[0],
                                           continuation)

    def _prompt(self, images, feats: EncodedImages, question: str, selection: Selection | None) -> _Prompt:
        """One prompt: placeholders shrunk to the kept tokens, features as the model's
        ``mm_encoder_outputs`` takes them."""
        device = self.loaded.device
        if selection is not None and keeps_everything(feats, selection):
            selection = None  # a budget of 1+N or more: the model's own path, not CLS + every patch
        media = range(1 if self.one_clip else len(images))
        rows = [feats.view_rows(i) for i in media]
        hidden = [feats.hidden_states[r].to(device) for r in rows]
        with torch.inference_mode():
            full, full_s = clocked(lambda: self.adapter.full_features(hidden, feats.image_sizes), device)
            visual, project_s = full, full_s
            if selection is not None:
                keep = [[selection.keep_row(int(v)) for v in r] for r in rows]
                merged = None if selection.merged_tokens is None else [[_merged_row(selection, int(v)) for v in r]
                                                                       for r in rows]
                visual, pruned_s = clocked(
                    lambda: self.adapter.pruned_features(hidden, keep, feats.image_sizes, full, merged), device)
                # The pruned path pays for the full packing only where it gathers from it (AnyRes crops).
                project_s = pruned_s + (full_s if getattr(self.adapter, "packs_from_full", False) else 0.0)
        full_ids = self._full_ids.get((feats.media_key, question))
        if full_ids is None:  # the processor's ids depend on the media and the question only
            full_ids = self.prompt_inputs(images, question)["input_ids"]
            self._full_ids.put((feats.media_key, question), full_ids)
        runs = placeholder_runs(full_ids, self.adapter.image_token_id)
        if runs != [f.shape[0] for f in full]:  # frames as base views: the processor sized them as images
            full_ids = resize_placeholders(full_ids, self.adapter.image_token_id, runs, [f.shape[0] for f in full])
        input_ids = full_ids
        if selection is not None:
            input_ids = resize_placeholders(full_ids, self.adapter.image_token_id, [f.shape[0] for f in full],
                                            [f.shape[0] for f in visual])
        features = visual if self.adapter.modality == "image" else torch.cat(visual)[None]  # video: [1, T, D]
        return _Prompt(input_ids, features, sum(f.shape[0] for f in visual), project_s, full_ids, selection)

    def _positioned(self, made: _Prompt, feats: EncodedImages, images: Sequence) -> PromptInputs:
        """``made`` as the full prompt with the dropped visual tokens taken out: each picture's kept
        tokens in the order of their patches (not the selection's), each at its patch's position, the
        text after the picture where it is in the full prompt (``POSITION_MODES``). The tower's CLS
        row, which the full prompt does not hold, goes first, at its picture's first patch's position."""
        token = self.adapter.image_token_id
        index = torch.arange(made.full_ids.shape[1])
        features = list(made.features)
        if made.selection is not None:  # None: every token kept, the full prompt itself
            offsets = [self.adapter.run_offsets(made.selection.keep_row(int(v)))
                       for i in range(len(images)) for v in feats.view_rows(i)]
            order = [torch.sort(o, stable=True).indices for o in offsets]  # CLS (offset 0, listed first) stays first
            index = kept_sequence(made.full_ids[0] == token, [o[k] for o, k in zip(offsets, order)])
            features = [f[k.to(f.device)] for f, k in zip(features, order)]
        if index.numel() != made.input_ids.shape[1] or not torch.equal(made.full_ids[0, index], made.input_ids[0]):
            raise RuntimeError("the positioned prompt does not hold the pruned prompt's tokens")  # a bug, not input
        return PromptInputs(input_ids=made.input_ids, features={self.adapter.modality: features}, positions=index[None],
                            next_position=int(made.full_ids.shape[1]), visual_tokens=made.visual_tokens, token_id=token)

    def _hand_over(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                   positions: str) -> tuple[PromptInputs, float]:
        """The prompt the language model gets with ``selection`` (None: every token), and the
        projection's seconds. ``positions`` (:data:`POSITION_MODES`): ``"compact"``, the shortened
        prompt at consecutive positions as the model's own forward numbers it (LLaVA's published
        hand-over), or ``"original"``, the kept tokens where the full prompt has them (:meth:`_positioned`).
        Every answer, prefill and score goes through this one object."""
        made = self._prompt(images, feats, question, selection)
        if positions == "original":
            return self._positioned(made, feats, images), made.project_s
        length = int(made.input_ids.shape[1])
        return PromptInputs(input_ids=made.input_ids, features={self.adapter.modality: list(made.features)},
                            positions=torch.arange(length)[None], next_position=length,
                            visual_tokens=made.visual_tokens, token_id=self.adapter.image_token_id,
                            features_form="list" if self.adapter.modality == "image" else "batched"), made.project_s

    def _generate(self, images, feats: EncodedImages, question: str, selection: Selection | None,
                  max_new_tokens: int, positions: str) -> Answer:
        prompt, project_s = self._hand_over(images, feats, question, selection, positions)
        run = greedy_with_positions(self.model, prompt, max_new_tokens)
        self.stats["full_generations" if selection is None else "pruned_generations"] += 1
        return self._answer(run, prompt.visual_tokens, project_s)

    def _prefill_batch(self, images, feats: EncodedImages, question: str,
                       selections: list[Selection | None], positions: str) -> torch.Tensor:
        prompts = [self._hand_over(images, feats, question, sel, positions)[0] for sel in selections]
        tokenizer = self.processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        logits, passes = first_logits_of(self.model, prompts, pad_token_id=pad)
        self.stats["prefills"] += len(prompts)
        self.stats["prefill_batches"] += passes
        return logits

    @device_action(lambda self, images, *a, max_new_tokens=64, **k: self.encode_cost(images) + Cost(
        generations=2, new_tokens=max_new_tokens, prefills=2 * self.prefill_repeats + 1))
    def compare(self, images: Sequence[Image.Image], question: str, num_tokens: int = 64, *, dynamic: bool = False,
                max_new_tokens: int = 64, selection: Selection | SelectFn | None = None,
                mode: str = "per_view", selection_s: float | None = None, method: str = "prunesid",
                positions: str | None = None) -> CompareResult:
        """Answer ``question`` about ``images`` with all visual tokens and with ``num_tokens`` per view.

        Args:
            num_tokens: visual tokens per view handed to the LLM, CLS included (2 … 1+N).
            dynamic: share the budget ∝ φ across views (see :func:`view_budgets`).
            mode: ``"per_view"`` (``num_tokens`` per view) or ``"total"`` (over all views).
                A rule passed as ``selection`` runs on every patch of every view.
            selection: the :class:`Selection` to answer with (e.g. the one on screen), or a rule
                with ``select_tokens``'s signature; PruneSID's selection by default.
            selection_s: the seconds a given :class:`Selection` took to make (reported in the
                timings); a selection made here is timed here.
            method: the registry method that selects when no ``selection`` is given (PruneSID by
                default), with what its code uses from the model (see :meth:`select`).
            positions: where the kept tokens sit in the pruned prompt (:data:`POSITION_MODES`;
                None: the family's own way).
        """
        self._check_answers()
        positions = self.check_positions(positions)
        question = check_question(question)
        images = check_images(images)
        feats = self.encode(images)
        budgets = view_budgets(feats, num_tokens, dynamic, mode)  # checks the budget
        selection_s = float(selection_s or 0.0)
        if not isinstance(selection, Selection):
            start = time.perf_counter()
            if selection is None:
                chosen = self.select(feats, num_tokens, dynamic=dynamic, mode=mode, method=method, question=question)
            else:
                chosen = selection(feats.hidden_states, feats.cls_attention, selection_budgets(feats, budgets)).cpu()
            selection, selection_s = chosen, time.perf_counter() - start
        self.check_positions(positions, selection)  # before the full answer: a refusal costs no generation
        full = self.answer(images, question, None, max_new_tokens=max_new_tokens)
        pruned = self.answer(images, question, selection, max_new_tokens=max_new_tokens, positions=positions)
        prefill = self._on_model(self._prefill_medians, images, feats, question, selection, positions)
        return self.result(feats, full, pruned, selection, selection_s, prefill_s=prefill, positions=positions)

    def _prefill_medians(self, images, feats: EncodedImages, question: str,
                         selection: Selection, positions: str) -> dict[str, float]:
        """Median seconds of ``prefill_repeats`` prefill-only passes of the full and the pruned prompt,
        their order alternating, after one untimed warm-up pass when this process has not timed one
        yet (the first prefill-only pass pays for kernel selection and allocation, which is not what
        pruning changes; a generation does not warm this path's shapes)."""
        device = self.loaded.device
        passes = [functools.partial(clocked, self._prefill_pass(images, feats, question, chosen, positions), device)
                  for chosen in (None, selection)]  # one code path for both
        if not self._warm:
            passes[0]()
            self._warm = True
        _, seconds, _ = rotated_rounds(passes, repeats=self.prefill_repeats, max_repeats=self.prefill_repeats)
        return {"full": float(np.median(seconds[0])), "pruned": float(np.median(seconds[1]))}

    def _prefill_pass(self, images, feats: EncodedImages, question: str,
                      selection: Selection | None, positions: str) -> Callable[[], torch.Tensor]:
        """One prefill-only pass of the prompt made with ``selection`` (``None``: every token), ready to time."""
        prompt = self._hand_over(images, feats, question, selection, positions)[0]
        return lambda: first_logits_with_positions(self.model, prompt)

    def result(self, feats: EncodedImages, full: Answer, pruned: Answer, selection: Selection,
               selection_s: float = 0.0, prefill_s: dict[str, float] | None = None, positions: str | None = None
               ) -> CompareResult:
        """The comparison of two answers about ``feats`` (the second made with ``selection``).

        ``prefill_s``: measured prefill medians per run, in place of the answers' own one-off timings;
        ``positions``: where the pruned answer's kept tokens sat (None: the family's own way)."""
        vision_s = sum(feats.tower_s)
        if prefill_s is not None:
            full, pruned = replace(full, prefill_s=prefill_s["full"]), replace(pruned, prefill_s=prefill_s["pruned"])
        return CompareResult(
            full_answer=full.text, pruned_answer=pruned.text, visual_tokens_full=full.visual_tokens,
            visual_tokens_pruned=pruned.visual_tokens,
            prompt_tokens={"full": full.prompt_tokens, "pruned": pruned.prompt_tokens},
            timings={"full": _timing(vision_s, 0.0, full), "pruned": _timing(vision_s, selection_s, pruned)},
            fidelity=first_token_kl(full.first_logits, pruned.first_logits),
            first_token_agrees=self.same_first_token(full, pruned),
            same_answer=full.tokens == pruned.tokens,
            budgets=handed_per_view(feats, selection),
            selection=selection, model_id=self.model_id, family=self.family, features_cached=all(feats.cached),
            full_tokens=list(full.tokens), pruned_tokens=list(pruned.tokens),
            answers_cached={"full": full.cached, "pruned": pruned.cached}, device=self.device,
            counts={"full": self.token_counts(feats), "pruned": self.token_counts(feats, selection)},
            prefill_repeats=self.prefill_repeats if prefill_s is not None else 1,
            positions=self.check_positions(positions))

    def first_token(self, logits: torch.Tensor) -> int:
        """The first answer token greedy decoding takes from these first-token ``logits``
        (``[vocab]``): the generation config's suppressed tokens never win, as in ``generate``."""
        return next_token(self.model, logits.reshape(1, -1))

    def same_first_token(self, full: Answer, pruned: Answer) -> bool:
        """Whether both answers start with the same token, by the rule their text was decoded with
        (the answers' own first tokens; from their logits when an answer is empty)."""
        if full.tokens and pruned.tokens:
            return full.tokens[0] == pruned.tokens[0]
        return self.first_token(full.first_logits) == self.first_token(pruned.first_logits)

    def prompt_inputs(self, images: Sequence[Image.Image], question: str) -> dict:
        """What the processor gives for the chat prompt (input_ids, pixel_values, ...): the plain path.
        For LLaVA-NeXT-Video the images are the frames of one clip (``pixel_values_videos``)."""
        return self.adapter.prompt_inputs(list(images), question)


def _joined_map_rows(rows: list[torch.Tensor | None], counts: list[int], num_patches: int) -> torch.Tensor | None:
    """One ``[V, N]`` map-row table over several images' views, rows renumbered to stay distinct."""
    if all(r is None for r in rows):
        return None
    out, offset = [], 0
    for r, count in zip(rows, counts):
        if r is None:
            r = torch.full((count, num_patches), RECEIVED, dtype=torch.long)
        out.append(torch.where(r >= 0, r + offset, r))
        offset += int(r.max().clamp(min=-1)) + 1
    return torch.cat(out)


def _received(map_rows: torch.Tensor | None) -> torch.Tensor | None:
    return None if map_rows is None else map_rows >= RECEIVED


def _merged_row(sel: Selection, row: int) -> torch.Tensor:
    """``[M_row, D]``: a row's merged tokens (its budget minus its kept indices; padding dropped)."""
    count = int(sel.num_tokens[row]) - sel.keep_row(row).numel()
    return sel.merged_tokens[row, :count]


def _timing(vision_s: float, selection_s: float, run: Answer) -> dict[str, float]:
    parts = {"vision_s": vision_s, "selection_s": selection_s, "project_s": run.project_s,
             "prefill_s": run.prefill_s, "decode_s": run.decode_s}
    return parts | {"total_s": sum(parts.values())}


def _image_key(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
