"""What one public deployment lets its visitors use: disk, memory per session, queue places.

Every limit has an environment variable (seconds or counts) so that a deployment, and the
resource benchmark, can set it:

* ``PRUNESID_CACHE_CHECK_S`` / ``PRUNESID_CACHE_MAX_AGE_S``: how often Gradio's cache is swept and
  how old a file may get (uploads, served images); everything is removed when the server stops.
* ``PRUNESID_SESSION_TTL_S``: how long a visitor's analysis (features of one picture or clip)
  lives without use; it is freed sooner when the tab closes.
* ``PRUNESID_SESSIONS``: sessions whose component values Gradio keeps (the oldest go first).
* ``PRUNESID_QUEUE_SIZE`` / ``PRUNESID_QUEUE_PER_SESSION``: waiting jobs in all and per session,
  so that one client cannot fill the queue for everyone.
* ``PRUNESID_PNG_FILES``: images the app keeps written for the page (the oldest go first).
"""
from __future__ import annotations

import ctypes
import gc
import os

import gradio as gr


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    try:
        return max(minimum, int(os.environ.get(name, default)))
    except ValueError:
        return default


CACHE_CHECK_S = _env_int("PRUNESID_CACHE_CHECK_S", 300)
CACHE_MAX_AGE_S = _env_int("PRUNESID_CACHE_MAX_AGE_S", 1800)
SESSION_TTL_S = _env_int("PRUNESID_SESSION_TTL_S", 3600)
SESSION_CAPACITY = _env_int("PRUNESID_SESSIONS", 1000)
QUEUE_SIZE = _env_int("PRUNESID_QUEUE_SIZE", 64)
QUEUE_PER_SESSION = _env_int("PRUNESID_QUEUE_PER_SESSION", 4)
PNG_FILES = _env_int("PRUNESID_PNG_FILES", 2000, minimum=50)

QUEUE_PER_SESSION_MESSAGE = ("You already have {waiting} requests waiting; please wait for them to finish, then try "
                             "again.")


def return_freed_memory() -> None:
    """Hand memory freed by Python back to the operating system where the C library can (glibc's
    ``malloc_trim``): a visitor's picture and features are many mid-sized blocks, which glibc keeps
    for reuse otherwise, so the server's size would not show that the visitor has gone."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def limit_queue_per_session(demo: gr.Blocks, per_session: int = QUEUE_PER_SESSION) -> None:
    """Refuse a job when its session already has ``per_session`` jobs waiting in ``demo``'s queue.

    Gradio limits the queue's total length only, so one scripted client could take every place;
    this check runs where Gradio admits a job (its queue's ``push``), before the total-length one,
    and answers with the same "queue full" status and a message that says to retry."""
    queue = demo._queue
    admit = queue.push

    async def push(body, request, username):
        session = getattr(body, "session_hash", None)
        if session is not None:
            waiting = sum(1 for events in queue.event_queue_per_concurrency_id.values()
                          for event in events.queue if event.session_hash == session)
            if waiting >= per_session:
                return False, QUEUE_PER_SESSION_MESSAGE.format(waiting=waiting), "queue_full"
        return await admit(body, request, username)

    queue.push = push
