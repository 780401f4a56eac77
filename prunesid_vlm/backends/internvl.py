"""InternVL3 (``InternVLForConditionalGeneration``): 448 px tiles, pixel-shuffled tokens, 1-D positions.

* **Views.** A picture is cut into tiles of the tower's size (448 px): the tile grid whose aspect
  ratio is closest to the picture's, with at most ``max_patches`` tiles (the processor's dynamic
  tiling), plus a thumbnail of the whole picture when there is more than one tile. Each tile is one
  view (``"tile"``, its box the part of the picture it covers; the ``"thumbnail"``; a picture
  that fits one tile ``"image"``). A clip's frames are one tile each (``"frame"``), as InternVL's
  video processor sends them.
* **Tokens.** InternViT has a CLS token, but InternVL drops it before the pixel shuffle: the
  32 × 32 patches of a tile become 16 × 16 tokens (each a 2 × 2 block of patches, channels
  concatenated), and the MLP projector maps them to the language model's width. PruneSID runs on
  these projected tokens with the CLS-free rule, as for every CLS-free family
  (:func:`cls_attention_on_shuffled` gives the alternative, the tower's CLS attention summed over
  each token's 2 × 2 patches, for the docs). The grid comes from the config (image size, patch
  size, downsample ratio).
* **Prompt.** All tiles of a picture share one placeholder run, ``<img>`` + one ``<IMG_CONTEXT>``
  per token of every tile, in tile order (thumbnail last) + ``</img>``; a clip is one run per frame
  (``Frame1: <img>…</img>``). The pruned prompt keeps every text token and, per run, the kept
  tokens of its tiles one tile after another; every token keeps its position in the full prompt
  (1-D), and decoding goes on at the full prompt's length.
* **Processor.** ``InternVLProcessor`` needs a video processor (torchvision): the prompt is
  assembled here, as the processor writes it, from the tokenizer and ``GotOcr2ImageProcessorPil``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..adapters.base import ViewInfo
from .base import EncodedMedia, PromptInputs
from .prompt_index import kept_sequence, whole

INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""InternVL3's chat format (ChatML; a picture is ``<IMG_CONTEXT>\\n``, a clip ``<video>\\n``, which the
processor expands), used when a checkpoint ships no template that places pictures."""

START_IMAGE, END_IMAGE, CONTEXT_IMAGE, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
"""InternVL's image tokens (the tokenizer's ``start_image_token``, ``end_image_token``,
``context_image_token`` and ``video_token``, when it names them)."""


