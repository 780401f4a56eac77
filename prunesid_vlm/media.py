"""Safe loading of user images and videos for the app and the API.

Every problem a user can cause (a corrupt file, a text file renamed ``.jpg``, a
decompression bomb, an empty video) raises :class:`MediaError`, a ``ValueError``
with a message meant for a person. Harmless surprises (an RGBA image, an animated
GIF, a huge photo) are fixed and reported as short ``notes`` the UI can show.

Decisions:

* **Transparency** is composited on white (what a viewer shows), not dropped to black.
* **16-bit** images are scaled by their *dtype range* (value / 257), not stretched to
  their min/max, so a dark 16-bit image stays dark.
* **EXIF orientation** is applied, so a phone photo is upright as the user sees it.
* **Tiny images** (a side < :data:`MIN_SIDE` px) are refused: the tower resizes to
  336 px, and upscaling a handful of pixels 40x would show PruneSID choosing among
  copies of the same few pixels, which teaches nothing.
* **Huge images** are downscaled so the longest side is :data:`MAX_SIDE` (the tower
  sees 336 px anyway); images over :data:`MAX_PIXELS` are refused before decoding.
* **Long strips** (more than :data:`MAX_ASPECT` : 1) are refused before decoding: the processor
  scales the *shorter* side to 336 px, so a 100000 x 10 strip would become a picture of
  gigapixels there. Every size rule is checked on the header's size, before any pixel is
  decoded, and a large JPEG is decoded at a reduced scale (``Image.draft``).
* **Videos** whose frames have more than :data:`MAX_VIDEO_PIXELS` are refused from the
  container's header, before any frame is decoded; every decoded frame is checked again (a
  header can lie) and reduced at once, so at most one full-size frame is held.
* **Refused paths**: an upload path that the app's inputs refused (outside Gradio's upload
  folder, see :class:`RefusedFile`) is refused here with :data:`NOT_UPLOADED`, one message
  whether or not such a file exists.

Messages name at most a file's base name, never its folder.
"""
from __future__ import annotations

import io
import os
import uuid
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 8
"""Smallest accepted image side in pixels (see module docstring)."""
MAX_SIDE = 2048
"""Longer images are downscaled to this longest side (6x the 336 px tower input)."""
MAX_PIXELS = 64_000_000
"""Refuse images with more pixels than this (≈ 8000 x 8000) before decoding them:
an image of this size costs ~200 MB as RGB; PIL's own bomb limit is ~179 MP."""
MAX_VIDEO_FRAMES = 32
"""Upper bound on frames sampled from one video, whatever the caller asks."""
MAX_VIDEO_BYTES = 200 * 1024 * 1024
"""Refuse video files larger than this (the demo samples a few frames anyway)."""
MAX_ASPECT = 32
"""Refuse images more than this many times longer than wide (see the module docstring): at 32 : 1
the processor's picture is at most 10752 x 336 px; a 25 : 1 strip is still a valid input."""
MAX_VIDEO_PIXELS = 4096 * 4096
"""Refuse videos whose frames have more pixels than this (≈ 16.8 MP): DCI 4K (4096 x 2160) and
UHD (3840 x 2160) pass; 8K (7680 x 4320, 33 MP) does not. One decoded frame of this size is
50 MB as BGR plus 50 MB as RGB; the tower sees 336 px, so larger frames only cost memory."""
MAX_DECODED_PIXELS = 2_000_000_000
"""Pixels one video may make us decode in all (counting its frames and reading the sampled
ones sequentially): 900 frames of 1080p. Beyond it frames are sought instead of read in order,
and a count by reading stops early, so a long video of large frames costs seconds, not minutes."""
NOT_UPLOADED = "This file was not uploaded to this app, or its upload has expired: upload it again."
"""What a refused upload path is told (the same whether such a file exists or not)."""

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class MediaError(ValueError):
    """An input image or video that cannot be used; the message says why, for a person."""


