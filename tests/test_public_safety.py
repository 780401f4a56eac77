"""A hostile visitor against the app launched in-process (issue 23, item 3): raw HTTP speaking
Gradio 6's protocol (``POST /gradio_api/queue/join``, then the ``/gradio_api/queue/data`` SSE
stream), raw sockets for bodies that httpx would not send, and ``gradio_client``.

* file inputs refuse server paths, whatever the payload's ``meta``, with one message whether the
  file exists or not, and hand back no pixels; the app's own examples still work;
* request bodies are capped (by ``Content-Length`` and by counting a chunked body) without the
  server's memory growing by the body's size; uploads are capped per request, per client and in
  all, and what a refused upload leaves behind is swept;
* the per-client queue limit holds against invented session ids; a job nobody listens to is
  skipped; the queue's REST routes are closed on a public deployment;
* videos of huge frames are refused before any frame is decoded; a 100000 x 10 strip fast;
* written images have names that cannot be computed from their content.
"""
from __future__ import annotations

import gc
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from prunesid_vlm import media  # noqa: E402
from studio import guard, limits  # noqa: E402
from prunesid_vlm.media import NOT_UPLOADED, MediaError, load_image, load_video  # noqa: E402


# ---- helpers: Gradio 6's protocol over raw HTTP ------------------------------------------------------
@pytest.fixture(scope="module")
def demo(app_url):
    import app

    return app.demo


@pytest.fixture(scope="module")
def fn(app_url):
    """fn_index by api_name (UI events have generated names such as ``on_image_upload``)."""
    config = httpx.get(app_url + "config", timeout=30).json()
    return {d.get("api_name"): i for i, d in enumerate(config["dependencies"])}


def analyze_data(image, question: str = "q", budget: int = 64) -> list:
    """The eight values /analyze takes, as a raw client sends them (Gradio needs every one)."""
    return [image, question, budget, "prunesid", False, 16, "", ""]


def join(url: str, fn_index: int, data: list, session_hash: str | None = None, headers=None) -> httpx.Response:
    body = {"fn_index": fn_index, "data": data, "session_hash": session_hash or uuid.uuid4().hex,
            "event_data": None, "trigger_id": None}
    return httpx.post(url + "gradio_api/queue/join", json=body, headers=headers, timeout=30)


def call(url: str, fn_index: int, data: list) -> dict:
    """Join, then read the session's SSE stream up to the job's ``process_completed`` message."""
    session = uuid.uuid4().hex
    joined = join(url, fn_index, data, session)
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the stream ended without a result")


def refusal_of(message: dict) -> str:
    """The text a refused job shows: a ``gr.Error`` (API) or the status line of the views (UI)."""
    output = message["output"]
    if not message["success"]:
        return output["error"]
    return next(v for v in output["data"] if isinstance(v, str) and v.startswith("⚠"))


