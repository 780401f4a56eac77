"""Gemma 3: SigLIP patches average-pooled to a fixed square of tokens, 1-D positions, and a
bidirectional attention block over each picture's tokens.

* **Tokens.** The SigLIP tower (no CLS) sees each picture resized to its square input (896 px on
  the real checkpoints) without keeping the aspect ratio; the projector average-pools its patches
  to ``mm_tokens_per_image`` tokens (16 × 16 = 256) and projects them into the language model's
  width. Those projected tokens are what the language model receives, and what PruneSID selects
  from (the CLS-free rule). One view per picture; pan-and-scan (extra crops) stays off, as in the
  checkpoints' default.
* **Positions.** Ordinary 1-D positions: the full prompt's ``0 … L−1``. Kept tokens keep theirs
  (:func:`~prunesid_vlm.backends.prompt_index.kept_prompt_index`) and decoding goes on at ``L``.
* **Image attention.** Gemma 3 lets the tokens of one picture attend to each other in both
  directions (the rest is causal). It builds that block from ``token_type_ids`` (1 on the image
  placeholders), run by run: a pruned prompt's ``token_type_ids`` mark exactly its kept
  placeholders, which stay one contiguous run per picture, so the kept tokens of a picture form
  one bidirectional block and the dropped ones are simply absent from it. The sliding-window
  layers count their window (1,024 on the real checkpoints) in the pruned sequence's slots, so a
  pruned prompt longer than the window reaches further back in the original than the full one.
* **Prefill mask.** The pruned prefill is one sequence with gaps in its positions: without a mask
  transformers would read the gaps as packed sequences and cut the masks there, so every prefill
  gets an all-ones ``attention_mask`` (:mod:`~prunesid_vlm.positioned_generation`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ..adapters.base import ViewInfo
from .base import EncodedMedia, PromptInputs
from .prompt_index import kept_prompt_index, whole


class Gemma3Backend:
    """Gemma 3 (see the module docstring)."""

    modality = "image"
    one_clip = False
    frame_views_differ = False
    grid = None
    num_patches = 0
    in_llm_styles = ()
    in_llm_limits = ("Gemma 3's language model scales its embeddings inside its own forward and builds a bidirectional "
                     "attention block over each picture's tokens, neither of which the layer-by-layer loop runs.")

    def __init__(self, model: torch.nn.Module, processor):
        self.model = model
        self.processor = processor
        self.family = model.config.model_type
        self.image_token_id = int(model.config.image_token_id)
        side = int(model.config.mm_tokens_per_image ** 0.5)
        if side * side != model.config.mm_tokens_per_image:
            raise ValueError(f"mm_tokens_per_image={model.config.mm_tokens_per_image} is not a square number of tokens")
        self.token_grid = (side, side)

    @staticmethod
    def load_processor(path: str, name: str):
        """``Gemma3Processor`` from the checkpoint's files, with the PIL image processor (no torchvision)."""
        from transformers import AutoTokenizer, Gemma3ImageProcessorPil, Gemma3Processor

        from ..load_errors import ModelLoadError

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = Gemma3ImageProcessorPil.from_pretrained(path)
            processor = Gemma3Processor.from_pretrained(path, tokenizer=tokenizer, image_processor=image_processor)
        except (OSError, ValueError, AttributeError) as err:
            raise ModelLoadError(f"could not load the tokenizer and image processor of {name!r}: {err}") from err
        image_processor.do_pan_and_scan = False  # one view per picture (the checkpoints' default)
        return processor

    def drops_cls(self, view: ViewInfo) -> bool:
        return False

    # --- tokens ---------------------------------------------------------------------------
    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.processor.image_processor(list(images), do_pan_and_scan=False, return_tensors="pt")["pixel_values"]

    def encode(self, images: Sequence[Image.Image], frames: bool) -> EncodedMedia:
        """One view per picture (a clip's frames are pictures too: Gemma 3 has no video input)."""
        pixels = self._pixels(images).to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            tokens = self.model.model.get_image_features(pixels).pooler_output
        rows, cols = self.token_grid
        if tokens.shape[1] != rows * cols:
            raise ValueError(f"the projector gave {tokens.shape[1]} tokens per picture, not {rows} × {cols}")
        kind = "frame" if frames else "image"
        views = [ViewInfo(i, kind, whole(im)) for i, im in enumerate(images)]
        return EncodedMedia(tokens=tokens.float().cpu(), grid=self.token_grid, views=views,
                            sources=tuple(range(len(images))), layout=(self.token_grid,) * len(images),
                            token_noun="pooled tokens", token_px=self.model.config.vision_config.image_size // rows)

    # --- prompts ------------------------------------------------------------------------------
    def _chat(self, question: str, pictures: int) -> str:
        content = [{"type": "image"}] * pictures + [{"type": "text", "text": question}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def _tokens(self, text: str) -> torch.Tensor:
        return self.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def full_ids(self, question: str, pictures: int) -> torch.Tensor:
        """``[1, L]``: the prompt with every picture's placeholders, as the processor writes it."""
        text = self._chat(question, pictures)
        pieces = text.split(self.processor.boi_token)
        if len(pieces) != pictures + 1:
            raise ValueError(f"the chat template wrote {len(pieces) - 1} image markers for {pictures} pictures")
        no_crops = {"num_crops": [0] * pictures}
        expanded = pieces[0] + "".join(self.processor.replace_image_token(no_crops, i) + piece
                                       for i, piece in enumerate(pieces[1:]))
        return self._tokens(expanded)

    def prompt(self, question: str, media: EncodedMedia, kept: list[torch.Tensor] | None) -> PromptInputs:
        ids = self.full_ids(question, media.tokens.shape[0])
        is_visual = ids[0] == self.image_token_id
        if int(is_visual.sum()) != media.tokens.shape[0] * media.tokens.shape[1]:
            raise ValueError(f"the prompt has {int(is_visual.sum())} image placeholders for "
                             f"{media.tokens.shape[0]} × {media.tokens.shape[1]} tokens")
        index, order = kept_prompt_index(is_visual, media, kept)
        positions = torch.arange(ids.shape[1])[None]  # the full prompt's 1-D positions
        device, dtype = self.model.device, self.model.dtype
        features = [media.tokens.reshape(-1, media.tokens.shape[-1])[o].to(device, dtype) for o in order]
        pruned = ids[:, index]
        return PromptInputs(
            input_ids=pruned, features={"image": features}, positions=positions[:, index],
            next_position=int(ids.shape[1]), visual_tokens=sum(int(f.shape[0]) for f in features),
            token_id=self.image_token_id, forward_extra={"token_type_ids": self.token_types(pruned)},
            features_form="tensor")  # its forward calls ``.to`` on them: one [T, D] tensor, not a list

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """Long, like ``ids``: 1 on the image placeholders, 0 elsewhere (what Gemma 3's processor
        returns, and what its forward builds the bidirectional image blocks from)."""
        return (ids == self.image_token_id).long()

    def model_inputs(self, images: Sequence[Image.Image], question: str, frames: bool) -> dict:
        text = self._chat(question, len(images))
        return dict(self.processor(text=text, images=list(images), add_special_tokens=False, do_pan_and_scan=False,
                                   return_tensors="pt"))

    def text_ids(self, question: str) -> torch.Tensor:
        return self._tokens(self._chat(question, 0))

    def text_forward_extra(self, ids: torch.Tensor) -> dict:
        return {"token_type_ids": torch.zeros_like(ids)}  # all text: no image block

    def media_notes(self, model_id: str, media: EncodedMedia, image_sizes: list[tuple[int, int]]) -> list[str]:
        size = self.processor.image_processor.size
        height, width = int(size["height"]), int(size["width"])
        vision = self.model.config.vision_config
        patches = height // vision.patch_size
        rows, cols = media.grid
        kernel = patches // rows
        notes = [f"{model_id} sees each picture resized to {width}×{height} px: SigLIP's {patches} × {patches} "
                 f"patches of {vision.patch_size} px, average-pooled {kernel} × {kernel} to {rows} × {cols} = "
                 f"{rows * cols} tokens per picture."]
        stretched = [(h, w) for h, w in image_sizes if h * width != w * height]
        if stretched:
            h, w = stretched[0]
            notes.append(f"The aspect ratio is not kept: a {w}×{h} px picture is stretched to {width}×{height} px, "
                         "not cropped or padded. Pan-and-scan (extra crops of elongated pictures) is off, as in the "
                         "checkpoint's default.")
        return notes
