"""``--model prunesid`` for lmms-eval: any model this project loads (LLaVA-1.5, LLaVA-NeXT,
NeXT-Video, Qwen2-VL, Qwen2.5-VL, their demos), answering with the visual tokens a registry method
keeps (or all of them, ``method=none``), through this project's Pipeline.

Model arguments (``--model_args key=value,...``): ``pretrained`` (hub id, folder or demo id),
``method`` (``prunesid``, ``prunesid-dyn``, ``visionzip``, ``divprune``, ``vispruner``, ``cdpruner``, ``random``,
``grid``, ``topk`` or ``none``), ``num_tokens`` (K per view, CLS included; per 576 tokens on Qwen),
``dynamic`` (the dynamic ratio), ``budget_mode`` (``per_view`` or ``total``: the paper's LLaVA-NeXT
640/320/160), ``in_llm`` (``fastv`` or ``pyramiddrop``: pruning inside the language model after the
method, at the published layers scaled to its depth, for generation and multiple-choice scoring alike;
PyramidDrop not on Qwen; ``in_llm_keep``, the share each stage keeps, 0.5 by default), ``device``,
``dtype``, ``max_new_tokens`` (used when a task sets none).

The arguments of lmms-eval's ``llava_hf`` and ``qwen2_5_vl`` keep their meaning (see
:data:`LMMS_EVAL_ARGUMENTS`): ``revision``, ``device_map`` (one device; the model is never split),
``attn_implementation``, ``dtype=auto``, ``max_frames_num`` / ``max_num_frames`` (frames sampled per
video, 6 by default), ``min_pixels`` / ``max_pixels`` (Qwen's dynamic resolution), ``batch_size``
(accepted; samples are answered one at a time, said once at start); the others that would change
what is asked of the model are refused with the reason.

Answers: generation tasks get the pruned answer (a sample without a picture is answered by the
language model alone); multiple-choice and loglikelihood tasks get what ``llava_hf`` returns, the
**mean cross-entropy of the continuation's tokens** (lower is likelier: lmms-eval picks the
``argmin``) and whether greedy decoding gives the continuation. Every result is a
``GenerationResult`` (the pair stays a pair through lmms-eval's evaluator) carrying
:class:`PrunedTokenCounts`: the prompt and answer tokens and the visual tokens handed over, pruned
and in full, per sample (``token_counts`` in ``--log_samples``).

With ``accelerate launch --num_processes P`` every process loads the model on its own device
(its GPU, or the CPU), reports its rank and the world size, and lmms-eval gives it its share of
the samples and gathers the results; at exit each closes the process group
(:func:`_leave_process_group`). Decoding is greedy (the pipeline's); a task asking for sampling is
answered greedily, with one warning.
"""
from __future__ import annotations

import atexit
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

METHOD_NONE = "none"
FIDELITY_KEY = "prunesid_fidelity"
"""A task's ``generation_kwargs`` key: answer with a JSON object holding the pruned answer, the
answer with all tokens and the first-token KL (the smoke task's metrics)."""
IMAGE_PLACEHOLDERS = re.compile(r"<image>|<video>")
TRACE_ENV = "PRUNESID_LMMS_TRACE"
DEFAULT_MAX_FRAMES = 6
"""Frames sampled per video: six LLaVA-1.5 views (576 tokens each) fit a 4k context."""

LMMS_EVAL_ARGUMENTS: dict[str, tuple[tuple | None, str]] = {
    # argument: (the values that change nothing here, or None for any; what it does here / why others are refused)
    "trust_remote_code": ((False,), "models load through transformers' own classes; no checkpoint code is run"),
    "chat_template": ((None,), "prompts use the checkpoint's own chat format, which places the image placeholders "
                               "that pruning shrinks"),
    "system_prompt": ((None, "You are a helpful assistant."),
                      "prompts use the checkpoint's own chat template and its default system prompt"),
    "fps": ((None,), "frames are sampled evenly over the whole clip; set max_frames_num"),
    "interleave_visuals": ((False,), "pictures go before the question, where the model's chat format puts them"),
    "reasoning_prompt": ((None,), "the task's prompt is asked as it is"),
    "use_cache": (None, "decoding always keeps the KV cache (the same answers, sooner)"),
    "max_batch_size": (None, "samples are answered one at a time (see batch_size)"),
}
"""The arguments of lmms-eval's ``llava_hf`` / ``qwen2_5_vl`` taken here besides those of
:class:`PruneSIDLmms`."""

