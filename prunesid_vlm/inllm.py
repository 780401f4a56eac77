"""Pruning inside the language model, after a pre-LLM method: FastV's rule and PyramidDrop's
staged schedule, composable with any selection of the registry, each as its public code runs it.

* **FastV** (Chen et al., ECCV 2024; github.com/pkunlp-icler/FastV): after decoder layer K, the
  attention the layer just run gives from the last prompt token to every image token (mean over
  heads) ranks them; the top ``round(keep · n)`` stay for every later layer, at their original
  positions.
* **PyramidDrop** (Xing et al., CVPR 2025; github.com/Cooperx521/PyramidDrop): at each stage (after
  8, 16 and 24 layers for LLaVA-1.5) the *next* layer's own query and key projections, applied to
  the states entering it, rank the image tokens by the last prompt token's attention; the stage
  keeps ``int(n₀ · λ^s)`` of the n₀ that entered the language model, and the kept sequence is
  renumbered from 0 (decoding positions shift to match, layer by layer), as its code does.

The prefill runs the language model's own modules layer by layer (embeddings with the visual
features in their placeholders, rotary embeddings, decoder layers, final norm, head): nothing is
patched and nothing outlives the call. The attention row is computed only where a stage ranks
(the last query against every key; softmax and head mean in float32). The cache holds, per
layer, the tokens that layer saw, so decoding goes on consistently. Language models with ordinary
1-D rotary positions (LLaVA-1.5, LLaVA-NeXT, NeXT-Video) and full attention over the prompt; on
Qwen2-VL and Qwen2.5-VL, FastV with the prompt's 3-D (M-RoPE) positions given, the kept tokens
keeping theirs and decoding going on at the full sequence's next position. PyramidDrop's
renumbering from 0 is defined on 1-D positions only, so it is refused with 3-D ones; a sliding
attention window shorter than the prompt is refused, as is Gemma.
Deviations: a stage keeps at least one image token; ties in attention go to the earlier token.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .generation import GenerationRun, eos_ids, next_token, synchronize

SUPPORTED_LANGUAGE_MODELS = ("llama", "mistral", "qwen2", "phi3", "qwen2_vl_text", "qwen2_5_vl_text")
"""Decoder types whose layers this loop runs as their model does (no embedding scaling; the two Qwen
VL decoders take 3-D positions); Gemma scales its embeddings inside its model's forward and is refused."""


STYLES = ("fastv", "pyramiddrop")


@dataclass(frozen=True)
class InLLMSchedule:
    """After decoder layer ``after[i]`` (that many layers done), keep ``keep[i]`` of the image tokens
    still present, ranked and counted as ``style``'s code does (see the module docstring)."""

    after: tuple[int, ...] = ()
    keep: tuple[float, ...] = ()
    name: str = "none"
    style: str = "fastv"

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if len(self.after) != len(self.keep):
            raise ValueError("one keep fraction per stage")
        if any(not 0 < k <= 1 for k in self.keep):
            raise ValueError(f"keep fractions must be in (0, 1], got {self.keep}")
        if list(self.after) != sorted(set(self.after)) or any(a < 1 for a in self.after):
            raise ValueError(f"stages must be increasing layer counts ≥ 1, got {self.after}")

    @classmethod
    def fastv(cls, layer: int = 2, keep: float = 0.5) -> InLLMSchedule:
        """FastV: one stage after ``layer`` layers (the paper's K = 2, R = 50 %: half the image tokens
        dropped)."""
        return cls((layer,), (keep,), f"FastV K={layer}, keep {keep:.0%}")

    @classmethod
    def pyramiddrop(cls, layers: Sequence[int] = (8, 16, 24), keep: float = 0.5) -> InLLMSchedule:
        """PyramidDrop: a stage after each of ``layers``, each keeping ``keep`` of what is left (the
        paper's LLaVA-1.5 setting: after 8, 16 and 24 of 32 layers, λ = 0.5)."""
        layers = tuple(int(x) for x in layers)
        return cls(layers, (keep,) * len(layers), f"PyramidDrop {'/'.join(map(str, layers))}, keep {keep:.0%}",
                   "pyramiddrop")

    @classmethod
    def fastv_for(cls, num_layers: int, keep: float = 0.5) -> InLLMSchedule:
        """FastV's K = 2 on a model deep enough for it, else after its first layer."""
        return cls.fastv(min(2, max(1, num_layers - 1)), keep)

    @classmethod
    def pyramiddrop_for(cls, num_layers: int, keep: float = 0.5) -> InLLMSchedule:
        """PyramidDrop's stages at a quarter, half and three quarters of the depth (8/16/24 of 32)."""
        stages = sorted({min(num_layers - 1, max(1, round(num_layers * f))) for f in (0.25, 0.5, 0.75)})
        return cls.pyramiddrop(stages if num_layers > 1 else (), keep)

    def key(self) -> str:
        return f"{self.style}|{self.after}|{self.keep}"

    @property
    def active(self) -> bool:
        return bool(self.after)

    def image_tokens_per_layer(self, image_tokens: int, num_layers: int) -> list[int]:
        """The image tokens each decoder layer sees when ``image_tokens`` enter the first."""
        counts, targets = [], self.targets(image_tokens)
        for index in range(num_layers):
            image_tokens = targets.get(index, image_tokens)
            counts.append(image_tokens)
        return counts

    def targets(self, image_tokens: int) -> dict[int, int]:
        """Per stage (its layer count): how many image tokens stay after it, of ``image_tokens``
        entering the language model — FastV ``round(keep · n)`` of those present, PyramidDrop
        ``int(n₀ · Π keep)`` of those that entered."""
        out, present, share = {}, image_tokens, 1.0
        for after, keep in zip(self.after, self.keep):
            share *= keep
            wanted = round(keep * present) if self.style == "fastv" else int(image_tokens * share)
            present = min(present, max(1, wanted)) if present else 0
            out[after] = present
        return out


