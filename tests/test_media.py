"""prunesid_vlm.media: every bad input raises MediaError (a ValueError) with a useful message;
odd but valid inputs come out as upright 8-bit RGB with a note."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from prunesid_vlm import media
from prunesid_vlm.media import MAX_SIDE, MAX_VIDEO_FRAMES, MIN_SIDE, MediaError, load_image, load_video

ASSETS = Path(__file__).parents[1] / "assets"


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


# ---- errors -----------------------------------------------------------------------------
def test_media_error_is_value_error():
    assert issubclass(MediaError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="No image file"):
        load_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        load_image(p)


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 20)
    with pytest.raises(MediaError, match="not an image format"):
        load_image(p)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MediaError, match="damaged|truncated"):
        load_image(p)


def test_tiny_image_refused(tmp_path):
    p = save(Image.new("RGB", (MIN_SIDE - 1, 40)), tmp_path / "tiny.png")
    with pytest.raises(MediaError, match=f"at least {MIN_SIDE} px"):
        load_image(p)


def test_pixel_limit(tmp_path, monkeypatch):
    p = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setattr(media, "MAX_PIXELS", 5_000)
    with pytest.raises(MediaError, match="megapixels|too large"):
        load_image(p)


def test_pil_decompression_bomb_guard(tmp_path, monkeypatch):
    p = save(Image.new("RGB", (100, 100)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL's own guard trips first
    with pytest.raises(MediaError, match="decompression bomb"):
        load_image(p)


@pytest.mark.parametrize(
    "arr, msg",
    [
        (np.zeros((4, 4, 2), np.uint8), "H x W"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.full((16, 16), np.nan), "NaN"),
        (np.full((16, 16), 300, np.int32), "0..255"),
    ],
)
def test_bad_arrays(arr, msg):
    with pytest.raises(MediaError, match=msg):
        load_image(arr)


def test_wrong_type():
    with pytest.raises(MediaError, match="Expected an image"):
        load_image(42)  # type: ignore[arg-type]


# ---- conversions --------------------------------------------------------------------------
def test_rgb_jpeg_passes_unchanged(tmp_path):
    img, notes = load_image(ASSETS / "cat.jpg")
    assert img.mode == "RGB" and notes == []


def test_grayscale(tmp_path):
    p = save(Image.fromarray(np.full((20, 30), 77, np.uint8)), tmp_path / "g.png")
    img, _ = load_image(p)
    a = np.asarray(img)
    assert img.mode == "RGB" and a.shape == (20, 30, 3) and (a == 77).all()


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[:8, :, 3] = 255  # ... opaque on top, fully transparent below
    rgba[8:, :, 3] = 0
    img, notes = load_image(save(Image.fromarray(rgba), tmp_path / "a.png"))
    a = np.asarray(img)
    assert (a[:8] == [255, 0, 0]).all() and (a[8:] == [255, 255, 255]).all()
    assert any("white" in n for n in notes)


def test_palette_with_transparency(tmp_path):
    p_img = Image.new("P", (16, 16), 0)
    p_img.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    p_img.info["transparency"] = 0
    img, notes = load_image(save(p_img, tmp_path / "p.png", transparency=0))
    assert (np.asarray(img) == 255).all() and notes


def test_16bit_brightness(tmp_path):
    # Mid-gray in 16 bits must stay mid-gray, a dark image must stay dark (no stretching).
    a16 = np.full((20, 20), 32896, np.uint16)  # 128 * 257
    a16[:10] = 2570  # 10 * 257
    p = save(Image.fromarray(a16), tmp_path / "16.png")
    assert Image.open(p).mode.startswith("I")
    img, notes = load_image(p)
    a = np.asarray(img)
    assert (a[10:] == 128).all() and (a[:10] == 10).all()
    assert any("16-bit" in n for n in notes)
    # Arrays too.
    assert (np.asarray(load_image(np.full((9, 9, 3), 65535, np.uint16))[0]) == 255).all()


def test_cmyk(tmp_path):
    img, notes = load_image(save(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), tmp_path / "c.jpg"))
    assert img.mode == "RGB" and np.asarray(img).mean() > 240 and notes


def test_exif_rotation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # stored landscape: left half white
    arr[:, :20] = 255
    src = Image.fromarray(arr)
    exif = src.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = save(src, tmp_path / "rot.jpg", exif=exif, quality=95)
    img, notes = load_image(p)
    a = np.asarray(img)
    assert img.size == (20, 40)  # now portrait
    assert a[:15].mean() > 200 and a[25:].mean() < 50  # the stored left half is now on top
    assert any("EXIF" in n for n in notes)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    img, notes = load_image(p)
    assert tuple(np.asarray(img)[0, 0]) == (255, 0, 0)
    assert any("first of its 3 frames" in n for n in notes)


def test_huge_image_downscaled(tmp_path):
    p = save(Image.new("RGB", (3000, 1000), (10, 20, 30)), tmp_path / "wide.png")
    img, notes = load_image(p)
    assert img.size == (MAX_SIDE, round(1000 * MAX_SIDE / 3000))
    assert any("reduced to" in n for n in notes)


def test_float_array_and_pil_and_bytes(tmp_path):
    img, _ = load_image(np.full((10, 10, 3), 0.5))
    assert (np.asarray(img) == 128).all()
    img, _ = load_image(Image.new("L", (10, 10), 9))
    assert img.mode == "RGB"
    img, _ = load_image((ASSETS / "coffee.jpg").read_bytes())
    assert img.size == Image.open(ASSETS / "coffee.jpg").size


# ---- video ----------------------------------------------------------------------------------
def write_video(path: Path, n: int, fps: float = 10.0, size: int = 32) -> Path:
    """Frame i is uniformly gray at level 5 * i, so a sampled frame tells its index."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((size, size, 3), 5 * i, np.uint8))
    w.release()
    return path


