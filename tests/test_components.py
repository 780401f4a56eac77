"""The Gradio component helpers of ``studio/components.py`` and ``studio/plot_output.py``,
called directly (no server).

What reaches a handler from an upload (``preprocess``), what Gradio is handed back for an
output (``postprocess``), and the PNG files written on the way: decoded and compared pixel
for pixel, written once per content, never left half-written.
"""
from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gradio.data_classes import FileData, ImageData
from PIL import Image

from studio.components import GroupImage, SafeImage, SafeVideo, mask_alpha, mask_png_file, png_file
from studio.plot_output import ChartPlot


def decode(source, mode: str = "RGB") -> np.ndarray:
    """A PNG file (path or file object) as a uint8 array in ``mode``."""
    with Image.open(source) as im:
        return np.asarray(im.convert(mode))


def rgb_image(height: int = 12, width: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def cache_files(folder: Path) -> list[Path]:
    return sorted((folder / "prunesid-studio").glob("*")) if (folder / "prunesid-studio").exists() else []


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if anything opens an image with PIL."""
    def refuse(*args, **kwargs):
        raise AssertionError("the upload was decoded")

    monkeypatch.setattr(Image, "open", refuse)


# ---- uploads: paths through, nothing decoded -------------------------------------------------
def test_safe_image_hands_over_the_path_of_any_file_without_opening_it(tmp_path, no_decoding):
    corrupt = tmp_path / "photo.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    component = SafeImage(type="filepath")
    assert component.get_block_name() == "image"  # the stock front end renders it
    assert component.preprocess(ImageData(path=str(corrupt))) == str(corrupt)
    assert component.preprocess(ImageData(path=str(text))) == str(text)
    assert component.preprocess(ImageData(path="/no/such/file.png")) == "/no/such/file.png"  # the loader says so


@pytest.mark.parametrize("payload", [None, ImageData(path=None, url="https://example.org/a.png"),
                                     SimpleNamespace(), ImageData(path="")])
def test_safe_image_without_a_local_file_is_no_input(payload):
    assert SafeImage(type="filepath").preprocess(payload) is None


def test_safe_image_output_is_still_a_stock_image(tmp_path):
    component = SafeImage(type="filepath", format="png")
    component.GRADIO_CACHE = str(tmp_path)
    image = rgb_image()
    out = component.postprocess(image)
    assert np.array_equal(decode(out.path), image)


def test_safe_video_hands_over_the_path_of_any_file_without_converting_it(tmp_path, no_decoding, monkeypatch):
    import gradio.components.video as stock

    # the stock gr.Video would run FFmpeg here (a muted copy, or a conversion to `format`)
    monkeypatch.setattr(stock, "FFmpeg", lambda *a, **k: pytest.fail("ran FFmpeg on the upload"), raising=False)
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"RIFF....AVI garbage")
    component = SafeVideo(format="mp4")
    assert component.get_block_name() == "video"
    assert component.preprocess(FileData(path=str(clip))) == str(clip)
    assert component.preprocess(SimpleNamespace(video=FileData(path=str(clip)))) == str(clip)  # {video, subtitles} payloads
    assert list(tmp_path.iterdir()) == [clip]  # nothing written beside it
    assert component.preprocess(None) is None
    assert component.preprocess(SimpleNamespace(video=None)) is None
    assert component.preprocess(FileData(path="")) is None


# ---- png_file ----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (4, "RGBA")])
def test_png_file_writes_a_readable_png_with_the_same_pixels(tmp_path, channels, mode):
    array = np.random.default_rng(1).integers(0, 256, (9, 7, channels), dtype=np.uint8)
    path = png_file(array, str(tmp_path))
    assert Path(path).is_absolute() and Path(path).parent == (tmp_path / "prunesid-studio").resolve()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == mode and im.size == (7, 9)
        assert np.array_equal(np.asarray(im), array)


def test_png_file_writes_each_content_once(tmp_path):
    array = rgb_image()
    first = png_file(array, str(tmp_path))
    inode = Path(first).stat().st_ino
    again = png_file(array.copy(), str(tmp_path))  # same content, another array
    assert again == first and Path(again).stat().st_ino == inode  # not rewritten
    assert png_file(np.asfortranarray(array), str(tmp_path)) == first  # memory layout does not matter
    changed = array.copy()
    changed[0, 0, 0] ^= 1
    assert png_file(changed, str(tmp_path)) != first
    # the same bytes in another shape are another picture
    flat = np.ascontiguousarray(array).reshape(6, 20, 3)
    other = png_file(flat, str(tmp_path))
    assert other != first and np.array_equal(decode(other), flat)
    assert len(cache_files(tmp_path)) == 3


def test_png_file_from_many_threads_gives_one_whole_file(tmp_path):
    array = rgb_image(200, 200, seed=3)
    paths, errors = [], []

    def write():
        try:
            paths.append(png_file(array, str(tmp_path)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(paths)) == 1 and np.array_equal(decode(paths[0]), array)
    assert [p.name for p in cache_files(tmp_path)] == [Path(paths[0]).name]  # no temporary file left


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 2)])
def test_png_file_refuses_arrays_that_are_not_rgb_and_leaves_no_file(tmp_path, shape):
    with pytest.raises(ValueError):
        png_file(np.zeros(shape, np.uint8), str(tmp_path))
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("array", [np.full((4, 5, 3), 0.5), np.full((4, 5, 3), 300, np.int64)])
def test_png_file_refuses_other_dtypes_instead_of_casting_them(tmp_path, array):
    """A 0–1 float image would come out black and 300 would wrap to 44: say so instead."""
    with pytest.raises(ValueError, match="uint8"):
        png_file(array, str(tmp_path))
    assert cache_files(tmp_path) == []


# ---- annotation masks ------------------------------------------------------------------------
def test_mask_alpha_scales_clips_and_truncates_without_touching_the_mask():
    mask = np.array([[0.0, 0.5, 1.0], [1.5, -0.2, 0.999]], dtype=np.float64)
    before = mask.copy()
    alpha = mask_alpha(mask)
    assert alpha.dtype == np.uint8
    assert alpha.tolist() == [[0, 127, 255], [255, 0, 254]]
    assert np.array_equal(mask, before)
    assert mask_alpha(np.array([[True, False]])).tolist() == [[255, 0]]


def test_mask_png_file_decodes_to_the_colour_with_that_alpha(tmp_path):
    alpha = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = (30, 144, 255)
    path = mask_png_file(alpha, rgb, str(tmp_path))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "P"  # a palette image: a quarter of the RGBA bytes
        rgba = np.asarray(im.convert("RGBA"))
    assert np.array_equal(rgba[..., 3], alpha)
    inside = alpha > 0
    assert (rgba[inside, :3] == rgb).all()
    assert (rgba[~inside, :3] == 0).all()


def test_mask_png_file_is_one_file_per_mask_and_colour(tmp_path):
    alpha = mask_alpha(np.eye(8))
    red = mask_png_file(alpha, (255, 0, 0), str(tmp_path))
    assert mask_png_file(alpha.copy(), (255, 0, 0), str(tmp_path)) == red
    blue = mask_png_file(alpha, (0, 0, 255), str(tmp_path))
    assert blue != red and (decode(blue, "RGBA")[0, 0] == (0, 0, 255, 255)).all()
    # an RGB overlay with the same bytes as the mask is a different file
    assert png_file(np.repeat(alpha[..., None], 3, axis=2), str(tmp_path)) not in (red, blue)


# ---- GroupImage ----------------------------------------------------------------------------------
@pytest.fixture
def group_image(tmp_path):
    component = GroupImage(color_map={"from the component": "#00FF00"})
    component.GRADIO_CACHE = str(tmp_path)
    return component


def two_groups(height: int = 8, width: int = 8) -> list[tuple[np.ndarray, str]]:
    top = np.zeros((height, width), np.float32)
    top[: height // 2] = 0.55
    top[0] = 1.0  # a border row
    return [(top, "group 1: 32 patches, keeps 4"), (1.0 - top, "group 2: 32 patches, keeps 3")]


def test_group_image_writes_the_base_and_one_coloured_layer_per_group(group_image):
    base = rgb_image(8, 8)
    masks = two_groups()
    before = [m.copy() for m, _ in masks]
    colors = {"group 1: 32 patches, keeps 4": "#E69F00", "group 2: 32 patches, keeps 3": "#56b4e9"}
    out = group_image.postprocess((base, masks, colors))
    assert group_image.get_block_name() == "annotatedimage"
    assert Path(out.image.path).is_absolute() and np.array_equal(decode(out.image.path), base)
    assert [a.label for a in out.annotations] == [label for _, label in masks]  # order kept
    for annotation, (mask, label), rgb in zip(out.annotations, masks, [(230, 159, 0), (86, 180, 233)]):
        rgba = decode(annotation.image.path, "RGBA")
        assert np.array_equal(rgba[..., 3], mask_alpha(mask))
        assert (rgba[mask > 0, :3] == rgb).all()
    assert all(np.array_equal(m, b) for (m, _), b in zip(masks, before))  # the caller's masks untouched
    assert group_image.info is None  # read by Gradio's config refresh
    out.model_dump()  # serialisable as Gradio sends it


def test_group_image_colours_from_the_component_or_red(group_image):
    mask = np.ones((4, 4), np.float32)
    out = group_image.postprocess((rgb_image(4, 4), [(mask, "from the component"), (mask, "unknown")]))
    first, second = (decode(a.image.path, "RGBA")[0, 0] for a in out.annotations)
    assert tuple(first) == (0, 255, 0, 255)
    assert tuple(second) == (255, 0, 0, 255)  # a label without a colour is drawn red, not dropped


def test_group_image_accepts_a_written_base_file_and_refuses_a_corrupt_one(group_image, tmp_path):
    base = rgb_image(8, 8)
    written = png_file(base, str(tmp_path))
    out = group_image.postprocess((written, two_groups(), {}))
    assert out.image.path == written
    assert len(cache_files(tmp_path)) == 3  # the base was not copied: base + two layers
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n nothing more")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    for bad in (broken, text):
        with pytest.raises(OSError):  # PIL's UnidentifiedImageError or a truncated read
            group_image.postprocess((str(bad), two_groups(), {}))


def test_group_image_with_no_value_or_no_groups(group_image):
    assert group_image.postprocess(None) is None
    out = group_image.postprocess((rgb_image(6, 6), [], {}))
    assert out.annotations == [] and np.array_equal(decode(out.image.path), rgb_image(6, 6))


# ---- ChartPlot ---------------------------------------------------------------------------------
def plot_pixels(data_url: str) -> np.ndarray:
    import base64
    import io

    header, payload = data_url.split(",", 1)
    assert header == "data:image/png;base64"
    return decode(io.BytesIO(base64.b64decode(payload)), "RGBA")


def small_figure(cls=None):
    from matplotlib.figure import Figure

    fig = (cls or Figure)(figsize=(3, 2), dpi=50)
    fig.subplots().bar([1, 2, 3], [3, 1, 2], color="#0072B2")
    return fig


def test_chart_plot_sends_the_pixels_gr_plot_would():
    import gradio as gr
    from matplotlib.figure import Figure

    class Chart(Figure):  # a subclass outside any module named "matplotlib…": gr.Plot would not take it
        pass

    assert "matplotlib" not in Chart.__module__
    component = ChartPlot(format="png")
    assert component.get_block_name() == "plot"
    out = component.postprocess(small_figure(Chart))
    assert out.type == "matplotlib"
    stock = gr.Plot(format="png").postprocess(small_figure())
    assert np.array_equal(plot_pixels(out.plot), plot_pixels(stock.plot))
    assert plot_pixels(out.plot).shape == (100, 150, 4)  # the figure's own dpi


def test_chart_plot_leaves_other_cases_to_gr_plot(monkeypatch):
    import matplotlib

    assert ChartPlot(format="png").postprocess(None) is None
    webp = ChartPlot(format="webp").postprocess(small_figure())
    assert webp.type == "matplotlib" and webp.plot.startswith("data:image/webp;base64,")
    monkeypatch.setitem(matplotlib.rcParams, "savefig.dpi", 100)  # savefig would not draw at the figure's dpi
    assert plot_pixels(ChartPlot(format="png").postprocess(small_figure()).plot).shape == (200, 300, 4)


def test_the_folder_of_written_images_keeps_only_the_newest(tmp_path):
    import os
    import time

    from studio.components import prune_folder

    for i in range(10):
        path = tmp_path / f"{i:02d}.png"
        path.write_bytes(b"png")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    (tmp_path / ".partial.png").write_bytes(b"being written")
    assert prune_folder(tmp_path, keep=4) == 6
    assert sorted(p.name for p in tmp_path.glob("[0-9]*.png")) == ["06.png", "07.png", "08.png", "09.png"]
    assert (tmp_path / ".partial.png").exists()