class RefusedFile(str):
    """A path that an input component refused (:mod:`studio.components`: not in Gradio's upload
    folder, or one of the app's own written images). It equals the path as sent, so it can be
    compared and logged like one, but :func:`load_image` and :func:`load_video` refuse it with
    :data:`NOT_UPLOADED` without looking at the file: whether it exists is never told."""

    __slots__ = ()


def _refuse_marked(source) -> None:
    if isinstance(source, RefusedFile):
        raise MediaError(NOT_UPLOADED)


# ---- images ---------------------------------------------------------------------------------
def load_image(source: ImageInput) -> tuple[Image.Image, list[str]]:
    """Open ``source`` (a path, raw bytes, a PIL image or an ``H x W (x C)`` array) as an
    upright 8-bit RGB PIL image no larger than :data:`MAX_SIDE`.

    Returns ``(image, notes)``: ``notes`` are short sentences about what was changed
    (e.g. "Transparent areas were filled with white."), empty when nothing was.

    Raises:
        MediaError: missing/corrupt/non-image files, decompression bombs, images with
            a side below :data:`MIN_SIDE`, arrays of an unusable shape or dtype.
    """
    _refuse_marked(source)
    notes: list[str] = []
    stated = None  # a file's size as stored (a large JPEG is decoded smaller)
    if isinstance(source, np.ndarray):
        img = _from_array(source)
    elif isinstance(source, Image.Image):
        img = source
    elif isinstance(source, (bytes, bytearray)):
        img, stated = _open(io.BytesIO(source), "the uploaded data")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise MediaError(f"No image file named '{path.name}' (the upload may have expired; upload it again).")
        if path.stat().st_size == 0:
            raise MediaError(f"'{path.name}' is empty (0 bytes).")
        img, stated = _open(path, f"'{path.name}'")
    else:
        raise MediaError(f"Expected an image file, PIL image or array, got {type(source).__name__}.")

    stated = stated or img.size
    _check_pixels(stated)
    target = _fit(*stated)  # files were checked before decoding (in _open); arrays and PIL images here
    if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
        notes.append(f"Animated image: using the first of its {img.n_frames} frames.")
        img.seek(0)
    try:
        upright = ImageOps.exif_transpose(img)
        if upright is not None and upright is not img:
            if _exif_orientation(img) not in (None, 1):
                notes.append("Rotated upright using the photo's EXIF orientation.")
            if upright.size != img.size:  # turned a quarter: so are the stated size and the target
                stated, target = stated[::-1], target[::-1]
            img = upright
        img = _to_rgb(img, notes)
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
        raise MediaError(f"The image could not be decoded; the file may be damaged ({_reason(exc)}).") from exc

    if img.size != target:
        # reducing_gap: Pillow first shrinks by a whole factor with Image.reduce (a cheap box
        # filter), then resamples the last factor (at most 3) with LANCZOS.
        img = img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if target != stated:
        notes.append(f"Large image ({stated[0]}×{stated[1]}) reduced to {target[0]}×{target[1]} first (the model's "
                     "processor reduces it further).")
    return img, notes


def _fit(w: int, h: int) -> tuple[int, int]:
    """The size :func:`load_image` hands on for a ``w x h`` image (the longest side at most
    :data:`MAX_SIDE`), checked before anything is decoded or resized.

    Raises:
        MediaError: a side below :data:`MIN_SIDE`, a strip longer than :data:`MAX_ASPECT` : 1,
            or a shorter side that the downscale would bring below :data:`MIN_SIDE`.
    """
    if min(w, h) < MIN_SIDE:
        raise MediaError(
            f"The image is {w}x{h} px; PruneSID needs at least {MIN_SIDE} px on each side "
            "(the model looks at 336x336, so tiny images have nothing to prune)."
        )
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise MediaError(
            f"The image is {w}x{h} px: its long side is {max(w, h) / min(w, h):.0f} times its short side; PruneSID "
            f"takes images up to {MAX_ASPECT}:1 (the model looks at a 336x336 square). Please crop it."
        )
    if max(w, h) <= MAX_SIDE:
        return w, h
    f = MAX_SIDE / max(w, h)
    new = (max(1, round(w * f)), max(1, round(h * f)))
    if min(new) < MIN_SIDE:
        raise MediaError(
            f"The image is {w}x{h} px; reduced to {MAX_SIDE} px on its long side it would be {new[0]}x{new[1]}, "
            f"under the {MIN_SIDE} px PruneSID needs on each side. Please crop it."
        )
    return new


