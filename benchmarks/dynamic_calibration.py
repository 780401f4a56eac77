"""Does the single-image dynamic ratio keep the average budget at K on photos it was not
calibrated on?

    .venv/bin/python benchmarks/dynamic_calibration.py [--budgets 64 128] [--models ...]

PruneSID-Dyn gives one picture round(K · φ / φ_ref) tokens, φ_ref being the mean φ of the
model's calibration photos (``assets/calibration/``). Over ordinary photos the mean kept count
should stay near K while the count still follows the picture. This prints, per model and K, the
kept count of every held-out photo (through the pipeline's public API: ``encode``, then
``select(feats, k, dynamic=True)``) and the mean relative to K:

* the app's examples (``assets/*.jpg``), as a visitor gets them;
* the other natural photos bundled with scikit-image that are not calibration photos (left out of
  the calibration set for their licence, or as texture swatches / close-ups; see
  ``assets/LICENSES.md``), when scikit-image is installed (a test dependency);
* the calibration photos themselves, for reference (their mean is K by construction, up to
  rounding and the clamps).

Models: the offline DINOv2 demo (real DINOv2-small features) and the tiny demo (random weights:
its φ means nothing, shown only to see the mechanics).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
from PIL import Image

from prunesid_vlm.calibration import calibration_files, calibration_images
from prunesid_vlm.pipeline import DEMO_MODEL_ID, DINOV2_DEMO_ID, load_pipeline

EXAMPLES = ("cat", "astronaut", "coffee", "rocket", "hubble_deep_field")
"""The app's example pictures (``assets/<name>.jpg``): never calibration photos."""

OTHER_SKIMAGE = ("immunohistochemistry", "coins", "moon", "page", "motorcycle", "grass", "gravel", "text")
"""scikit-image's other bundled natural photos that are not in the calibration set."""


def example_photos() -> dict[str, Image.Image]:
    out = {}
    for name in EXAMPLES:
        with Image.open(ROOT / "assets" / f"{name}.jpg") as im:
            out[name] = im.convert("RGB")
    return out


def other_photos() -> dict[str, Image.Image]:
    """The other held-out photos from scikit-image (empty without it)."""
    try:
        from skimage import data
    except ImportError:
        print("(scikit-image is not installed: only the app's examples are held out)")
        return {}
    calibration = {p.stem for p in calibration_files()}
    out = {}
    for name in OTHER_SKIMAGE:
        if name in calibration:
            continue
        pixels = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        out[name] = Image.fromarray(pixels).convert("RGB")
    return out


def kept(pipe, image: Image.Image, budgets: list[int]) -> tuple[float, list[int]]:
    """φ of ``image`` and PruneSID-Dyn's kept count at each budget."""
    feats = pipe.encode([image])
    return float(feats.phi.mean()), [int(pipe.select(feats, k, dynamic=True).num_tokens.sum()) for k in budgets]


def table(pipe, groups: dict[str, dict[str, Image.Image]], budgets: list[int]) -> dict[str, list[float]]:
    """Prints one model's table; returns each group's (and all held-out photos') mean kept / K."""
    phi_ref = pipe.phi_ref
    names = [p.stem for p in calibration_files()]
    print(f"\n{pipe.model_id}: φ_ref = {phi_ref:.3f} (mean φ of {len(pipe.calibration().phis)} calibration views: "
          f"{', '.join(names)})" + ("  [random weights: φ means nothing]" if pipe.random_features else ""))
    print(f"  {'photo':<24}{'φ':>7}{'φ/φ_ref':>9}" + "".join(f"{f'K={k}':>8}" for k in budgets))
    counts: dict[str, dict[str, list[int]]] = {}
    for group, photos in groups.items():
        if not photos:
            continue
        print(f"  -- {group}")
        counts[group] = {}
        for name, image in photos.items():
            phi, row = kept(pipe, image, budgets)
            counts[group][name] = row
            print(f"  {name:<24}{phi:>7.3f}{phi / phi_ref:>9.2f}" + "".join(f"{c:>8d}" for c in row))
    held = {n: r for g, rows in counts.items() if "held out" in g for n, r in rows.items()}
    means = {}
    for group, rows in {**counts, "all held out": held}.items():
        got = np.asarray(list(rows.values()), dtype=float)
        means[group] = [float(m) / k for m, k in zip(got.mean(0), budgets)]
        spread = ", ".join(f"K={k}: {int(lo)}-{int(hi)}" for k, lo, hi in zip(budgets, got.min(0), got.max(0)))
        print(f"  {group} ({len(rows)}): mean kept " + ", ".join(f"{m:.1f}" for m in got.mean(0))
              + " = " + ", ".join(f"{r:.2f}" for r in means[group]) + f" x K; range {spread}")
    return means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--models", nargs="+", default=[DINOV2_DEMO_ID, DEMO_MODEL_ID])
    args = parser.parse_args(argv)
    examples, others = example_photos(), other_photos()
    calibration = dict(zip((p.stem for p in calibration_files()), calibration_images()))
    groups = {"app examples (held out)": examples, "other scikit-image photos (held out)": others,
              "calibration photos (for reference)": calibration}
    summary = {}
    for model_id in args.models:
        pipe = load_pipeline(model_id, device="cpu")
        summary[model_id] = table(pipe, groups, args.budgets)
    print("\nmean kept / K")
    for model_id, means in summary.items():
        for group, ratios in means.items():
            print(f"  {model_id:<24}{group:<38}" + "  ".join(f"K={k}: {r:.2f}" for k, r in zip(args.budgets, ratios)))
    print("(per-photo counts differ with φ: the budget follows the picture; the mean is what φ_ref pins)")


if __name__ == "__main__":
    main()
