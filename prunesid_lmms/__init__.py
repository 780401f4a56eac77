"""lmms-eval integration: the ``prunesid`` model (:mod:`prunesid_lmms.model`) and the offline smoke
task (``tasks/prunesid_smoke``). ``evaluate.py`` at the repository root registers both and runs
lmms-eval's own command line."""