def _open(fp, name: str) -> tuple[Image.Image, tuple[int, int]]:
    """``Image.open`` + full decode, turning PIL's many failure modes into MediaError; returns the
    image and its size as stored. Every size rule is checked on the header's size first; a large
    JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale that is still at least its target size."""
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we want our
            # own, lower limit to decide, with a readable message.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            _check_pixels(img.size)
            stated = img.size
            target = _fit(*stated)  # before decoding: a strip or a tiny image costs nothing
            if target != stated and img.format == "JPEG":
                img.draft(None, target)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(
            f"{name} is too large to open safely (a 'decompression bomb' guard tripped; "
            f"limit {MAX_PIXELS / 1e6:.0f} megapixels)."
        ) from exc
    except UnidentifiedImageError as exc:
        raise MediaError(f"{name} is not an image format we can read (try PNG, JPEG or WebP).") from exc
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaError(f"{name} could not be decoded; the file may be damaged or truncated ({_reason(exc)}).") from exc
    return img, stated


def _reason(exc: BaseException) -> str:
    """``exc``'s message without a file path (an ``OSError`` about a file names its full path)."""
    if isinstance(exc, OSError) and (exc.filename is not None or exc.filename2 is not None):
        return exc.strerror or type(exc).__name__
    return str(exc)


def _check_pixels(size: tuple[int, int]) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise MediaError(
            f"The image is {w}x{h} px ({w * h / 1e6:.0f} megapixels), over the {MAX_PIXELS / 1e6:.0f} MP limit; "
            "please upload a smaller version."
        )


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # malformed EXIF must not stop the load
        return None


