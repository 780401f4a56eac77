"""What one public deployment lets its visitors use: disk, memory per session, queue places.

Every limit has an environment variable (seconds or counts) so that a deployment, and the
resource benchmark, can set it:

* ``PRUNESID_CACHE_CHECK_S`` / ``PRUNESID_CACHE_MAX_AGE_S``: how often Gradio's cache is swept and
  how old a file may get (uploads, served images); everything is removed when the server stops.
* ``PRUNESID_SESSION_TTL_S``: how long a visitor's analysis (features of one picture or clip)
  lives without use; it is freed sooner when the tab closes.
* ``PRUNESID_SESSIONS``: sessions whose component values Gradio keeps (the oldest go first).
* ``PRUNESID_MALLOC_ARENAS``: glibc memory arenas the server's threads share (see
  :func:`limit_malloc_arenas`).
* ``PRUNESID_SESSIONS_MB``: bytes all visitors' analyses (pictures, frames, features) may hold
  together; past it the least recently used sessions' analyses are freed first
  (:mod:`studio.memory`).
* ``PRUNESID_QUEUE_SIZE`` / ``PRUNESID_QUEUE_PER_SESSION`` / ``PRUNESID_QUEUE_PER_CLIENT``: waiting
  jobs in all, per session and per client address (a script can invent session ids, not
  addresses), so that one client cannot fill the queue for everyone.
* ``PRUNESID_STREAM_GRACE_S``: a job that has waited this long, and whose client has no result
  stream open when its turn comes, is skipped (nobody would see its result).
* ``PRUNESID_PNG_FILES``: images the app keeps written for the page (the oldest go first).
* ``PRUNESID_MAX_BODY_KB``: the largest request body of any route but the upload route (413 above).
* ``PRUNESID_MAX_UPLOAD_MB``: the largest uploaded file (Gradio's ``max_file_size``), and so
  the largest upload request.
* ``PRUNESID_UPLOADS_MB``: all uploads kept together; over it new uploads are refused (413) and
  the next sweep removes the least recently used until they fit.
* ``PRUNESID_UPLOADS_PER_CLIENT_MB``: what one client address may upload per
  ``PRUNESID_UPLOAD_MAX_AGE_S`` (429 beyond).
* ``PRUNESID_UPLOAD_MAX_AGE_S`` / ``PRUNESID_UPLOAD_CHECK_S``: an upload not used for this long is
  removed (sooner than the served images of ``PRUNESID_CACHE_MAX_AGE_S``); how often that is checked.
* ``PRUNESID_LEFTOVER_AGE_S``: what a refused upload left in the upload folder (a temporary file
  Gradio wrote and never moved) is removed once it has not changed for this long.

A deployment is *public* when ``SPACE_ID`` is set (Hugging Face Spaces) or ``PRUNESID_PUBLIC=1``
(:func:`is_public`, the rule of :meth:`prunesid_vlm.serving.ModelPolicy.from_env`): then the REST routes
that skip the queue are closed (``api_open=False``), and a client's address is read from the first
entry of ``X-Forwarded-For`` on Spaces (``PRUNESID_FORWARDED_FOR=1`` does the same behind another
proxy that sets it; never on a server that clients reach directly, where the header is theirs).
Elsewhere the address is the connection's peer, which uvicorn itself takes from
``X-Forwarded-For`` only when the peer is a trusted proxy (``FORWARDED_ALLOW_IPS``, 127.0.0.1 by
default).
"""
from __future__ import annotations

import ctypes
import gc
import os
import time

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
SESSIONS_BYTES = _env_int("PRUNESID_SESSIONS_MB", 1536) * 1024 * 1024
QUEUE_SIZE = _env_int("PRUNESID_QUEUE_SIZE", 64)
QUEUE_PER_SESSION = _env_int("PRUNESID_QUEUE_PER_SESSION", 4)
PNG_FILES = _env_int("PRUNESID_PNG_FILES", 2000, minimum=50)
QUEUE_PER_CLIENT = _env_int("PRUNESID_QUEUE_PER_CLIENT", 8)
"""Twice the per-session limit: two tabs, or a few people behind one address, are not refused."""
STREAM_GRACE_S = _env_int("PRUNESID_STREAM_GRACE_S", 5, minimum=0)
MAX_BODY_BYTES = _env_int("PRUNESID_MAX_BODY_KB", 1024) * 1024
"""1 MiB: a job's JSON (a question of at most 2000 characters, a budget, a file reference) is a few KB."""
MAX_UPLOAD_BYTES = _env_int("PRUNESID_MAX_UPLOAD_MB", 100) * 1024 * 1024
UPLOADS_BYTES = _env_int("PRUNESID_UPLOADS_MB", 2048) * 1024 * 1024
UPLOADS_PER_CLIENT_BYTES = _env_int("PRUNESID_UPLOADS_PER_CLIENT_MB", 500) * 1024 * 1024
UPLOAD_MAX_AGE_S = _env_int("PRUNESID_UPLOAD_MAX_AGE_S", 600)
UPLOAD_CHECK_S = _env_int("PRUNESID_UPLOAD_CHECK_S", 30)
LEFTOVER_AGE_S = _env_int("PRUNESID_LEFTOVER_AGE_S", 60, minimum=0)

QUEUE_PER_SESSION_MESSAGE = ("You already have {waiting} requests waiting; please wait for them to finish, then try "
                             "again.")
QUEUE_PER_CLIENT_MESSAGE = ("{waiting} requests from your address are already waiting; please wait for them to "
                            "finish, then try again.")


