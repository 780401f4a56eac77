"""What a public deployment needs at the HTTP level, as one ASGI middleware (pure Starlette) plus
the queue's admission rules (:func:`studio.limits.limit_queue`).

* **Request bodies are capped** (:data:`studio.limits.MAX_BODY_BYTES`) on every route but Gradio's
  upload route: by ``Content-Length`` before anything is read, and by counting the bytes of a
  body without one (chunked) while reading it, at most the cap, before the route sees it.
  Refused with 413 and a short JSON ``{"detail": ...}``.
* **Uploads** (``POST /gradio_api/upload``) are refused (413) while the uploads kept would exceed
  :data:`~studio.limits.UPLOADS_BYTES`, refused (429) for a client address that has uploaded
  :data:`~studio.limits.UPLOADS_PER_CLIENT_BYTES` in the last
  :data:`~studio.limits.UPLOAD_MAX_AGE_S`, and one request holds at most one file of Gradio's
  ``max_file_size`` (Gradio checks each file only, up to 1000 files a request).
* **Uploads are swept** every :data:`~studio.limits.UPLOAD_CHECK_S`: an upload not used for
  :data:`~studio.limits.UPLOAD_MAX_AGE_S` goes (Gradio's own cache sweep has one age for uploads
  and served images, 30 min); over the total, the least recently used go first. What a refused
  upload leaves behind goes too: Gradio's multipart parser writes every file part to a temporary
  file in the upload folder, and a part whose name Gradio then refuses (``..``, answered 400), or a
  part under another field than ``files``, is never moved nor deleted. At shutdown every upload
  goes.
* **Result streams** (``GET /gradio_api/queue/data``, ``GET /gradio_api/call/<api>/<event_id>``)
  are counted while open (:data:`STREAMS`), so the queue can skip a job nobody listens to.

Install: ``demo.launch(app_kwargs=app_kwargs())`` (Gradio 6 hands ``app_kwargs`` to FastAPI, whose
``middleware=`` takes it) and :func:`install` on the demo after ``demo.queue()``.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs

import gradio as gr
from gradio import utils
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware

from . import limits
from .memory import budget_sessions

log = logging.getLogger("prunesid.studio")

API_PREFIX = "/gradio_api"
MULTIPART_OVERHEAD = 64 * 1024
"""An upload request may exceed its one file by this much (the multipart boundaries and headers)."""
BODY_TOO_LARGE = "This request is too large ({size}); the limit is {limit}."
UPLOADS_FULL = ("The space for uploads on this server is full at the moment; please try again in a few minutes "
                "or upload a smaller file.")
CLIENT_UPLOADS_FULL = ("You have uploaded {used} in the last {minutes} minutes, the most one visitor may; please "
                       "try again later.")
UPLOAD_TOO_LARGE = "Upload exceeded maximum allowed size of {limit} bytes (one file per request)."
"""Raised inside Gradio's multipart parser, which then deletes its temporary files; Gradio answers
413 because of the words "maximum allowed size"."""
_SHA_DIR = re.compile(r"[0-9a-f]{64}")
"""Gradio stores each upload in a folder named by the SHA-256 of its content."""


def _size(n: float) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


# ---- result streams --------------------------------------------------------------------------------
class OpenStreams:
    """Result streams open now, by session hash (``/queue/data``) or event id (``/call/...``)."""

    def __init__(self) -> None:
        self._open: collections.Counter[str] = collections.Counter()
        self.active = False
        """Set once the middleware serves a request: until then nothing is known about streams and
        :meth:`listening` says yes (a demo launched without the middleware skips no job)."""

    def opened(self, key: str) -> None:
        self._open[key] += 1

    def closed(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def listening(self, session_hash: str | None, event_id: str | None = None) -> bool:
        if not self.active:
            return True
        return any(key is not None and self._open.get(key, 0) > 0 for key in (session_hash, event_id))


STREAMS = OpenStreams()


# ---- uploads on disk -------------------------------------------------------------------------------
def _open_files() -> set[str]:
    """Paths this process has open (Linux ``/proc/self/fd``; elsewhere none are known)."""
    paths = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                paths.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        pass
    return paths


def _empty(folder: str) -> bool:
    with os.scandir(folder) as listing:
        return next(listing, None) is None


class Uploads:
    """The uploads of this server: Gradio's record of them (``blocks.upload_file_set``) and the
    temporary files its parser left in the upload folder. ``total`` is the bytes they took at the
    last sweep plus what was uploaded since (an estimate that errs on the high side)."""

    def __init__(self) -> None:
        self.total = 0
        self._by_client: dict[str, collections.deque] = {}

    # per-client quota
    def client_used(self, client: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        window = self._by_client.get(client)
        if not window:
            return 0
        while window and now - window[0][0] > limits.UPLOAD_MAX_AGE_S:
            window.popleft()
        if not window:
            del self._by_client[client]
            return 0
        return sum(n for _, n in window)

    def received(self, client: str, n: int) -> None:
        """An upload request of ``n`` bytes from ``client`` was read (its bytes were already added
        to ``total`` as they came, :meth:`receiving`)."""
        if n > 0:
            self._by_client.setdefault(client, collections.deque()).append((time.monotonic(), n))

    def receiving(self, n: int) -> None:
        self.total += n

    # sweeping
    def sweep(self, blocks, folder: str | Path | None = None, *, max_age: float | None = None,
              leftover_age: float | None = None, cap: int | None = None, everything: bool = False) -> dict:
        """Remove uploads not used for ``max_age`` s (their modification time: an input that hands
        a file to the app sets it to now), leftovers of refused uploads unchanged for
        ``leftover_age`` s and not open in this process, then the least recently used uploads
        while all of them exceed ``cap`` bytes; ``everything``: all of them (at shutdown).
        A leftover still open in this process is an upload in progress, left alone, except at
        shutdown; one open in another process sharing the folder cannot be told from a leftover
        but by its age. Returns counts and the bytes left (also stored as ``total``)."""
        folder = Path(folder or utils.get_upload_folder()).resolve()  # as /proc/self/fd names open files
        max_age = limits.UPLOAD_MAX_AGE_S if max_age is None else max_age
        leftover_age = limits.LEFTOVER_AGE_S if leftover_age is None else leftover_age
        cap = limits.UPLOADS_BYTES if cap is None else cap
        now = time.time()
        recorded: set[str] = blocks.upload_file_set if blocks is not None else set()
        wanted = set() if everything else _queued_paths(blocks)  # a job waiting its turn will open these
        kept, removed = [], {"uploads": 0, "leftovers": 0, "folders": 0}
        for path in list(recorded):
            try:
                st = os.lstat(path)
            except OSError:
                recorded.discard(path)
                continue
            if path in wanted:
                continue
            if everything or now - st.st_mtime > max_age:
                removed["uploads"] += self._remove(path, recorded)
            else:
                kept.append((st.st_mtime, st.st_size, path))
        leftover_bytes = 0
        busy = _open_files()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            entries = []
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.name.startswith("tmp"):
                    st = entry.stat(follow_symlinks=False)
                    open_here = entry.path in busy
                    if (everything and open_here) or (now - st.st_mtime > leftover_age and not open_here):
                        os.remove(entry.path)
                        removed["leftovers"] += 1
                    else:
                        leftover_bytes += st.st_size
                elif entry.is_dir(follow_symlinks=False) and _SHA_DIR.fullmatch(entry.name):
                    if now - entry.stat(follow_symlinks=False).st_mtime > leftover_age and _empty(entry.path):
                        os.rmdir(entry.path)  # an empty upload folder: each refused upload makes one
                        removed["folders"] += 1
            except OSError:  # gone meanwhile, or filled meanwhile
                continue
        kept.sort()  # least recently used first
        total = leftover_bytes + sum(size for _, size, _ in kept)
        for _, size, path in kept:
            if total <= cap:
                break
            removed["uploads"] += self._remove(path, recorded)
            total -= size
        self.total = total
        for client in list(self._by_client):
            self.client_used(client)  # drops empty windows
        return {**removed, "bytes": total}

    @staticmethod
    def _remove(path: str, recorded: set) -> int:
        recorded.discard(path)
        try:
            os.remove(path)
        except OSError:
            return 0
        parent = Path(path).parent
        if _SHA_DIR.fullmatch(parent.name):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                pass
        return 1


UPLOADS = Uploads()


# ---- the middleware --------------------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _answer(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _declared_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class Guard:
    """The ASGI middleware (see the module docstring). ``max_body``: the cap for bodies of routes
    other than the upload route (``None``: :data:`studio.limits.MAX_BODY_BYTES`, read per request)."""

    def __init__(self, app, max_body: int | None = None, streams: OpenStreams = STREAMS,
                 uploads: Uploads = UPLOADS) -> None:
        self.app = app
        self.max_body = max_body
        self.streams = streams
        self.uploads = uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.streams.active = True
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if method == "POST" and path.endswith(API_PREFIX + "/upload"):
            return await self._upload(scope, receive, send)
        key = None
        if method == "GET" and path.endswith(API_PREFIX + "/queue/data"):
            key = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash") or [None])[0]
        elif method == "GET" and re.search(re.escape(API_PREFIX) + r"/call/(v2/)?[^/]+/[^/]+$", path):
            key = path.rsplit("/", 1)[-1]
        try:
            receive = await self._capped_body(scope, receive)
        except _Refused as refused:
            return await _answer(send, refused.status, refused.message)
        if key is None:
            return await self.app(scope, receive, send)
        self.streams.opened(key)
        try:
            return await self.app(scope, receive, send)
        finally:
            self.streams.closed(key)

    async def _capped_body(self, scope, receive):
        """``receive`` for the route: the body read here first (at most the cap) when there is one."""
        cap = self.max_body if self.max_body is not None else limits.MAX_BODY_BYTES
        declared = _declared_length(scope)
        if declared is not None and declared > cap:
            raise _Refused(413, BODY_TOO_LARGE.format(size=_size(declared), limit=_size(cap)))
        if not declared and _header(scope, b"transfer-encoding") is None:
            return receive  # no body (HTTP/1.1: neither a length nor chunks)
        chunks, size, early = [], 0, []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the route see it
                early.append(message)
                break
            size += len(message.get("body", b""))
            if size > cap:
                raise _Refused(413, BODY_TOO_LARGE.format(size=f"over {_size(cap)}", limit=_size(cap)))
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}] + early

        async def replayed():
            return replay.pop(0) if replay else await receive()

        return replayed

    async def _upload(self, scope, receive, send):
        from starlette.requests import HTTPConnection

        client = limits.client_address(HTTPConnection(scope).headers, scope.get("client"))
        declared = _declared_length(scope) or 0
        blocks = _blocks(scope)
        per_file = getattr(blocks, "max_file_size", None) or limits.MAX_UPLOAD_BYTES
        cap = per_file + MULTIPART_OVERHEAD
        if declared > cap:
            return await _answer(send, 413, UPLOAD_TOO_LARGE.format(limit=per_file))
        if self.uploads.total + declared > limits.UPLOADS_BYTES:
            self.uploads.sweep(blocks)  # perhaps the estimate is stale
            if self.uploads.total + declared > limits.UPLOADS_BYTES:
                return await _answer(send, 413, UPLOADS_FULL)
        used = self.uploads.client_used(client)
        if used + declared > limits.UPLOADS_PER_CLIENT_BYTES:
            return await _answer(send, 429, CLIENT_UPLOADS_FULL.format(
                used=_size(used), minutes=max(1, round(limits.UPLOAD_MAX_AGE_S / 60))))
        counted = 0

        async def counting():
            nonlocal counted
            message = await receive()
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                counted += n
                self.uploads.receiving(n)
                if counted > cap:
                    # Inside Gradio's parser: it closes and deletes its temporary files, and its
                    # route answers 413 ("maximum allowed size").
                    raise MultiPartException(UPLOAD_TOO_LARGE.format(limit=per_file))
            return message

        body = bytearray()

        async def noting(message):
            # Gradio answers with the uploads' destinations before it moves the files there (a
            # background task): their folders are marked fresh now, so that a sweep in between
            # does not take an empty content-hash folder the move is about to fill.
            if message["type"] == "http.response.body" and len(body) < 64 * 1024:
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    _mark_fresh(bytes(body))
            await send(message)

        try:
            return await self.app(scope, counting, noting)
        except MultiPartException as err:  # raised outside the parser (e.g. before it started)
            return await _answer(send, 413, str(err))
        finally:
            self.uploads.received(client, counted)

    async def _lifespan(self, scope, receive, send):
        app = scope.get("app")
        task = None

        async def watched():
            nonlocal task
            message = await receive()
            if message["type"] == "lifespan.startup" and task is None:
                task = asyncio.create_task(self._sweep_forever(app))
                if getattr(app, "state_holder", None) is not None:
                    budget_sessions(app.state_holder)  # every visitor's analyses within one byte budget
            elif message["type"] == "lifespan.shutdown":
                if task is not None:
                    task.cancel()
                self._sweep(app, everything=True)
            return message

        return await self.app(scope, watched, send)

    async def _sweep_forever(self, app) -> None:
        while True:
            await asyncio.sleep(limits.UPLOAD_CHECK_S)
            self._sweep(app)
            # What visitors' requests freed goes back to the system, not only when a tab closes
            # (scripts close none).
            await asyncio.to_thread(limits.return_freed_memory)

    def _sweep(self, app, **kwargs) -> None:
        try:
            blocks = app.get_blocks() if app is not None else None
            removed = self.uploads.sweep(blocks, **kwargs)
            if removed["uploads"] or removed["leftovers"]:
                log.info("uploads swept: %s", removed)
        except Exception:  # noqa: BLE001 - a failed sweep must not stop the server; the next one retries
            log.exception("sweeping the uploads failed")


def _queued_paths(blocks) -> set[str]:
    """Files named in the inputs of the jobs waiting in the queue or running: on a busy server a
    job can wait longer than an upload's age limit, and its file must still be there at its turn."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return set()
    events = [e for waiting in list(queue.event_queue_per_concurrency_id.values()) for e in list(waiting.queue)]
    events += [e for job in list(queue.active_jobs) if job for e in job]
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                found.add(value["path"])
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for event in events:
        walk(getattr(getattr(event, "data", None), "data", None))
    return found


