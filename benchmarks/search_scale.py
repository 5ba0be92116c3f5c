"""Search at catalog scale: lookalike's chosen indexes against exact search, side by side in one run.

For each size (default 100k and 1M) it draws seeded clustered 2048-d unit vectors shaped like CNN embeddings
(``lookalike.index.synthetic``: a unit centre per cluster of ~100 items, a decaying low-rank spread, a little
isotropic noise; nearest-neighbour similarity ~0.69, random pairs ~0), plus 200 held-out queries from the
same distribution, or takes the vectors of a real catalog with ``--catalog`` (queries: 200 of its items, held
out of the index). Then, each measured on the same queries:

* **scikit-learn brute** (the seeds' method): ``NearestNeighbors(algorithm="brute")`` (euclidean, which
  ranks unit vectors as cosine does) fitted on the vectors; ``kneighbors`` one query at a time, and in one
  batch.
* **FAISS flat**: a raw ``IndexFlatIP``; its batch answer is the exact ground truth for recall@10.
* **lookalike, auto**: ``choose_index(N, 2048, --memory)`` (default: half this machine's RAM), built and
  tuned to recall@10 >= 0.95 on 500 catalog items, as ``lookalike index`` does.
* **lookalike, compact**: the choice under a budget of ``--compact-bytes`` per item (default 1,200): IVF-PQ
  codes in memory, the
  float16 vectors in a memory-mapped file on disk for re-ranking; saved and re-loaded before timing, so the
  re-ranking reads the file (warm in the page cache, as on a server that has been answering queries).

Printed per index: build seconds (training, adding and tuning), bytes per item held in memory, recall@10 on
the held-out queries against exact search, single-query p50/p99 latency (one query per call, as a web
request), and batch queries/s (all 200 in one call); then speed-ups over scikit-learn and FAISS flat.
Targets at 1M on a 2-core machine: p50 < 5 ms at recall@10 >= 0.95 and >= 50x faster than scikit-learn
brute; a compact setting <= 1.2 KB/item at recall@10 >= 0.90.

    python benchmarks/search_scale.py                   # 100k and 1M: ~45 min on 2 cores, ~12 GB RAM, 10 GB disk
    python benchmarks/search_scale.py --sizes 100000       # one size
    python benchmarks/search_scale.py --catalog shop.lk    # real vectors
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from machine import describe_machine  # noqa: E402
from sklearn.neighbors import NearestNeighbors

from lookalike.index import VectorIndex, choose_index, format_bytes, parse_memory, tune
from lookalike.index.synthetic import clustered_chunks
from lookalike.index.tuning import recall_at_k

K = 10
QUERIES = 200


def latencies(search, queries: np.ndarray, limit: int) -> tuple[float, float]:
    """(p50, p99) ms of one-query calls over the first ``limit`` queries, after one warm-up call."""
    search(queries[:1])
    times = []
    for q in queries[:limit]:
        start = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def batch_rate(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    found = search(queries)
    return len(queries) / (time.perf_counter() - start), found


def row(name, build_s, bytes_per_item, recall, p50, p99, qps, note=""):
    return {"index": name, "build s": build_s, "bytes/item": bytes_per_item, "recall@10": recall,
            "p50 ms": p50, "p99 ms": p99, "batch q/s": qps, "note": note}


def make_data(n: int, dim: int, seed: int, folder: Path, vectors: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, faiss.IndexFlatIP]:
    """(the n catalog vectors as float16 in a memory-mapped file, QUERIES held-out float32 queries, a FAISS
    flat index of the float32 vectors), generated a block at a time: a million 2048-d vectors are never
    held twice."""
    path = folder / "vectors.f16"
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    flat = faiss.IndexFlatIP(dim)
    queries = []
    blocks = ((b, None) for b in np.array_split(vectors, max(1, len(vectors) // 65_536))) if vectors is not None \
        else clustered_chunks(n + QUERIES, dim, seed=seed)
    done = 0
    for block, _ in blocks:
        take = min(len(block), n - done)
        if take > 0:
            stored[done:done + take] = block[:take]
            flat.add(np.ascontiguousarray(block[:take], dtype=np.float32))
            done += take
        queries.append(block[take:])
    stored.flush()
    return np.load(path, mmap_mode="r"), np.ascontiguousarray(np.concatenate(queries)[:QUERIES]), flat


def measure_size(n: int, dim: int, memory: int, compact_bytes: int, vectors: np.ndarray | None,
                 slow_limit: int, seed: int, folder: Path, rows_wanted: tuple[str, ...] = ("auto", "compact")
                 ) -> list[dict]:
    started = time.perf_counter()
    if vectors is not None:
        n = len(vectors) - QUERIES
    data, queries, flat = make_data(n, dim, seed, folder, vectors)
    keys = np.arange(n, dtype=np.int64)
    print(f"\n== {n:,} vectors of {dim} dimensions ({time.perf_counter() - started:.0f} s to make) ==", flush=True)
    rows = []

    # FAISS flat, the ground truth; its storage is the float32 copy scikit-learn searches too.
    qps, (_, truth) = batch_rate(lambda q: flat.search(q, K), queries)
    p50, p99 = latencies(lambda q: flat.search(q, K), queries, slow_limit)
    flat_p50 = p50
    rows.append(row("FAISS flat (exact)", 0.0, dim * 4, 1.0, p50, p99, qps, "build: adding while generating"))
    print(rows[-1], flush=True)

    view = faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)
    brute = NearestNeighbors(algorithm="brute", n_neighbors=K)
    start = time.perf_counter()
    brute.fit(view)
    sk_build = time.perf_counter() - start
    qps, found = batch_rate(lambda q: brute.kneighbors(q, return_distance=False), queries)
    p50, p99 = latencies(lambda q: brute.kneighbors(q, return_distance=False), queries, slow_limit)
    sk_p50 = p50
    rows.append(row("scikit-learn brute", sk_build, dim * 4, recall_at_k(found, truth), p50, p99, qps))
    print(rows[-1], flush=True)
    brute = view = flat = None
    gc.collect()

    for label, budget in (("auto", memory), ("compact", compact_bytes * n)):
        if label not in rows_wanted:
            continue
        plan = choose_index(n, dim, budget)
        start = time.perf_counter()
        index = VectorIndex.build(keys, data, plan, seed=seed)
        built = time.perf_counter() - start
        quality = tune(index, 0.95)
        build_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            index.save(Path(tmp), generation=0)
            index = None
            gc.collect()
            index, _ = VectorIndex.load(Path(tmp))  # vectors now memory-mapped from disk
            qps, (_, found) = batch_rate(lambda q, ix=index: ix.search(q, K), queries)
            p50, p99 = latencies(lambda q, ix=index: ix.search(q, K), queries, QUERIES)
            per_item = index.memory_bytes() / n
            name = f"lookalike {label}: {plan.describe()}"
            note = (f"{index.settings.describe(plan.kind)} (catalog items: "
                    f"{index.item_settings.describe(plan.kind)}); build {built:.0f} s + tune {build_s - built:.0f} s; "
                    f"recall@10 on catalog items {quality.recall:.3f}; {plan.reason}")
            rows.append(row(name, build_s, per_item, recall_at_k(found, truth), p50, p99, qps, note))
            rows[-1]["x sklearn p50"] = sk_p50 / p50
            rows[-1]["x flat p50"] = flat_p50 / p50
            print(rows[-1], flush=True)
            index = None
            gc.collect()
    return rows


def print_table(n: int, rows: list[dict]) -> None:
    print(f"\n### {n:,} items, k={K}, {QUERIES} held-out queries, {faiss.omp_get_max_threads()} threads")
    print("| index | build s | bytes/item in memory | recall@10 | p50 ms | p99 ms | batch q/s | p50 vs sklearn |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        speed = f"{r['x sklearn p50']:.0f}x" if "x sklearn p50" in r else ""
        print(f"| {r['index']} | {r['build s']:.1f} | {format_bytes(r['bytes/item'])} | {r['recall@10']:.3f} | "
              f"{r['p50 ms']:.2f} | {r['p99 ms']:.2f} | {r['batch q/s']:,.0f} | {speed} |")
    for r in rows:
        if r["note"]:
            print(f"- {r['index']}: {r['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated catalog sizes")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--memory", default="auto", help="budget for the auto choice (default half the RAM)")
    parser.add_argument("--compact-bytes", type=int, default=1200,
                        help="memory budget per item for the compact row (default 1200)")
    parser.add_argument("--catalog", help="take the vectors of this catalog instead of synthetic ones")
    parser.add_argument("--slow-limit", type=int, default=20, help="single queries timed for the exact baselines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["auto", "compact"], help="measure one of lookalike's two rows")
    parser.add_argument("--workdir", help="folder for the vector files (default: the system's temporary folder)")
    args = parser.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines
    memory, compact = parse_memory(args.memory), args.compact_bytes
    print(f"memory budget {format_bytes(memory)} (auto), {compact:,} bytes/item (compact)")
    results = []
    if args.catalog:
        from lookalike import Catalog

        with Catalog.open(args.catalog) as catalog:
            _, vectors = catalog.store.vectors(catalog.config.embedder.dim)
        vectors = vectors[np.random.default_rng(args.seed).permutation(len(vectors))]
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            results.append((len(vectors) - QUERIES, measure_size(len(vectors), vectors.shape[1], memory, compact,
                                                                 vectors, args.slow_limit, args.seed, Path(tmp))))
    else:
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                results.append((n, measure_size(n, args.dim, memory, compact, None, args.slow_limit, args.seed,
                                                Path(tmp), (args.only,) if args.only else ("auto", "compact"))))
    for n, rows in results:
        print_table(n, rows)


if __name__ == "__main__":
    main()
