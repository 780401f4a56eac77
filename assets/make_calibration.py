"""Regenerate the calibration photographs of the single-image dynamic ratio (φ_ref) from
scikit-image's bundled sample data (no download).

    .venv/bin/python assets/make_calibration.py

Writes ``assets/calibration/<name>.jpg`` like ``make_assets.py`` writes the examples (longest
side 512 px, JPEG quality 85; greyscale photos stored as RGB). The app reads these files, so it
never needs scikit-image; a changed file changes the calibration's cache key
(``prunesid_vlm/calibration.py``), and every model is calibrated again.

The set: every natural photograph bundled with scikit-image whose docstring states public domain
or CC0, that is not one of the app's examples (those are the held-out check), and that is a
picture of something rather than a texture sample or a micrograph. Sources, licences and what was
left out, and why: ``assets/LICENSES.md``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_assets import IMAGES as EXAMPLES
from make_assets import JPEG_QUALITY, LONGEST_SIDE, _resize_longest

FOLDER = HERE / "calibration"

# name -> loader (licence as stated in the scikit-image 0.26 docstring; see LICENSES.md)
PHOTOS = {
    "camera": data.camera,  # a man with a film camera on a tripod, a lawn, buildings; Lav Varshney, CC0 (greyscale)
    "clock": data.clock,  # a wall clock, motion-blurred; Stefan van der Walt, public domain (greyscale)
    "brick": data.brick,  # a brick wall in perspective; CC0Textures, CC0 (greyscale)
    "retina": data.retina,  # a fundus photograph, colour; Mikael Häggström, CC0
}


def make_calibration() -> list[Path]:
    examples = {loader.__name__ for loader in EXAMPLES.values()}
    assert not examples & {loader.__name__ for loader in PHOTOS.values()}, "an example photo is held out"
    FOLDER.mkdir(exist_ok=True)
    out = []
    for name, loader in PHOTOS.items():
        img = _resize_longest(loader(), LONGEST_SIDE)
        path = FOLDER / f"{name}.jpg"
        Image.fromarray(img).convert("RGB").save(path, quality=JPEG_QUALITY, optimize=True, subsampling="4:2:0")
        out.append(path)
    return out


def main() -> None:
    for p in make_calibration():
        print(f"{p.relative_to(HERE.parent)}  {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
