"""``python app.py`` started as a ZeroGPU Space starts it, on loopback, with the forking, pickling
``spaces`` stand-in of ``tests/zerogpu`` (for tests/test_zerogpu.py and tests/test_public_browser.py)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "zerogpu"


@contextlib.contextmanager
def zerogpu_space(folder: Path, model: str, cache: str) -> Iterator[tuple[str, Path, Path]]:
    """The app as a public ZeroGPU Space serving ``model``; yields (url, GPU-call log, server log)."""
    from tests.conftest import free_port

    log, server_log = folder / "crossings.jsonl", folder / "server.log"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDIN), str(ROOT)]), SPACE_ID="someone/prunesid-studio",
               SPACE_AUTHOR_NAME="someone", SPACE_REPO_NAME="prunesid-studio", SYSTEM="spaces",
               SPACES_ZERO_GPU="true", ZEROGPU_STANDIN_LOG=str(log), GRADIO_SERVER_PORT=str(port),
               PRUNESID_MODEL=model, PRUNESID_CACHE=cache, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(folder / "gradio"), PYTHONUNBUFFERED="1")
    env.pop("PRUNESID_PUBLIC", None)
    with open(server_log, "w") as printed:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=printed,
                                   stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_until_up(process, url, server_log)
            yield url, log, server_log
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_up(process, url: str, server_log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise AssertionError("the app exited at start:\n" + server_log.read_text()[-4000:])
        try:
            if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the app did not start:\n" + server_log.read_text()[-4000:])
        time.sleep(0.5)
