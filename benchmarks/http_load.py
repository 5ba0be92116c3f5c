"""What the HTTP load benchmarks share (``serve_load.py``, ``pg_replicas.py``): closed-loop clients, one
keep-alive ``http.client`` connection each, sending requests back to back and timing each from sending it to
reading the whole answer. An answer counts only if it is HTTP 200 with ``k`` results; anything else,
a refused connection included, is an error (and the client reconnects)."""

from __future__ import annotations

import http.client
import json
import random
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable

import numpy as np

Send = Callable[[http.client.HTTPConnection, random.Random], None]  # sends one request on the connection


def drive(ports: list[int], clients: int, seconds: float, send: Send, k: int,
          max_requests: int | None = None) -> dict:
    """``clients`` threads for ``seconds`` (or until ``max_requests`` were sent); client i talks to
    ``ports[i % len(ports)]`` (a round-robin load balancer) with its own ``random.Random(i)``.

    Returns requests, errors, the first error, wall seconds, rps (answers that counted per second) and p50,
    p99 and mean latency in ms (NaN when nothing counted).
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    sent = 0
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        nonlocal sent
        rng = random.Random(i)
        port = ports[i % len(ports)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < stop_at:
            if max_requests is not None:
                with lock:
                    if sent >= max_requests:
                        break
                    sent += 1
            started = time.perf_counter()
            try:
                send(conn, rng)
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and len(json.loads(payload)["results"]) == k
                problem = None if ok else f"HTTP {response.status}: {payload[:120]!r}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                (errors.append(problem) if problem else latencies.append(elapsed))
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients, "requests": len(latencies) + len(errors), "errors": len(errors),
        "first_error": errors[0] if errors else None, "seconds": round(wall, 2),
        "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "mean_ms": statistics.fmean(ms) if len(ms) else float("nan"),
    }


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server this benchmark starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, server: subprocess.Popen, timeout: float = 300) -> dict:
    """The started server's ``/api/health`` answer once it gives one; exits when the server dies or is late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"server did not start in {timeout:.0f} s")


def multipart(name: str, data: bytes, k: int) -> tuple[bytes, str]:
    """A ``POST /api/search`` body uploading ``data`` as ``name`` with ``k``, and its Content-Type."""
    boundary = "lookalike-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
