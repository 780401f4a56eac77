"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP without CLS, AnyRes-max crops,
pooled video frames, 1-D positions.

* **Pictures.** A base view (the whole picture at the tower's size, 27 × 27 tokens at 384 px) and a
  grid of crops of the AnyRes canvas, each the same grid. The language model receives the base
  view's tokens, then the crop canvas **unpadded** to the picture's aspect ratio, one
  ``image_newline`` after every canvas row. PruneSID runs per view on the projected tokens, the
  CLS-free rule (docs/algorithm.md), on the crop tokens the model receives only (the padding is
  never chosen). A pruned picture hands over its base view's kept tokens in the selection's order,
  then its kept crop tokens in canvas order, each canvas row that keeps a token ending with its
  newline (as LLaVA-NeXT's pruned path), every token at its position in the full prompt.
* **anyres_max_9.** A canvas of more than 9 crops' tokens (× 1.1) is downsampled bilinearly, so its
  tokens are blends of the tower's; the backend keeps only the checkpoint's resolutions with at most
  :data:`MAX_CROPS` crops, so that every token the model receives is one PruneSID chose (the notes
  say when a picture would have been seen larger).
* **Clips.** Each frame is the base view alone, its 27 × 27 tokens pooled bilinearly to 14 × 14
  (``apply_pooling``), all frames one ``<video>`` run ending with one newline token, kept whatever
  the selection.
* **Processor.** ``LlavaOnevisionProcessor`` needs a video processor (torchvision): the prompt is
  assembled here from the tokenizer and ``LlavaOnevisionImageProcessorPil``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution

from ..adapters.base import NOT_RECEIVED, RECEIVED, ViewInfo
from .base import EncodedMedia, PromptInputs
from .prompt_index import kept_sequence

MAX_CROPS = 9
"""Largest crop grid kept from the checkpoint's resolutions (``anyres_max_9`` downsamples above ~9)."""
NEWLINE = -1
"""Marker of a newline slot in a packed layout (real slots hold ``view · N + token``)."""

ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""llava-hf's OneVision chat format, used when a checkpoint ships none."""


@dataclass
class OnevisionPrompts:
    """Tokenizer + ``LlavaOnevisionImageProcessorPil``: what the pipeline needs of OneVision's processor."""

    tokenizer: object
    image_processor: object
    chat_template: str | None = None

    def text(self, question: str, pictures: int, video: bool) -> str:
        kind = "video" if video else "image"
        content = [{"type": kind}] * (1 if video else pictures) + [{"type": "text", "text": question}]
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None) or ONEVISION_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                                  add_generation_prompt=True, tokenize=False)

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        if self.chat_template:
            Path(folder, "chat_template.json").write_text(json.dumps({"chat_template": self.chat_template}))


