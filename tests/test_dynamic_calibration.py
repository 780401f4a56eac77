"""The single-image dynamic ratio is calibrated on natural photographs: over photos it was not
calibrated on, PruneSID-Dyn keeps K tokens on average (the paper's rule) while the count still
follows the picture; and the cached calibration goes stale with the photos or the φ definition."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunesid_vlm import calibration as C
from tests.conftest import natural_images

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"cat", "chelsea", "astronaut", "coffee", "rocket", "hubble_deep_field"}
"""The app's example pictures (``assets/*.jpg``; the cat is scikit-image's ``chelsea``): held out."""


def test_the_calibration_set_is_photos_other_than_the_examples():
    files = C.calibration_files()
    names = {p.stem for p in files}
    assert len(files) >= 3 and not names & EXAMPLES
    assert all(p.parent == ROOT / "assets" / "calibration" for p in files)
    licences = (ROOT / "assets" / "LICENSES.md").read_text()
    for p in files:
        assert f"`calibration/{p.name}`" in licences, f"{p.name} has no source and licence in assets/LICENSES.md"
    for image in C.calibration_images():
        assert image.mode == "RGB" and max(image.size) <= 512


def test_the_app_reads_the_calibration_photos_without_scikit_image():
    code = ("import sys; from prunesid_vlm.calibration import calibration_images, calibration_key; "
            "calibration_images(); calibration_key('m'); assert 'skimage' not in sys.modules, 'skimage imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.slow
def test_prunesid_dyn_keeps_k_on_average_over_held_out_photos(dinov2_pipeline):
    pipe = dinov2_pipeline
    held_out = {n: im for n, im in natural_images().items() if n not in {p.stem for p in C.calibration_files()}}
    assert len(held_out) >= 5
    feats = {n: pipe.encode([im]) for n, im in held_out.items()}
    for k in (64, 128):
        counts = {n: int(pipe.select(f, k, dynamic=True).num_tokens.sum()) for n, f in feats.items()}
        mean = sum(counts.values()) / len(counts)
        assert 0.8 * k <= mean <= 1.25 * k, (k, counts)
        assert len(set(counts.values())) > 1, counts  # still dynamic: the count follows the picture
        assert counts == {n: pipe.token_counts(f, pipe.select(f, k, method="prunesid-dyn")).total
                          for n, f in feats.items()}


def test_calibration_key_changes_with_a_photo_or_the_phi_version(tmp_path):
    files = [Path(shutil.copy(p, tmp_path / p.name)) for p in C.calibration_files()]
    key = C.calibration_key("model|torch.float32", files)
    assert key == C.calibration_key("model|torch.float32", C.calibration_files())  # content, not location
    assert key.startswith("model|torch.float32|")
    assert C.calibration_key("model|torch.float32", files, phi_version=C.PHI_VERSION + "+") != key
    assert C.calibration_key("other|torch.float32", files) != key
    files[0].write_bytes(files[0].read_bytes() + b"\0")  # one photo changed
    assert C.calibration_key("model|torch.float32", files) != key
    fewer = C.calibration_key("model|torch.float32", files[1:])  # one photo fewer
    assert fewer not in {key, C.calibration_key("model|torch.float32", files)}


def test_a_changed_photo_or_phi_version_recomputes_the_cached_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESID_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in C.calibration_files():
        shutil.copy(p, folder / p.name)
    calls = []

    def compute(images):
        calls.append(len(images))
        return torch.linspace(0.2, 0.6, len(images)) + 0.01 * len(calls)

    first = C.load_or_compute("model|torch.float32", compute, C.calibration_files(folder))
    assert calls == [len(C.calibration_files())] and first.phi_ref == pytest.approx(0.41)
    assert C.load_or_compute("model|torch.float32", compute, C.calibration_files(folder)) == first  # cached
    assert len(calls) == 1
    photo = C.calibration_files(folder)[0]
    photo.write_bytes(photo.read_bytes() + b"\0")
    second = C.load_or_compute("model|torch.float32", compute, C.calibration_files(folder))
    assert len(calls) == 2 and second != first
    monkeypatch.setattr(C, "PHI_VERSION", C.PHI_VERSION + " (changed)")
    C.load_or_compute("model|torch.float32", compute, C.calibration_files(folder))
    assert len(calls) == 3
    table = (tmp_path / "cache" / C.CACHE_FILE).read_text()
    assert table.count("model|torch.float32|") == 1  # the model's stale entries are dropped