def served_files(message: dict) -> list[str]:
    """Every file a response points at (an image drawn from the input would be one)."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                found.append(value["path"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(message.get("output"))
    return found


def raw_request(url: str, head: bytes, body, timeout: float = 20) -> tuple[int | None, bytes]:
    """Send ``head`` and then the chunks of ``body`` on a plain socket while reading the answer on
    another thread (the server may answer, and close, before the body is sent)."""
    parts = urlparse(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    answer, done = bytearray(), threading.Event()

    def read():
        try:
            while chunk := sock.recv(65536):
                answer.extend(chunk)
        except OSError:
            pass
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    try:
        sock.sendall(head)
        reader.start()
        for chunk in body:
            if done.is_set():
                break
            sock.sendall(chunk)
    except OSError:  # the server closed the connection: what it answered is read
        pass
    done.wait(timeout)
    sock.close()
    status = int(bytes(answer).split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None
    return status, bytes(answer)


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def upload(url: str, name: str, content: bytes, field: str = "files") -> httpx.Response:
    return httpx.post(url + "gradio_api/upload", files=[(field, (name, content, "application/octet-stream"))],
                      timeout=30)


def png_bytes(size=(64, 48), color=(10, 200, 30)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---- 1. file inputs: server paths are refused, one message, no pixels -----------------------------------
def test_every_file_input_of_the_app_is_a_safe_one(demo):
    """A stock gr.Image/gr.Video/gr.File as an event input would open any path a script sends."""
    import gradio as gr

    from studio.components import SafeImage, SafeVideo

    file_kinds = (gr.Image, gr.Video, gr.File, gr.Gallery, gr.Audio, gr.Model3D, gr.ImageSlider, gr.ImageEditor)
    unsafe = {type(c).__name__ for f in demo.fns.values() for c in f.inputs
              if isinstance(c, file_kinds) and not isinstance(c, (SafeImage, SafeVideo))}
    assert not unsafe


@pytest.fixture(scope="module")
def server_paths(tmp_path_factory, demo):
    """Paths a hostile script might send: files outside the upload folder that exist and that do
    not, a traversal out of it, a symlink inside it to a file outside, and one of the app's own
    written images."""
    from gradio import utils

    from studio.components import png_file

    folder = tmp_path_factory.mktemp("outside")
    secret = folder / "secret.png"
    secret.write_bytes(png_bytes())
    uploads = Path(utils.get_upload_folder())
    link = uploads / f"link-{uuid.uuid4().hex}.png"
    link.symlink_to(secret)
    written = png_file(np.full((40, 40, 3), 7, np.uint8))
    paths = {"existing": str(secret), "missing": str(folder / "missing.png"), "system": "/etc/hostname",
             "traversal": str(uploads / ".." / ".." / secret.relative_to("/")), "symlink": str(link),
             "written": written}
    yield paths
    link.unlink(missing_ok=True)


@pytest.mark.parametrize("kind", ["existing", "missing", "system", "traversal", "symlink", "written"])
@pytest.mark.parametrize("meta", [False, True], ids=["no-meta", "meta"])
@pytest.mark.parametrize("endpoint", ["analyze", "on_image_upload", "compare"])
def test_a_path_outside_the_uploads_is_refused_over_raw_http(app_url, fn, server_paths, endpoint, kind, meta):
    payload = {"path": server_paths[kind]}
    if meta:
        payload["meta"] = {"_type": "gradio.FileData"}
    data = {"analyze": analyze_data(payload, "What is this?"),
            "on_image_upload": [payload, 64, False, None, False],
            "compare": [payload, "What is this?", 64, "prunesid", False]}[endpoint]
    message = call(app_url, fn[endpoint], data)
    assert not served_files(message), message  # nothing drawn from the file
    assert '"keep"' not in json.dumps(message)  # no selection computed from it
    text = refusal_of(message)
    if meta and text is None:
        # With `meta`, Gradio's own check refuses a path outside its upload folder before ours: a
        # bare "Error", the same for every such path.
        assert message["success"] is False
    else:
        assert NOT_UPLOADED in text


def test_the_refusal_is_one_message_whether_the_file_exists_or_not(app_url, fn, server_paths):
    texts = {kind: refusal_of(call(app_url, fn["analyze"], analyze_data({"path": server_paths[kind]})))
             for kind in ("existing", "missing", "system", "symlink")}
    assert len(set(texts.values())) == 1 and NOT_UPLOADED in texts["existing"], texts


def test_a_path_outside_the_uploads_is_refused_through_gradio_client(app_url, server_paths):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(app_url, verbose=False)
    try:
        for kind in ("existing", "missing"):
            with pytest.raises(Exception) as err:
                client.predict({"path": server_paths[kind]}, "What?", 64, api_name="/analyze")
            assert NOT_UPLOADED in str(err.value)
        # an upload through the client still works
        out = client.predict(gradio_client.handle_file(server_paths["existing"]), "What?", 64, api_name="/analyze")
        assert out["selection"][0]["num_tokens"] == 64
    finally:
        client.close()


def test_the_apps_examples_still_work(app_url, fn):
    """The front end loads an example (Gradio copied its file into its cache at start-up), then the
    upload handler receives that cached path."""
    loaded = call(app_url, fn["load_example"], [0])
    value = loaded["output"]["data"][0]
    value = value.get("value", value)
    assert value["path"].endswith("cat.jpg") and "/assets/" not in value["path"]
    message = call(app_url, fn["on_image_upload"], [value, 64, False, None, False])
    status = message["output"]["data"][2]
    assert status.startswith("✓"), status
    assert served_files(message)


# ---- 2. request bodies ---------------------------------------------------------------------------------
def _post_head(path: str, host: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def test_an_oversize_json_body_is_refused_by_its_length_without_reading_it(app_url):
    host = urlparse(app_url).netloc
    size = 200 * 2**20
    block = b" " * 2**20
    before = rss()
    status, answer = raw_request(app_url, _post_head("/gradio_api/queue/join", host, f"Content-Length: {size}\r\n"),
                                 (block for _ in range(200)))
    grown = rss() - before
    assert status == 413, answer[:300]
    assert b"too large" in answer and b"application/json" in answer.lower()
    assert grown < 50 * 2**20, f"the server grew by {grown / 2**20:.0f} MB"


def test_an_oversize_chunked_body_is_refused_while_it_is_read(app_url):
    host = urlparse(app_url).netloc
    block = b" " * 65536
    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
    before = rss()
    status, answer = raw_request(app_url, _post_head("/gradio_api/queue/join", host, "Transfer-Encoding: chunked\r\n"),
                                 [chunk] * 256 + [b"0\r\n\r\n"])  # 16 MB
    assert status == 413, answer[:300]
    assert rss() - before < 30 * 2**20


def test_a_small_chunked_body_still_reaches_the_route(app_url, fn):
    host = urlparse(app_url).netloc
    body = json.dumps({"fn_index": fn["analyze"], "data": analyze_data(None), "session_hash": uuid.uuid4().hex}).encode()
    chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    status, answer = raw_request(app_url, _post_head("/gradio_api/queue/join", host,
                                                     "Transfer-Encoding: chunked\r\nConnection: close\r\n"), [chunk])
    assert status == 200 and b"event_id" in answer, answer[:300]


# ---- 3. uploads ------------------------------------------------------------------------------------------
def test_an_upload_request_holds_one_file_at_most(app_url, demo, monkeypatch):
    """Gradio checks each file against max_file_size; one request may carry 1000 files."""
    monkeypatch.setattr(demo, "max_file_size", 256 * 1024)
    files = [("files", (f"part{i}.bin", b"x" * 200_000, "application/octet-stream")) for i in range(3)]
    answer = httpx.post(app_url + "gradio_api/upload", files=files, timeout=30)
    assert answer.status_code == 413 and "one file per request" in answer.text
    with httpx.Client(timeout=30) as client:  # chunked: no Content-Length, counted while read
        def stream():
            boundary = b"--b0undary"
            for i in range(3):
                yield (boundary + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"c%d.bin\"\r\n\r\n" % i
                       + b"y" * 200_000 + b"\r\n")
            yield boundary + b"--\r\n"

        answer = client.post(app_url + "gradio_api/upload", content=stream(),
                             headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert answer.status_code == 413, answer.text


def test_uploads_are_refused_while_the_uploads_kept_are_over_the_cap(app_url, monkeypatch):
    monkeypatch.setattr(guard.UPLOADS, "sweep", lambda *a, **k: {})  # keep everyone's real uploads
    monkeypatch.setattr(guard.UPLOADS, "total", limits.UPLOADS_BYTES)
    answer = upload(app_url, "a.png", png_bytes())
    assert answer.status_code == 413 and "full" in answer.json()["detail"]


def test_one_client_may_upload_only_so_much(app_url, monkeypatch):
    monkeypatch.setattr(limits, "UPLOADS_PER_CLIENT_BYTES", guard.UPLOADS.client_used("127.0.0.1") + 5000)
    assert upload(app_url, "a.png", png_bytes()).status_code == 200
    answer = upload(app_url, "b.png", os.urandom(6000))
    assert answer.status_code == 429 and "uploaded" in answer.json()["detail"]


def _new_leftovers(folder: Path, marker: bytes, before: set[str]) -> list[Path]:
    found = []
    for p in folder.iterdir():
        if p.name.startswith("tmp") and p.is_file() and p.name not in before:
            try:
                if p.read_bytes().startswith(marker):
                    found.append(p)
            except OSError:
                continue
    return found


@pytest.mark.parametrize("name, field", [("..", "files"), ("ok.png", "other")], ids=["refused-name", "other-field"])
def test_what_a_refused_upload_leaves_is_swept(app_url, demo, name, field):
    from gradio import utils

    folder = Path(utils.get_upload_folder())
    before = {p.name for p in folder.iterdir()}
    marker = b"LEFTOVER-" + uuid.uuid4().hex.encode()
    answer = upload(app_url, name, marker + b"." * 1000, field=field)
    assert answer.status_code in (200, 400), answer.text
    gc.collect()  # the parser's temporary file is closed when it is collected
    left = _new_leftovers(folder, marker, before)
    assert left, "Gradio no longer leaves this behind: the sweep of leftovers may be dropped"
    guard.UPLOADS.sweep(demo, leftover_age=10)  # a fresh leftover may still be an upload in progress
    assert all(p.exists() for p in left)
    for p in left:  # ten seconds on (other processes' uploads in progress in a shared folder stay fresh)
        os.utime(p, (time.time() - 11, time.time() - 11))
    guard.UPLOADS.sweep(demo, leftover_age=10)
    assert not any(p.exists() for p in left)


def test_the_sweep_removes_unused_uploads_then_the_least_recently_used_over_the_cap(tmp_path):
    sha = "ab" * 32
    now = time.time()
    blocks = SimpleNamespace(upload_file_set=set())
    files = {}
    for i, age in enumerate((5000, 300, 200, 100, 10)):  # seconds since last use
        folder = tmp_path / (f"{i:x}" + sha[1:])  # Gradio's folder per upload: the content's SHA-256
        folder.mkdir()
        path = folder / f"up{i}.png"
        path.write_bytes(b"u" * 1000)
        os.utime(path, (now - age, now - age))
        blocks.upload_file_set.add(str(path))
        files[age] = path
    leftover = tmp_path / "tmpabc123"
    leftover.write_bytes(b"l" * 500)
    os.utime(leftover, (now - 120, now - 120))
    in_progress = tmp_path / "tmpfresh"
    in_progress.write_bytes(b"p" * 500)
    empty = tmp_path / sha
    empty.mkdir()
    os.utime(empty, (now - 120, now - 120))
    store = guard.Uploads()
    result = store.sweep(blocks, tmp_path, max_age=600, leftover_age=60, cap=2600)
    assert not files[5000].exists() and not files[5000].parent.exists()  # unused for too long, with its folder
    assert not leftover.exists() and in_progress.exists() and not empty.exists()
    # left: 4 uploads (4000 B) + the fresh temporary file (500 B) > 2600 B: the two least recently used go
    assert not files[300].exists() and not files[200].exists() and files[100].exists() and files[10].exists()
    assert result["bytes"] == store.total == 2500 and len(blocks.upload_file_set) == 2
    store.sweep(blocks, tmp_path, everything=True)
    assert not blocks.upload_file_set and not files[10].exists()


def test_the_guard_sweeps_while_the_server_runs_and_removes_every_upload_at_shutdown(tmp_path, monkeypatch):
    """The middleware's own lifespan hook, on a bare Starlette app standing in for Gradio's."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.testclient import TestClient

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    monkeypatch.setattr(limits, "UPLOAD_CHECK_S", 0.05)
    blocks = SimpleNamespace(upload_file_set=set())

    class App(Starlette):
        def get_blocks(self):
            return blocks

    def add(name: str, age: float) -> Path:
        folder = tmp_path / (name * 64)
        folder.mkdir()
        path = folder / "x.png"
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - age, time.time() - age))
        blocks.upload_file_set.add(str(path))
        return path

    old, recent = add("a", 3600), add("b", 0)
    with TestClient(App(middleware=[Middleware(guard.Guard, uploads=guard.Uploads())])):
        deadline = time.monotonic() + 5
        while old.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not old.exists() and recent.exists()  # swept by age while running
    assert not recent.exists() and not blocks.upload_file_set  # everything at shutdown