class OnevisionBackend:
    """LLaVA-OneVision (see the module docstring)."""

    modality = "image"
    one_clip = False
    frame_views_differ = True
    grid = None
    num_patches = 0
    in_llm_styles: tuple[str, ...] = ()
    in_llm_limits = "the in-LLM stages are not wired for this family's explicit 1-D positions yet."
    family = "llava_onevision"

    def __init__(self, model: torch.nn.Module, processor: OnevisionPrompts):
        self.model = model
        self.processor = processor
        config = model.config
        self.image_token_id = config.image_token_id
        self.video_token_id = config.video_token_id
        self.side = config.vision_config.image_size // config.vision_config.patch_size
        self.tile = config.vision_config.image_size
        self.checkpoint_pinpoints = [list(p) for p in config.image_grid_pinpoints]
        kept = [p for p in self.checkpoint_pinpoints if (p[0] // self.tile) * (p[1] // self.tile) <= MAX_CROPS]
        config.image_grid_pinpoints = kept  # the model packs by these: it must agree with the processor
        processor.image_processor.image_grid_pinpoints = kept

    @staticmethod
    def load_processor(path: str, name: str) -> OnevisionPrompts:
        from transformers import AutoTokenizer, LlavaOnevisionImageProcessorPil

        from ..load_errors import ModelLoadError

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = LlavaOnevisionImageProcessorPil.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load the tokenizer and image processor of {name!r}: {err}") from err
        return OnevisionPrompts(tokenizer, image_processor, _chat_template(path))

    def drops_cls(self, view: ViewInfo) -> bool:
        return False

    # --- tokens ---------------------------------------------------------------------------
    def _projected(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[P, N, D_text]``: each view's tower states (the configured layer) through the projector,
        as ``get_image_features`` computes them before packing."""
        config, inner = self.model.config, self.model.model
        with torch.inference_mode():
            out = inner.vision_tower(pixels.to(self.model.device, self.model.dtype), output_hidden_states=True,
                                     return_dict=True)
            states = out.hidden_states[config.vision_feature_layer]
            if config.vision_feature_select_strategy == "default":
                states = states[:, 1:]
            return inner.multi_modal_projector(states).float().cpu()

    def _picture_views(self, image: Image.Image, index: int) -> tuple[torch.Tensor, list[ViewInfo], int]:
        out = self.processor.image_processor(images=[image], return_tensors="pt")
        rows, cols = self._crop_grid(image.height, image.width)
        pixels = out["pixel_values"][0, : 1 + rows * cols]
        views = [ViewInfo(index, "base", (0.0, 0.0, float(image.width), float(image.height)))]
        views += [ViewInfo(index, "crop", self._crop_box(image, r, c), r, c) for r in range(rows) for c in range(cols)]
        return pixels, views, rows * cols

    def _crop_grid(self, height: int, width: int) -> tuple[int, int]:
        best_h, best_w = select_best_resolution((height, width), self.model.config.image_grid_pinpoints)
        return best_h // self.tile, best_w // self.tile

    def _crop_box(self, image: Image.Image, row: int, col: int) -> tuple[float, float, float, float]:
        # The processor fits the picture into the best resolution (aspect kept), pads it centred and
        # cuts tile-sized crops: map the crop's canvas square back to the picture's pixels.
        rows, cols = self._crop_grid(image.height, image.width)
        scale = min(cols * self.tile / image.width, rows * self.tile / image.height)
        pad_x = (cols * self.tile - image.width * scale) / 2
        pad_y = (rows * self.tile - image.height * scale) / 2
        x0, y0 = (col * self.tile - pad_x) / scale, (row * self.tile - pad_y) / scale
        return (x0, y0, x0 + self.tile / scale, y0 + self.tile / scale)

    def encode(self, images: Sequence[Image.Image], frames: bool) -> EncodedMedia:
        if frames:
            return self._encode_clip(images)
        pixels, views, layout, rows, canvas_rows = [], [], [], [], 0
        for index, image in enumerate(images):
            p, v, _ = self._picture_views(image, index)
            pixels.append(p)
            views += v
            layout.append(((image.height, image.width), p.shape[0]))
            rows.append(self.map_rows(p.shape[0], (image.height, image.width), offset=canvas_rows))
            canvas_rows = max(canvas_rows, int(rows[-1].max()) + 1)  # canvas rows stay distinct across pictures
        tokens = self._projected(torch.cat(pixels))
        return EncodedMedia(tokens=tokens, grid=(self.side, self.side), views=views,
                            sources=tuple(v.image for v in views), layout=tuple(layout), map_rows=torch.cat(rows),
                            token_px=self.model.config.vision_config.patch_size)

    def _encode_clip(self, frames: Sequence[Image.Image]) -> EncodedMedia:
        pixels = torch.cat([self.processor.image_processor(images=[f], return_tensors="pt")["pixel_values"][0, :1]
                            for f in frames])
        with torch.inference_mode():
            pooled = self.model.model.apply_pooling(self._projected(pixels).to(self.model.device, self.model.dtype))
        side = int(round(pooled.shape[1] ** 0.5))
        views = [ViewInfo(0, "frame", (0.0, 0.0, float(f.width), float(f.height))) for f in frames]
        # One newline closes the clip: as one canvas row that every frame's tokens share, it is counted once.
        return EncodedMedia(tokens=pooled.float().cpu(), grid=(side, side), views=views,
                            sources=tuple(range(len(frames))), layout=(("video", len(frames)),), clip=True,
                            map_rows=torch.zeros(pooled.shape[:2], dtype=torch.long), token_noun="pooled tokens")

    # --- packing --------------------------------------------------------------------------
    def _pack(self, per_view: torch.Tensor, image_size: tuple[int, int], newline: torch.Tensor) -> torch.Tensor:
        """transformers' packing of one picture's ``[P, N, C]`` view tokens → ``[T, C]``."""
        packed, _ = self.model.model.pack_image_features(
            [per_view], torch.tensor([image_size]), image_newline=newline,
            vision_aspect_ratio=self.model.config.vision_aspect_ratio)
        return packed[0]

    def layout(self, num_views: int, image_size: tuple[int, int]) -> torch.Tensor:
        """Long ``[T]``: per packed slot of one picture, ``view · N + token`` or ``NEWLINE``."""
        n = self.side * self.side
        ids = torch.arange(num_views * n, dtype=torch.float64).view(num_views, n, 1)
        slots = self._pack(ids, image_size, torch.tensor([float(NEWLINE)], dtype=torch.float64))[:, 0]
        if bool((slots != slots.round()).any()):
            raise ValueError("the crop canvas was downsampled: its tokens are no longer the tower's")
        return slots.long()

    def map_rows(self, num_views: int, image_size: tuple[int, int], offset: int = 0) -> torch.Tensor:
        """Long ``[P, N]``: the base view's tokens ``RECEIVED``; each crop token its canvas row (from
        ``offset``), or ``NOT_RECEIVED`` in the padding that unpadding drops."""
        n = self.side * self.side
        slots = self.layout(num_views, image_size)[n:]
        is_newline = slots == NEWLINE
        row = torch.cumsum(is_newline.long(), 0) - is_newline.long()
        rows = torch.full((num_views * n,), NOT_RECEIVED, dtype=torch.long)
        rows[:n] = RECEIVED
        rows[slots[~is_newline]] = row[~is_newline] + offset
        return rows.view(num_views, n)

    # --- prompts ------------------------------------------------------------------------------
    def prompt(self, question: str, media: EncodedMedia, kept: list[torch.Tensor] | None) -> PromptInputs:
        device, dtype = self.model.device, self.model.dtype
        newline = self.model.model.image_newline.detach().float().cpu()
        tokens = media.tokens
        n = tokens.shape[1]
        if media.clip:
            frames = tokens.shape[0]
            full = [torch.cat([tokens.reshape(-1, tokens.shape[-1]), newline[None]])]
            lengths, token_id = [frames * n + 1], self.video_token_id
            if kept is None:
                offsets = [torch.arange(lengths[0])]
            else:  # each frame's kept tokens in selection order, frames in time, the closing newline
                offsets = [torch.cat([view * n + k for view, k in enumerate(kept)] + [torch.tensor([frames * n])])]
        else:
            full, offsets, lengths, start = [], [], [], 0
            for image_size, views in media.layout:
                packed = self._pack(tokens[start:start + views], image_size, newline)
                full.append(packed)
                lengths.append(packed.shape[0])
                offsets.append(torch.arange(packed.shape[0]) if kept is None else
                               self._kept_slots(kept[start:start + views], image_size))
                start += views
            token_id = self.image_token_id
        text = self.processor.text(question, len(media.layout), media.clip)
        ids = self._expanded(text, token_id, lengths)
        index = kept_sequence(ids[0] == token_id, offsets)
        features = [f[o].to(device, dtype) for f, o in zip(full, offsets)]
        return PromptInputs(input_ids=ids[:, index], features={"video" if media.clip else "image": features},
                            positions=index[None], next_position=int(ids.shape[1]),
                            visual_tokens=sum(int(f.shape[0]) for f in features), token_id=token_id,
                            features_form="batched" if media.clip else "list")  # its video path takes [1, T, D]

    def _kept_slots(self, kept: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Packed slots of one picture the pruned prompt keeps: the base view's kept tokens in the
        selection's order, then the kept crop tokens in canvas order, each canvas row that keeps one
        with its newline."""
        n = self.side * self.side
        if len(kept) == 1:
            return kept[0]
        slots = self.layout(len(kept), image_size)[n:]
        chosen = torch.zeros(len(kept) * n, dtype=torch.bool)
        for view in range(1, len(kept)):  # a handful of crops, not tokens
            chosen[view * n + kept[view]] = True
        is_newline = slots == NEWLINE
        mask = torch.where(is_newline, False, chosen[slots.clamp(min=0)])
        row = torch.cumsum(is_newline.long(), 0) - is_newline.long()
        row_has_kept = torch.zeros(int(is_newline.sum()), dtype=torch.bool).index_put_((row[mask],), torch.tensor(True))
        crop = (mask | (is_newline & row_has_kept[row])).nonzero().flatten() + n
        return torch.cat([kept[0], crop])

    def _expanded(self, text: str, token_id: int, lengths: list[int]) -> torch.Tensor:
        """``[1, L]``: the prompt's ids with each placeholder repeated to its run's length."""
        ids = self.processor.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        at = (ids == token_id).nonzero().flatten()
        if at.numel() != len(lengths):
            raise ValueError(f"the chat template made {at.numel()} placeholders for {len(lengths)} media items")
        repeat = torch.ones_like(ids)
        repeat[at] = torch.tensor(lengths)
        return ids.repeat_interleave(repeat)[None]

    def model_inputs(self, images: Sequence[Image.Image], question: str, frames: bool) -> dict:
        if frames:
            pixels = torch.cat([self.processor.image_processor(images=[f], return_tensors="pt")["pixel_values"][0, :1]
                                for f in images])[None]
            ids = self._expanded(self.processor.text(question, 1, True), self.video_token_id,
                                 [len(images) * self._pooled_tokens() + 1])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pixels}
        # Placeholder counts from the geometry alone: the model encodes the pixels itself.
        lengths = [self.layout(self._picture_views(im, i)[0].shape[0], (im.height, im.width)).numel()
                   for i, im in enumerate(images)]
        ids = self._expanded(self.processor.text(question, len(images), False), self.image_token_id, lengths)
        out = self.processor.image_processor(images=list(images), return_tensors="pt")
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": out["pixel_values"],
                "image_sizes": out["image_sizes"], "batch_num_images": torch.tensor([len(images)])}

    def _pooled_tokens(self) -> int:
        """Tokens per frame after the model's own pooling (it interpolates; no tower pass needed)."""
        width = self.model.config.text_config.hidden_size
        with torch.inference_mode():
            return int(self.model.model.apply_pooling(torch.zeros(1, self.side * self.side, width)).shape[1])

    def text_ids(self, question: str) -> torch.Tensor:
        text = self.processor.text(question, 0, False)
        return self.processor.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def text_forward_extra(self, ids: torch.Tensor) -> dict:
        return {}

    def media_notes(self, model_id: str, media: EncodedMedia, image_sizes: list[tuple[int, int]]) -> list[str]:
        side = self.side
        if media.clip:
            return [f"{model_id} sees each frame whole at {self.tile}×{self.tile} px, its {side}×{side} tokens "
                    f"pooled to {media.grid[0]}×{media.grid[1]}; the clip's tokens end with one newline token."]
        notes = []
        for (h, w), views in media.layout:
            rows, cols = self._crop_grid(h, w)
            squeezed = "" if w == h else " (the whole picture squeezed to a square, as the model sees it)"
            notes.append(f"{model_id} sees the {w}×{h} px picture as a {self.tile} px base view{squeezed} plus "
                         f"{rows}×{cols} crops that keep its aspect, {side}×{side} tokens each; the crops' padding is "
                         "not handed over.")
            best_h, best_w = select_best_resolution((h, w), self.checkpoint_pinpoints)
            if (best_h // self.tile) * (best_w // self.tile) > MAX_CROPS:
                notes.append(f"The checkpoint would cut it into {best_h // self.tile}×{best_w // self.tile} crops and "
                             f"then downsample their tokens (anyres_max_9); here at most {MAX_CROPS} crops, so that "
                             "every token it receives is one PruneSID chose.")
        return notes


def _chat_template(path: str) -> str | None:
    """The checkpoint's chat template, from ``chat_template.json`` or ``.jinja`` when it ships one."""
    folder = Path(path)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return None