def _from_array(arr: np.ndarray) -> Image.Image:
    """An ``H x W``, ``H x W x 1/3/4`` array (uint8, uint16, bool or float in 0..1) as PIL."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MediaError(f"An image array must be H x W or H x W x 3/4; got shape {a.shape}.")
    if a.size == 0:
        raise MediaError("The image array is empty.")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _u16_to_u8(a)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise MediaError("The image array contains NaN or infinite values.")
        scale = 255.0 if a.max() <= 1.0 else 1.0  # floats in 0..1, else already 0..255
        a = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise MediaError(f"Integer image values must be 0..255 for dtype {a.dtype}; got {a.min()}..{a.max()}.")
        a = a.astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.shape[2] if a.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(a), mode=mode) if mode != "L" else Image.fromarray(a)


def _u16_to_u8(a: np.ndarray) -> np.ndarray:
    """Full-range 16-bit -> 8-bit: 65535 -> 255, rounding (x / 257 is exact for 257·k)."""
    return np.clip(np.round(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I" and a.max() <= 255:  # 8-bit data stored in 32-bit ints (e.g. some PNGs)
            gray = np.clip(a, 0, 255).astype(np.uint8)
        else:
            gray = _u16_to_u8(np.clip(a, 0, 65535))
            notes.append("16-bit image converted to 8 bits.")
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(a) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(a) * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:  # some pixel is not opaque
            notes.append("Transparent areas were filled with white.")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB.")
    return img.convert("RGB")


# ---- video ----------------------------------------------------------------------------------
def load_video(
    path: str | os.PathLike, max_frames: int = 8
) -> tuple[list[Image.Image], float, float, list[str]]:
    """Sample up to ``max_frames`` frames uniformly over a video with OpenCV.

    Frames are taken at the centres of ``max_frames`` equal time slices (never the
    very first black frame or the last partial one), converted to RGB and passed
    through :func:`load_image`'s size rules.

    Returns ``(frames, fps, duration_s, notes)``.

    Raises:
        MediaError: missing, empty, over-sized or unreadable files, frames over
            :data:`MAX_VIDEO_PIXELS` (from the header, before decoding, and again per decoded
            frame), videos with no decodable frame, ``max_frames`` < 1.
    """
    import cv2

    _refuse_marked(path)
    if not isinstance(max_frames, int) or max_frames < 1:
        raise MediaError(f"max_frames must be a positive integer, got {max_frames!r}.")
    notes: list[str] = []
    if max_frames > MAX_VIDEO_FRAMES:
        notes.append(f"At most {MAX_VIDEO_FRAMES} frames are sampled (asked for {max_frames}).")
        max_frames = MAX_VIDEO_FRAMES
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"No video file named '{p.name}' (the upload may have expired; upload it again).")
    size = p.stat().st_size
    if size == 0:
        raise MediaError(f"'{p.name}' is empty (0 bytes).")
    if size > MAX_VIDEO_BYTES:
        raise MediaError(f"'{p.name}' is {size / 2**20:.0f} MB; the limit is {MAX_VIDEO_BYTES / 2**20:.0f} MB.")

    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise MediaError(f"'{p.name}' could not be opened as a video (try MP4 with H.264).")
        # The frame size from the container, before any frame is grabbed (grabbing decodes).
        frame_pixels = _check_frame_size(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                                         int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), p.name)
        sequential = min(SEQUENTIAL_DECODE_LIMIT, MAX_DECODED_PIXELS // frame_pixels)
        stated = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = stated
        if stated <= sequential:
            # A missing or short stated count is checked by reading to the end (a header can lie or
            # be absent; sampling only the frames it admits would miss the rest of the video).
            limit = max(1, min(MAX_COUNTED_FRAMES, MAX_DECODED_PIXELS // frame_pixels))
            count = 0
            while count < limit and cap.grab():
                count += 1
            cap.release()
            cap = cv2.VideoCapture(str(p))
            if stated > 0 and count != stated:
                notes.append(f"The file's header states {stated} frames but it holds "
                             f"{count if count < limit else f'at least {count}'}: frames are sampled "
                             "over all of them.")
        if count <= 0:
            raise MediaError(f"'{p.name}' contains no video frames.")
        if not (0 < fps < 1000):
            notes.append("The video does not state its frame rate; assuming 25 fps.")
            fps = 25.0
        duration = count / fps
        take = min(max_frames, count)
        # Centre of each of `take` equal slices: uniform, and avoids the first/last frame.
        wanted = np.unique(np.floor((np.arange(take) + 0.5) * count / take).astype(int))
        if count > take:
            notes.append(f"Sampled {len(wanted)} of {count} frames ({duration:.1f} s) evenly.")
        loaded = _read_frames(cap, wanted, count <= sequential, p.name)
    finally:
        cap.release()
    if not loaded:
        raise MediaError(f"No frame of '{p.name}' could be decoded; the file may be damaged.")
    if len(loaded) < len(wanted):
        notes.append(f"{len(wanted) - len(loaded)} sampled frame(s) could not be decoded and were skipped.")
    notes.extend(loaded[0][1])  # the same size rule applies to every frame; report it once
    return [img for img, _ in loaded], fps, duration, notes


def _check_frame_size(width: int, height: int, name: str) -> int:
    """``width * height`` of a video's frames, refused over :data:`MAX_VIDEO_PIXELS` or when the
    container does not state it (then it could only be learnt by decoding a frame)."""
    if width <= 0 or height <= 0:
        raise MediaError(f"'{name}' could not be opened as a video: it does not state its frame size "
                         "(try MP4 with H.264).")
    if width * height > MAX_VIDEO_PIXELS:
        raise MediaError(f"The frames of '{name}' are {width}x{height} px ({width * height / 1e6:.0f} megapixels), "
                         f"over the {MAX_VIDEO_PIXELS / 1e6:.1f} MP limit for videos (4096x4096); please upload a "
                         "smaller version (the model looks at 336x336 anyway).")
    return width * height


MAX_COUNTED_FRAMES = 100_000
"""When a video's stated frame count is checked by reading, reading stops here (about an hour at
30 fps) and the video is treated as that long."""

SEQUENTIAL_DECODE_LIMIT = 900
"""Videos up to this many frames (30 s at 30 fps) are decoded frame by frame, which is
exact; longer ones seek to each sampled frame, which is faster but may land on a
nearby frame for some codecs. Fewer when the frames are large (:data:`MAX_DECODED_PIXELS`)."""


def _read_frames(cap, wanted: np.ndarray, sequential: bool, name: str) -> list[tuple[Image.Image, list[str]]]:
    """Decode frames ``wanted`` (sorted ascending), skipping undecodable ones, each through
    :func:`load_image` at once (so only one full-size frame is held at a time). ``sequential``:
    decode every frame up to the last one wanted (exact) instead of seeking to each.

    Raises:
        MediaError: a decoded frame over :data:`MAX_VIDEO_PIXELS` (the header stated less).
    """
    import cv2

    out: list[tuple[Image.Image, list[str]]] = []

    def keep(ok: bool, bgr) -> None:
        if not ok or bgr is None or not bgr.size:
            return
        _check_frame_size(bgr.shape[1], bgr.shape[0], name)
        out.append(load_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))

    if sequential:
        targets = set(int(i) for i in wanted)
        for i in range(int(wanted[-1]) + 1):  # loop over decoded frames
            if not cap.grab():
                break
            if i in targets:
                keep(*cap.retrieve())
    else:
        for i in wanted:
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            keep(*cap.read())
    return out


# ---- playback in the browser -------------------------------------------------------------------
BROWSER_CODECS = frozenset({"avc1", "h264", "x264", "vp80", "vp08", "vp90", "vp09", "av01"})
"""Video codecs browsers play (H.264, VP8, VP9, AV1); OpenCV decodes many more (MPEG-4 Part 2
'mp4v', Motion JPEG, ...), which the page's player shows as "Video not playable"."""
PREVIEW_SIDE = 480
"""Longer side of a preview made for the player (the model never sees it)."""
PREVIEW_FPS = 12.0
PREVIEW_SECONDS = 60.0
"""A preview covers at most this much of the clip (a note says so)."""


