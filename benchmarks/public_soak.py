"""A soak of the app as a public deployment, on loopback: 15 visitors and one flooder, over raw HTTP.

Starts ``app.py`` with ``PRUNESID_PUBLIC=1`` (the offline tiny demo model, its own Gradio folder,
the client address taken from ``X-Forwarded-For`` as on Spaces, so that each scripted visitor is
a client of its own). For ``--seconds``:

* 15 visitors, each with its own session, upload a picture or a 1080p clip of their own and
  trigger the page's upload handler (as the browser does), then ``/analyze`` on their picture;
  each checks that what comes back is theirs (its budget, its question, the same kept tokens for
  the same picture every time);
* one flooder joins jobs as fast as it can under invented session ids without ever reading a
  result, and uploads as fast as it can.

Every second the server's resident memory and its upload folder are sampled. Prints per client
kind the jobs asked, served, refused (with why) and lost (accepted, never answered), the peaks
against the bounds set for the run (``PRUNESID_SESSIONS_MB``, ``PRUNESID_UPLOADS_MB``), and fails
if a visitor's job was lost or a result crossed to another visitor.

    python -m benchmarks.public_soak [--seconds 60] [--sessions-mb 200] [--uploads-mb 300]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.resources import folder_mb, free_port, photo, rss_mb, start_app

VISITORS = 15


def clip(seed: int, folder: Path, seconds: float = 2.0, fps: int = 6) -> Path:
    """A 1920×1080 MJPG clip of moving colour fields (as a phone would give, at a low frame rate)."""
    import cv2

    rng = np.random.default_rng(seed)
    base = (rng.random((9, 16, 3)) * 255).astype(np.uint8)
    path = folder / f"clip_{seed}.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (1920, 1080))
    for t in range(int(seconds * fps)):
        frame = cv2.resize(np.roll(base, t, axis=1), (1920, 1080), interpolation=cv2.INTER_NEAREST)
        writer.write(frame)
    writer.release()
    return path


class Protocol:
    """Gradio 6's queue protocol over httpx, as one client address."""

    def __init__(self, url: str, address: str):
        import httpx

        self.url, self.http = url, httpx.Client(timeout=120, headers={"X-Forwarded-For": address})
        self.errors: list[str] = []
        self.fn = {d.get("api_name"): i for i, d in enumerate(self.http.get(url + "config").json()["dependencies"])}

    def upload(self, path: Path) -> dict | str:
        with open(path, "rb") as f:
            answer = self.http.post(self.url + "gradio_api/upload", files={"files": (path.name, f)})
        if answer.status_code != 200:
            return f"upload {answer.status_code}"
        return {"path": answer.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def join(self, api_name: str, data: list, session: str) -> str | None:
        body = {"fn_index": self.fn[api_name], "data": data, "session_hash": session, "event_data": None,
                "trigger_id": None}
        answer = self.http.post(self.url + "gradio_api/queue/join", json=body)
        return None if answer.status_code == 200 else f"join {answer.status_code}: {answer.text[:80]}"

    def result(self, session: str) -> dict | None:
        """The session's next ``process_completed`` message; None if the stream ends without one."""
        import httpx

        try:
            return self._read_result(session)
        except httpx.HTTPError as err:
            self.errors.append(f"{type(err).__name__}: {str(err)[:80]}")
            return None

    def _read_result(self, session: str) -> dict | None:
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
                    if message.get("msg") == "unexpected_error":
                        return {"success": False, "output": {"error": message.get("message")}}
        return None


def visitor(url: str, i: int, media: Path, is_clip: bool, stop_at: float, out: dict, lock: threading.Lock) -> None:
    client = Protocol(url, f"10.0.0.{i + 1}")
    session = uuid.uuid4().hex
    budget, first_keep = 20 + 7 * i, None
    kind = "clip" if is_clip else "image"
    counts = {"asked": 0, "served": 0, "refused": [], "lost": 0, "crossed": []}
    while time.monotonic() < stop_at:
        file = client.upload(media)
        counts["asked"] += 1
        if isinstance(file, str):
            counts["refused"].append(file)
            time.sleep(1)
            continue
        handler = "on_video_upload" if is_clip else "on_image_upload"
        refused = client.join(handler, [file, budget, False, None, False], session)
        if refused:
            counts["refused"].append(refused)
            time.sleep(1)
            continue
        message = client.result(session)
        if message is None:
            counts["lost"] += 1
            continue
        if not message.get("success"):
            counts["refused"].append(str(message["output"].get("error"))[:80])
            continue
        values = message["output"]["data"]
        warning = next((v for v in values if isinstance(v, str) and v.startswith("⚠")), None)
        if warning:  # refused with a message in the page (the status line)
            counts["refused"].append(warning[:80])
            continue
        label = next((v for v in values if isinstance(v, str) and " tokens** = " in v), "")
        if f"**{budget} tokens**" not in label:
            counts["crossed"].append(f"visitor {i}: views for another budget ({label[:60]})")
        counts["served"] += 1
        if is_clip:
            continue
        question = f"Visitor {i}: what is shown?"
        counts["asked"] += 1
        refused = client.join("analyze", [file, question, budget], session)
        if refused:
            counts["refused"].append(refused)
            continue
        message = client.result(session)
        if message is None:
            counts["lost"] += 1
            continue
        if not message.get("success"):
            counts["refused"].append(str(message["output"].get("error"))[:80])
            continue
        result = message["output"]["data"][0]
        keep = result["selection"][0]["keep"]
        first_keep = keep if first_keep is None else first_keep
        if result["question"] != question or result["budget"] != budget or keep != first_keep:
            counts["crossed"].append(f"visitor {i}: /analyze answered someone else")
        counts["served"] += 1
    counts["stream errors"] = client.errors
    with lock:
        out[f"{kind} visitors"] = {k: out.get(f"{kind} visitors", {}).get(k, 0 if not isinstance(v, list) else [])
                                   + v for k, v in counts.items()}


def flooder(url: str, image: Path, stop_at: float, out: dict) -> None:
    client = Protocol(url, "10.0.9.9")
    file = client.upload(image)
    counts = {"asked": 0, "accepted": 0, "refused": 0, "uploads": 0, "uploads refused": 0}
    while time.monotonic() < stop_at:
        counts["asked"] += 1
        refused = client.join("analyze", [file, "flood?", 64], uuid.uuid4().hex)  # never reads a result
        counts["refused" if refused else "accepted"] += 1
        if counts["asked"] % 5 == 0:
            answer = client.upload(image)
            counts["uploads" if isinstance(answer, dict) else "uploads refused"] += 1
    out["flooder"] = counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sessions-mb", type=int, default=200, help="PRUNESID_SESSIONS_MB for the run")
    parser.add_argument("--uploads-mb", type=int, default=300, help="PRUNESID_UPLOADS_MB for the run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "gradio-cache"
        media = [clip(i, tmp) if i % 3 == 0 else photo(200 + i, 1600, tmp) for i in range(VISITORS)]
        port = free_port()
        proc = start_app(port, cache, {"PRUNESID_PUBLIC": "1", "PRUNESID_FORWARDED_FOR": "1",
                                       "PRUNESID_SESSIONS_MB": str(args.sessions_mb),
                                       "PRUNESID_UPLOADS_MB": str(args.uploads_mb),
                                       "PRUNESID_UPLOAD_MAX_AGE_S": "30", "PRUNESID_UPLOAD_CHECK_S": "5"})
        url = f"http://127.0.0.1:{port}/"
        samples: list[tuple[float, float]] = []
        try:
            warm = Protocol(url, "10.0.8.8")  # the model loads; first-call costs
            file = warm.upload(media[1])
            session = uuid.uuid4().hex
            warm.join("analyze", [file, "Warm-up?", 64], session)
            warm.result(session)
            rest = (rss_mb(proc.pid), folder_mb(cache)[0])
            out: dict = {}
            lock = threading.Lock()
            stop_at = time.monotonic() + args.seconds
            threads = [threading.Thread(target=visitor, args=(url, i, media[i], i % 3 == 0, stop_at, out, lock))
                       for i in range(VISITORS)]
            threads.append(threading.Thread(target=flooder, args=(url, media[1], stop_at, out)))
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                samples.append((rss_mb(proc.pid), folder_mb(cache)[0]))
                time.sleep(1)
            for t in threads:
                t.join()
            after = (rss_mb(proc.pid), folder_mb(cache)[0])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        left = folder_mb(cache)
    peak_rss, peak_disk = max(s[0] for s in samples), max(s[1] for s in samples)
    print(f"Public soak, {args.seconds:.0f} s: {VISITORS} visitors ({VISITORS // 3} with 1080p clips) and one "
          f"flooder, demo model on the CPU; PRUNESID_SESSIONS_MB={args.sessions_mb}, "
          f"PRUNESID_UPLOADS_MB={args.uploads_mb}")
    for name in ("image visitors", "clip visitors"):
        c = out.get(name, {})
        reasons = sorted(set(c.get("refused", [])))[:3]
        print(f"  {name:<16} asked {c.get('asked', 0):>5}  served {c.get('served', 0):>5}  refused "
              f"{len(c.get('refused', [])):>4}  lost {c.get('lost', 0):>3}  crossed {len(c.get('crossed', [])):>3}"
              + (f"  ({'; '.join(reasons)})" if reasons else ""))
        if c.get("stream errors"):
            print(f"  {'':<16} result streams that broke: {len(c['stream errors'])} ({c['stream errors'][0]})")
    f = out.get("flooder", {})
    print(f"  {'flooder':<16} joined {f.get('asked', 0):>5} (accepted {f.get('accepted', 0)}, refused "
          f"{f.get('refused', 0)}), uploads {f.get('uploads', 0)} (refused {f.get('uploads refused', 0)})")
    quarters = [max(s[0] for s in samples[len(samples) * q // 4:max(len(samples) * (q + 1) // 4, 1)])
                for q in range(4)]
    print(f"  server RSS: {rest[0]:.0f} MB at rest, peak {peak_rss:.0f} MB (+{peak_rss - rest[0]:.0f}), "
          f"{after[0]:.0f} MB at the end; peak per quarter of the run: "
          + ", ".join(f"{q:.0f}" for q in quarters) + " MB")
    print(f"  upload folder: {rest[1]:.1f} MB at rest, peak {peak_disk:.1f} MB (cap {args.uploads_mb} MB), "
          f"{after[1]:.1f} MB at the end, {left[0]:.1f} MB in {left[1]} files after the server stopped")
    lost = sum(out.get(n, {}).get("lost", 0) for n in ("image visitors", "clip visitors"))
    crossed = [c for n in ("image visitors", "clip visitors") for c in out.get(n, {}).get("crossed", [])]
    for line in crossed[:5]:
        print("  crossed:", line)
    if lost or crossed:
        raise SystemExit(f"{lost} visitor jobs lost, {len(crossed)} results crossed")


if __name__ == "__main__":
    main()