def _mark_fresh(body: bytes) -> None:
    """Touch the files an upload response names (a JSON list of paths in the upload folder) and
    their folders: a file uploaded again has the same content-hash path, and Gradio leaves the
    copy already there as it was, old enough for a sweep to take before the visitor uses it."""
    try:
        paths = json.loads(body)
    except ValueError:
        return
    if not isinstance(paths, list):
        return
    for path in paths:
        for target in (path, os.path.dirname(path)) if isinstance(path, str) else ():
            try:
                os.utime(target)
            except OSError:  # not there (yet), or not ours: nothing a sweep could take
                pass


def _blocks(scope):
    app = scope.get("app")
    try:
        return app.get_blocks()
    except Exception:  # noqa: BLE001 - not a Gradio app (tests of the middleware alone)
        return None


# ---- installing ------------------------------------------------------------------------------------
def app_kwargs() -> dict:
    """``demo.launch(app_kwargs=...)``: the middleware, for the FastAPI app Gradio creates."""
    return {"middleware": [Middleware(Guard)]}


def install(demo: gr.Blocks) -> None:
    """After ``demo.queue()``: the queue's per-session and per-client limits and the skipping of
    jobs whose client has no result stream open (:func:`studio.limits.limit_queue`)."""
    limits.limit_queue(demo, streams=STREAMS)
