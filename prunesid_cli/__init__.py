"""The command-line tools of an installed PruneSID Studio (``pyproject.toml``'s console scripts):

    prunesid-studio          the app (``python app.py`` in a checkout)
    prunesid-report          the fidelity report on a folder (``python report.py``)
    prunesid-inllm-study     PruneSID with FastV / PyramidDrop on one picture (``python inllm_study.py``)
    prunesid-evaluate        lmms-eval with the ``prunesid`` model (``python evaluate.py``; prunesid_lmms.cli)

Each runs the checkout's script itself: installed, the scripts are the modules of
``prunesid_scripts``; in a checkout that is not installed, they are imported from the working folder.
"""
from __future__ import annotations

import argparse
import importlib
import os
from types import ModuleType

__all__ = ["studio", "report", "inllm_study"]


def script(name: str) -> ModuleType:
    """The checkout's script ``name`` (``app``, ``report``, ``inllm_study``, ``evaluate``) as a module."""
    try:
        return importlib.import_module(f"prunesid_scripts.{name}")
    except ModuleNotFoundError as err:
        if err.name not in ("prunesid_scripts", f"prunesid_scripts.{name}"):
            raise
        return importlib.import_module(name)  # a checkout that is not installed, run from its folder


def studio(argv: list[str] | None = None) -> None:
    """``prunesid-studio``: start the app (what ``python app.py`` does)."""
    apply_studio_options(argv)
    script("app").main()


def apply_studio_options(argv: list[str] | None = None) -> None:
    """Read ``--host``, ``--port`` and ``--model`` (``--help`` prints them and exits) into the
    environment the app reads at import: ``prunesid-studio`` and ``python app.py`` take the same."""
    parser = argparse.ArgumentParser(
        prog="prunesid-studio",
        description="PruneSID Studio: see which visual tokens PruneSID keeps, and what it costs, in a browser. "
                    "With no network, or no GPU for a 7B model, it runs an offline demo model and says so.",
        epilog="Environment: PRUNESID_MODEL (the model), PRUNESID_CACHE (built demo models, calibration), "
               "PRUNESID_PUBLIC=1 (a public deployment's limits); the README lists the rest.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (default %(default)s; GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default %(default)s; GRADIO_SERVER_PORT)")
    parser.add_argument("--model", default=None,
                        help="hub id, local folder or demo id to serve (PRUNESID_MODEL; default: LLaVA-1.5-7B with "
                             "a GPU, else LLaVA-1.5's vision tower alone, or the offline demo)")
    args = parser.parse_args(argv)
    os.environ["GRADIO_SERVER_NAME"], os.environ["GRADIO_SERVER_PORT"] = args.host, str(args.port)
    if args.model:
        os.environ["PRUNESID_MODEL"] = args.model


def report(argv: list[str] | None = None) -> int:
    """``prunesid-report``: ``python report.py``."""
    return script("report").main(argv)


def inllm_study(argv: list[str] | None = None) -> int:
    """``prunesid-inllm-study``: ``python inllm_study.py``."""
    return script("inllm_study").main(argv)