DEVICE_NAME = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _optional(value: Any) -> Any:
    """lmms-eval hands ``key=None`` over as the text ``"None"``."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "none", "null") else value


@dataclass
class PrunedTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts, with the visual tokens the language model received.

    For a generated answer, ``input_tokens``: the prompt the language model read (the pruned prompt)
    and ``output_tokens``: the answer's tokens; a scored continuation reports the visual tokens only.
    ``visual_tokens``: visual tokens handed over, ``visual_tokens_full``: those the model would get
    without pruning (0 for a sample without a picture)."""

    visual_tokens: int | None = None
    visual_tokens_full: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        out = super().to_dict()
        for name in ("visual_tokens", "visual_tokens_full"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class _Sample:
    """One sample's media (``None`` without a picture), the selection handed to the model (``None``:
    every token) and the visual tokens handed over / without pruning."""

    images: Any
    selection: Any
    visual_tokens: int
    visual_tokens_full: int


class PruneSIDLmms(lmms):
    """lmms-eval's model interface over :class:`prunesid_vlm.pipeline.Pipeline`."""

    is_simple = True

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", method: str = "prunesid",
                 num_tokens: int | str = 64, dynamic: bool | str = False, budget_mode: str = "per_view",
                 device: str | None = None, dtype: str | None = None, max_new_tokens: int | str = 128,
                 batch_size: int | str = 1, in_llm: str = "none", in_llm_keep: float | str = 0.5,
                 revision: str | None = None, device_map: str | None = None, attn_implementation: str | None = None,
                 max_frames_num: int | str | None = None, max_num_frames: int | str | None = None,
                 min_pixels: int | str | None = None, max_pixels: int | str | None = None, **kwargs) -> None:
        super().__init__()
        self._check_lmms_eval_arguments(kwargs)
        from accelerate import Accelerator

        from prunesid_eval.methods import get_method
        from prunesid_vlm.combination import STAGES
        from prunesid_vlm.load_options import checkpoint_at_revision, set_attention
        from prunesid_vlm.pipeline import load_pipeline

        accelerator = Accelerator()
        # The launcher's environment names this process (accelerate and torchrun set it; on a CPU,
        # accelerate's own state may still say one process).
        rank = int(os.environ.get("RANK", accelerator.process_index))
        world = int(os.environ.get("WORLD_SIZE", accelerator.num_processes))
        local = int(os.environ.get("LOCAL_RANK", accelerator.local_process_index))
        self._rank, self._world_size = rank, world
        self.accelerator = accelerator
        self._batch_note(batch_size)
        device = _placement(_optional(device), _optional(device_map), world, local)
        self.max_frames = _max_frames(_optional(max_frames_num), _optional(max_num_frames))
        self.method = method if method == METHOD_NONE else get_method(method).name
        try:
            self.num_tokens = int(num_tokens)
        except (TypeError, ValueError):
            raise ValueError(f"num_tokens must be a whole number, got {num_tokens!r}") from None
        if self.num_tokens < 2:
            raise ValueError(f"num_tokens must be at least 2 (CLS included), got {self.num_tokens}")
        revision = _optional(revision)
        self.pipe = load_pipeline(checkpoint_at_revision(pretrained, None if revision is None else str(revision)),
                                  device=device, dtype=_dtype(_optional(dtype)))
        set_attention(self.pipe, _optional(attn_implementation))
        self._pixel_range(_optional(min_pixels), _optional(max_pixels))
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
        self._warned_sampling = False
        self._noted_video: set[str] = set()
        self._last_sample: tuple[tuple, _Sample] | None = None
        if world > 1:
            atexit.register(_leave_process_group)
        logger.info(f"prunesid: {self.pipe.model_id} on {device}, method={self.method}, num_tokens={self.num_tokens}, "
                    f"in_llm={self.in_llm.name if self.in_llm else 'none'}, rank {self._rank} of {self._world_size}")

    # --- the arguments of lmms-eval's own models ------------------------------------------------
    @staticmethod
    def _check_lmms_eval_arguments(kwargs: dict) -> None:
        unknown = sorted(k for k in kwargs if k not in LMMS_EVAL_ARGUMENTS)
        if unknown:
            raise ValueError(f"unknown model arguments: {', '.join(unknown)}")
        for name, value in kwargs.items():
            inert, why = LMMS_EVAL_ARGUMENTS[name]
            value = _optional(value)
            if inert is None:
                if value not in (None, True):
                    logger.info(f"prunesid: {name}={value!r} changes nothing here: {why}")
            elif value not in inert:
                raise ValueError(f"{name}={value!r} is not supported by the prunesid model: {why}")

    def _batch_note(self, batch_size: int | str) -> None:
        text = str(batch_size).strip().lower()
        if not (text == "auto" or text.startswith("auto:")):
            try:
                size = int(float(text))
            except ValueError:
                raise ValueError(f"batch_size must be a whole number or auto, got {batch_size!r}") from None
            if size < 1:
                raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
            if size == 1:
                return
        if self._rank == 0:
            logger.warning(f"prunesid: batch_size={batch_size} is accepted, but samples are answered one at a time "
                           "(each sample's selection and prompt are its own); results are those of --batch_size 1")

    def _pixel_range(self, min_pixels, max_pixels) -> None:
        if min_pixels is None and max_pixels is None:
            return
        set_range = getattr(self.pipe, "set_pixel_range", None)
        if set_range is None:
            raise ValueError(f"min_pixels / max_pixels set Qwen2-VL's dynamic resolution; {self.pipe.model_id} is a "
                             f"{self.pipe.family} model, whose processor resizes every picture to its tower's input "
                             "size, so they do not apply")
        set_range(None if min_pixels is None else int(min_pixels), None if max_pixels is None else int(max_pixels))

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
        """The sample's pictures, or the frames of its video; None for a sample without either."""
        from prunesid_vlm.pipeline import Frames
        from prunesid_vlm.media import load_video

        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = [v for group in visuals or [] for v in (group if isinstance(group, (list, tuple)) else [group])]
        visuals = [v for v in visuals if v is not None]
        if not visuals:
            return None
        if isinstance(visuals[0], str):  # a video file
            frames, _, _, notes = load_video(visuals[0], max_frames=self.max_frames)
            for note in notes:
                if note not in self._noted_video:
                    self._noted_video.add(note)
                    logger.warning(f"prunesid: {note}")
            return Frames(frames)
        return [v.convert("RGB") for v in visuals]

    def _sample(self, doc_to_visual, doc_id, task, split, question: str) -> _Sample:
        """The sample's media, its selection and its visual-token counts. The last sample is kept: a
        multiple-choice question comes as one request per choice, all on the same prompt, so its
        media are decoded and its tokens selected once."""
        key = (task, split, doc_id, question)
        if self._last_sample is not None and self._last_sample[0] == key:
            return self._last_sample[1]
        images = self._media(doc_to_visual, doc_id, task, split)
        if images is None:
            sample = _Sample(None, None, 0, 0)
        else:
            feats = self.pipe.encode(images)
            selection = None if self.method == METHOD_NONE else self.pipe.select(
                feats, self.num_tokens, method=self.method, dynamic=self.dynamic, mode=self.budget_mode,
                question=question)
            full = self.pipe.token_counts(feats).total
            kept = full if selection is None else self.pipe.token_counts(feats, selection).total
            sample = _Sample(images, selection, kept, full)
        self._last_sample = (key, sample)
        return sample

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

    def _continuation_ids(self, continuation: str) -> list[int]:
        """The continuation's tokens, as the pipeline scores a text continuation (no special tokens)."""
        ids = self.pipe.processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the continuation {continuation!r} has no tokens")
        return list(ids)

    # --- the interface ---------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        from prunesid_vlm.text_only import answer_text

        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="prunesid answering"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            self._trace(task, doc_id)
            gen_kwargs = dict(gen_kwargs or {})
            if float(gen_kwargs.get("temperature", 0) or 0) > 0 and not self._warned_sampling:
                logger.warning("prunesid decodes greedily; the task's sampling settings are not used")
                self._warned_sampling = True
            budget = int(gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens)
            until = gen_kwargs.get("until")
            question = self._question(context)
            sample = self._sample(doc_to_visual, doc_id, task, split, question)
            images = sample.images
            if images is None:  # no picture: the language model alone, nothing to prune
                alone = answer_text(self.pipe, question, budget)
                text = _until(alone.text, until)
                counts = PrunedTokenCounts(input_tokens=alone.prompt_tokens, output_tokens=len(alone.tokens),
                                           visual_tokens=0, visual_tokens_full=0)
                if gen_kwargs.get(FIDELITY_KEY):
                    text = json.dumps({"answer": text, "full_answer": text, "first_token_kl": 0.0,
                                       "visual_tokens": 0, "visual_tokens_full": 0})
                out.append(GenerationResult(text=text, token_counts=counts))
                continue
            pruned = self.pipe.answer(images, question, sample.selection, max_new_tokens=budget, in_llm=self.in_llm)
            text = _until(pruned.text, until)
            counts = PrunedTokenCounts(input_tokens=pruned.prompt_tokens, output_tokens=len(pruned.tokens),
                                       visual_tokens=pruned.visual_tokens, visual_tokens_full=sample.visual_tokens_full)
            if gen_kwargs.get(FIDELITY_KEY):
                from prunesid_vlm.combination import answer_figures

                full = self.pipe.answer(images, question, None, max_new_tokens=budget)
                figures = answer_figures(self.pipe, self.pipe.encode(images), full, pruned)
                text = json.dumps({"answer": text, "full_answer": _until(full.text, until),
                                   "first_token_kl": figures["first_token_kl"],
                                   "visual_tokens": pruned.visual_tokens, "visual_tokens_full": full.visual_tokens})
            out.append(GenerationResult(text=text, token_counts=counts))
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request ``GenerationResult(text=(loss, is_greedy))``: the mean cross-entropy (nats per
        token) of the continuation after the pruned prompt, as ``llava_hf`` returns it, and whether
        greedy decoding gives the continuation."""
        from prunesid_vlm.text_only import loglikelihood_text

        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="prunesid scoring"):
            if len(request.args) == 2:  # acc_mutual_info's unconditional score: the continuation alone
                context, continuation = request.args
                question = self._question(context)
                sample = _Sample(None, None, 0, 0)
            else:
                context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
                continuation = doc_to_target if isinstance(doc_to_target, str) else \
                    doc_to_target(self.task_dict[task][split][doc_id])
                self._trace(task, doc_id)
                question = self._question(context)
                sample = self._sample(doc_to_visual, doc_id, task, split, question)
            ids = self._continuation_ids(str(continuation))
            if sample.images is None:
                total, greedy, _ = loglikelihood_text(self.pipe, question, ids)
            else:
                total, greedy = self.pipe.loglikelihood(sample.images, question, ids, sample.selection,
                                                        in_llm=self.in_llm)
            counts = PrunedTokenCounts(visual_tokens=sample.visual_tokens, visual_tokens_full=sample.visual_tokens_full)
            out.append(GenerationResult(text=(-float(total) / len(ids), bool(greedy)), token_counts=counts))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("multi-round generation is not supported by the prunesid model")


def _until(text: str, until) -> str:
    """``text`` cut at the first of the task's stop strings."""
    for stop in ([until] if isinstance(until, str) else until or []):
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text.strip()


