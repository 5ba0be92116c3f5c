"""Load on `lookalike serve`: requests/s and p50/p99 latency under concurrent clients, against the raw
embed+search rate of the same catalog and model measured in the same run.

What it does:

* Builds (once, kept in ``.bench/serve-<model>.lk``) a catalog of ``../shared/datasets/fashion-products`` with
  ``resnet50`` and seeded random weights (timing does not depend on the weights' values).
* **Raw rate**, in this process, no HTTP: for the same query photos, the file bytes are decoded, embedded and
  searched exactly as the server does it (``Encoder.prepare`` per image, one model call per batch, FAISS
  search, k=10), in batches as large as each concurrency level (1, 4, 16 photos decoded in as many threads,
  then one model call): the most the server's micro-batching could reach with that many clients. Measured
  for each runtime of ``--raw-runtimes`` (PyTorch and OpenVINO by default; the catalog's own int8 model
  when it has one that passed its gate). The catalog and model are then closed, so the server has the
  machine to itself; the server runs ``--runtime`` and is compared with that runtime's raw rate.
* **Server**: ``lookalike serve`` in a subprocess on a free loopback port. Clients are threads of this
  process with one keep-alive connection each (``http.client``), each sending requests back to back until
  ``--seconds`` have passed or ``--requests`` were sent. ``/api/items/{id}/similar?k=10`` for random catalog
  ids, and ``POST /api/search`` uploading shared photos (multipart bodies built before the clock starts),
  at 1, 4 and 16 concurrent clients. Every answer must be HTTP 200 with k results; anything else counts as
  an error. Latency is from sending the request to reading the whole answer.

Targets (issue 4): ``/similar`` p99 under 20 ms at 16 clients; ``/search`` req/s within 80% of the raw rate
at each concurrency level (against the raw rate in batches of that size); no errors.

Note that the load generator shares the machine's cores with the server; on a 2-core machine that costs the
server some of its throughput, and the figures are a lower bound.

Run it from the repository root::

    python benchmarks/serve_load.py                       # 10 s per level
    python benchmarks/serve_load.py --seconds 3 --limit 60   # a quick smoke run
    python benchmarks/serve_load.py --endpoints '' --clients 1,4,16   # raw rates per runtime only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import http_load
import numpy as np
import torch
from machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"
K = 10


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=SHARED, help="dataset folder (styles.csv + images/)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--catalog", type=Path, default=None, help="default .bench/serve-<model>.lk")
    ap.add_argument("--limit", type=int, default=None, help="index only the first N photos")
    ap.add_argument("--clients", default="1,4,16", help="concurrency levels")
    ap.add_argument("--seconds", type=float, default=10.0, help="per endpoint and level")
    ap.add_argument("--requests", type=int, default=5000, help="at most this many per endpoint and level")
    ap.add_argument("--endpoints", default="similar,search", help="which endpoints to drive")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runtime", default="auto", help="the server's --runtime (auto, torch, openvino)")
    ap.add_argument("--raw-runtimes", default="torch,openvino",
                    help="runtimes whose raw decode+embed+search rate is measured side by side (one batch model "
                         "call per level, as the server's batcher does); '' for the server's own only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levels = [int(c) for c in args.clients.split(",")]

    catalog_path = args.catalog or ROOT / ".bench" / f"serve-{args.model.replace(':', '_')}.lk"
    build_catalog(catalog_path, args)
    ids, queries = load_queries(catalog_path, args.photos)
    by_runtime = {}
    for runtime in [r for r in args.raw_runtimes.split(",") if r] or [args.runtime]:
        by_runtime[runtime] = raw_rates(catalog_path, queries, args.device, levels, runtime)
        print(f"raw {runtime}: " + ", ".join(f"{rate:.1f} img/s in batches of {size}"
                                              for size, rate in by_runtime[runtime].items()), flush=True)
    port = http_load.free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli", "serve", "--catalog", str(catalog_path), "--port", str(port),
         "--device", args.device, "--runtime", args.runtime, "-q"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        health = http_load.wait_for(port, server, 180)
        results = []
        for endpoint in [e for e in args.endpoints.split(",") if e]:
            for clients in levels:
                results.append(drive(port, endpoint, clients, ids, queries, args.seconds, args.requests))
    finally:
        server.terminate()
        server.wait(timeout=30)
    raw = by_runtime.get(health.get("runtime")) or raw_rates(catalog_path, queries, args.device, levels,
                                                             health.get("runtime", args.runtime))
    report(results, raw, health, args, by_runtime)
    return 0


# -- setup ----------------------------------------------------------------------------------------------


def build_catalog(path: Path, args) -> None:
    from lookalike import Catalog, EncodeOptions

    if (path / "catalog.json").exists():
        return
    source = args.photos / "images"
    if args.limit:
        import tempfile

        subset = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        for photo in sorted(source.glob("*.jpg"))[: args.limit]:
            os.link(photo, subset / photo.name)
        source = subset
    print(f"building {path} from {source} ...", file=sys.stderr)
    with Catalog.create(path, model=args.model, weights="random") as catalog:
        catalog.add(args.photos / "styles.csv", images=source, options=EncodeOptions(progress=False))


def load_queries(catalog_path: Path, photos: Path) -> tuple[list[str], list[tuple[str, bytes]]]:
    from lookalike import Catalog

    with Catalog.open(catalog_path) as catalog:
        ids = catalog.ids()
        paths = [catalog.item(i).path for i in ids[:64]]
    return ids, [(Path(p).name, Path(p).read_bytes()) for p in paths]


def raw_rates(catalog_path: Path, queries: list[tuple[str, bytes]], device: str,
              batches: list[int], runtime: str = "auto") -> dict[int, float]:
    """Images/s of decode + embed + search without HTTP, for each batch size: the photos of a batch are
    decoded in as many threads, embedded in one model call, and searched one by one (k=10)."""
    from lookalike import Catalog, EncodeOptions

    with Catalog.open(catalog_path) as catalog:
        encoder = catalog.encoder(EncodeOptions(device=device, runtime=runtime, workers=0, progress=False))
        data = [q[1] for q in queries]
        rates = {}
        for size in batches:
            with ThreadPoolExecutor(size) as pool:
                def run(photos: list[bytes], size: int = size, pool: ThreadPoolExecutor = pool) -> None:
                    for start in range(0, len(photos), size):
                        arrays = list(pool.map(encoder.prepare, photos[start:start + size]))
                        vectors = encoder.embed_uint8(torch.from_numpy(np.stack(arrays)))
                        for vector in vectors:
                            assert len(catalog.search_vector(vector, K)) == K

                run(data[:size])  # warm up this batch shape
                started = time.perf_counter()
                run(data)
                rates[size] = len(data) / (time.perf_counter() - started)
    return rates






# -- load -----------------------------------------------------------------------------------------------




def drive(port: int, endpoint: str, clients: int, ids: list[str], queries: list[tuple[str, bytes]],
          seconds: float, max_requests: int) -> dict:
    bodies = [http_load.multipart(n, d, K) for n, d in queries]

    def send(conn, rng) -> None:
        if endpoint == "similar":
            conn.request("GET", f"/api/items/{quote(rng.choice(ids), safe='')}/similar?k={K}")
        else:
            body, ctype = bodies[rng.randrange(len(bodies))]
            conn.request("POST", "/api/search", body=body, headers={"Content-Type": ctype})

    return {"endpoint": endpoint, **http_load.drive([port], clients, seconds, send, K, max_requests)}


# -- report ---------------------------------------------------------------------------------------------


def report(results: list[dict], raw: dict[str, float], health: dict, args,
           by_runtime: dict[str, dict[int, float]] | None = None) -> None:
    for r in results:
        if r["endpoint"] == "search":
            base = raw[r["clients"]]
            r["raw_rps"] = base
            r["vs_raw"] = r["rps"] / base
    similar16 = next((r for r in results if r["endpoint"] == "similar" and r["clients"] == 16), None)
    searches = [r for r in results if r["endpoint"] == "search"]
    verdict = {
        "similar_p99_under_20ms_at_16": None if similar16 is None else similar16["p99_ms"] < 20.0,
        "search_within_80pct_of_raw": all(r["vs_raw"] >= 0.8 for r in searches) if searches else None,
        "no_errors": all(r["errors"] == 0 for r in results),
    }
    if args.json:
        print(json.dumps({"server": health, "raw_rps": raw, "raw_rps_by_runtime": by_runtime or {},
                          "results": results, "targets": verdict}, indent=2))
        return
    print(f"server: {health['items']} items, {health['model']}, {health.get('runtime', '')} {health['precision']} "
          f"on {health['device']}; "
          f"{os.cpu_count()} CPU cores shared with the load generator")
    for runtime, rates in (by_runtime or {"server's": raw}).items():
        print(f"raw decode+embed+search, no HTTP, {runtime}: " + ", ".join(
            f"{rate:.1f} img/s in batches of {size}" for size, rate in rates.items()))
    print(f"{'endpoint':10} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'vs raw':>7}")
    for r in results:
        vs = f"{r['vs_raw']:.2f}x" if "vs_raw" in r else ""
        print(f"{r['endpoint']:10} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['rps']:>8.1f} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {vs:>7}")
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")
    for name, ok in verdict.items():
        print(f"target {name}: {'not measured' if ok is None else 'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
