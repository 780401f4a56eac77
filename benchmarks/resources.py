"""Memory and disk of the running app as scripted visitors come and go, measured side by side.

Starts ``app.py`` in a subprocess on loopback (offline demo model, its own Gradio cache folder),
then: the server's resident memory and the cache folder's size at rest; after ``--sessions``
scripted visitors (each a ``gradio_client`` session calling ``/analyze`` on a photo of its own,
then closed); and again after the app's clean-up has had time to run. Prints the three rows and
the growth per session.

    python -m benchmarks.resources [--sessions 30] [--side 2048] [--settle 20]

The clean-up periods are shortened for the run (``PRUNESID_CACHE_CHECK_S`` /
``PRUNESID_CACHE_MAX_AGE_S`` / ``PRUNESID_SESSION_TTL_S``), so that "after" shows where the app
returns to, not how long it waits by default.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_mb(path: Path) -> tuple[float, int]:
    """Size in MB and file count under ``path``."""
    sizes = []
    for root, _, names in os.walk(path):  # files may go while they are counted (the app sweeps)
        for name in names:
            try:
                sizes.append(os.stat(os.path.join(root, name)).st_size)
            except FileNotFoundError:
                pass
    return sum(sizes) / 2**20, len(sizes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(seed: int, side: int, folder: Path) -> Path:
    """A photo-like JPEG (smooth colour fields plus noise) of ``side`` × ``3·side/4`` pixels."""
    rng = np.random.default_rng(seed)
    h, w = side * 3 // 4, side
    base = rng.random((6, 8, 3)).repeat(h // 6 + 1, 0).repeat(w // 8 + 1, 1)[:h, :w]
    pixels = (0.8 * base + 0.2 * rng.random((h, w, 3))) * 255
    path = folder / f"photo_{seed}.jpg"
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    return path


def start_app(port: int, cache: Path, env_extra: dict[str, str]) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_TEMP_DIR=str(cache), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", PRUNESID_MODEL="demo/tiny-llava-1.5", **env_extra)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not start within 3 minutes")


def browser_visitors(url: str, photos: list[Path], pid: int, tabs: int, settle: float) -> list[tuple[str, float]]:
    """``tabs`` browser visitors (headless Chromium) each upload a photo and keep their tab open;
    then all close. The server's RSS before, with the tabs open, and ``settle`` seconds after."""
    from playwright.sync_api import sync_playwright

    rows = [("browser: before", rss_mb(pid))]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        contexts = []
        for path in photos[:tabs]:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#run")
            page.set_input_files("#image input[type=file]", str(path))
            page.wait_for_function("() => document.querySelector('#summary').innerText.includes('tokens kept')")
            contexts.append(context)
        time.sleep(2)
        rows.append((f"browser: {tabs} tabs open", rss_mb(pid)))
        for context in contexts:
            context.close()
        time.sleep(settle)
        rows.append((f"browser: {settle:.0f} s after closing", rss_mb(pid)))
        browser.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--side", type=int, default=2048, help="photo width in pixels")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait for the clean-up")
    parser.add_argument("--tabs", type=int, default=8, help="browser visitors afterwards (0: none)")
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "gradio-cache"
        photos = [photo(i, args.side, tmp) for i in range(args.sessions)]
        port = free_port()
        settle = max(2, int(args.settle // 2))
        proc = start_app(port, cache, {"PRUNESID_CACHE_CHECK_S": str(settle), "PRUNESID_CACHE_MAX_AGE_S": str(settle),
                                       "PRUNESID_SESSION_TTL_S": str(settle)})
        try:
            url = f"http://127.0.0.1:{port}/"
            warm = Client(url, verbose=False)  # the model loads and the first call pays its one-off costs
            warm.predict(handle_file(str(photos[0])), "Warm-up?", 64, api_name="/analyze")
            warm.close()
            time.sleep(2)
            rows = [("at rest, after one call", rss_mb(proc.pid), *folder_mb(cache))]
            start = time.perf_counter()
            for path in photos:
                client = Client(url, verbose=False)
                client.predict(handle_file(str(path)), "What is in the picture?", 64, api_name="/analyze")
                client.close()
            seconds = time.perf_counter() - start
            rows.append((f"after {args.sessions} sessions ({seconds:.0f} s)", rss_mb(proc.pid), *folder_mb(cache)))
            time.sleep(args.settle)
            rows.append((f"{args.settle:.0f} s later", rss_mb(proc.pid), *folder_mb(cache)))
            tabs = browser_visitors(url, photos, proc.pid, args.tabs, 8.0) if args.tabs > 0 else []
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        leftover = folder_mb(cache)
        left_names = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())[:8]
    print(f"{args.sessions} scripted sessions, one {args.side}×{args.side * 3 // 4} photo each, /analyze at K=64 "
          "(demo model, CPU)")
    print(f"  {'when':<34}{'server RSS MB':>14}{'cache MB':>10}{'files':>7}")
    for name, rss, mb, count in rows:
        print(f"  {name:<34}{rss:>14.0f}{mb:>10.1f}{count:>7}")
    base, peak, after = rows
    print(f"  growth per session: {(peak[1] - base[1]) / args.sessions:.1f} MB RSS, "
          f"{(peak[2] - base[2]) / args.sessions:.2f} MB disk; kept after the clean-up: "
          f"{after[1] - base[1]:.0f} MB RSS, {after[2] - base[2]:.1f} MB disk")
    if tabs:
        (_, before), (_, opened), (_, closed) = tabs
        print(f"  browser visitors: {before:.0f} MB before, {opened:.0f} MB with {args.tabs} tabs open "
              f"({(opened - before) / args.tabs:.1f} MB each), {closed:.0f} MB 8 s after they closed "
              f"({100 * (opened - closed) / max(opened - before, 1e-9):.0f}% of their memory returned)")
    print(f"  cache left after the server stopped: {leftover[0]:.1f} MB in {leftover[1]} files"
          + (f" ({', '.join(left_names)})" if left_names else ""))


if __name__ == "__main__":
    main()
