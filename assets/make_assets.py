"""Regenerate the bundled example images and video from scikit-image's sample data.

    .venv/bin/python assets/make_assets.py

Sources and licences: see ``assets/LICENSES.md`` (all public domain or CC0).
Deterministic: the same scikit-image data and library versions give the same
files (JPEG/PNG encoders and libx264 are deterministic for fixed settings).

The video is written with OpenCV. This OpenCV build cannot encode H.264 ('avc1'
fails), and its 'mp4v' (MPEG-4 Part 2) output does not play in most browsers, so
when ``ffmpeg`` with libx264 is on the PATH the clip is transcoded to H.264
(yuv420p, faststart); otherwise the mp4v file is kept and a warning is printed.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent
LONGEST_SIDE = 512
"""Example images are stored at this longest side: above the 336 px tower input, small on disk."""
JPEG_QUALITY = 85
VIDEO_SIZE = 336  # square frames, the LLaVA-1.5 tower input
VIDEO_FPS = 15
VIDEO_SECONDS = 4.0

# name -> (loader, licence note used in LICENSES.md)
IMAGES = {
    "astronaut": data.astronaut,  # NASA, public domain
    "coffee": data.coffee,  # Rachel Michetti, CC0
    "cat": data.chelsea,  # Stefan van der Walt, CC0
    "rocket": data.rocket,  # SpaceX, public domain
    "hubble_deep_field": data.hubble_deep_field,  # NASA/ESA HubbleSite, public domain
}


def _resize_longest(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    f = side / max(h, w)
    if f >= 1:
        return img
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)


def make_images() -> list[Path]:
    out = []
    for name, loader in IMAGES.items():
        img = _resize_longest(loader(), LONGEST_SIDE)
        path = HERE / f"{name}.jpg"
        Image.fromarray(img).save(path, quality=JPEG_QUALITY, optimize=True, subsampling="4:2:0")
        out.append(path)
    return out


def _crop(img: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """A ``side`` x ``side`` window centred at (cx, cy), resampled to VIDEO_SIZE (sub-pixel
    accurate via an affine warp, so slow motion does not jitter)."""
    s = VIDEO_SIZE / side
    m = np.array([[s, 0, VIDEO_SIZE / 2 - s * cx], [0, s, VIDEO_SIZE / 2 - s * cy]], dtype=np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.warpAffine(img, m, (VIDEO_SIZE, VIDEO_SIZE), flags=interp, borderMode=cv2.BORDER_REFLECT)


def video_frames() -> list[np.ndarray]:
    """A slow pan across the coffee cup, then a slow zoom onto the cat's eye (RGB frames)."""
    n = int(VIDEO_SECONDS * VIDEO_FPS)
    half = n // 2
    coffee, cat = data.coffee(), data.chelsea()  # (400, 600), (300, 451)
    ease = lambda t: 0.5 - 0.5 * np.cos(np.pi * t)  # noqa: E731 - smooth start and stop
    frames = []
    for i in range(half):
        t = ease(i / (half - 1))
        side = 400.0
        frames.append(_crop(coffee, 200 + t * 200, 200, side))
    for i in range(n - half):
        t = ease(i / (n - half - 1))
        side = 300.0 - t * 170.0  # zoom from the whole height onto one eye
        cx, cy = 225 + t * (150 - 225), 150 + t * (120 - 150)
        frames.append(_crop(cat, cx, cy, side))
    return frames


def make_video() -> Path:
    final = HERE / "pan_zoom.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.mp4"
        writer = cv2.VideoWriter(str(raw), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (VIDEO_SIZE, VIDEO_SIZE))
        if not writer.isOpened():
            raise RuntimeError("OpenCV could not open an mp4v VideoWriter")
        for f in video_frames():
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            print("warning: ffmpeg not found; keeping OpenCV's mp4v video (may not play in browsers)", file=sys.stderr)
            shutil.copyfile(raw, final)
            return final
        subprocess.run(
            [ffmpeg, "-y", "-loglevel", "error", "-i", str(raw),
             "-c:v", "libx264", "-preset", "slow", "-crf", "23", "-pix_fmt", "yuv420p",
             "-threads", "1", "-movflags", "+faststart", "-map_metadata", "-1",
             "-fflags", "+bitexact", "-flags:v", "+bitexact", "-an", str(final)],
            check=True,
        )  # fmt: skip
    return final


def main() -> None:
    for p in [*make_images(), make_video()]:
        print(f"{p.relative_to(HERE.parent)}  {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
