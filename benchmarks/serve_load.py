"""Bounded load test of `tbclf serve` on 127.0.0.1: latency, throughput, errors, peak memory.

Starts the server as a subprocess (`python -m tbclf serve`), sends --requests POST /predict
requests from --clients concurrent clients (each its own keep-alive connection) with real
images, and reads the server's peak resident memory (VmHWM) from /proc at the end.

    python benchmarks/serve_load.py --model runs/mobilenet/version_0/model.onnx \
        --images ../shared/data/tb-cxr-dev --clients 8 --requests 2000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tbclf.io import atomic_write_text  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True, help="folder of PNG/JPEG files")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--n_images", type=int, default=32, help="distinct images cycled")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    files = sorted(
        p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
    )
    step = max(1, len(files) // args.n_images)
    payloads = [(p.name, p.read_bytes()) for p in files[::step][: args.n_images]]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tbclf", "serve", "--model", args.model, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.2)
        idle_mb = peak_rss_mb(server.pid)
        per_client = [args.requests // args.clients] * args.clients
        per_client[0] += args.requests - sum(per_client)

        def client(k: int) -> tuple[list[float], int]:
            times, errors = [], 0
            with httpx.Client(timeout=60) as http:
                for i in range(per_client[k]):
                    name, data = payloads[(k * 7 + i) % len(payloads)]
                    start = time.perf_counter()
                    try:
                        r = http.post(f"{url}/predict", files={"file": (name, data)})
                        ok = r.status_code == 200 and "prob_tb" in r.json()
                    except httpx.HTTPError:
                        ok = False
                    times.append(time.perf_counter() - start)
                    errors += not ok
            return times, errors

        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - start
        peak_mb = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = np.array([t for times, _ in results for t in times]) * 1000
    errors = sum(e for _, e in results)
    sizes = [len(d) for _, d in payloads]
    text = (
        f"{args.requests} requests, {args.clients} concurrent clients, {len(payloads)} distinct "
        f"images ({min(sizes) // 1024}-{max(sizes) // 1024} KiB), model {args.model}; "
        f"{os.cpu_count()} cores, load average (1 min) before/after: {load_before:.2f} / "
        f"{os.getloadavg()[0]:.2f}.\n\n"
        "| clients | requests | p50 (ms) | p99 (ms) | throughput (req/s) | errors "
        "| server RSS idle / peak (MiB) |\n|---|---|---|---|---|---|---|\n"
        f"| {args.clients} | {len(lat)} | {np.percentile(lat, 50):.0f} | "
        f"{np.percentile(lat, 99):.0f} | {len(lat) / wall:.1f} | {errors} | "
        f"{idle_mb:.0f} / {peak_mb:.0f} |\n"
    )
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
