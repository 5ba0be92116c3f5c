"""Throughput of ``lookalike recommend`` (and ``duplicates``) on a large synthetic catalog.

The issue asks for ``recommend`` over 1M items with k=10 in under 30 minutes. Embedding a million photos
is not what is measured here, so ``build_synthetic_catalog`` writes items, labels and vectors straight into
a catalog's store (no images): clustered unit vectors (products come in families), with a share of planted
near-copies (an item's vector plus a little noise) and exact copies (same content hash, same vector), and
labels ``articleType`` (50 values) and ``productDisplayName`` (about one value per 3 items). The catalog
opens like any other; its index is built from the stored vectors on first use, whatever kind the index
module chooses for that size, and that build is timed separately.

Run from the repository root::

    python benchmarks/recommend_throughput.py --items 20000                  # quick
    python benchmarks/recommend_throughput.py --items 1000000 --dim 2048     # the issue's figure
    python benchmarks/recommend_throughput.py --items 100000 --threads 1 --dedupe --group-by productDisplayName

It prints one JSON object: items, dim, index kind, seconds to build the catalog and the index, and the
report of ``recommend`` (items/s) and, with ``--duplicates``, of ``find_duplicates``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe_machine  # noqa: E402

from lookalike import Catalog
from lookalike.catalog.catalog import CONFIG_FILE, DB_FILE
from lookalike.core.config import CatalogConfig, EmbedderInfo
from lookalike.index.choice import FP16_MIN_ITEMS
from lookalike.index.synthetic import clustered_chunks
from lookalike.store import SQLiteStore


def build_synthetic_catalog(path: str | Path, items: int, dim: int = 2048, *, families: int | None = None,
                            near_copies: float = 0.02, exact_copies: float = 0.01, seed: int = 0,
                            chunk: int = 20_000) -> Path:
    """A catalog of ``items`` synthetic items written straight into SQLite, in chunks (memory-bounded).

    Vectors: ``lookalike.index.synthetic.clustered_chunks`` (the scale benchmark's clustered, embedding-like
    unit vectors; a family is a cluster), stored as float16 from 50k items as the catalog itself would.
    ``near_copies`` of the items are an earlier item's (same chunk)
    vector plus noise of norm 0.1 (similarity ~0.995); ``exact_copies`` repeat an earlier item's hash and vector.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=False)
    info = EmbedderInfo(name="synthetic", timm_name="none", weights="none:synthetic", dim=dim, pool="none")
    rng = np.random.default_rng(seed + 1)
    dtype = np.float16 if items >= FP16_MIN_ITEMS else np.float32
    store = SQLiteStore(path / DB_FILE)
    conn = store.conn
    done = 0
    for vecs, fam in clustered_chunks(items, dim, families, seed=seed, chunk=chunk):
        n = len(vecs)
        keys = np.arange(done + 1, done + n + 1)
        hashes = [f"{k:064x}" for k in keys.tolist()]
        kind = rng.random(n)
        src = (rng.random(n) * np.arange(n)).astype(np.int64)  # an earlier row of this chunk
        near = (kind < near_copies) & (np.arange(n) > 0)
        noise = rng.standard_normal((int(near.sum()), dim)).astype(np.float32)
        vecs[near] = vecs[src[near]] + (0.1 / np.sqrt(dim)) * noise
        vecs[near] /= np.linalg.norm(vecs[near], axis=1, keepdims=True)
        exact = (kind >= near_copies) & (kind < near_copies + exact_copies) & (np.arange(n) > 0)
        vecs[exact] = vecs[src[exact]]
        for i in np.flatnonzero(exact).tolist():
            hashes[i] = hashes[int(src[i])]
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO items (key, id, path, size, mtime_ns, sha256, status, width, height, updated) "
            "VALUES (?, ?, ?, 0, 0, ?, 'ok', 600, 800, ?)",
            [(k, f"item{k}", f"/synthetic/item{k}.jpg", h, now) for k, h in zip(keys.tolist(), hashes, strict=True)])
        conn.executemany("INSERT INTO vectors (key, vector) VALUES (?, ?)",
                         [(k, v.astype(dtype).tobytes()) for k, v in zip(keys.tolist(), vecs, strict=True)])
        conn.executemany("INSERT INTO labels (key, name, value) VALUES (?, ?, ?)",
                         [(k, "articleType", f"type{f % 50}") for k, f in zip(keys.tolist(), fam.tolist(),
                                                                                strict=True)]
                         + [(k, "productDisplayName", f"product {k // 3}") for k in keys.tolist()])
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'")
        conn.execute("COMMIT")
        done += n
    store.close()
    CatalogConfig(embedder=info, extra={"synthetic": True}).save(path / CONFIG_FILE)
    return path


def main(argv: list[str] | None = None) -> int:
    from lookalike.analysis.duplicates import find_duplicates
    from lookalike.analysis.recommend import recommend

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--format", default="parquet", choices=["parquet", "csv", "jsonl"])
    p.add_argument("--dedupe", action="store_true")
    p.add_argument("--group-by")
    p.add_argument("--duplicates", action="store_true", help="also time find_duplicates")
    p.add_argument("--workdir", help="where to build the catalog (default: a temporary folder, removed after)")
    args = p.parse_args(argv)
    print(describe_machine(), flush=True)  # which CPU: they differ between machines

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        started = time.perf_counter()
        path = build_synthetic_catalog(Path(tmp) / "bench.lk", args.items, args.dim)
        built = time.perf_counter() - started
        with Catalog.open(path) as catalog:
            started = time.perf_counter()
            size = len(catalog)  # builds and saves the index
            indexed = time.perf_counter() - started
            result: dict = {"items": size, "dim": args.dim, "index": catalog.index.kind,
                            "build_catalog_s": round(built, 1), "build_index_s": round(indexed, 1)}
            if args.duplicates:
                dups = find_duplicates(catalog, threads=args.threads, block=args.block_size)
                result["duplicates"] = {"groups": len(dups.groups), "seconds": round(dups.seconds, 1),
                                        "items_per_second": round(dups.items / dups.seconds, 1)}
            report = recommend(catalog, args.k, Path(tmp) / f"similar.{args.format}", dedupe=args.dedupe,
                               group_by=args.group_by, threads=args.threads, block=args.block_size)
            result["recommend"] = {**report.to_dict(), "path": None}
            result["file_mb"] = round((Path(tmp) / f"similar.{args.format}").stat().st_size / 1e6, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
