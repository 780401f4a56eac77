"""A bounded soak of the running app: scripted clients on loopback, each with a picture, budget
and question of its own, calling ``/analyze`` for a fixed time at 1, 4, 8 and 16 clients.

Reports per level the calls served and refused, throughput, p50/p95 latency, the server's memory
and its cache folder, and checks every answer belongs to the client that asked: the question
and budget it echoes, and the kept tokens (the same picture and budget always give the same
ones). At most 16 clients and about 3 minutes in all; nothing leaves 127.0.0.1.

    python -m benchmarks.soak [--seconds 40] [--levels 1 4 8 16]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.resources import folder_mb, free_port, photo, rss_mb, start_app

MAX_CLIENTS = 16
MAX_TOTAL_S = 180


def run_level(url: str, photos: list[Path], clients: int, seconds: float) -> dict:
    """``clients`` threads, each its own gradio_client session, calling until ``seconds`` pass."""
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    refused: list[str] = []
    crossed: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client_loop(i: int) -> None:
        client = Client(url, verbose=False)
        image, budget, first_keep, call = handle_file(str(photos[i])), 20 + 7 * i, None, 0
        try:
            while time.perf_counter() < stop_at:
                question = f"Client {i}, call {call}: what is shown?"
                start = time.perf_counter()
                try:
                    out = client.predict(image, question, budget, api_name="/analyze")
                except Exception as err:  # noqa: BLE001 - counted and reported
                    with lock:
                        refused.append(str(err).splitlines()[0][:120])
                    continue
                finally:
                    call += 1
                took = time.perf_counter() - start
                keep = out["selection"][0]["keep"]
                first_keep = keep if first_keep is None else first_keep
                problems = [what for what, bad in (("question", out["question"] != question),
                                                   ("budget", out["budget"] != budget),
                                                   ("kept tokens", keep != first_keep)) if bad]
                with lock:
                    latencies.append(took)
                    if problems:
                        crossed.append(f"client {i} call {call}: {', '.join(problems)}")
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return {"clients": clients, "served": len(latencies), "refused": len(refused), "crossed": crossed,
            "per_s": len(latencies) / wall, "p50": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
            "refusals": sorted(set(refused))[:3]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="per level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args(argv)
    levels = [min(MAX_CLIENTS, max(1, n)) for n in args.levels]
    seconds = min(args.seconds, MAX_TOTAL_S / len(levels))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "gradio-cache"
        photos = [photo(100 + i, 1024, tmp) for i in range(max(levels))]
        port = free_port()
        proc = start_app(port, cache, {})
        try:
            url = f"http://127.0.0.1:{port}/"
            run_level(url, photos, 1, 1.0)  # the model loads; first-call costs
            rows, before = [], (rss_mb(proc.pid), *folder_mb(cache))
            for clients in levels:
                row = run_level(url, photos, clients, seconds)
                row.update(rss=rss_mb(proc.pid), disk=folder_mb(cache)[0])
                rows.append(row)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"Soak: /analyze on loopback, demo model (CPU), {seconds:.0f} s per level; server at rest "
          f"{before[0]:.0f} MB RSS, cache {before[1]:.1f} MB")
    print(f"  {'clients':>7}{'served':>8}{'refused':>9}{'calls/s':>9}{'p50 s':>8}{'p95 s':>8}{'RSS MB':>8}"
          f"{'cache MB':>10}{'crossed':>9}")
    for r in rows:
        print(f"  {r['clients']:>7}{r['served']:>8}{r['refused']:>9}{r['per_s']:>9.2f}{r['p50']:>8.2f}{r['p95']:>8.2f}"
              f"{r['rss']:>8.0f}{r['disk']:>10.1f}{len(r['crossed']):>9}")
    for r in rows:
        for line in r["crossed"][:5] + r["refusals"]:
            print(f"  {r['clients']} clients: {line}")
    if any(r["crossed"] for r in rows):
        raise SystemExit("a result crossed between clients")


if __name__ == "__main__":
    main()
