"""The cost of grouping photos into products (issue 23): search latency and req/s with 3 photos per product
against one, and the index rate of a manifest whose rows name each photo 10 times against once, each pair
measured side by side in one run.

**Search** (``--photos``, default 100,000 photos). The 364 shared photos are embedded with ``--model``
(default ``pixels``: NumPy, so the server's embedding of an upload costs little and the grouping is what
differs). From them, seeded synthetic vectors are drawn the way a shop's photos lie: a product's vector is a
shared photo's vector plus noise (cosine ~0.85 to it), each of its photos the product's vector plus less noise
(cosine ~0.93), so the photos of one product sit together and a query finds several photos of one product
among its nearest photos (the case that makes grouping work). The same photo vectors, in the same order, are
written straight into two catalogs' stores (``store.write(records, products)``, no embedding): **one**, each
photo a product of its own (100,000 products), and **grouped**, photos 3j, 3j+1, 3j+2 one product (33,334
products). Each catalog's index is built by opening it (the kind ``lookalike index`` would choose for the
size, tuned to its recall target) and timed. Then, for each catalog in turn:

* in this process, no HTTP: ``Catalog.search_vector(v, k=10)`` (products at their best photo) and
  ``Catalog.nearest(..., by="photo")`` (photos, the grouping skipped) for the vectors of the 364 shared
  photos: p50 and p99 ms of one query per call;
* over HTTP: ``lookalike serve`` in a subprocess on a loopback port, driven by closed-loop clients
  (``http_load.drive``, as ``serve_load.py``) that ``POST /api/search`` the shared photos (multipart bodies
  built before the clock starts) with ``k=10`` for ``--seconds`` per level; an answer counts only if it is
  HTTP 200 with k results. The servers run one after the other, so each has the machine to itself.

Printed: per catalog and level, requests, errors, req/s, p50 and p99 ms; then the ratios grouped / one.

**Index rate**: fresh catalogs (``--index-model``, default ``pixels``) index the shared photos from three
manifests in temporary folders: **once** (one row per photo, 364 products), **10x variants** (ten rows per
photo, sizes XS..5XL of one product, grouped with ``--product-column product``: 364 products, 3,640 rows)
and **10x products** (ten rows per photo, each its own product with ``--product-column sku``: 3,640 products
sharing 364 photos; without a product column, rows that name the same photo are one product). Printed per
manifest: rows, products, photos embedded, seconds of ``Catalog.add`` (best of ``--rounds``, the manifests in
turn each round) and rows/s and photos/s; then the ratio of seconds against **once**: a photo is embedded
once however many rows name it, so 10x should cost about the same as 1x.

Run it from the repository root::

    python benchmarks/product_grouping.py                            # 100k photos, 3 rounds of 10 s per level: ~6 min
    python benchmarks/product_grouping.py --photos 20000 --seconds 3 --search-rounds 1   # quick
    python benchmarks/product_grouping.py --skip-search --index-model mobilenetv2   # index rate, the real model
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import http_load
import numpy as np
from machine import describe_machine

from lookalike import Catalog, EncodeOptions
from lookalike.catalog.catalog import DB_FILE
from lookalike.index.choice import FP16_MIN_ITEMS
from lookalike.store import SQLiteStore
from lookalike.store.base import ItemRecord
from lookalike.store.products import ProductRecord

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"
K = 10
PRODUCT_NOISE = 0.62  # cos(product, its shared photo) = 1 / sqrt(1 + 0.62^2) ~ 0.85
PHOTO_NOISE = 0.40  # cos(photo, its product) ~ 0.93
SIZES = ("XS", "S", "M", "L", "XL", "XXL", "3XL", "4XL", "5XL", "6XL")


# -- the synthetic catalogs -------------------------------------------------------------------------------------


def seed_vectors(images: Path, model: str, folder: Path) -> np.ndarray:
    """The shared photos' unit vectors (float32, 364 x D) by ``model``, through a scratch catalog."""
    with Catalog.create(folder / "seed.lk", model=model) as catalog:
        catalog.add(images, options=EncodeOptions(progress=False))
        _, vectors = catalog.store.vectors(catalog.config.embedder.dim, np.float32)
    return vectors


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def photo_vectors(base: np.ndarray, photos: int, per_product: int, seed: int = 0) -> np.ndarray:
    """``photos`` unit vectors (float32): product j = base[j % len(base)] + noise, its ``per_product`` photos
    (rows j*per_product ...) = the product + less noise; noise is Gaussian with norm ~ the constants above."""
    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    products = -(-photos // per_product)
    centres = unit(base[np.arange(products) % len(base)]
                   + PRODUCT_NOISE * rng.standard_normal((products, dim), dtype=np.float32) / np.sqrt(dim))
    out = np.repeat(centres, per_product, axis=0)[:photos]
    out += PHOTO_NOISE * rng.standard_normal(out.shape, dtype=np.float32) / np.sqrt(dim)
    return unit(out)


def write_catalog(path: Path, model: str, vectors: np.ndarray, per_product: int, chunk: int = 9_999) -> None:
    """A ``model`` catalog whose photos ``p0, p1, ...`` have these vectors, ``per_product`` consecutive photos
    per product (``g0, g1, ...``), written straight into its store a chunk at a time (no embedding)."""
    Catalog.create(path, model=model).close()
    store = SQLiteStore(path / DB_FILE)
    if len(vectors) >= FP16_MIN_ITEMS:
        store.vector_dtype = np.dtype(np.float16)  # as the catalog stores them at this size
    chunk -= chunk % per_product
    for start in range(0, len(vectors), chunk):
        ids = range(start, min(start + chunk, len(vectors)))
        records = [ItemRecord(id=f"p{i}", path=f"/synthetic/p{i}.jpg", size=1, mtime_ns=1, sha256=f"{i:064x}",
                              status="ok", width=600, height=800, vector=vectors[i]) for i in ids]
        groups = range(start // per_product, -(-ids.stop // per_product))
        products = [ProductRecord(f"g{j}", tuple(f"p{i}" for i in range(j * per_product,
                                                                         min((j + 1) * per_product, ids.stop))),
                                  {f"g{j}": {"articleType": f"type{j % 50}"}}) for j in groups]
        store.write(records, products)
    store.close()


def in_process(path: Path, queries: np.ndarray) -> dict:
    """Open the catalog (building and saving its index, timed), then p50/p99 ms of one-query calls."""
    started = time.perf_counter()
    with Catalog.open(path) as catalog:
        size = len(catalog)
        index_s = time.perf_counter() - started
        out = {"products": len(catalog.products), "photos": catalog.index.size, "index": catalog.index.kind,
               "index_s": index_s, "size": size}
        calls = {"search_vector": lambda q: catalog.search_vector(q, K),
                 "nearest by photo": lambda q: catalog.nearest(q, K, None, exclude=set(), by="photo")}
        for name, call in calls.items():
            assert len(call(queries[0])) == K
            times = []
            for q in queries:
                t = time.perf_counter()
                call(q)
                times.append(time.perf_counter() - t)
            out[name] = (float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000))
        hits = [catalog.nearest(q, 3 * K, None, exclude=set(), by="photo") for q in queries]
        out["distinct products in 30 nearest photos"] = float(np.mean([len({m.product for m in h}) for h in hits]))
    return out


# -- HTTP -------------------------------------------------------------------------------------------------------








def serve_and_drive(path: Path, photos: list[Path], levels: list[int], seconds: float) -> list[dict]:
    bodies = [http_load.multipart(p.name, p.read_bytes(), K) for p in photos]

    def send(conn, rng) -> None:
        body, ctype = bodies[rng.randrange(len(bodies))]
        conn.request("POST", "/api/search", body=body, headers={"Content-Type": ctype})

    port = http_load.free_port()
    server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--catalog", str(path), "--port",
                               str(port), "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        http_load.wait_for(port, server, 300)
        http_load.drive([port], 1, 1.0, send, K)  # warm up
        return [http_load.drive([port], clients, seconds, send, K) for clients in levels]
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- index rate -------------------------------------------------------------------------------------------------


def manifests(folder: Path, photos: list[Path], labels: dict[str, dict[str, str]]
              ) -> dict[str, tuple[Path, str | None]]:
    """The three manifests over ``photos``: name -> (file, product column)."""
    def write(name: str, header: list[str], rows: list[list[str]]) -> Path:
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
        return path

    def kind(p: Path) -> str:
        return labels.get(p.stem, {}).get("articleType", "")

    return {
        "once": (write("once", ["sku", "image", "articleType"], [[p.stem, p.name, kind(p)] for p in photos]), None),
        "10x variants": (write("variants", ["sku", "product", "size", "image", "articleType"],
                               [[f"{p.stem}-{s}", p.stem, s, p.name, kind(p)] for p in photos for s in SIZES]),
                         "product"),
        "10x products": (write("products", ["sku", "size", "image", "articleType"],
                               [[f"{p.stem}-{s}", s, p.name, kind(p)] for p in photos for s in SIZES]), "sku"),
    }


def index_rates(images: Path, model: str, rounds: int, folder: Path) -> list[dict]:
    photos = sorted(images.glob("*.jpg"))
    labels = {}
    styles = images.parent / "styles.csv"
    if styles.exists():
        with open(styles, newline="") as fh:
            labels = {r["id"]: r for r in csv.DictReader(fh)}
    found = manifests(folder, photos, labels)
    best: dict[str, dict] = {}
    for r in range(rounds):
        for name, (manifest, product_column) in found.items():
            with Catalog.create(folder / f"{r}-{name.replace(' ', '-')}.lk", model=model) as catalog:
                started = time.perf_counter()
                report = catalog.add(manifest, images=images, product_column=product_column,
                                     options=EncodeOptions(progress=False))
                seconds = time.perf_counter() - started
                counts = catalog.store.counts()
                row = {"manifest": name, "rows": sum(1 for _ in open(manifest)) - 1,
                       "products": len(catalog.products), "photos embedded": report.indexed,
                       "photos stored": counts.get("ok", 0), "seconds": seconds}
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = row
    return list(best.values())


# -- main -------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=SHARED, help="folder with images/ (and styles.csv)")
    ap.add_argument("--photos", type=int, default=100_000, help="photos in each search catalog")
    ap.add_argument("--per-product", type=int, default=3, help="photos per product in the grouped catalog")
    ap.add_argument("--model", default="pixels", help="the search catalogs' model (embeds the uploads)")
    ap.add_argument("--clients", default="1,4", help="concurrency levels for /api/search")
    ap.add_argument("--seconds", type=float, default=10.0, help="per catalog, level and round")
    ap.add_argument("--search-rounds", type=int, default=3, help="rounds of the search measurements (median)")
    ap.add_argument("--index-model", default="pixels")
    ap.add_argument("--rounds", type=int, default=3, help="index-rate rounds (best of)")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--workdir", help="where the catalogs go (default: a temporary folder, removed after)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    images = args.dataset / "images"
    print(describe_machine(), flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        if not args.skip_search:
            search_part(args, images, folder)
        if not args.skip_index:
            index_part(args, images, folder)
    return 0


def search_part(args, images: Path, folder: Path) -> None:
    levels = [int(c) for c in args.clients.split(",") if c]
    base = seed_vectors(images, args.model, folder)
    vectors = photo_vectors(base, args.photos, args.per_product)
    print(f"\n== search: {args.photos:,} photos, {base.shape[1]}-d ({args.model}), one photo per product against "
          f"{args.per_product}; median of {args.search_rounds} rounds, the catalogs in turn each round ==",
          flush=True)
    names = {"one": 1, "grouped": args.per_product}
    for name, per in names.items():
        path = folder / f"{name}.lk"
        started = time.perf_counter()
        write_catalog(path, args.model, vectors, per)
        written = time.perf_counter() - started
        local = in_process(path, base)  # builds and saves the index
        print(f"{name}: {local['products']:,} products, {local['photos']:,} photos; store written in {written:.0f} s, "
              f"{local['index']} index built in {local['index_s']:.0f} s; distinct products among the 30 nearest "
              f"photos of a query: {local['distinct products in 30 nearest photos']:.1f}", flush=True)
    calls = ("search_vector", "nearest by photo")
    local_runs: dict[str, list[dict]] = {name: [] for name in names}
    http_runs: dict[str, list[list[dict]]] = {name: [] for name in names}
    for _ in range(args.search_rounds):
        for name in names:
            path = folder / f"{name}.lk"
            local_runs[name].append(in_process(path, base))
            http_runs[name].append(serve_and_drive(path, sorted(images.glob("*.jpg")), levels, args.seconds))
            for r in http_runs[name][-1]:
                if r["first_error"]:
                    print(f"  {name}, {r['clients']} clients, first error: {r['first_error']}")
    med = {}
    for name in names:
        runs_here = local_runs[name]
        med[name] = {call: (median(r[call][0] for r in runs_here), median(r[call][1] for r in runs_here))
                     for call in calls}
        print(f"\n{name}:")
        for call in calls:
            print(f"  {call:17} (no HTTP, k={K}): p50 {med[name][call][0]:.2f} ms, p99 {med[name][call][1]:.2f} ms")
        for i, clients in enumerate(levels):
            runs = [rounds[i] for rounds in http_runs[name]]
            med[name][clients] = {key: median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
            m = med[name][clients]
            rates = ", ".join(f"{r['rps']:.0f}" for r in runs)
            print(f"  /api/search {clients:>2} clients: {sum(r['requests'] for r in runs)} requests, "
                  f"{sum(r['errors'] for r in runs)} errors, {m['rps']:.1f} req/s, p50 {m['p50_ms']:.2f} ms, "
                  f"p99 {m['p99_ms']:.2f} ms (req/s per round: {rates})")
    one, grouped = med["one"], med["grouped"]
    print()
    for call in calls:
        print(f"ratio grouped/one, {call} p50 (no HTTP): {grouped[call][0] / one[call][0]:.2f}x")
    for clients in levels:
        g, o = grouped[clients], one[clients]
        print(f"ratio grouped/one, /api/search at {clients} clients: p50 {g['p50_ms'] / o['p50_ms']:.2f}x, "
              f"req/s {g['rps'] / o['rps']:.2f}x")


def index_part(args, images: Path, folder: Path) -> None:
    print(f"\n== index rate: {args.index_model}, manifests over {len(list(images.glob('*.jpg')))} photos, best of "
          f"{args.rounds} ==", flush=True)
    rows = index_rates(images, args.index_model, args.rounds, folder)
    once = rows[0]
    for r in rows:
        print(f"{r['manifest']:13}: {r['rows']:>5} rows, {r['products']:>5} products, {r['photos embedded']:>4} "
              f"photos embedded ({r['photos stored']} stored), {r['seconds']:.2f} s, "
              f"{r['rows'] / r['seconds']:.0f} rows/s, {r['photos embedded'] / r['seconds']:.0f} photos/s")
    for r in rows[1:]:
        rate = r["rows"] / r["seconds"] / (once["rows"] / once["seconds"])
        print(f"ratio {r['manifest']}/once: seconds {r['seconds'] / once['seconds']:.2f}x for "
              f"{r['rows'] / once['rows']:.0f}x the rows; rows/s {rate:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