def test_video_sampling_is_uniform_and_capped(tmp_path):
    p = write_video(tmp_path / "v.mp4", 40)
    frames, fps, dur, notes = load_video(p, max_frames=4)
    assert len(frames) == 4 and fps == pytest.approx(10.0) and dur == pytest.approx(4.0)
    # Identify each sampled frame among all decoded frames (the codec shifts gray levels a bit).
    cap, every = cv2.VideoCapture(str(p)), []
    while (got := cap.read())[0]:
        every.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB).mean())
    cap.release()
    idx = [int(np.argmin(np.abs(np.asarray(every) - np.asarray(f).mean()))) for f in frames]
    assert idx == [5, 15, 25, 35]  # centres of four equal slices
    assert any("Sampled 4 of 40" in n for n in notes)
    frames, _, _, notes = load_video(p, max_frames=1000)
    assert len(frames) == MAX_VIDEO_FRAMES and any(f"At most {MAX_VIDEO_FRAMES}" in n for n in notes)


def test_short_video_returns_every_frame(tmp_path):
    frames, _, _, notes = load_video(write_video(tmp_path / "s.mp4", 3), max_frames=8)
    assert len(frames) == 3 and not any("Sampled" in n for n in notes)


@pytest.mark.parametrize("content", [b"", b"definitely not a video" * 50])
def test_bad_videos(tmp_path, content):
    p = tmp_path / "bad.mp4"
    p.write_bytes(content)
    with pytest.raises(MediaError):
        load_video(p)


def test_video_errors_are_readable(tmp_path):
    with pytest.raises(MediaError, match="No video file"):
        load_video(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="positive integer"):
        load_video(ASSETS / "pan_zoom.mp4", max_frames=0)


def test_bundled_video():
    frames, fps, dur, notes = load_video(ASSETS / "pan_zoom.mp4", max_frames=8)
    assert len(frames) == 8 and frames[0].size == (336, 336) and dur == pytest.approx(4.0, abs=0.1)


def test_a_header_that_understates_the_frames_is_checked_by_reading(tmp_path, monkeypatch):
    """The container claims 2 frames, the file holds 40: frames are sampled over all 40."""
    p = write_video(tmp_path / "liar.mp4", 40)
    real = cv2.VideoCapture

    class LyingHeader:
        def __init__(self, path):
            self._cap = real(path)

        def get(self, prop):
            return 2.0 if prop == cv2.CAP_PROP_FRAME_COUNT else self._cap.get(prop)

        def __getattr__(self, name):
            return getattr(self._cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", LyingHeader)
    frames, fps, duration, notes = load_video(p, max_frames=4)
    assert len(frames) == 4 and duration == pytest.approx(4.0)
    assert any("header states 2 frames but it holds 40" in n for n in notes)
    levels = [float(np.asarray(f).mean()) for f in frames]
    assert levels == sorted(levels) and levels[-1] > 5 * 30  # the last sample comes from the end