def video_codec(path: str | os.PathLike) -> str:
    """The video stream's codec tag as OpenCV reads it, lower-case (``"mp4v"``, ``"avc1"``, ...; ``""`` unknown)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        tag = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
    finally:
        cap.release()
    return "".join(chr((tag >> 8 * i) & 0xFF) for i in range(4)).strip("\x00 ").lower()


def browser_preview(path: str | os.PathLike, folder: str | os.PathLike) -> tuple[Path | None, str | None]:
    """For a clip whose codec browsers do not play: a VP8 WebM of it (at most :data:`PREVIEW_SIDE` px,
    :data:`PREVIEW_FPS` frames per second, :data:`PREVIEW_SECONDS` long) written with OpenCV, which needs
    no system ffmpeg; ``(None, None)`` when the clip plays as it is. The second value is a note for
    the page. The model is always given frames of the original, never of the preview."""
    import cv2

    if video_codec(path) in BROWSER_CODECS:
        return None, None
    cap = cv2.VideoCapture(str(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps = fps if 0 < fps < 1000 else 25.0
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if width <= 0 or height <= 0:
            return None, None
        scale = min(1.0, PREVIEW_SIDE / max(width, height))
        size = (max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2))
        step = max(1, round(fps / PREVIEW_FPS))
        out = Path(folder) / f"preview-{uuid.uuid4().hex}.webm"  # unguessable: it is served to one visitor
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"VP80"), fps / step, size)
        if not writer.isOpened():
            return None, None
        frames, limit = 0, int(PREVIEW_SECONDS * fps)
        try:
            while frames < limit and cap.grab():
                if frames % step == 0:
                    ok, bgr = cap.retrieve()
                    if ok and bgr is not None:
                        writer.write(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA))
                frames += 1
        finally:
            writer.release()
    finally:
        cap.release()
    cut = frames >= limit
    note = (f"Your browser cannot play this clip's codec ({video_codec(path) or 'unknown'}): the player shows a "
            f"preview made here{f' of its first {PREVIEW_SECONDS:.0f} s' if cut else ''}; the model sees frames "
            "of your original.")
    return out, note
