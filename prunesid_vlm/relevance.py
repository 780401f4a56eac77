"""Instruction relevance for CDPruner: each patch's CLIP image embedding against the CLIP text
embedding of the question.

CDPruner's code (``clip_encoder.py``) takes the tower's layer −2 patch states through CLIP's
``post_layernorm`` and ``visual_projection`` (image embeddings), encodes the instruction with
CLIP's text tower in 77-token segments (zero-padded, as the code pads), and scores each patch by
the mean over segments of −cos(image, text). LLaVA checkpoints hold the vision tower only, so the
text tower and the visual projection come from the CLIP the tower was taken from
(``openai/clip-vit-large-patch14-336`` for CLIP ViT-L/14-336 towers). The offline demo models get a
tiny random text side instead (its relevance is as random as their tower).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLIP_FOR_TOWER = {(1024, 14, 336): "openai/clip-vit-large-patch14-336"}
"""(width, patch, image size) of a CLIP vision tower → the CLIP repository holding its text side."""
DEMO_TEXT_SEED = 1


class NoTextTower(ValueError):
    """This model's tower has no CLIP text side to measure instruction relevance with."""


@dataclass
class TextSide:
    """What CDPruner needs of CLIP besides the vision tower: the text tower with its projection,
    the visual projection, and the text tokenizer."""

    text_model: torch.nn.Module
    """``CLIPTextModelWithProjection``."""
    visual_projection: torch.nn.Module
    tokenizer: object
    source: str

    @torch.inference_mode()
    def relevance(self, hidden_states: torch.Tensor, post_layernorm: torch.nn.Module, question: str) -> torch.Tensor:
        """Float32 ``[V, N]``: ``mean over segments of −cos(image embedding, text embedding)`` per patch."""
        device = next(self.text_model.parameters()).device
        patches = post_layernorm(hidden_states[:, 1:].to(device, next(post_layernorm.parameters()).dtype))
        images = F.normalize(self.visual_projection(patches.float()), dim=-1)
        ids = self.tokenizer(question, return_tensors="pt")["input_ids"][0]
        length = self.text_model.config.max_position_embeddings
        segments = max(1, -(-ids.numel() // length))
        padded = torch.zeros(segments * length, dtype=torch.long)
        padded[: ids.numel()] = ids
        mask = torch.zeros_like(padded)
        mask[: ids.numel()] = 1
        out = self.text_model(input_ids=padded.view(segments, length).to(device),
                              attention_mask=mask.view(segments, length).to(device))
        texts = F.normalize(out.text_embeds.float(), dim=-1)
        return -(images @ texts.T).mean(-1).cpu()


def text_side_for(vision_config, *, demo: bool, tokenizer=None) -> TextSide:
    """The CLIP text side matching a vision tower (:class:`NoTextTower` if there is none)."""
    if getattr(vision_config, "model_type", None) != "clip_vision_model":
        raise NoTextTower("CDPruner's instruction relevance needs a CLIP vision tower and its text tower; this "
                          f"model's tower is {getattr(vision_config, 'model_type', 'unknown')!r}.")
    if demo:
        return _demo_text_side(vision_config, tokenizer)
    key = (vision_config.hidden_size, vision_config.patch_size, vision_config.image_size)
    repo = CLIP_FOR_TOWER.get(key)
    if repo is None:
        raise NoTextTower(f"no CLIP text tower is known for a {key[0]}-wide, {key[2]} px tower")
    from transformers import AutoTokenizer, CLIPModel, CLIPTextModelWithProjection

    try:
        clip = CLIPModel.from_pretrained(repo).eval()
        tokenizer = AutoTokenizer.from_pretrained(repo)
    except OSError as err:  # not downloadable here (offline, no cache) or not a CLIP checkpoint
        raise NoTextTower(f"CDPruner's instruction relevance needs CLIP's text tower from {repo}, which could not "
                          f"be loaded: {err}") from err
    text = CLIPTextModelWithProjection(clip.config.text_config).eval()
    text.text_model.load_state_dict(clip.text_model.state_dict())
    text.text_projection.load_state_dict(clip.text_projection.state_dict())
    return TextSide(text, clip.visual_projection, tokenizer, repo)


def _demo_text_side(vision_config, tokenizer) -> TextSide:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_TEXT_SEED)
        text = CLIPTextModelWithProjection(config).eval()
        projection = torch.nn.Linear(vision_config.hidden_size, 32, bias=False).eval()
    return TextSide(text, projection, tokenizer, "a tiny random CLIP text side (demo)")
