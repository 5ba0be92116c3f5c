"""Ingest into a folder catalog (SQLite) and a PostgreSQL catalog in the same run: images/s, and where the time
goes (store writes, FAISS index, reading + decoding + embedding).

What it does:

* Repeats ``../shared/datasets/fashion-products/images`` into ``--work/photos/copyN/`` (hard links) until there
  are ``--files`` files (default 2,000): each is its own item, as a shop's copies of a photo would be.
* For each ``--models`` entry (default ``pixels``: no network, so the figure is bound by decoding and the store;
  and ``resnet50`` with seeded random weights: the model's share), and for each store (a folder, then a
  PostgreSQL schema), times ``Catalog.create`` + ``catalog.add(photos)`` end to end, exactly what
  ``lookalike index`` does. Store writes (``store.write``, one transaction per batch) and the FAISS index
  (build + save) are timed inside the run; the rest is listing, reading, hashing, decoding and embedding.
  The model is loaded before the clock starts, once per model; an untimed warm-up ``add`` of a few photos
  pays one-time start-up costs first.
* PostgreSQL: a throwaway server started for the run with PostgreSQL's default durability (fsync, synchronous
  commit), on this machine, over TCP on 127.0.0.1; or ``--pg URL``. SQLite runs in WAL mode with
  ``synchronous=NORMAL``, as catalogs always do.

Run it from the repository root::

    python benchmarks/pg_ingest.py                                  # pixels and resnet50, 2,000 files
    python benchmarks/pg_ingest.py --models pixels --files 500       # a quick run
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from machine import describe_machine  # noqa: E402
from pg_common import ROOT, SHARED, drop_schema, postgres, repeated_source

from lookalike import Catalog, EncodeOptions
from lookalike.index import vector_index
from lookalike.models.registry import create_embedder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=SHARED)
    ap.add_argument("--files", type=int, default=2000, help="at least this many files (default 2000)")
    ap.add_argument("--models", default="pixels,resnet50", help="comma-separated (default pixels,resnet50)")
    ap.add_argument("--pg", default=None, help="a PostgreSQL URL to use instead of a throwaway server")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "pg-ingest")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines

    files = repeated_source(args.work / "photos", args.photos, args.files)
    print(f"{len(files)} files in {args.work / 'photos'}", flush=True)
    rows = []
    with postgres(args.pg) as url:
        for model in args.models.split(","):
            weights = "random" if model not in ("pixels", "colorhist") else None
            embedder = create_embedder(model, weights)
            warm = args.work / "warm"
            shutil.rmtree(warm, ignore_errors=True)
            warm.mkdir(parents=True)
            for f in files[:8]:
                shutil.copyfile(f, warm / f.name)
            shutil.rmtree(args.work / "warm.lk", ignore_errors=True)
            with Catalog.create(args.work / "warm.lk", model, weights, embedder=embedder) as c:
                c.add(warm, options=EncodeOptions(progress=False))
            for store in ("sqlite", "postgresql"):
                if store == "sqlite":
                    location = args.work / f"{model}.lk"
                    shutil.rmtree(location, ignore_errors=True)
                else:
                    schema = f"ingest_{model.replace('-', '_')}"
                    drop_schema(url, schema)
                    location = f"{url}?schema={schema}"
                row = ingest(location, model, weights, embedder, args.work / "photos")
                row.update(store=store, model=model, files=len(files))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| model | store | files | total s | images/s | store writes s (share) | FAISS index s | "
          "read + decode + embed s (share) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['store']} | {r['indexed']:,} | {r['seconds']:.1f} | {r['images_per_s']:.1f} | "
              f"{r['store_s']:.2f} ({r['store_share']:.0%}) | {r['index_s']:.2f} | "
              f"{r['embed_s']:.1f} ({r['embed_share']:.0%}) |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def ingest(location, model: str, weights: str | None, embedder, photos: Path) -> dict:
    spent = {"store": 0.0, "index": 0.0}

    def timed(kind, fn):
        def run(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[kind] += time.perf_counter() - t
        return run

    build, save = vector_index.VectorIndex.build, vector_index.VectorIndex.save
    vector_index.VectorIndex.build = classmethod(timed("index", build.__func__))
    vector_index.VectorIndex.save = timed("index", save)
    try:
        started = time.perf_counter()
        with Catalog.create(location, model, weights, embedder=embedder) as catalog:
            catalog.store.write = timed("store", catalog.store.write)
            report = catalog.add(photos, options=EncodeOptions(progress=False))
            seconds = time.perf_counter() - started
            searchable = len(catalog)
    finally:
        vector_index.VectorIndex.build, vector_index.VectorIndex.save = build, save
    embed = seconds - spent["store"] - spent["index"]
    return {"indexed": report.indexed, "failed": report.failed, "searchable": searchable,
            "seconds": round(seconds, 2), "images_per_s": round(report.indexed / seconds, 1),
            "store_s": round(spent["store"], 3), "store_share": spent["store"] / seconds,
            "index_s": round(spent["index"], 3), "embed_s": round(embed, 2), "embed_share": embed / seconds}


if __name__ == "__main__":
    raise SystemExit(main())