def tokens_per_tile(config) -> tuple[int, int]:
    """``(rows, cols)`` of one tile's tokens after the pixel shuffle, from the model's config."""
    vision = config.vision_config
    size, patch = _pair(vision.image_size), _pair(vision.patch_size)
    ratio = config.downsample_ratio
    return int(size[0] // patch[0] * ratio), int(size[1] // patch[1] * ratio)


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def cls_attention_on_shuffled(attn: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """``[V, S·S]`` attention from the tower's CLS to a tile's patches (raster order) → ``[V, (S/scale)²]``
    on the pixel-shuffled tokens: each token's share is the sum over the ``scale × scale`` block of
    patches it concatenates (token ``(i, j)`` holds patches rows ``scale·i …``, columns
    ``scale·j …``, as ``InternVLModel.pixel_shuffle`` lays them out). Not what PruneSID runs on
    InternVL (the CLS-free rule, see the module docstring); kept for the docs."""
    views, n = attn.shape
    side = math.isqrt(n)
    if side * side != n or side % scale:
        raise ValueError(f"{n} patches are not a square grid divisible by {scale}")
    blocks = attn.reshape(views, side // scale, scale, side // scale, scale)
    return blocks.sum(dim=(2, 4)).reshape(views, -1)


def tile_boxes(size: tuple[int, int], cols: int, rows: int, thumbnail: bool
               ) -> list[tuple[str, tuple[float, float, float, float], int, int]]:
    """Per tile of a ``cols × rows`` canvas of a ``(width, height)`` picture, in the processor's order
    (row by row, the thumbnail last): ``(kind, box, row, col)``, the box in the picture's pixels (the
    canvas is the picture stretched to ``cols × rows`` tiles, so tile ``(r, c)`` covers the ``r``-th of
    ``rows`` bands down and the ``c``-th of ``cols`` across)."""
    width, height = size
    if cols * rows == 1:
        return [("image", (0.0, 0.0, float(width), float(height)), 0, 0)]
    out = [("tile", (c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows), r, c)
           for r in range(rows) for c in range(cols)]
    if thumbnail:
        out.append(("thumbnail", (0.0, 0.0, float(width), float(height)), 0, 0))
    return out


@dataclass
class InternVLPrompts:
    """Tokenizer + ``GotOcr2ImageProcessorPil``: what the pipeline needs of ``InternVLProcessor``."""

    tokenizer: object
    image_processor: object
    chat_template: str | None = None

    def token(self, name: str, default: str) -> str:
        return str(getattr(self.tokenizer, name, None) or default)

    @property
    def tile_size(self) -> tuple[int, int]:
        size = self.image_processor.size
        return int(size["height"]), int(size["width"])

    def tiling(self, image: Image.Image) -> tuple[int, int]:
        """``(cols, rows)`` of the tile canvas the processor chooses for ``image``."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        processor = self.image_processor
        if processor.max_patches <= 1:
            return 1, 1
        return get_optimal_tiled_canvas((image.height, image.width), self.tile_size, processor.min_patches,
                                        processor.max_patches)

    def images(self, images: Sequence[Image.Image]) -> dict:
        """``pixel_values`` ``[Σ tiles, 3, S, S]`` and ``num_patches`` (tiles per picture), as
        ``InternVLProcessor`` makes them (``crop_to_patches=True``)."""
        out = self.image_processor(images=list(images), crop_to_patches=True, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "num_patches": [int(n) for n in out["num_patches"]]}

    def frames(self, frames: Sequence[Image.Image]) -> dict:
        """One tile per frame (the whole frame resized, the image processor's statistics), as InternVL's
        video processor sends them."""
        out = self.image_processor(images=list(frames), crop_to_patches=False, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "num_patches": [1] * len(frames)}

    def template(self) -> str:
        return self.chat_template or INTERNVL_CHAT_TEMPLATE

    def prompt(self, question: str, tiles: Sequence[int], tokens: int, video: bool = False) -> dict:
        """``input_ids`` and ``attention_mask`` ``[1, L]`` for one user turn: per picture one run of
        ``tokens`` × its tiles placeholders between ``<img>`` and ``</img>``; a clip (``video``) one
        such run per frame, each after ``FrameN: ``. No media: the question alone."""
        start, end = self.token("start_image_token", START_IMAGE), self.token("end_image_token", END_IMAGE)
        context, video_token = self.token("context_image_token", CONTEXT_IMAGE), self.token("video_token", VIDEO)
        content = ([{"type": "video"}] if video else [{"type": "image"}] * len(tiles)) if tiles else []
        messages = [{"role": "user", "content": content + [{"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, chat_template=self.template(), add_generation_prompt=True,
                                                  tokenize=False)
        if video and tiles:
            frames = "\n".join(f"Frame{i + 1}: {start}{context * tokens * n}{end}" for i, n in enumerate(tiles))
            if text.count(video_token) != 1:
                raise ValueError(f"the chat template made {text.count(video_token)} {video_token} placeholders for one clip")
            text = text.replace(video_token, frames)
        elif tiles:
            pieces = text.split(context)
            if len(pieces) != len(tiles) + 1:
                raise ValueError(f"the chat template made {len(pieces) - 1} {context} placeholders for {len(tiles)} images")
            text = "".join(piece + (f"{start}{context * tokens * n}{end}" if i < len(tiles) else "")
                           for i, (piece, n) in enumerate(zip(pieces, list(tiles) + [0])))
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def save_pretrained(self, folder) -> None:
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        if self.chat_template:
            (Path(folder) / "chat_template.jinja").write_text(self.chat_template)


def _checkpoint_template(path: str, tokenizer) -> str | None:
    """The checkpoint's own chat template that places pictures (``<IMG_CONTEXT>``): the processor's
    ``chat_template.json`` or ``chat_template.jinja``, else the tokenizer's; None if none does."""
    from transformers.utils import cached_file

    found = []
    for name in ("chat_template.json", "chat_template.jinja"):
        try:
            file = cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        except (OSError, ValueError):
            file = None
        if file:
            text = Path(file).read_text()
            found.append(json.loads(text)["chat_template"] if name.endswith(".json") else text)
    found.append(getattr(tokenizer, "chat_template", None))
    context = str(getattr(tokenizer, "context_image_token", None) or CONTEXT_IMAGE)
    return next((t for t in found if isinstance(t, str) and context in t), None)


class InternVLBackend:
    """InternVL3 (see the module docstring)."""

    modality = "image"
    one_clip = False
    frame_views_differ = True
    """A frame is one tile of the whole frame; a picture is tiled."""
    grid = None
    num_patches = 0
    in_llm_styles: tuple[str, ...] = ()
    in_llm_limits = ("its kept tokens keep their original 1-D positions, and the staged in-LLM loop is not tested "
                     "on this family's language model with them, so FastV and PyramidDrop are not run on it.")

    def __init__(self, model: torch.nn.Module, processor: InternVLPrompts):
        self.model = model
        self.processor = processor
        self.family = model.config.model_type
        self.image_token_id = int(model.config.image_token_id)
        self.grid_shape = tokens_per_tile(model.config)
        self.patch_px = _pair(model.config.vision_config.patch_size)[0]
        self.shuffle = round(1 / model.config.downsample_ratio)
        self.tokens_per_tile = self.grid_shape[0] * self.grid_shape[1]
        tower = _pair(model.config.vision_config.image_size)
        if processor.tile_size != tower:
            raise ValueError(f"the image processor makes {processor.tile_size} px tiles; the tower takes {tower} px")

    @staticmethod
    def load_processor(path: str, name: str) -> InternVLPrompts:
        """The checkpoint's tokenizer and ``GotOcr2ImageProcessorPil`` (``InternVLProcessor`` itself
        needs a video processor, hence torchvision)."""
        from transformers import AutoTokenizer, GotOcr2ImageProcessorPil

        from ..load_errors import ModelLoadError

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = GotOcr2ImageProcessorPil.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load the tokenizer and image processor of {name!r}: {err}") from err
        return InternVLPrompts(tokenizer, image_processor, _checkpoint_template(path, tokenizer))

    def drops_cls(self, view: ViewInfo) -> bool:
        return False

    # --- tokens ---------------------------------------------------------------------------
    def _views(self, images: Sequence[Image.Image], frames: bool) -> tuple[dict, list[ViewInfo], tuple[int, ...]]:
        if frames:
            inputs = self.processor.frames(images)
            return inputs, [ViewInfo(0, "frame", whole(im)) for im in images], tuple(range(len(images)))
        inputs = self.processor.images(images)
        views, sources = [], []
        for i, (image, count) in enumerate(zip(images, inputs["num_patches"])):
            cols, rows = self.processor.tiling(image)
            tiles = tile_boxes((image.width, image.height), cols, rows, thumbnail=True)
            if len(tiles) != count:
                raise ValueError(f"the image processor cut {count} tiles from a picture tiled {cols} × {rows}")
            views += [ViewInfo(i, kind, box, r, c) for kind, box, r, c in tiles]
            sources += [i] * count
        return inputs, views, tuple(sources)

    def encode(self, images: Sequence[Image.Image], frames: bool) -> EncodedMedia:
        inputs, views, sources = self._views(images, frames)
        with torch.inference_mode():
            out = self.model.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.model.device))
        tokens = out.pooler_output
        if tuple(tokens.shape[:2]) != (len(views), self.tokens_per_tile):
            raise ValueError(f"the model gave {tuple(tokens.shape[:2])} tokens for {len(views)} tiles of "
                             f"{self.tokens_per_tile}")
        return EncodedMedia(tokens=tokens.float().cpu(), grid=self.grid_shape, views=views, sources=sources,
                            layout=tuple(inputs["num_patches"]), clip=frames)

    # --- prompts ------------------------------------------------------------------------------
    def prompt(self, question: str, media: EncodedMedia, kept: list[torch.Tensor] | None) -> PromptInputs:
        ids = self.processor.prompt(question, media.layout, self.tokens_per_tile, video=media.clip)["input_ids"]
        index, order = kept_run_index(ids[0] == self.image_token_id, media.tokens.shape[:2], media.layout, kept)
        device, dtype = self.model.device, self.model.dtype
        flat = media.tokens.reshape(-1, media.tokens.shape[-1])
        features = [flat[o].to(device, dtype) for o in order]
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        return PromptInputs(
            input_ids=ids[:, index], features={"image": features}, positions=positions[:, index],
            next_position=int(ids.shape[1]), visual_tokens=sum(int(f.shape[0]) for f in features),
            token_id=self.image_token_id, features_form="tensor")  # its forward calls ``.to`` on them

    def model_inputs(self, images: Sequence[Image.Image], question: str, frames: bool) -> dict:
        vision = self.processor.frames(images) if frames else self.processor.images(images)
        prompt = self.processor.prompt(question, vision["num_patches"], self.tokens_per_tile, video=frames)
        return dict(prompt, pixel_values=vision["pixel_values"])

    def text_ids(self, question: str) -> torch.Tensor:
        return self.processor.prompt(question, (), self.tokens_per_tile)["input_ids"]

    def text_forward_extra(self, ids: torch.Tensor) -> dict:
        return {}

    def media_notes(self, model_id: str, media: EncodedMedia, image_sizes: list[tuple[int, int]]) -> list[str]:
        rows, cols = media.grid
        tile_h, tile_w = self.processor.tile_size
        (h, w) = image_sizes[0]
        s = self.shuffle
        per_tile = (f"{rows} × {cols} tokens per tile (each token a {s} × {s} block of {self.patch_px} px patches, "
                    f"pixel-shuffled; the tower's CLS dropped)")
        if media.clip:
            return [f"{model_id} sees each frame ({w}×{h} px) as one {tile_w}×{tile_h} px tile: {per_tile}."]
        tiles = media.layout[0]
        if tiles == 1:
            return [f"{model_id} sees the whole image ({w}×{h} px) resized to one {tile_w}×{tile_h} px tile: {per_tile}."]
        crops = [v for v in media.views if v.image == 0 and v.kind == "tile"]
        grid_rows, grid_cols = max(v.crop_row for v in crops) + 1, max(v.crop_col for v in crops) + 1
        notes = [f"{model_id} cuts the image ({w}×{h} px, stretched to {grid_cols * tile_w}×{grid_rows * tile_h} px) "
                 f"into {grid_cols} × {grid_rows} tiles of {tile_w} px, the grid closest to its aspect ratio within "
                 f"{self.processor.image_processor.max_patches} tiles, plus a {tile_w} px thumbnail of the whole image: "
                 f"{tiles} views of {per_tile}, {tiles * rows * cols:,} tokens in all."]
        if len(media.layout) > 1:
            notes.append(f"{len(media.layout)} images: {', '.join(str(t) for t in media.layout)} tiles each.")
        return notes


def kept_run_index(is_visual: torch.Tensor, shape: tuple[int, int], runs: Sequence[int],
                   kept: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(index, order)`` when several views share one placeholder run: ``runs`` gives each run's
    number of views (consecutive views of ``shape = (V, N)`` tokens). ``index``: the full prompt's
    indices the pruned prompt keeps (every text token; in each run, view by view, the kept tokens in
    the order given); ``order``: per run, the rows of the tokens flattened over views that fill it."""
    views, n = shape
    kept = [torch.arange(n)] * views if kept is None else kept
    if sum(runs) != views or len(kept) != views:
        raise ValueError(f"{views} views, {len(kept)} kept lists and runs of {list(runs)} views do not match")
    offsets, order, first = [], [], 0
    for count in runs:
        members = range(first, first + count)
        offsets.append(torch.cat([kept[v] + (v - first) * n for v in members]))
        order.append(torch.cat([kept[v] + v * n for v in members]))
        first += count
    return kept_sequence(is_visual, offsets), order
