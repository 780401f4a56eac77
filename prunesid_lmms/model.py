"""``--model prunesid`` for lmms-eval: any model this project loads (LLaVA-1.5, LLaVA-NeXT,
NeXT-Video, Qwen2-VL, Qwen2.5-VL, their demos), answering with the visual tokens a registry method
keeps (or all of them, ``method=none``), through this project's Pipeline.

Model arguments (``--model_args key=value,...``): ``pretrained`` (hub id, folder or demo id),
``method`` (``prunesid``, ``prunesid-dyn``, ``visionzip``, ``divprune``, ``vispruner``, ``cdpruner``, ``random``,
``grid``, ``topk`` or ``none``), ``num_tokens`` (K per view, CLS included; per 576 tokens on Qwen),
``dynamic`` (the dynamic ratio), ``budget_mode`` (``per_view`` or ``total``: the paper's LLaVA-NeXT
640/320/160), ``in_llm`` (``fastv`` or ``pyramiddrop``: pruning inside the language model after the
method, at the published layers scaled to its depth, for generation and multiple-choice scoring alike;
PyramidDrop not on Qwen; ``in_llm_keep``, the share each stage keeps, 0.5 by default), ``device``, ``dtype``, ``max_new_tokens`` (used when a task sets none).

With ``accelerate launch --num_processes P`` every process loads the model on its own device
(its GPU, or the CPU), reports its rank and the world size, and lmms-eval gives it its share of
the samples and gathers the results. Decoding is greedy (the pipeline's); a task asking for
sampling is answered greedily, with one warning.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from loguru import logger
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

METHOD_NONE = "none"
FIDELITY_KEY = "prunesid_fidelity"
"""A task's ``generation_kwargs`` key: answer with a JSON object holding the pruned answer, the
answer with all tokens and the first-token KL (the smoke task's metrics)."""
IMAGE_PLACEHOLDERS = re.compile(r"<image>|<video>")
TRACE_ENV = "PRUNESID_LMMS_TRACE"


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class PruneSIDLmms(lmms):
    """lmms-eval's model interface over :class:`prunesid_vlm.pipeline.Pipeline`."""

    is_simple = True

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", method: str = "prunesid",
                 num_tokens: int | str = 64, dynamic: bool | str = False, budget_mode: str = "per_view",
                 device: str | None = None, dtype: str | None = None, max_new_tokens: int | str = 128,
                 batch_size: int | str = 1, in_llm: str = "none", in_llm_keep: float | str = 0.5,
                 **kwargs) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"unknown model arguments: {', '.join(sorted(kwargs))}")
        if int(batch_size) != 1:
            raise ValueError("the prunesid model answers one sample at a time (--batch_size 1)")
        from accelerate import Accelerator

        from prunesid_eval.methods import get_method
        from prunesid_vlm.combination import STAGES
        from prunesid_vlm.pipeline import load_pipeline

        accelerator = Accelerator()
        # The launcher's environment names this process (accelerate and torchrun set it; on a CPU,
        # accelerate's own state may still say one process).
        rank = int(os.environ.get("RANK", accelerator.process_index))
        world = int(os.environ.get("WORLD_SIZE", accelerator.num_processes))
        local = int(os.environ.get("LOCAL_RANK", accelerator.local_process_index))
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.pipe = load_pipeline(pretrained, device=device, dtype=dtype)
        self.method = method if method == METHOD_NONE else get_method(method).name
        try:
            self.num_tokens = int(num_tokens)
        except (TypeError, ValueError):
            raise ValueError(f"num_tokens must be a whole number, got {num_tokens!r}") from None
        if self.num_tokens < 2:
            raise ValueError(f"num_tokens must be at least 2 (CLS included), got {self.num_tokens}")
        self.dynamic = _flag(dynamic)
        self.in_llm = None
        in_llm = str(in_llm).strip().lower()
        if in_llm not in ("", "none"):
            if in_llm not in STAGES:
                raise ValueError(f"in_llm must be none or one of {', '.join(STAGES)}, got {in_llm!r}")
            self.in_llm = STAGES[in_llm](self.pipe.in_llm_layers(), float(in_llm_keep))
            self.pipe.check_in_llm(self.in_llm)  # e.g. PyramidDrop on Qwen's 3-D positions, said at start
        self.budget_mode = budget_mode
        self.default_max_new_tokens = int(max_new_tokens)
        self.accelerator = accelerator
        self._rank, self._world_size = rank, world
        self._warned_sampling = False
        logger.info(f"prunesid: {self.pipe.model_id} on {device}, method={self.method}, num_tokens={self.num_tokens}, "
                    f"in_llm={self.in_llm.name if self.in_llm else 'none'}, rank {self._rank} of {self._world_size}")

    # --- what lmms-eval reads -----------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def batch_size(self) -> int:
        return 1

    @property
    def device(self) -> torch.device:
        """Where the model runs (lmms-eval gathers per-rank counts on it)."""
        return self.pipe.loaded.device

    # --- the media and the selection of one sample -------------------------------------------------
    def _media(self, doc_to_visual, doc_id, task, split):
        from prunesid_vlm.pipeline import Frames
        from studio.media import load_video

        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for group in visuals for v in (group if isinstance(group, (list, tuple)) else [group])]
        if not visuals:
            raise ValueError(f"sample {doc_id} of {task} has no image or video")
        if isinstance(visuals[0], str):  # a video file
            frames, _, _, _ = load_video(visuals[0], max_frames=6)
            return Frames(frames)
        return [v.convert("RGB") for v in visuals]

    def _selection(self, images, question: str):
        if self.method == METHOD_NONE:
            return None
        feats = self.pipe.encode(images)
        return self.pipe.select(feats, self.num_tokens, method=self.method, dynamic=self.dynamic,
                                mode=self.budget_mode, question=question)

    @staticmethod
    def _question(context: str) -> str:
        return IMAGE_PLACEHOLDERS.sub("", context).strip()

    def _trace(self, task: str, doc_id: int) -> None:
        """With ``PRUNESID_LMMS_TRACE=<folder>``, each process appends the samples it answers to
        ``rank<r>.txt`` there: which process took which share."""
        folder = os.environ.get(TRACE_ENV)
        if folder:
            with open(os.path.join(folder, f"rank{self.rank}.txt"), "a") as handle:
                handle.write(f"{task} {doc_id}\n")

    # --- the interface ---------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="prunesid answering"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            self._trace(task, doc_id)
            gen_kwargs = dict(gen_kwargs or {})
            images = self._media(doc_to_visual, doc_id, task, split)
            question = self._question(context)
            if float(gen_kwargs.get("temperature", 0) or 0) > 0 and not self._warned_sampling:
                logger.warning("prunesid decodes greedily; the task's sampling settings are not used")
                self._warned_sampling = True
            budget = int(gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens)
            selection = self._selection(images, question)
            pruned = self.pipe.answer(images, question, selection, max_new_tokens=budget, in_llm=self.in_llm)
            text = _until(pruned.text, gen_kwargs.get("until"))
            if gen_kwargs.get(FIDELITY_KEY):
                from prunesid_vlm.combination import answer_figures

                full = self.pipe.answer(images, question, None, max_new_tokens=budget)
                figures = answer_figures(self.pipe, self.pipe.encode(images), full, pruned)
                text = json.dumps({"answer": text, "full_answer": _until(full.text, gen_kwargs.get("until")),
                                   "first_token_kl": figures["first_token_kl"],
                                   "visual_tokens": pruned.visual_tokens, "visual_tokens_full": full.visual_tokens})
            out.append(text)
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="prunesid scoring"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            continuation = doc_to_target if isinstance(doc_to_target, str) else \
                doc_to_target(self.task_dict[task][split][doc_id])
            self._trace(task, doc_id)
            images = self._media(doc_to_visual, doc_id, task, split)
            question = self._question(context)
            out.append(self.pipe.loglikelihood(images, question, continuation, self._selection(images, question),
                                               in_llm=self.in_llm))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("multi-round generation is not supported by the prunesid model")


def _until(text: str, until) -> str:
    """``text`` cut at the first of the task's stop strings."""
    for stop in ([until] if isinstance(until, str) else until or []):
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()
