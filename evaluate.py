"""Run lmms-eval with PruneSID (or any baseline of the registry) on this project's models.

    accelerate launch --num_processes 8 evaluate.py --model prunesid \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=prunesid,num_tokens=64 \\
        --tasks mme,gqa,pope --batch_size 1 --output_path results/

The checkout's form of ``prunesid-evaluate`` (:mod:`prunesid_lmms.cli`): registers the ``prunesid``
model with lmms-eval, adds this repository's tasks (the offline ``prunesid_smoke``) to its task search
path, and hands every other argument to lmms-eval's own command line; a failed evaluation exits 1.
Installed (``pip install ".[eval]"`` and ``pip install --no-deps lmms-eval==0.7.3``, see the README),
``python -m lmms_eval --model prunesid`` works as well, from any folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # a checkout run, without installing
    from prunesid_lmms.cli import main

    main()
