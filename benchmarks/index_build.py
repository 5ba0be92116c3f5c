"""What building a large catalog's FAISS index costs on this machine, and how that cost scales with its cores.

The driver's ceiling (``ray_throughput.py --driver-only``) is measured on 20,000 photos, where a catalog's index is
flat and adding to it is a copy. A catalog of millions gets another index (``lookalike.index.choose_index``): an
HNSW graph up to 2 M items, IVF-PQ beyond. A run that takes a catalog into the graph's range builds the graph
before its first commit and adds each commit to it (``Indexing._plan_ahead``); a run into IVF-PQ's range follows
no index and builds IVF-PQ when it ends, in two passes over the store (``VectorIndex.build_streamed``: it trains on
a sample of the vectors it will hold). This
benchmark times those adds and that build for each catalog size in ``--sizes``, with the plan ``choose_index``
picks on this machine (its default memory budget), FAISS's own calls on seeded clustered 2,048-d unit vectors
(``lookalike.index.synthetic``), at one thread and at every core:

* **hnsw**: ``add`` into an ``IndexHNSWSQ`` float16 graph of ``--sample`` vectors (M and efConstruction of the
  plan): the graph insertion. Its cost grows with the graph (about log N), so at 1 M this rate is an upper bound.
* **ivfpq**: ``add_with_ids`` on an ``IndexIVFPQ`` of the plan's lists and code bytes (the coarse assignment, one
  matrix product against ``nlist`` centroids; the product-quantiser encoding; the append to the lists). Its
  centroids are ``nlist`` sample vectors and its quantisers are trained on the sample: where the centroids lie
  does not change what an add costs. Training itself is computed, not run (at 16,384 lists it would take an
  hour here): FAISS's k-means does ``niter`` assignments of ``nlist * 64`` points (``IVF_TRAIN_MAX_POINTS_PER_LIST``)
  at the assignment rate measured here, then the product quantisers train on the same points at the rate
  measured on a part of them.

It prints, per size, the rates at 1 thread and at every core (FAISS runs these on every core through OpenMP and
BLAS: their ratio is how the build scales here), the hours of the build, and the memory the run's index holds
at its peak (computed from the arrays the code keeps, ``peak_bytes``). With
``--driver-rate`` (img/s, the driver's ceiling) it adds the hours of the commits before the build.

    python benchmarks/index_build.py                                      # 1 M, 10 M, 100 M
    python benchmarks/index_build.py --sizes 10000000 --driver-rate 12612
"""

from __future__ import annotations

import argparse
import sys
import time

import faiss
import numpy as np
from machine import describe_machine

from lookalike.catalog.indexing import STREAM_BLOCK
from lookalike.index.choice import (
    IVF_TRAIN_MAX_POINTS_PER_LIST,
    IndexPlan,
    choose_index,
    default_memory_budget,
    estimated_bytes,
    format_bytes,
)
from lookalike.index.faiss_parts import new_faiss_index
from lookalike.index.synthetic import clustered_vectors

IVF_NITER = 10  # the k-means iterations lookalike sets (``faiss_parts.new_faiss_index``: index.cp.niter)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000,100000000", help="catalog sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=2048, help="vector dimension (default 2048, ResNet-50)")
    parser.add_argument("--sample", type=int, default=20000, help="vectors added in each timed call")
    parser.add_argument("--driver-rate", type=float, help="the driver's commit ceiling, img/s, to add its hours")
    return parser.parse_args(argv)


