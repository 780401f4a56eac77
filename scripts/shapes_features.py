"""The DINOv2 tower's layer −2 states of shapes-world scenes, computed once into a cache file.

The states come from the project's own pipeline on the offline DINOv2 demo
(``demo/dinov2-small-llava``): the same tower weights, the same image processor and the same
``encode`` path as ``demo/shapes-llava`` at inference, so training sees exactly the rows the
language model is fed there (``[577, 384]`` per scene, CLS first; LLaVA projects rows 1…576).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from prunesid_vlm.shapes_world import WORLD_SIDES, draw_scenes

BATCH = 8


def feature_meta(seed: int, count: int, sides: tuple[int, int] = WORLD_SIDES) -> dict:
    meta = {"seed": seed, "scenes": count, "tower": "demo/dinov2-small-llava", "layer": -2, "shape": [count, 577, 384]}
    return meta if tuple(sides) == WORLD_SIDES else dict(meta, sides=list(sides))


def scene_features(seed: int, count: int, path: Path, log=print, sides: tuple[int, int] = WORLD_SIDES
                   ) -> np.ndarray:
    """``[count, 577, 384]`` float32 states of ``draw_scenes(seed, count, sides)``, read from ``path``
    when it holds them (its ``.json`` names seed, count and sides), else computed and written there first."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    meta = feature_meta(seed, count, sides)
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()).get("key") == meta:
        return np.load(path, mmap_mode="r")
    from prunesid_vlm.pipeline import DINOV2_DEMO_ID, load_pipeline

    pipe = load_pipeline(DINOV2_DEMO_ID, device="cpu")
    scenes = draw_scenes(seed, count, sides)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Resumable: rows are written batch by batch and the count of finished rows kept beside them.
    tmp, progress = path.with_name(path.name + ".part.npy"), path.with_name(path.name + ".progress")
    done, earlier_s = (json.loads(progress.read_text()) if tmp.exists() and progress.exists() else (0, 0.0))
    out = np.lib.format.open_memmap(tmp, mode="r+" if done else "w+", dtype=np.float32, shape=(count, 577, 384))
    start = time.perf_counter()
    for i in range(done, count, BATCH):
        batch = [s.image for s in scenes[i:i + BATCH]]
        out[i:i + len(batch)] = pipe.encode(batch).hidden_states.float().numpy()
        out.flush()
        progress.write_text(json.dumps([i + len(batch), earlier_s + time.perf_counter() - start]))
        if ((i - done) // BATCH) % 25 == 0:
            log(f"features {i + len(batch)}/{count}  {time.perf_counter() - start:.0f} s", flush=True)
    del out
    tmp.rename(path)
    progress.unlink()
    seconds = earlier_s + time.perf_counter() - start  # all runs that computed these rows
    meta_path.write_text(json.dumps({"key": meta, "seconds": round(seconds, 1), "resumed_at": done}))
    log(f"features: {count} scenes in {seconds:.0f} s", flush=True)
    return np.load(path, mmap_mode="r")
