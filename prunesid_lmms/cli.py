"""``prunesid-evaluate`` (and ``python evaluate.py`` in a checkout): lmms-eval's own command line with
the ``prunesid`` model registered and this project's tasks on its search path.

    accelerate launch --num_processes 8 -m prunesid_lmms.cli --model prunesid \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=prunesid,num_tokens=64 \\
        --tasks mme,gqa,pope --batch_size 1 --output_path results/

Every argument goes to lmms-eval (``--help`` shows them all). Unlike ``python -m lmms_eval``, a failed
evaluation is a failed command (exit status 1; lmms-eval logs the error and exits 0).
"""
from __future__ import annotations

import os
import sys

from prunesid_lmms import TASKS_DIR


def register() -> None:
    """The ``prunesid`` model in lmms-eval's registry (the entry point does this once the project is
    installed; a checkout run without installing needs it here)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    from prunesid_lmms.plugin import MANIFEST

    MODEL_REGISTRY_V2.register_manifest(MANIFEST, overwrite=True)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args:
        args += ["--include_path", str(TASKS_DIR)]
    register()
    from lmms_eval.cli.dispatch import main as lmms_main
    from loguru import logger

    # lmms-eval logs a failed evaluation and returns normally: make it this command's exit status.
    errors: list[str] = []

    def note_errors(record) -> None:  # a patcher outlives lmms-eval's re-configured log handlers
        if record["level"].no >= 40:
            errors.append(record["message"])

    logger.configure(patcher=note_errors)
    sys.argv = ["prunesid-evaluate", *args]
    lmms_main()
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
