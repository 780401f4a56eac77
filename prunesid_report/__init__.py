"""Batch tools on this project's pipeline: the fidelity report on a folder of images and videos
(:mod:`prunesid_report.report`; the command is ``report.py`` at the repository root)."""
