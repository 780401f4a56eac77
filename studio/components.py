"""Gradio components with the behaviour this app needs, rendered by the stock front end.

* :class:`SafeImage` / :class:`SafeVideo`: uploads are handed over as file paths *without*
  Gradio opening them, so a corrupt or non-image file reaches our loader
  (:mod:`prunesid_vlm.media`), which explains the problem, instead of failing inside Gradio.
  Only a path inside Gradio's upload folder (symlinks resolved) is handed over as it is: any
  other path, whatever the payload's ``meta`` says (Gradio checks only payloads that carry
  ``meta``), and the app's own written images, come out as a :class:`prunesid_vlm.media.RefusedFile`,
  which every loader refuses with one message, whether or not such a file exists.
* Images the app writes for the page (:func:`png_file`, :func:`mask_png_file`) are named by a
  hash of their content keyed with a secret drawn when the process starts: the same content
  gets the same file within the process, and no visitor can work out another's file name.
* :class:`GroupImage`: an ``AnnotatedImage`` whose value carries its own colours
  (``(base, [(mask, label)], color_map)``) and whose masks are written as fast,
  lightly compressed PNGs (one per PSCA group, up to 144 groups at K = 577).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from gradio import utils
from gradio.data_classes import FileData
from PIL import Image

from viz.overlays import group_layer_palette

from . import limits
from prunesid_vlm.media import RefusedFile


_WRITES = {"count": 0}
_WRITES_LOCK = threading.Lock()
PRUNE_EVERY = 100
"""The folder of written images is checked once every this many writes."""


def _written(folder: Path) -> None:
    """After a new file in ``folder``: every ``PRUNE_EVERY`` writes, keep only the newest
    ``limits.PNG_FILES`` (a redraw reuses a file by content, so an old one is rarely needed again;
    one that is gets written anew)."""
    with _WRITES_LOCK:
        _WRITES["count"] += 1
        if _WRITES["count"] % PRUNE_EVERY:
            return
    prune_folder(folder, limits.PNG_FILES)


def prune_folder(folder: Path, keep: int) -> int:
    """Delete all but the ``keep`` most recently modified PNGs in ``folder``; returns how many went."""
    files = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".png") and not entry.name.startswith("."):
            try:
                files.append((entry.stat().st_mtime, entry.path))
            except FileNotFoundError:
                continue
    files.sort(reverse=True)
    removed = 0
    for _, path in files[keep:]:
        try:
            os.remove(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def written_folder() -> Path:
    """Where the app writes the images it serves (inside Gradio's cache, which serves it)."""
    return Path(utils.get_upload_folder()) / "prunesid-studio"


def uploaded_path(path) -> str:
    """``path`` as sent, when it names a place inside Gradio's upload folder (symlinks resolved) and
    outside :func:`written_folder`; else a :class:`~prunesid_vlm.media.RefusedFile` of it.

    The file itself is not looked at, so a refusal never tells whether it exists. An accepted
    upload's modification time is set to now: uploads are swept by the time since their last use
    (:mod:`studio.guard`), so a visitor's picture stays while they work with it."""
    raw = str(path)
    try:
        resolved = Path(raw).resolve()
        uploads = Path(utils.get_upload_folder()).resolve()
        inside = resolved != uploads and resolved.is_relative_to(uploads)
        if not inside or resolved.is_relative_to(written_folder().resolve()):
            return RefusedFile(raw)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return RefusedFile(raw)
    try:
        os.utime(resolved)
    except OSError:  # gone (expired): the loader says so
        pass
    return raw


class SafeImage(gr.Image):
    """``gr.Image(type="filepath")`` that never decodes the upload itself."""

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):
        if payload is None:
            return None
        path = getattr(payload, "path", None)
        if not path:
            return None
        return uploaded_path(path)


class RawNumber(gr.Number):
    """``gr.Number`` for an endpoint's parameter that hands the value over as sent (``64``, ``"64"``,
    ``"abc"``), so that the handler's own check answers a bad one with a clear message instead of
    the framework failing to convert it."""

    def get_block_name(self) -> str:
        return "number"

    def preprocess(self, payload):
        return payload


class SafeVideo(gr.Video):
    """``gr.Video`` that passes the uploaded path through without converting it."""

    def get_block_name(self) -> str:
        return "video"

    def preprocess(self, payload):
        if payload is None:
            return None
        path = getattr(payload, "video", payload)
        path = getattr(path, "path", None)
        return uploaded_path(path) if path else None