NO_STAGES = InLLMSchedule()


@dataclass
class StagedRun(GenerationRun):
    """A greedy run with in-LLM pruning, and the image tokens each decoder layer saw."""

    image_tokens_per_layer: list[int] = field(default_factory=list)
    tokens_per_layer: list[int] = field(default_factory=list)
    kept_after: dict[int, list[int]] = field(default_factory=dict)
    """Per stage that dropped tokens (its layer count): the prompt positions every later layer kept."""
    step_logits: list[torch.Tensor] = field(default_factory=list)
    """Float32 ``[vocab]`` per generated token, with ``keep_logits`` (as ``generate``'s ``output_logits``)."""


def _query_and_keys(attention, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([1, H, 1, d], [1, H_kv, L, d])``: the last position's query and every key, before rotary
    embedding, from the layer's own projections (separate or fused as Phi-3's ``qkv_proj``)."""
    head_dim, length = attention.head_dim, normed.shape[1]
    if hasattr(attention, "qkv_proj"):
        q_size = attention.config.num_attention_heads * head_dim
        kv_size = attention.config.num_key_value_heads * head_dim
        q = attention.qkv_proj(normed[:, -1:])[..., :q_size]
        k = attention.qkv_proj(normed)[..., q_size:q_size + kv_size]
    else:
        q, k = attention.q_proj(normed[:, -1:]), attention.k_proj(normed)
    return (q.view(1, 1, -1, head_dim).transpose(1, 2), k.view(1, length, -1, head_dim).transpose(1, 2))


def last_query_attention(layer: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor) -> torch.Tensor:
    """Float ``[L]``: the attention of the last position to every position in ``layer`` (softmax over
    the keys, mean over heads) — the row FastV ranks by, without the other L − 1 rows."""
    attention = layer.self_attn
    rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb  # the model's own rotary rule
    q, k = _query_and_keys(attention, layer.input_layernorm(hidden))
    q, _ = rotate(q, q, cos[:, -1:], sin[:, -1:])
    _, k = rotate(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * attention.scaling  # [1, H, 1, L]
    return scores.softmax(-1)[0, :, 0].mean(0)


def _embed(model, input_ids: torch.Tensor, features: torch.Tensor, token_id: int) -> torch.Tensor:
    """The prompt's embeddings with the visual features in their placeholders, in order (as the
    model's own multimodal merge places them)."""
    embeds = model.model.get_input_embeddings()(input_ids)
    mask = (input_ids == token_id)[..., None]
    if int(mask.sum()) != features.shape[0]:
        raise ValueError(f"{int(mask.sum())} placeholders for {features.shape[0]} visual tokens")
    return embeds.masked_scatter(mask, features.to(embeds.dtype))


