"""Serving a PostgreSQL catalog from one and from two `lookalike serve` replicas: ``/api/items/{id}/similar``
under 16 concurrent clients (req/s, p50, p99, errors), and the lag from a write through one replica to its
visibility through the other (p50, max).

What it does:

* Builds a PostgreSQL catalog of the shared photos repeated to ``--files`` files (default 2,000) with the
  model-free ``pixels`` embedder (``/similar`` never runs the model: the figure is the server's and the
  store's), in a throwaway server started with PostgreSQL's default durability (or ``--pg URL``). The same
  catalog is copied to a folder (``lookalike copy``) for a one-server SQLite reference row.
* Starts replicas with ``lookalike serve --catalog URL`` in subprocesses on free loopback ports.
* Load: after a 2 s warm-up that is not counted, ``--clients`` (16) threads of this process, one keep-alive
  connection each (``http.client``), each sending ``GET /api/items/{random id}/similar?k=10`` back to back
  for ``--seconds``; with two replicas, client i talks to replica i mod 2 (a round-robin load balancer).
  Every answer must be HTTP 200 with 10 results; anything else is an error. Latency is from sending the
  request to reading the whole answer. While the load runs, nothing is written; the load generator shares
  the machine's cores with the servers and the database (2 cores here), so the figures are a lower bound.
* Lag: ``--writes`` (30) uploads, alternately through replica A and B (``POST /api/items``, a new photo each
  time); after each 201 the other replica is asked ``/api/items/{new id}/similar?k=1`` every 5 ms until it
  answers 200. Lag = from the 201 to that answer.

Run it from the repository root::

    python benchmarks/pg_replicas.py                         # 2,000 files, 10 s per load level
    python benchmarks/pg_replicas.py --files 400 --seconds 3  # a quick run
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import http_load
import numpy as np
from machine import describe_machine  # noqa: E402
from pg_common import ROOT, SHARED, drop_schema, postgres, repeated_source
from PIL import Image

from lookalike import Catalog, EncodeOptions
from lookalike.catalog.copy import copy_catalog

K = 10
TOKEN = "bench-token"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=SHARED)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--writes", type=int, default=30)
    ap.add_argument("--pg", default=None, help="a PostgreSQL URL to use instead of a throwaway server")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "pg-replicas")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines

    photos = args.work / "photos"
    repeated_source(photos, args.photos, args.files)
    rows: list[dict] = []
    with postgres(args.pg) as server:
        drop_schema(server, "bench_replicas")
        url = f"{server}?schema=bench_replicas"
        started = time.perf_counter()
        with Catalog.create(url, "pixels") as catalog:
            report = catalog.add(photos, options=EncodeOptions(progress=False))
            ids = catalog.ids()
        print(f"catalog: {report.indexed} items in {time.perf_counter() - started:.1f} s", flush=True)
        folder = args.work / "replicas.lk"
        shutil.rmtree(folder, ignore_errors=True)
        copy_catalog(url, folder)
        env = {**os.environ, "LOOKALIKE_CACHE_DIR": str(args.work / "cache")}
        shutil.rmtree(args.work / "cache", ignore_errors=True)

        with replica(folder, env) as sqlite_port:
            rows.append(load("folder (SQLite), 1 server", [sqlite_port], ids, args))
        with replica(url, env) as a:
            rows.append(load("PostgreSQL, 1 replica", [a], ids, args))
            with replica(url, env) as b:
                rows.append(load("PostgreSQL, 2 replicas", [a, b], ids, args))
                lags = write_lags(a, b, args.writes)
    print()
    print(f"| catalog ({len(ids):,} items, pixels) | clients | req/s | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['setup']} | {r['clients']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['errors']} of {r['requests']} |")
    ms = np.array(lags) * 1000
    print(f"\nwrite -> visible on the other replica, {len(lags)} writes: p50 {np.percentile(ms, 50):.0f} ms, "
          f"max {ms.max():.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"load": rows, "lag_ms": ms.tolist()}, indent=1))
    return 0


class replica:
    """``lookalike serve`` on a free port for the length of a ``with`` block; yields the port."""

    def __init__(self, catalog, env: dict):
        self.catalog, self.env = str(catalog), env

    def __enter__(self) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--catalog", self.catalog,
                                      "--port", str(self.port), "--admin-token", TOKEN, "-q"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"replica exited: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/health", timeout=2):
                    return self.port
            except OSError:
                time.sleep(0.2)
        raise SystemExit("replica did not start in 180 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(setup: str, ports: list[int], ids: list[str], args) -> dict:
    drive(ports, ids, args, min(2.0, args.seconds / 3))  # warm-up, not counted: connections, caches, threads
    return drive(ports, ids, args, args.seconds, setup)


def drive(ports: list[int], ids: list[str], args, seconds: float, setup: str | None = None) -> dict:
    def send(conn, rng) -> None:
        conn.request("GET", f"/api/items/{quote(rng.choice(ids), safe='')}/similar?k={K}")

    row = {"setup": setup, **http_load.drive(ports, args.clients, seconds, send, K)}
    if setup:
        print(json.dumps(row), flush=True)
    return row


def write_lags(a: int, b: int, writes: int) -> list[float]:
    lags = []
    for n in range(writes):
        source, other = (a, b) if n % 2 == 0 else (b, a)
        item_id = f"bench-{uuid.uuid4().hex[:8]}"
        status = post(source, item_id, photo(n))
        if status != 201:
            raise SystemExit(f"upload answered {status}")
        written = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", other, timeout=10)
        while True:
            conn.request("GET", f"/api/items/{item_id}/similar?k=1")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                lags.append(time.perf_counter() - written)
                break
            if time.perf_counter() - written > 10:
                raise SystemExit(f"{item_id} not visible on the other replica after 10 s")
            time.sleep(0.005)
        conn.close()
        time.sleep(0.1)
    return lags


def photo(n: int) -> bytes:
    rng = np.random.default_rng(n)
    image = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def post(port: int, item_id: str, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n{item_id}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/items", body=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


if __name__ == "__main__":
    raise SystemExit(main())
