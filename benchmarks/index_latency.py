"""Latency and recall of a catalog's saved index at several search settings, with the exact baselines.

``search_scale.py`` builds its indexes itself; this script measures one that a catalog already built and
tuned (``<catalog>/index``), e.g. the 1M-item catalog of ``recommend_throughput.py --workdir DIR``, so the
figures describe exactly what ``lookalike search`` uses. Queries: 200 held-out vectors from the same
generator as ``recommend_throughput.build_synthetic_catalog`` (``--synthetic N``: the catalog's item count),
or 200 of the catalog's own vectors (``--items``, each without itself). Ground truth: exact search over the
index's own row file. In the same run: scikit-learn ``NearestNeighbors(algorithm="brute")`` and FAISS's exact
``knn`` on the same float32 matrix.

    python benchmarks/index_latency.py DIR/bench.lk/index --synthetic 1000000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from machine import describe_machine  # noqa: E402
from search_scale import latencies as timed  # benchmarks/ is on the path when run as a script
from sklearn.neighbors import NearestNeighbors

from lookalike.index import SearchSettings, VectorIndex
from lookalike.index.synthetic import clustered_chunks
from lookalike.index.tuning import recall_at_k

K, QUERIES = 10, 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index_dir", type=Path)
    ap.add_argument("--synthetic", type=int, help="item count of the synthetic catalog (queries from its generator)")
    ap.add_argument("--ef", default="128,192,256,384,512", help="HNSW efSearch values to try")
    ap.add_argument("--slow-limit", type=int, default=20, help="single queries timed for the exact baselines")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines
    index, _ = VectorIndex.load(args.index_dir)
    print(f"index: {index.describe()}; tuned new-photo setting {index.settings.describe(index.kind)}, "
          f"catalog items {index.item_settings.describe(index.kind)}", flush=True)
    if args.synthetic:
        last = None
        for block, _ in clustered_chunks(args.synthetic + QUERIES, index.dim, clusters=max(10, args.synthetic // 100),
                                         seed=0, chunk=20_000):
            last = block
        queries = np.ascontiguousarray(last[-QUERIES:])
    else:
        rows = np.sort(np.random.default_rng(0).choice(np.flatnonzero(index.row_keys >= 0), QUERIES, replace=False))
        queries = index.vectors.get(rows)
    live = np.flatnonzero(index.row_keys >= 0)
    start = time.perf_counter()
    base = index.vectors.get(live)  # float32, the matrix both baselines search
    print(f"{len(live):,} live vectors read in {time.perf_counter() - start:.0f} s", flush=True)
    _, truth_rows = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    truth = index.row_keys[live[truth_rows]]
    print("| search | recall@10 | p50 ms | p99 ms | batch q/s | p50 vs scikit-learn |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    brute = NearestNeighbors(algorithm="brute", n_neighbors=K).fit(base)
    sk50, sk99 = timed(lambda q: brute.kneighbors(q, return_distance=False), queries, args.slow_limit)
    print(f"| scikit-learn brute | 1.000 | {sk50:.1f} | {sk99:.1f} | | 1x |", flush=True)
    fl50, fl99 = timed(lambda q: faiss.knn(q, base, K, metric=faiss.METRIC_INNER_PRODUCT), queries, args.slow_limit)
    print(f"| FAISS exact knn | 1.000 | {fl50:.1f} | {fl99:.1f} | | {sk50 / fl50:.1f}x |", flush=True)
    brute = base = None
    settings = [SearchSettings(ef_search=int(ef)) for ef in args.ef.split(",")] if index.kind == "hnsw" else [
        index.item_settings, index.settings]
    for s in settings:
        _, found = index.search(queries, K, settings=s)
        p50, p99 = timed(lambda q, s=s: index.search(q, K, settings=s), queries, QUERIES)
        start = time.perf_counter()
        index.search(queries, K, settings=s)
        qps = QUERIES / (time.perf_counter() - start)
        mark = (" (tuned, new photos)" if s == index.settings
                else " (tuned, catalog items)" if s == index.item_settings else "")
        print(f"| {s.describe(index.kind)}{mark} | {recall_at_k(found, truth):.3f} | {p50:.2f} | {p99:.2f} | "
              f"{qps:,.0f} | {sk50 / p50:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
