"""Recall is measured, never assumed: recall@k against exact search on a sample of catalog items, and the
search-time knob (HNSW efSearch, IVF nprobe and re-ranking depth) set to reach a target at the lowest
single-query latency. Like FAISS's ``contrib/exhaustive_search.py``, the reference is a blocked exact scan.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .vector_index import Quality, SearchSettings, VectorIndex

EXACT = SearchSettings(exact=True)  # when no setting reaches the target, answers stay exact

log = logging.getLogger(__name__)

DEFAULT_TARGET = 0.95
# The sample is catalog items, whose own node the search starts close to; a new photo is harder. On
# clustered 2048-d vectors HNSW missed 1.5-2x more neighbours of held-out queries than of catalog items at
# the same efSearch (benchmarks/search_scale.py), so the tuner asks the sample for half the allowed misses.
MISS_SHARE = 0.5
SAMPLE_QUERIES = 500
LATENCY_QUERIES = 100
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
REFINE = (1, 2, 4, 8, 16, 32)


def ground_truth(index: VectorIndex, query_rows: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k item keys of each query row among all live items, the query item itself left out."""
    queries = index.vectors.get(query_rows)
    _, rows = index._exact(queries, k + 1, np.flatnonzero(index.row_keys >= 0))
    return _drop_self(index._to_keys(rows), index.row_keys[query_rows], k)


def _drop_self(keys: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(keys), k), -1, np.int64)
    for i, (row, me) in enumerate(zip(keys, own, strict=True)):
        kept = row[(row != me) & (row >= 0)][:k]
        out[i, :len(kept)] = kept
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k neighbours found (FAISS's 'intersection' recall, k-recall@k)."""
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) / max((t >= 0).sum(), 1)
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def measure(index: VectorIndex, settings: SearchSettings, query_rows: np.ndarray, truth: np.ndarray,
            k: int, timed: int = LATENCY_QUERIES) -> tuple[float, float]:
    """(recall@k, median single-query latency in ms) of ``settings``."""
    own = index.row_keys[query_rows]
    queries = index.vectors.get(query_rows)
    _, keys = index.search(queries, k + 1, settings=settings)
    recall = recall_at_k(_drop_self(keys, own, k), truth)
    times = []
    for q in queries[:timed]:
        start = time.perf_counter()
        index.search(q[None], k + 1, settings=settings)
        times.append(time.perf_counter() - start)
    return recall, float(np.median(times) * 1000) if times else 0.0


def sample_rows(index: VectorIndex, n: int, seed: int = 0) -> np.ndarray:
    live = np.flatnonzero(index.row_keys >= 0)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(live, size=min(n, len(live)), replace=False))


def tune(index: VectorIndex, target: float = DEFAULT_TARGET, k: int = 10, sample: int = SAMPLE_QUERIES,
         seed: int = 0) -> Quality:
    """Pick the fastest search setting whose recall@k reaches ``target`` with a margin for new photos
    (``MISS_SHARE``); store it and its measurement.

    When no setting reaches the target, the one with the best recall is kept and the shortfall logged.
    """
    if index.plan.kind == "flat" and index.plan.dtype == "float32" or index.size < 2:  # exact by construction
        quality = Quality(recall=1.0, k=k, queries=0, target=target)
        index.with_settings(index.settings, quality)
        return quality
    k = min(k, index.size - 1)
    goal = 1 - (1 - target) * MISS_SHARE
    rows = sample_rows(index, sample, seed)
    truth = ground_truth(index, rows, k)
    table: list[dict] = []
    trials: list[tuple[SearchSettings, float, float]] = []
    best: tuple[SearchSettings, float, float] | None = None  # reaching the target, fastest
    top: tuple[SearchSettings, float, float] | None = None  # highest recall seen

    def trial(settings: SearchSettings) -> float:
        nonlocal best, top
        recall, latency = measure(index, settings, rows, truth, k)
        trials.append((settings, recall, latency))
        table.append({**settings.__dict__, "recall": round(recall, 4), "latency_ms": round(latency, 3)})
        if top is None or recall > top[1]:
            top = (settings, recall, latency)
        if recall >= goal and (best is None or latency < best[2]):
            best = (settings, recall, latency)
        return recall

    kind = index.plan.kind
    if kind == "hnsw":  # recall and cost both grow with efSearch: stop at the first that reaches the target
        for ef in EF_SEARCH:
            if trial(SearchSettings(ef_search=ef)) >= goal:
                break
    elif kind == "ivfpq":  # for each re-ranking depth, the fewest lists that reach the target
        nlist = int(index.plan.params["nlist"])
        for refine in REFINE:
            nprobe, previous = 1, -1.0
            while nprobe <= nlist:
                recall = trial(SearchSettings(nprobe=nprobe, refine=refine))
                if recall >= goal or (nprobe >= 16 and recall - previous < 0.002):
                    break
                previous, nprobe = recall, nprobe * 2
    else:
        trial(index.settings)
    chosen = best or top
    assert chosen is not None
    # For catalog items as queries the sample is the population itself: the target without margin.
    reaching = [t for t in trials if t[1] >= target]
    for_items = min(reaching, key=lambda t: t[2])[0] if reaching else EXACT
    if best is None:
        log.warning("the %s index reached recall@%d %.3f at best (wanted %.3f: the target %.2f with a margin for "
                    "new photos); searching exactly until it does: raise --memory, lower --recall or use --index "
                    "flat", kind, k, chosen[1], goal, target)
    quality = Quality(recall=chosen[1], k=k, queries=len(rows), latency_ms=chosen[2], target=target, table=table,
                      items=index.size)
    index.with_settings(chosen[0] if best is not None else EXACT, quality, for_items)
    return quality
