"""Locate the shared reference material (``../shared/reference`` beside the repo)."""
from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

REFERENCE_DIR = Path(os.environ.get("PRUNESID_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "reference"


def require_reference() -> Path:
    """The reference folder, or skip the calling test with the reason."""
    if not (REFERENCE_DIR / "expected.json").is_file() or not (REFERENCE_DIR / "cases.py").is_file():
        pytest.skip(f"reference cases not found at {REFERENCE_DIR} (set PRUNESID_SHARED to the shared/ folder)")
    return REFERENCE_DIR


@lru_cache(maxsize=1)
def cases_module():
    path = require_reference() / "cases.py"
    spec = importlib.util.spec_from_file_location("reference_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def expected_cases() -> list[dict]:
    return json.loads((require_reference() / "expected.json").read_text())["cases"]


@lru_cache(maxsize=64)
def case_tensors(seed: int, regions: tuple = (3, 20)):
    """(hidden_states [1, 577, 1024], cls_attention [1, 576]) of one synthetic case."""
    return cases_module().make_case(seed, regions=regions)
