"""LLaVA-1.5 family: one 336 px view per image (24×24 patches + CLS), 576 tokens each.

Full path ("default" strategy): the 576 patch rows, CLS dropped, in raster order.
Pruned path (the reference): the K kept rows of the tower output — CLS included — in the
selection's order, so the language model sees exactly K tokens per image.
"""
from __future__ import annotations

import torch
from PIL import Image

from .base import ViewInfo


def input_side(processor, vision_config) -> int:
    """Pixel side of the square a view reaches the tower at: the image processor's crop, which can
    differ from the tower's pre-training size (DINOv2 trained at 518 px, fed 336 px here)."""
    crop = getattr(getattr(processor, "image_processor", processor), "crop_size", None)
    height = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)  # dict or SizeDict
    return int(height) if height else int(vision_config.image_size)


class LlavaAdapter:
    """Pre-processing and feature packing for ``LlavaForConditionalGeneration``."""

    family = "llava"
    modality = "image"
    one_clip = False

    def __init__(self, model: torch.nn.Module, processor):
        self.model = model
        self.processor = processor
        vision = model.config.vision_config
        side = input_side(processor, vision) // vision.patch_size
        self.grid = (side, side)
        self.num_patches = side * side
        self.image_token_id = model.config.image_token_id
        """The placeholder id the features replace."""

    def postprocess(self, hidden: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tower outputs → the rows PruneSID selects from (identity for images)."""
        return hidden, cls

    def prompt_inputs(self, images: list[Image.Image], question: str) -> dict:
        """The processor's outputs for the chat prompt (``input_ids`` with full placeholder runs, pixels)."""
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]
        if getattr(self.processor, "chat_template", None):
            text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        else:
            text = "USER: " + "<image>\n" * len(images) + question + " ASSISTANT:"  # LLaVA-1.5's format
        return self.processor(images=images, text=text, return_tensors="pt")

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, list[ViewInfo]]:
        """``[1, 3, S, S]`` pixel values of one image and its single view."""
        pixels = self.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        width, height = image.size
        return pixels, [ViewInfo(image=0, kind="image", box=_center_crop_box(width, height))]

    frame_views_differ = False

    def preprocess_frame(self, image: Image.Image) -> tuple[torch.Tensor, list[ViewInfo]]:
        """A frame is an image here."""
        return self.preprocess(image)

    def drops_cls(self, view: ViewInfo) -> bool:
        """Whether the view's CLS is dropped after selection (it keeps its place here)."""
        return False

    def map_rows(self, num_views: int, image_size: tuple[int, int]) -> torch.Tensor | None:
        """Every patch of a view reaches the language model here, and nothing else does."""
        return None

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """``[T, D_vision]`` → ``[T, D_text]`` through the multimodal projector."""
        projector = self.model.model.multi_modal_projector
        return projector(rows.to(self.model.device, self.model.dtype))

    def full_features(self, hidden: list[torch.Tensor], image_sizes) -> list[torch.Tensor]:
        """Per image ``[576, D_text]``: exactly what ``get_image_features`` returns."""
        return [self.project(h[0, 1:]) for h in hidden]

    def run_offsets(self, keep: torch.Tensor) -> torch.Tensor:
        """Long: where each kept tower row (``keep``: rows of one view, 0 = CLS) sits in its picture's
        full placeholder run, for pruned prompts that keep original positions. The CLS row is not
        in the full run; it takes the first patch's place."""
        return (keep - 1).clamp(min=0)

    def pruned_features(self, hidden: list[torch.Tensor], keep: list[list[torch.Tensor]], image_sizes,
                        full: list[torch.Tensor], merged: list[list[torch.Tensor | None]] | None = None
                        ) -> list[torch.Tensor]:
        """Per image ``[K_i, D_text]``: the kept tower rows (CLS included) in selection order, then the
        merged tokens of a merge-based baseline (``merged[i][0]``, ``[M, D_vision]``) if any."""
        out = []
        for i, (h, k) in enumerate(zip(hidden, keep)):
            rows = h[0, k[0].to(h.device)]
            extra = merged[i][0] if merged else None
            out.append(self.project(rows if extra is None else torch.cat([rows, extra.to(rows)])))
        return out


def _center_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The square the CLIP processor keeps (resize shortest edge, then centre crop)."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)