def test_an_upload_in_use_is_kept(tmp_path, monkeypatch):
    """Handing an upload to the app (the input's preprocess) counts as a use."""
    from studio.components import SafeImage

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    folder = tmp_path / ("cd" * 32)
    folder.mkdir()
    path = folder / "photo.png"
    path.write_bytes(png_bytes())
    old = time.time() - 3600
    os.utime(path, (old, old))
    from gradio.data_classes import ImageData

    handed = SafeImage(type="filepath").preprocess(ImageData(path=str(path)))
    assert handed == str(path) and not isinstance(handed, media.RefusedFile)
    assert time.time() - path.stat().st_mtime < 60
    blocks = SimpleNamespace(upload_file_set={str(path)})
    guard.Uploads().sweep(blocks, tmp_path, max_age=600)
    assert path.exists()


# ---- 4. the queue --------------------------------------------------------------------------------------
@pytest.fixture
def model_queue_held(demo, fn):
    """The model's queue does not start jobs while the test runs (as when a long job runs)."""
    queue = demo._queue
    block_fn = demo.fns[fn["analyze"]]
    queue.create_event_queue_for_fn(block_fn)
    held = queue.event_queue_per_concurrency_id[block_fn.concurrency_id]
    held.current_concurrency += 10_000
    sessions: set[str] = set()
    yield sessions
    for event in list(held.queue):
        if event.session_hash in sessions:
            held.queue.remove(event)
            queue.event_ids_to_events.pop(event._id, None)
            queue.pending_event_ids_session.pop(event.session_hash, None)
    held.current_concurrency -= 10_000


