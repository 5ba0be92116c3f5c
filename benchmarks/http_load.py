"""What the HTTP load benchmarks share (``serve_load.py``, ``pg_replicas.py``): closed-loop clients, one
keep-alive ``http.client`` connection each, sending requests back to back and timing each from sending it to
reading the whole answer. An answer counts only if it is HTTP 200 with ``k`` results; anything else,
a refused connection included, is an error (and the client reconnects)."""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
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