class GroupImage(gr.AnnotatedImage):
    """``gr.AnnotatedImage`` for the PSCA groups (legend hover isolates a group)."""

    info = None  # AnnotatedImage never sets it, but Gradio's config refresh after an update reads it

    def get_block_name(self) -> str:
        return "annotatedimage"

    def postprocess(self, value):
        if value is None:
            return None
        from gradio.components.annotated_image import Annotation, AnnotatedImageData

        base, annotations = value[0], value[1]
        colors = value[2] if len(value) > 2 else (self.color_map or {})
        if isinstance(base, (str, Path)):
            base_path = str(base)
            with Image.open(base_path):  # fails here, clearly, on a missing or corrupt file
                pass
        else:
            base_path = png_file(base, self.GRADIO_CACHE)
        sections = []
        for mask, label in annotations:
            color = _hex_rgb(colors.get(label, "#ff0000"))
            if np.asarray(mask).dtype == np.uint8:  # a group layer: codes with its own dots
                path = layer_png_file(mask, *group_layer_palette(color), self.GRADIO_CACHE)
            else:
                path = mask_png_file(mask_alpha(mask), color, self.GRADIO_CACHE)
            sections.append(Annotation(image=FileData(path=path), label=label))
        return AnnotatedImageData(image=FileData(path=str(utils.abspath(base_path))), annotations=sections)


def mask_alpha(mask) -> np.ndarray:
    """A 0..1 mask as uint8 alpha (× 255, clipped, truncated); the caller's array is left as it is."""
    alpha = np.multiply(mask, 255.0, dtype=np.float32)
    np.clip(alpha, 0, 255, out=alpha)
    return alpha.astype(np.uint8)


def mask_png_file(alpha: np.ndarray, rgb: tuple[int, int, int], cache_dir: str | None = None) -> str:
    """One annotation layer as a PNG: colour ``rgb`` where ``alpha`` > 0 (black elsewhere), with that
    alpha. Written as an 8-bit palette image (palette index = alpha, a tRNS chunk gives each index
    its alpha): it decodes to exactly that RGBA picture, with a quarter of the bytes of an RGBA PNG
    to filter and compress."""
    return layer_png_file(alpha, bytes((0, 0, 0)) + bytes(rgb) * 255, bytes(range(256)), cache_dir)


def layer_png_file(codes: np.ndarray, palette_rgb: bytes, palette_alpha: bytes,
                   cache_dir: str | None = None) -> str:
    """A uint8 ``[H, W]`` code image drawn through a 256-entry palette (RGB bytes and, as a tRNS
    chunk, alpha bytes), written once per content and palette; its absolute path."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    digest = _name_hash(codes.tobytes())
    digest.update(f"{codes.shape} P".encode() + palette_rgb + palette_alpha)
    folder = Path(cache_dir or utils.get_upload_folder()) / "prunesid-studio"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest.hexdigest()}.png"
    if not path.exists():
        h, w = codes.shape
        im = Image.frombytes("P", (w, h), codes.tobytes())
        im.putpalette(palette_rgb, "RGB")
        tmp = folder / f".{path.stem}.{os.getpid()}.{threading.get_ident()}.png"
        im.save(tmp, format="PNG", compress_level=1, transparency=palette_alpha)
        os.replace(tmp, path)
        _written(folder)
    return str(path.resolve())


_NAME_KEY = secrets.token_bytes(32)
"""Drawn when the process starts: written images' names cannot be computed from their content
outside this process (one visitor cannot probe whether another's overlay exists)."""


def _name_hash(data: bytes):
    """A keyed BLAKE2b (128-bit) of ``data``: the name of a written image (feed more with ``update``)."""
    return hashlib.blake2b(data, key=_NAME_KEY, digest_size=16)


def _hex_rgb(value: str) -> tuple[int, int, int]:
    value = value.lstrip("#")
    return tuple(int(value[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def png_file(array: np.ndarray, cache_dir: str | None = None) -> str:
    """Write a uint8 ``[H, W, 3|4]`` RGB/RGBA array as a PNG once per content and return its absolute path.

    zlib level 1: these flat-coloured overlays compress well at once, and a redraw should not wait
    for a smaller file. Files live in Gradio's cache folder, which it serves.

    Raises:
        ValueError: any other dtype or shape (a float image or a 2-D mask is a caller's mistake,
            not something to cast silently).
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"png_file takes a uint8 [H, W, 3] or [H, W, 4] array, got {array.dtype} {array.shape}")
    array = np.ascontiguousarray(array)
    digest = _name_hash(array.tobytes())
    digest.update(str(array.shape).encode())
    folder = Path(cache_dir or utils.get_upload_folder()) / "prunesid-studio"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest.hexdigest()}.png"
    if not path.exists():
        tmp = folder / f".{path.stem}.{os.getpid()}.{threading.get_ident()}.png"
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)  # 3 or 4 uint8 channels: RGB or RGBA
        os.replace(tmp, path)
        _written(folder)
    return str(path.resolve())
