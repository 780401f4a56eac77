"""A stand-in for :class:`prunesid_vlm.pipeline.Pipeline` with no model: synthetic tower
features from the image's content, canned answers, and a log of every call, so the UI's
handlers can be tested alone (and fast)."""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import torch
from PIL import Image

from prunesid import information_score
from prunesid_vlm.adapters.base import ViewInfo
from prunesid_vlm.calibration import Calibration
from prunesid_vlm.pipeline import (CompareResult, EncodedImages, TokenCounts, check_budget, check_question, select,
                                   tower_view, unseen_note)


class FakePipeline:
    """The public surface the app uses, one 24×24 view per image, width 32."""

    model_id = "fake/no-model"
    family = "llava"
    is_demo = True
    device = "cpu"
    grid = (24, 24)
    num_patches = 576
    one_clip = False
    random_features = True
    answers = "random"
    meaning = "a stand-in without a model"
    positions_default = "compact"
    position_modes = ("compact", "original")

    def __init__(self, fail_with: Exception | None = None):
        self.calls: list[tuple[str, object]] = []
        self.stats: Counter[str] = Counter()
        self.fail_with = fail_with

    def calibration(self) -> Calibration:
        self.calls.append(("calibration", None))
        return Calibration((0.2, 0.3, 0.4))

    @property
    def phi_ref(self) -> float:
        return self.calibration().phi_ref

    def encode(self, images) -> EncodedImages:
        self.calls.append(("encode", len(images)))
        if self.fail_with is not None:
            raise self.fail_with
        hidden, attention = [], []
        for im in images:
            seed = int(hashlib.sha1(im.tobytes()).hexdigest()[:8], 16)
            g = torch.Generator().manual_seed(seed)
            hidden.append(torch.randn(1, 577, 32, generator=g))
            attention.append(torch.rand(1, 576, generator=g).softmax(-1))
        hidden_states = torch.cat(hidden)
        side = lambda im: min(im.size)  # noqa: E731
        views = [ViewInfo(i, "image", ((im.width - side(im)) / 2, (im.height - side(im)) / 2,
                                      (im.width + side(im)) / 2, (im.height + side(im)) / 2))
                 for i, im in enumerate(images)]
        return EncodedImages(hidden_states=hidden_states, cls_attention=torch.cat(attention), views=views,
                             image_sizes=[(im.height, im.width) for im in images], vision_s=0.01,
                             cached=[False] * len(images), tower_s=[0.01] * len(images), media_key="fake",
                             phi=information_score(hidden_states), phi_ref=0.3, drops_cls=(False,) * len(images),
                             sources=tuple(range(len(images))))

    def media_notes(self, feats) -> list[str]:
        return [n for n in (unseen_note(feats),) if n]

    def view_pixels(self, images, feats) -> list[np.ndarray]:
        return [tower_view(images[s], v.box) for s, v in zip(feats.sources, feats.views)]

    def select(self, feats, num_tokens, **kwargs):
        return select(feats, num_tokens, **kwargs)

    def compare(self, images, question, num_tokens=64, *, dynamic=False, max_new_tokens=64, selection=None,
                mode="per_view", selection_s=None, positions=None):
        question = check_question(question)
        k = check_budget(num_tokens)
        self.calls.append(("compare", selection))
        tokens = int(selection.num_tokens.sum()) if selection is not None else k
        timing = {"vision_s": 0.01, "selection_s": 0.0, "project_s": 0.001, "prefill_s": 0.02, "decode_s": 0.05}
        timing["total_s"] = sum(timing.values())
        return CompareResult(
            full_answer=f"full answer to {question!r}", pruned_answer="pruned answer", visual_tokens_full=576,
            visual_tokens_pruned=tokens, prompt_tokens={"full": 600, "pruned": 600 - 576 + tokens},
            timings={"full": dict(timing), "pruned": dict(timing)}, fidelity=0.0, first_token_agrees=True,
            same_answer=False, budgets=[int(n) for n in selection.num_tokens], selection=selection,
            model_id=self.model_id, family=self.family, features_cached=True,
            answers_cached={"full": False, "pruned": False}, positions=positions or self.positions_default,
            counts={"full": TokenCounts(handed=(576,) * len(images), kinds=("image",) * len(images)),
                    "pruned": TokenCounts(handed=tuple(int(n) for n in selection.num_tokens),
                                          kinds=("image",) * len(images))})

    def method_options(self, feats, methods=None) -> dict:
        return {}


def fake_image(seed: int = 0, size: tuple[int, int] = (400, 300)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
