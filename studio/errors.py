"""One way the app turns errors into messages: expected problems (bad input, a model that
cannot load) are told to the person as they are; anything else is logged with its traceback
and shown as a short generic message. Every tab and endpoint uses these."""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Callable

import gradio as gr

from prunesid_vlm.pipeline import ModelLoadError

from prunesid_vlm.media import MediaError

log = logging.getLogger("prunesid.studio")

EXPECTED = (ValueError, MediaError, ModelLoadError)
"""Errors whose message is meant for the person using the app."""
GENERIC_ERROR = "Something went wrong on our side (details are in the server log). Please try again or another input."


def friendly(err: BaseException) -> str:
    """An expected error's message, capitalised."""
    text = str(err).strip() or type(err).__name__
    return text[0].upper() + text[1:]


def message_for(err: BaseException, where: str) -> str:
    """What to tell the person about ``err`` (logged with its traceback when unexpected)."""
    if isinstance(err, EXPECTED):
        log.info("refused in %s: %s", where, err)  # one line: the input was the problem, not the code
        return friendly(err)
    log.error("unexpected error in %s", where, exc_info=err)
    return GENERIC_ERROR


def warn(message: str) -> None:
    """A toast in the page (outside a request, e.g. in tests, nothing)."""
    try:
        with warnings.catch_warnings():  # outside a request Gradio would also warn
            warnings.simplefilter("ignore", UserWarning)
            gr.Warning(message)
    except Exception:  # the status line carries the message anyway
        pass


def status_line(text: str, kind: str = "info") -> str:
    icon = {"info": "ℹ", "warn": "⚠", "ok": "✓"}[kind]  # text symbols: they render without an emoji font
    return f"{icon} {text}"


def guarded(empty: Callable[[str], tuple]):
    """Wrap a UI handler so it never raises: errors → a toast and ``empty(message)``."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 — every error becomes a message
                message = message_for(err, fn.__name__)
                warn(message)
                return empty(message)

        return inner

    return wrap


def endpoint(fn: Callable, where: str) -> Callable:
    """Wrap a scripted endpoint: errors → ``gr.Error`` with the message (the client raises it).

    ``message_for`` has logged what is worth logging; Gradio is told not to print the traceback of
    the ``gr.Error`` itself (it would print one for every refused input)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise gr.Error(message_for(err, "/" + where), print_exception=False) from None

    return call