def _causal_mask(config, length: int, dtype: torch.dtype, device) -> torch.Tensor | None:
    """None where the attention kernel masks causally by itself (sdpa, flash); an additive mask for
    eager attention, which does not."""
    if config._attn_implementation != "eager" or length == 1:
        return None
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def language_model_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers the staged loop runs; a clear error for decoders it does not cover."""
    lm = model.model.language_model
    kind = lm.config.model_type
    if kind not in SUPPORTED_LANGUAGE_MODELS:
        raise ValueError(f"In-LLM pruning covers {', '.join(SUPPORTED_LANGUAGE_MODELS)} language models; this "
                         f"model's is {kind!r}.")
    return lm.layers[: lm.config.num_hidden_layers]


def stage_keeps(image_tokens: int, keep: float) -> int:
    """Image tokens a FastV stage keeps of ``image_tokens``: ``round(keep · n)`` as its code rounds,
    at least one while any are left."""
    return InLLMSchedule((1,), (keep,)).targets(image_tokens)[1]


def _drop(keep: int, attention: torch.Tensor, is_image: torch.Tensor) -> torch.Tensor | None:
    """Positions (sorted) to keep after a stage: every text token and the ``keep`` most-attended
    image tokens; None when nothing is dropped."""
    images = is_image.nonzero().flatten()
    if keep >= images.numel():
        return None
    # Ties (equal attention) go to the earlier token: a stable descending sort, not topk.
    top = images[torch.sort(attention[images], descending=True, stable=True).indices[:keep]]
    return torch.cat([(~is_image).nonzero().flatten(), top]).sort().values


def sliding_window(config) -> int | None:
    """The attention window of a language model whose layers attend within one, else None."""
    kinds = getattr(config, "layer_types", None)
    if kinds is not None and "sliding_attention" not in kinds:
        return None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return getattr(config, "sliding_window", None)


@torch.inference_mode()
def staged_generate(model: torch.nn.Module, input_ids: torch.Tensor, features: torch.Tensor, token_id: int,
                    schedule: InLLMSchedule, max_new_tokens: int = 64, prefill_only: bool = False,
                    keep_logits: bool = False, positions: torch.Tensor | None = None,
                    next_position: int | None = None, forced: Sequence[int] | None = None) -> StagedRun:
    """Greedy answer with ``features`` (``[T, D]``, the visual tokens in placeholder order) and the
    in-LLM ``schedule``; with ``prefill_only``, only the first answer token's logits.

    ``positions`` (``[1, L]``, or ``[3, 1, L]`` for Qwen VL's M-RoPE) and ``next_position``: the
    prompt's positions and where its first generated token goes (without them, 0 … L − 1 and then L).

    ``forced``: teacher-forced tokens fed in place of the greedy choices (no stop at EOS), with the
    logits that predict each kept — what scoring a continuation needs."""
    from transformers import DynamicCache

    device = model.device
    lm = model.model.language_model
    layers = language_model_layers(model)
    if schedule.after and schedule.after[-1] > len(layers):
        raise ValueError(f"a stage after layer {schedule.after[-1]} is beyond this model's {len(layers)} layers")
    window = sliding_window(lm.config)
    if window is not None and input_ids.shape[1] + max_new_tokens > window:
        raise ValueError(f"This language model attends within a window of {window} tokens and the prompt has "
                         f"{input_ids.shape[1]}: the staged loop reproduces full attention only.")
    mrope = positions is not None and positions.dim() == 3
    renumber = schedule.style == "pyramiddrop" and schedule.active
    if mrope and renumber:
        raise ValueError("PyramidDrop renumbers the kept tokens' positions from 0, which is defined for 1-D "
                         "positions only; with Qwen's 3-D (M-RoPE) positions only FastV's stage runs.")
    input_ids = input_ids.to(device)
    is_image = input_ids[0] == token_id
    targets = {after: n for after, n in schedule.targets(int(is_image.sum())).items() if after < len(layers)}
    hidden = _embed(model, input_ids, features.to(device), token_id)
    origin = torch.arange(input_ids.shape[1], device=device)  # prompt index of every row still present
    # [3, L] M-RoPE positions or [L]; the last axis is the sequence either way.
    positions = origin if positions is None else positions[:, 0].to(device) if mrope else positions[0].to(device)
    next_position = int(input_ids.shape[1]) if next_position is None else int(next_position)
    cache = DynamicCache(config=lm.config)
    image_counts, token_counts, kept_after, offsets = [], [], {}, []
    attention = None
    synchronize(device)
    start = time.perf_counter()
    cos, sin = lm.rotary_emb(hidden, _rotary_positions(positions))
    for index, layer in enumerate(layers):
        if index in targets:
            if renumber:  # PyramidDrop: this layer's own projections rank, before it runs
                attention = last_query_attention(layer, hidden, cos, sin)
            kept = _drop(targets[index], attention, is_image)
            if kept is not None:
                hidden, origin, is_image = hidden[:, kept], origin[kept], is_image[kept]
                if renumber:
                    positions = torch.arange(hidden.shape[1], device=device)
                    cos, sin = lm.rotary_emb(hidden, positions[None])
                else:
                    positions, cos, sin = positions[..., kept], cos[:, kept], sin[:, kept]
                kept_after[index] = origin.tolist()
        if not renumber and index + 1 in targets:  # FastV: the attention of the layer about to run
            attention = last_query_attention(layer, hidden, cos, sin)
        image_counts.append(int(is_image.sum()))
        token_counts.append(int(hidden.shape[1]))
        # Decoding shift of this layer: nonzero only where PyramidDrop renumbered (1-D positions).
        offsets.append(next_position - 1 - int(positions[-1]) if renumber else 0)
        hidden = layer(hidden, attention_mask=_causal_mask(lm.config, hidden.shape[1], hidden.dtype, device),
                       position_ids=None if mrope else positions[None], cache=cache, use_cache=True,
                       position_embeddings=(cos, sin))
    logits = model.lm_head(lm.norm(hidden[:, -1:]))[:, -1].float()
    synchronize(device)
    prefill_end = time.perf_counter()
    first = logits[0].cpu()
    tokens, kept_logits = [], []
    if forced is not None:
        forced, max_new_tokens, keep_logits = [int(t) for t in forced], len(forced), True
    if not prefill_only:
        eos = set() if forced is not None else eos_ids(model)
        for step in range(max_new_tokens):
            token = next_token(model, logits) if forced is None else forced[step]
            tokens.append(token)
            if keep_logits:
                kept_logits.append(logits[0].cpu())
            if token in eos or step == max_new_tokens - 1:
                break
            # The next position of the sequence each layer saw: the full prompt's for FastV (a
            # text token's three M-RoPE axes are equal), the renumbered one's for PyramidDrop.
            hidden = model.model.get_input_embeddings()(torch.tensor([[token]], device=device))
            rotary = {}
            for layer, offset in zip(layers, offsets):
                if offset not in rotary:
                    position = torch.tensor([[next_position + step - offset]], device=device)
                    rotary[offset] = (position, lm.rotary_emb(hidden, position))
                position, embeddings = rotary[offset]
                hidden = layer(hidden, attention_mask=None, position_ids=position, cache=cache, use_cache=True,
                               position_embeddings=embeddings)
            logits = model.lm_head(lm.norm(hidden))[:, -1].float()
    synchronize(device)
    end = time.perf_counter()
    return StagedRun(tokens=torch.tensor(tokens, dtype=torch.long), first_logits=first,
                     prompt_tokens=int(input_ids.shape[1]), prefill_s=prefill_end - start, decode_s=end - prefill_end,
                     image_tokens_per_layer=image_counts, tokens_per_layer=token_counts, kept_after=kept_after,
                     step_logits=kept_logits)


def _rotary_positions(positions: torch.Tensor) -> torch.Tensor:
    """``positions`` (``[L]`` or ``[3, L]``) as the rotary embedding takes them (``[1, L]``, ``[3, 1, L]``)."""
    return positions[None] if positions.dim() == 1 else positions[:, None]


def prefill_flops(tokens_per_layer: list[int], config) -> float:
    """Estimated prefill FLOPs of a decoder with these per-layer sequence lengths: per layer,
    2 · (its weights) · n for the projections and MLP, plus 4 · n² · width for attention. The
    ranking rows (one key projection over the sequence per stage, under 1 % at 32 layers) and the
    head over the last position are left out."""
    width, inner = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or width // heads
    weights = width * head_dim * (2 * heads + 2 * kv) + 3 * width * inner
    return float(sum(2 * weights * n + 4 * n * n * width for n in tokens_per_layer))