def timed(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def at_threads(threads: int, call, *args) -> float:
    """Seconds ``call(*args)`` takes with FAISS limited to ``threads`` OpenMP threads."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return timed(call, *args)
    finally:
        faiss.omp_set_num_threads(before)


def hnsw_rates(plan: IndexPlan, vectors: np.ndarray, threads: int) -> dict[str, float]:
    """Graph insertions per second of the second half of ``vectors`` into a graph of the first half."""
    half = len(vectors) // 2
    rates = {}
    for n in sorted({1, threads}):
        index = new_faiss_index(plan, vectors.shape[1])
        index.train(vectors[:1000])
        index.add(vectors[:half])
        rates[f"add_{n}"] = (len(vectors) - half) / at_threads(n, index.add, vectors[half:])
    return rates


def ivfpq_rates(plan: IndexPlan, vectors: np.ndarray, threads: int, seed: int = 0) -> dict[str, float]:
    """Adds per second, coarse assignments per second and product-quantiser training points per second."""
    nlist = int(plan.params["nlist"])
    rng = np.random.default_rng(seed)
    centroids = vectors[rng.choice(len(vectors), size=nlist, replace=len(vectors) < nlist)]
    rates = {}
    index = new_faiss_index(plan, vectors.shape[1])
    index.quantizer.add(centroids)
    pq_points = min(len(vectors), 40 * 256)  # FAISS asks for 39 points a centroid
    _, assigned = index.quantizer.search(vectors[:pq_points], 1)
    residuals = vectors[:pq_points] - centroids[assigned[:, 0]]
    rates["pq_train_points"] = pq_points / at_threads(threads, index.pq.train, residuals)
    index.is_trained = True
    for n in sorted({1, threads}):
        rates[f"assign_{n}"] = len(vectors) / at_threads(n, index.quantizer.search, vectors, 1)
        index.reset()
        rates[f"add_{n}"] = len(vectors) / at_threads(
            n, index.add_with_ids, vectors, np.arange(len(vectors), dtype=np.int64))
    return rates


def build_hours(plan: IndexPlan, size: int, rates: dict[str, float], threads: int) -> tuple[float, float]:
    """(training hours, adding hours) of a ``size``-item build at the measured rates, on every core."""
    adding = size / rates[f"add_{threads}"] / 3600
    if plan.kind != "ivfpq":
        return 0.0, adding
    points = min(size, int(plan.params["nlist"]) * IVF_TRAIN_MAX_POINTS_PER_LIST)
    kmeans = IVF_NITER * points / rates[f"assign_{threads}"]
    pq = points / rates["pq_train_points"]  # measured on a part (FAISS's own iterations), linear in points
    return (kmeans + pq) / 3600, adding


def peak_bytes(plan: IndexPlan, size: int, dim: int) -> int:
    """Bytes the run's index holds at its peak, from the arrays the code keeps. A graph, built ahead and followed:
    its FAISS structure (``estimated_bytes``); its rows are read back from their file once spilled
    (``RowVectors.spill``). IVF-PQ, built in passes over the store when the run ends
    (``VectorIndex.build_streamed``): the float32 training sample, the codes and lists, one block of rows."""
    if plan.kind == "hnsw":
        return estimated_bytes(plan, size, dim)
    sample = min(size, int(plan.params["nlist"]) * IVF_TRAIN_MAX_POINTS_PER_LIST)
    return sample * dim * 4 + estimated_bytes(plan, size, dim) + STREAM_BLOCK * dim * 4


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(describe_machine(), flush=True)
    threads = faiss.omp_get_max_threads()
    budget = default_memory_budget()
    vectors = clustered_vectors(args.sample, args.dim, seed=0)
    print(f"{args.sample} seeded clustered {args.dim}-d vectors a timed call; FAISS on 1 and {threads} threads; "
          f"plans for this machine's memory budget ({format_bytes(budget)})", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        plan = choose_index(size, args.dim, budget)
        rates = hnsw_rates(plan, vectors, threads) if plan.kind == "hnsw" else (
            ivfpq_rates(plan, vectors, threads) if plan.kind == "ivfpq" else None)
        if rates is None:
            print(f"{size:>11,} items: {plan.describe()}: adding is a copy, nothing to time", flush=True)
            continue
        scaling = rates[f"add_{threads}"] / rates["add_1"]
        train, add = build_hours(plan, size, rates, threads)
        line = (f"{size:>11,} items: {plan.describe()}: adds {rates['add_1']:,.0f}/s on 1 thread, "
                f"{rates[f'add_{threads}']:,.0f}/s on {threads} ({scaling:.2f}x)")
        if plan.kind == "ivfpq":
            line += (f"; coarse assignment alone {rates['assign_1']:,.0f}/s, {rates[f'assign_{threads}']:,.0f}/s; "
                     f"training computed {train:.2f} h")
        print(line, flush=True)
        total = train + add
        commits = size / args.driver_rate / 3600 if args.driver_rate else 0.0
        print(f"{'':13}index build: {total:.2f} h on {threads} cores (training {train:.2f} h, adds {add:.2f} h); "
              f"the index holds {format_bytes(peak_bytes(plan, size, args.dim))} at once"
              + (f"; with the commits at {args.driver_rate:,.0f} img/s ({commits:.2f} h): {commits + total:.2f} h"
                 if args.driver_rate else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
