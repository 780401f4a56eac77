"""Run lmms-eval with PruneSID (or any baseline of the registry) on this project's models.

    accelerate launch --num_processes 8 evaluate.py --model prunesid \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=prunesid,num_tokens=64 \\
        --tasks mme,gqa,pope --batch_size 1 --output_path results/

Registers the ``prunesid`` model (prunesid_lmms/model.py) with lmms-eval, adds this repository's
tasks (the offline ``prunesid_smoke``) to its task search path, and hands every other argument to
lmms-eval's own command line. Install with ``pip install -r requirements-eval.txt`` and
``pip install --no-deps lmms-eval==0.7.3`` (see the README).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TASKS = ROOT / "prunesid_lmms" / "tasks"


def register() -> None:
    """The ``prunesid`` model in lmms-eval's registry."""
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.models.registry_v2 import ModelManifest

    MODEL_REGISTRY_V2.register_manifest(
        ModelManifest(model_id="prunesid", simple_class_path="prunesid_lmms.model.PruneSIDLmms"), overwrite=True)


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args:
        args += ["--include_path", str(TASKS)]
    register()
    from lmms_eval.cli.dispatch import main as lmms_main
    from loguru import logger

    # lmms-eval logs a failed evaluation and returns normally: make it this command's exit status.
    errors: list[str] = []

    def note_errors(record) -> None:  # a patcher outlives lmms-eval's re-configured log handlers
        if record["level"].no >= 40:
            errors.append(record["message"])

    logger.configure(patcher=note_errors)
    sys.argv = ["lmms-eval", *args]
    lmms_main()
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