def _dtype(dtype):
    """``auto`` (llava_hf's default) is the loader's default: bf16 on a GPU, fp32 on a CPU."""
    if isinstance(dtype, str):
        dtype = dtype.strip().removeprefix("torch.")
        return None if dtype == "auto" else dtype
    return dtype


def _placement(device: str | None, device_map: str | None, world: int, local: int) -> str:
    """The one device this process's model goes on.

    ``device_map`` as in lmms-eval's models: a device name, or ``auto`` / empty (this process's
    device). The model is never split over devices (the pipeline keeps it whole on one); a
    layout (``balanced``, ``sequential``, a mapping) is refused. With several processes each
    takes its own GPU, ``cuda:<local rank>``, as ``llava_hf`` does."""
    if device_map is not None and not isinstance(device_map, str):
        device_map = str(device_map)
    mapped = None
    if device_map not in (None, "", "auto"):
        if not DEVICE_NAME.match(device_map.strip()):
            raise ValueError(f"device_map={device_map!r}: the prunesid model keeps the whole model on one device (its "
                             "selection reads the vision tower and the projector in place); pass a device such as "
                             "cuda:0, or auto, and run one process per GPU (accelerate launch --num_processes N)")
        mapped = device_map.strip()
    if device is not None and mapped is not None and torch.device(device) != torch.device(mapped):
        raise ValueError(f"device={device!r} and device_map={device_map!r} name different devices")
    device = device or mapped
    cuda = torch.cuda.is_available()
    if device is None:
        return f"cuda:{local}" if cuda else "cpu"
    if world > 1 and torch.device(device).type == "cuda":
        return f"cuda:{local}"
    if device_map == "auto" and cuda and torch.cuda.device_count() > 1 and world == 1:
        logger.warning(f"prunesid: device_map=auto puts the whole model on {device}, not split over the "
                       f"{torch.cuda.device_count()} GPUs; run one process per GPU instead")
    return device


