"""Checkpoint folders written once, on first use, and never seen half-written."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_once(folder: Path, write: Callable[[Path], None]) -> Path:
    """``folder``, after ``write`` has filled it if its ``config.json`` is missing.

    ``write`` fills a sibling temporary folder that is then renamed into place, so a concurrent reader
    (another worker, another test process) never loads a partial checkpoint.
    """
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        write(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