def test_the_per_client_limit_holds_against_invented_session_ids(app_url, fn, model_queue_held):
    answers = []
    for _ in range(limits.QUEUE_PER_CLIENT + 2):
        session = uuid.uuid4().hex  # a new session per job, as a script may send
        model_queue_held.add(session)
        # (No X-Forwarded-For: uvicorn itself trusts it from 127.0.0.1, its default FORWARDED_ALLOW_IPS,
        # i.e. from a proxy on this machine; a client connecting from elsewhere cannot set its address.)
        answers.append(join(app_url, fn["analyze"], analyze_data(None), session))
    codes = [a.status_code for a in answers]
    assert codes[:limits.QUEUE_PER_CLIENT] == [200] * limits.QUEUE_PER_CLIENT, codes
    assert codes[limits.QUEUE_PER_CLIENT:] == [503, 503]
    assert "from your address are already waiting" in answers[-1].json()["detail"]


def test_the_per_session_limit_still_holds(app_url, fn, model_queue_held):
    session = uuid.uuid4().hex
    model_queue_held.add(session)
    codes = [join(app_url, fn["analyze"], analyze_data(None), session).status_code
             for _ in range(limits.QUEUE_PER_SESSION + 1)]
    assert codes == [200] * limits.QUEUE_PER_SESSION + [503]