def _max_frames(max_frames_num, max_num_frames) -> int:
    """Frames sampled per video (``llava_hf``'s ``max_frames_num``, ``qwen2_5_vl``'s ``max_num_frames``)."""
    given = {int(v) for v in (max_frames_num, max_num_frames) if v is not None}
    if len(given) > 1:
        raise ValueError(f"max_frames_num={max_frames_num} and max_num_frames={max_num_frames} disagree")
    frames = given.pop() if given else DEFAULT_MAX_FRAMES
    from prunesid_vlm.media import MAX_VIDEO_FRAMES

    if not 1 <= frames <= MAX_VIDEO_FRAMES:
        raise ValueError(f"max_frames_num must be 1 to {MAX_VIDEO_FRAMES} (the most frames a video is sampled to "
                         f"here; 32 LLaVA-1.5 views are 18,432 visual tokens before pruning), got {frames}")
    return frames


def _leave_process_group() -> None:
    """At exit, with several processes: close the process group while the interpreter is whole.

    lmms-eval never closes it, so each process's gloo/NCCL group is torn down by the interpreter's
    own finalisation, in whatever order that runs, while a peer may be closing its connections
    (PyTorch asks programs to call ``destroy_process_group`` before they exit). No barrier first:
    every collective is behind this process by now, and a barrier at exit would hang a process
    whose peer stopped in the middle of the run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