def is_public(environ=None) -> bool:
    """A public deployment: ``SPACE_ID`` set (Hugging Face Spaces) or ``PRUNESID_PUBLIC=1``; the rule
    of :meth:`prunesid_vlm.serving.ModelPolicy.from_env`."""
    env = os.environ if environ is None else environ
    return bool(env.get("SPACE_ID")) or env.get("PRUNESID_PUBLIC", "") == "1"


CACHE_FIELDS = frozenset({"answers_cached", "features_cached", "generations"})
"""JSON fields that tell whether the server had already computed something, i.e. whether another
visitor asked the same about the same picture: left out of every response of a public deployment."""


def without_cache_fields(value):
    """``value`` (JSON-ready) without :data:`CACHE_FIELDS` at any depth when the deployment is public."""
    if not is_public():
        return value
    if isinstance(value, dict):
        return {k: without_cache_fields(v) for k, v in value.items() if k not in CACHE_FIELDS}
    if isinstance(value, list):
        return [without_cache_fields(v) for v in value]
    return value


def client_address(headers, client, environ=None) -> str:
    """Who sent a request, as far as this server can tell: on Spaces (or with
    ``PRUNESID_FORWARDED_FOR=1``) the first address of ``X-Forwarded-For``, which the proxy in front
    sets; otherwise the connection's peer. ``headers``: a mapping with ``get`` (case-insensitive,
    as Starlette's); ``client``: Starlette's ``(host, port)`` or ``None``."""
    env = os.environ if environ is None else environ
    if env.get("SPACE_ID") or env.get("PRUNESID_FORWARDED_FOR", "") == "1":
        forwarded = (headers.get("x-forwarded-for") or "").split(",")[0].strip()
        if forwarded:
            return forwarded
    host = getattr(client, "host", None) or (client[0] if client else None)
    return host or "unknown"


def return_freed_memory() -> None:
    """Hand memory freed by Python back to the operating system where the C library can (glibc's
    ``malloc_trim``): a visitor's picture and features are many mid-sized blocks, which glibc keeps
    for reuse otherwise, so the server's size would not show that the visitor has gone."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


MALLOC_ARENAS = _env_int("PRUNESID_MALLOC_ARENAS", 2)
"""glibc memory arenas (``M_ARENA_MAX``): by default glibc keeps up to eight per core, one per thread
that allocates at once, and memory freed in one is not reused by another; with Gradio's worker
threads each decoding pictures and clips, that is hundreds of MB the server holds for nothing."""


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's arenas (``mallopt(M_ARENA_MAX, arenas)``) for the threads started from now on;
    False where the C library is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, int(MALLOC_ARENAS if arenas is None else arenas)))
    except (OSError, AttributeError):
        return False


def limit_queue(demo: gr.Blocks, per_session: int | None = None, per_client: int | None = None,
                grace_s: float | None = None, streams=None) -> None:
    """Admission and turn rules for ``demo``'s queue, beyond Gradio's total length:

    * a job is refused when its session already has ``per_session`` jobs waiting, or its client
      address (:func:`client_address`) ``per_client``: Gradio limits the queue's total length
      only, and the session id is chosen by the client, so a script that sends a new one per job
      is held by its address. This runs where Gradio admits a job (its queue's ``push``), before
      the total-length check, and answers with the same "queue full" status and a message that
      says to retry.
    * when a job's turn comes, it has waited ``grace_s`` or more, and no result stream of its
      session (or, for ``/call/<api>/<event_id>``, of its event) is open (``streams``: a
      :class:`studio.guard.OpenStreams`, fed by the app's middleware), it is skipped: Gradio
      would run it for nobody (it drops a job whose stream closed, never one whose stream was
      never opened). A job whose turn comes sooner runs, as its client may still be connecting.

    ``None`` limits are read from this module when a job arrives (tests may change them)."""
    queue = demo._queue
    admit = queue.push
    run = queue.process_events

    def waiting(match) -> int:
        return sum(1 for events in queue.event_queue_per_concurrency_id.values() for event in events.queue
                   if match(event))

    def address(request) -> str:
        return client_address(request.headers, request.client) if request is not None else "unknown"

    async def push(body, request, username):
        session = getattr(body, "session_hash", None)
        if session is not None:
            n = waiting(lambda event: event.session_hash == session)
            if n >= (per_session if per_session is not None else QUEUE_PER_SESSION):
                return False, QUEUE_PER_SESSION_MESSAGE.format(waiting=n), "queue_full"
        if request is not None:
            client = address(request)
            n = waiting(lambda event: address(event.request) == client)
            if n >= (per_client if per_client is not None else QUEUE_PER_CLIENT):
                return False, QUEUE_PER_CLIENT_MESSAGE.format(waiting=n), "queue_full"
        return await admit(body, request, username)

    async def process_events(events, batch, begin_time, fn):
        if streams is not None:
            grace = grace_s if grace_s is not None else STREAM_GRACE_S
            now = time.monotonic()
            for event in events:
                if (event.alive and now - event.enqueue_time >= grace
                        and not streams.listening(event.session_hash, event._id)):
                    event.alive = False  # Gradio's own mark for a job whose client has gone
                    pending = queue.pending_event_ids_session.get(event.session_hash)
                    if pending is not None:
                        pending.discard(event._id)
                        if not pending:
                            queue.pending_event_ids_session.pop(event.session_hash, None)
        return await run(events, batch, begin_time, fn)

    queue.push = push
    queue.process_events = process_events


limit_queue_per_session = limit_queue
"""The earlier name (it now limits per client address too)."""