def test_the_client_address_on_spaces_is_the_first_forwarded_one():
    headers = {"x-forwarded-for": "203.0.113.7, 10.0.0.2"}
    assert limits.client_address(headers, ("10.16.3.80", 5000), {"SPACE_ID": "user/space"}) == "203.0.113.7"
    assert limits.client_address(headers, ("127.0.0.1", 5000), {}) == "127.0.0.1"
    assert limits.client_address({}, ("10.16.3.80", 5000), {"SPACE_ID": "user/space"}) == "10.16.3.80"
    assert limits.client_address(headers, None, {"PRUNESID_FORWARDED_FOR": "1"}) == "203.0.113.7"


def test_a_job_whose_client_never_listens_is_skipped(app_url, demo, fn, monkeypatch):
    monkeypatch.setattr(limits, "STREAM_GRACE_S", 0)
    answer = join(app_url, fn["analyze"], analyze_data(None))
    assert answer.status_code == 200
    event_id = answer.json()["event_id"]
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = demo._queue.event_analytics.get(event_id, {}).get("status")
        if status in ("success", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert status == "cancelled"


def test_open_streams_are_counted():
    streams = guard.OpenStreams()
    assert streams.listening("s")  # the middleware has not run: nothing is known, nothing is skipped
    streams.active = True
    assert not streams.listening("s", "e")
    streams.opened("s")
    streams.opened("s")
    streams.closed("s")
    assert streams.listening("s") and streams.listening(None, "s")
    streams.closed("s")
    assert not streams.listening("s")


def test_the_queues_rest_routes_are_closed_on_a_public_deployment(demo):
    from studio.layout import QUEUE_KWARGS

    assert limits.is_public({"SPACE_ID": "user/space"}) and limits.is_public({"PRUNESID_PUBLIC": "1"})
    assert not limits.is_public({}) and not limits.is_public({"PRUNESID_PUBLIC": "0"})
    assert QUEUE_KWARGS["api_open"] is (not limits.is_public())
    assert demo.api_open is QUEUE_KWARGS["api_open"]


# ---- 5. media: sizes checked before decoding ------------------------------------------------------------
class CaptureSpy:
    """cv2.VideoCapture that counts the calls that decode a frame; ``stated``: the (width, height)
    its header claims instead of the real one."""

    calls: list[str] = []

    def __init__(self, real, stated=None):
        self._real, self._stated = real, stated

    def __call__(self, path):
        spy = object.__new__(type(self))
        spy._cap, spy._stated = self._real(path), self._stated
        return spy

    def get(self, prop):
        import cv2

        if self._stated and prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            return float(self._stated[0 if prop == cv2.CAP_PROP_FRAME_WIDTH else 1])
        return self._cap.get(prop)

    def __getattr__(self, name):
        attr = getattr(self._cap, name)
        if name in ("grab", "read", "retrieve"):
            CaptureSpy.calls.append(name)
        return attr


@pytest.fixture(scope="module")
def huge_frames_video(tmp_path_factory):
    """A 2-frame MJPG AVI of 4160 x 4096 frames (17.0 MP, just over the limit): a few hundred KB."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "huge.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (4160, 4096))
    assert writer.isOpened()
    frame = np.zeros((4096, 4160, 3), np.uint8)
    for _ in range(2):
        writer.write(frame)
    writer.release()
    assert path.stat().st_size < 2**20
    return path


def test_a_video_of_huge_frames_is_refused_before_any_frame_is_decoded(huge_frames_video, monkeypatch):
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", CaptureSpy(cv2.VideoCapture))
    CaptureSpy.calls = []
    start = time.monotonic()
    with pytest.raises(MediaError, match="4160x4096.*over the 16.8 MP limit"):
        load_video(huge_frames_video)
    assert CaptureSpy.calls == [] and time.monotonic() - start < 1


def test_a_frame_larger_than_its_header_says_is_refused(huge_frames_video, monkeypatch):
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", CaptureSpy(cv2.VideoCapture, stated=(64, 64)))
    with pytest.raises(MediaError, match="megapixels"):
        load_video(huge_frames_video)


def test_a_video_upload_of_huge_frames_is_refused_over_http(app_url, fn, huge_frames_video, monkeypatch):
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", CaptureSpy(cv2.VideoCapture))
    CaptureSpy.calls = []
    [path] = upload(app_url, "huge.avi", huge_frames_video.read_bytes()).json()
    message = call(app_url, fn["on_video_upload"], [{"path": path, "meta": {"_type": "gradio.FileData"}},
                                                    64, False, None, False])
    assert "over the 16.8 MP limit" in refusal_of(message) and "/" not in refusal_of(message).split("'")[1]
    assert CaptureSpy.calls == [] and not served_files(message)


@pytest.fixture(scope="module")
def strip_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("strip") / "strip.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 100_000, 3), dtype=np.uint8)).save(path)
    return path


def test_a_long_strip_is_refused_before_decoding(strip_png, monkeypatch):
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    start = time.monotonic()
    with pytest.raises(MediaError, match="long side is 10000 times its short side"):
        load_image(strip_png)
    assert time.monotonic() - start < 0.5 and not decoded


@pytest.mark.parametrize("size, ok", [((2048, 64), True), ((2049, 64), False), ((64, 8), True), ((900, 8), False),
                                      ((8000, 250), True), ((8000, 249), False)])
def test_the_aspect_rule(size, ok):
    if ok:
        img, _ = load_image(Image.new("RGB", size))
        assert min(img.size) >= media.MIN_SIDE and max(img.size) <= media.MAX_SIDE
    else:
        with pytest.raises(MediaError, match="times its short side"):
            load_image(Image.new("RGB", size))


def test_a_strip_upload_is_refused_fast_over_http(app_url, fn, strip_png):
    [path] = upload(app_url, "strip.png", strip_png.read_bytes()).json()
    start = time.monotonic()
    message = call(app_url, fn["on_image_upload"], [{"path": path, "meta": {"_type": "gradio.FileData"}},
                                                    64, False, None, False])
    assert "times its short side" in refusal_of(message)
    assert time.monotonic() - start < 5 and not served_files(message)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(real_draft(self, mode, size)) or drafts[-1])
    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (200, 30, 30)).save(path, quality=80)
    img, notes = load_image(path)
    assert drafts and drafts[0][1][2:] == (3000, 2000)  # decoded at half scale, at least the target
    assert img.size == (2048, 1365) and any("6000×4000) reduced to 2048×1365" in n for n in notes)
    assert np.abs(np.asarray(img, dtype=int) - (200, 30, 30)).max() <= 3


def test_messages_name_no_folder(tmp_path):
    with pytest.raises(MediaError) as err:
        load_image(media.RefusedFile(str(tmp_path / "secret.png")))
    assert str(err.value) == NOT_UPLOADED
    with pytest.raises(MediaError) as err:
        load_video(media.RefusedFile("/etc/passwd"))
    assert str(err.value) == NOT_UPLOADED
    assert media._reason(FileNotFoundError(2, "No such file or directory", "/srv/secret/x.png")) == \
        "No such file or directory"


# ---- 6. written images' names ----------------------------------------------------------------------------
def test_written_image_names_are_keyed(tmp_path, monkeypatch):
    import hashlib

    from studio import components

    array = np.full((12, 10, 3), 99, np.uint8)
    name = Path(components.png_file(array, str(tmp_path))).stem
    assert len(name) == 32
    for guess in (hashlib.sha1(array.tobytes()), hashlib.sha256(array.tobytes()), hashlib.md5(array.tobytes()),
                  hashlib.blake2b(array.tobytes(), digest_size=16)):
        guess.update(str(array.shape).encode())
        assert not guess.hexdigest().startswith(name[:24])
    assert Path(components.png_file(array, str(tmp_path))).stem == name  # the same content, the same file
    monkeypatch.setattr(components, "_NAME_KEY", os.urandom(32))  # another process
    assert Path(components.png_file(array, str(tmp_path))).stem != name


def test_a_file_a_queued_job_will_open_is_not_swept(tmp_path):
    """On a busy server a job can wait longer than an upload's age limit: its file stays (found in
    the soak: visitors got "upload it again" for files the sweep took while their job waited)."""
    now = time.time()
    path = tmp_path / ("cd" * 32) / "waiting.png"
    path.parent.mkdir()
    path.write_bytes(b"w" * 100)
    os.utime(path, (now - 5000, now - 5000))
    file = {"path": str(path), "meta": {"_type": "gradio.FileData"}}
    waiting = SimpleNamespace(data=SimpleNamespace(data=analyze_data(file, "question")))
    queue = SimpleNamespace(event_queue_per_concurrency_id={"model": SimpleNamespace(queue=[waiting])},
                            active_jobs=[None])
    blocks = SimpleNamespace(upload_file_set={str(path)}, _queue=queue)
    guard.Uploads().sweep(blocks, tmp_path, max_age=600)
    assert path.exists()
    queue.event_queue_per_concurrency_id["model"].queue.clear()  # its turn came and went
    guard.Uploads().sweep(blocks, tmp_path, max_age=600)
    assert not path.exists()


def test_uploading_a_file_again_marks_it_fresh(app_url, tmp_path):
    """The same content goes to the same path, and Gradio leaves the old copy (and its old time)
    in place: the upload response marks it used now, so a sweep does not take it before its use."""
    first = upload(app_url, "again.png", png_bytes(color=(1, 2, 3))).json()[0]
    os.utime(first, (time.time() - 5000, time.time() - 5000))
    second = upload(app_url, "again.png", png_bytes(color=(1, 2, 3))).json()[0]
    assert second == first and time.time() - os.stat(first).st_mtime < 60
