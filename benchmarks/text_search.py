"""Search by words on the CPU: text query latency of a CLIP ViT-B/32-sized model, and its indexing throughput
beside ResNet-50's, in the same run.

What it measures, on ``../shared/datasets/fashion-products`` (364 photos; ``--photos`` for another folder):

* **Indexing**: ``Catalog.create(tmp, model, weights="random")`` then ``catalog.add(photos)`` with the default
  options (device auto, precision auto, decoding workers), timed end to end from JPEG files to a saved catalog,
  for ``clip-vit-b32`` (open_clip ViT-B-32-quickgelu: the 88M-parameter image tower at 224 px) and
  ``resnet50``, one after the other, each with the same untimed warm-up. Images/s = photos / seconds.
* **Text queries**: ``catalog.search(text=q, k=10)`` for ``--queries`` product titles of the dataset
  (``productDisplayName``, cycled), one at a time, after 5 warm-up queries: p50 and p99 of the whole call
  (tokenise, text tower forward in the automatic precision, exact search over the catalog, result rows),
  and the same split into its parts (tokenise; encode = tokenise + text tower; search = the index alone) to
  show where the time goes. ``--catalog-size N`` also times the search part against N synthetic 512-d unit
  vectors (a larger shop) in an exact (flat) index, as lookalike builds it below 50,000 items.

Random weights make the rankings meaningless; the arithmetic (and so the time) is the real model's.

    python benchmarks/text_search.py [--queries 200] [--catalog-size 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def index_rate(model: str, photos: Path, tmp: Path, options) -> tuple[float, int, object]:
    """Images/s of a full ``add`` of the photos with ``model`` (random weights); returns the open catalog."""
    from lookalike import Catalog
    from lookalike.models import create_embedder

    embedder = create_embedder(model, weights="random")
    warm = Catalog.create(tmp / f"warm-{model}.lk", model, weights="random", embedder=embedder)
    some = tmp / f"some-{model}"
    some.mkdir()
    for p in sorted(photos.glob("*.jpg"))[:16]:
        os.link(p, some / p.name)
    warm.add(some, options=options)
    warm.close()
    catalog = Catalog.create(tmp / f"{model}.lk", model, weights="random", embedder=embedder)
    started = time.perf_counter()
    report = catalog.add(photos, options=options)
    seconds = time.perf_counter() - started
    return report.indexed / seconds, report.indexed, catalog


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=SHARED / "images")
    parser.add_argument("--titles", type=Path, default=SHARED / "styles.csv")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--catalog-size", type=int, default=0, help="also search N synthetic vectors")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines
    logging.basicConfig(level=logging.WARNING)
    import torch

    from lookalike.core.config import EncodeOptions

    options = EncodeOptions(progress=False)
    with open(args.titles, newline="", encoding="utf-8") as fh:
        titles = [row["productDisplayName"] for row in csv.DictReader(fh) if row.get("productDisplayName")]
    titles = [titles[i % len(titles)] for i in range(args.queries)]
    out: dict = {"cpu_threads": torch.get_num_threads(), "photos": str(args.photos), "queries": len(titles)}
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        clip_rate, n, catalog = index_rate("clip-vit-b32", args.photos, tmp, options)
        resnet_rate, _, resnet = index_rate("resnet50", args.photos, tmp, options)
        resnet.close()
        out["index"] = {"photos": n, "clip-vit-b32_img_per_s": round(clip_rate, 1),
                        "resnet50_img_per_s": round(resnet_rate, 1)}
        encoder = catalog.encoder(options)
        out["precision"] = encoder.precision
        embedder = catalog.embedder
        for q in titles[:5]:
            catalog.search(text=q, k=10)
        whole, tok, enc, search = [], [], [], []
        for q in titles:
            t0 = time.perf_counter()
            catalog.search(text=q, k=10)
            t1 = time.perf_counter()
            embedder.tokenize([q])
            t2 = time.perf_counter()
            vector = encoder.encode_text(q)
            t3 = time.perf_counter()
            catalog.search_vector(vector, k=10)
            t4 = time.perf_counter()
            whole.append((t1 - t0) * 1e3)
            tok.append((t2 - t1) * 1e3)
            enc.append((t3 - t2) * 1e3)
            search.append((t4 - t3) * 1e3)
        out["text_query_ms"] = {name: {"p50": round(percentile(v, 50), 2), "p99": round(percentile(v, 99), 2),
                                       "mean": round(statistics.fmean(v), 2)}
                                for name, v in (("search(text=...)", whole), ("tokenise", tok),
                                                ("encode (tokenise + text tower)", enc), ("index search", search))}
        if args.catalog_size:
            from lookalike.index import VectorIndex, choose_index
            from lookalike.index.synthetic import clustered_vectors

            dim = embedder.dim
            vectors = clustered_vectors(args.catalog_size, dim, seed=0)
            plan = choose_index(args.catalog_size, dim, 8 << 30, "flat")  # exact: what a shop this size searches
            index = VectorIndex.build(np.arange(args.catalog_size, dtype=np.int64), vectors, plan)
            times = []
            for q in titles:
                v = encoder.encode_text(q)
                t0 = time.perf_counter()
                index.search(v, 10)
                times.append((time.perf_counter() - t0) * 1e3)
            out["synthetic_search_ms"] = {"items": args.catalog_size, "index": plan.describe(),
                                          "p50": round(percentile(times, 50), 2),
                                          "p99": round(percentile(times, 99), 2)}
        catalog.close()
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
