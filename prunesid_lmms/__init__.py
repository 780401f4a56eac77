"""lmms-eval integration: the ``prunesid`` model (:mod:`prunesid_lmms.model`), found by lmms-eval
through the ``lmms_eval.models`` entry point once this project is installed
(:mod:`prunesid_lmms.plugin`), and the offline smoke task (``tasks/prunesid_smoke``, under
:data:`TASKS_DIR`: pass it to lmms-eval's ``--include_path``). ``prunesid-evaluate`` (``evaluate.py``
in a checkout, :mod:`prunesid_lmms.cli`) adds both and runs lmms-eval's own command line.

Importing this package loads nothing heavy (lmms-eval imports the entry point's module whenever it
lists its models)."""
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
"""This project's lmms-eval tasks (``--include_path``)."""
