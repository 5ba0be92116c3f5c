"""The FAISS structures behind ``VectorIndex``: making an empty index for a plan, telling a float16 flat index
apart, and training IVF-PQ on its seeded sample (the whole matrix, or a sample gathered in passes).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from .choice import IVF_TRAIN_MAX_POINTS_PER_LIST, IndexPlan

log = logging.getLogger(__name__)


def new_faiss_index(plan: IndexPlan, dim: int, float16_screen: bool = False) -> faiss.Index:
    """An empty FAISS index of ``plan`` for ``dim``-d unit vectors, inner product: flat (float16 codes for a
    float16 plan or with ``float16_screen``), HNSW (float16 scalar-quantised for a float16 plan) or IVF-PQ
    (flat coarse quantiser, 10 k-means iterations).

    Raises:
        ValueError: an unknown kind.
    """
    ip = faiss.METRIC_INNER_PRODUCT
    fp16 = plan.dtype == "float16"
    if plan.kind == "flat":  # a float32 plan with a float16 screen re-ranks from its rows
        return flat_faiss(dim, fp16 or float16_screen)
    if plan.kind == "hnsw":
        m = int(plan.params.get("M", 32))
        index = (faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, m, ip) if fp16
                 else faiss.IndexHNSWFlat(dim, m, ip))
        index.hnsw.efConstruction = int(plan.params.get("ef_construction", 80))
        return index
    if plan.kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, int(plan.params["nlist"]), int(plan.params["m"]),
                                 int(plan.params.get("nbits", 8)), ip)
        index.own_fields = True
        quantizer.this.disown()
        index.cp.niter = 10
        return index
    raise ValueError(f"unknown index kind {plan.kind!r}")


def flat_faiss(dim: int, float16_codes: bool) -> faiss.Index:
    """An empty exact inner-product index with ids: float16 codes (a screen, or a float16 plan) or float32."""
    if float16_codes:
        return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                                            faiss.METRIC_INNER_PRODUCT))
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def holds_float16(index: faiss.Index) -> bool:
    """A flat index with float16 codes (indexes saved before the float16 screen hold IndexFlatIP)."""
    inner = getattr(index, "index", None)
    if inner is None:
        return False
    inner = faiss.downcast_index(inner)
    return isinstance(inner, faiss.IndexScalarQuantizer) and inner.sq.qtype == faiss.ScalarQuantizer.QT_fp16


def training_rows(plan: IndexPlan, count: int, seed: int) -> np.ndarray:
    """The sorted positions (of ``count`` vectors in key order) IVF-PQ trains on: a seeded sample of at most
    ``IVF_TRAIN_MAX_POINTS_PER_LIST`` a list (and 64 a product-quantiser centroid)."""
    limit = max(int(plan.params["nlist"]) * IVF_TRAIN_MAX_POINTS_PER_LIST, 2 ** int(plan.params.get("nbits", 8)) * 64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=min(limit, count), replace=False))


def train(index: faiss.Index, vectors: np.ndarray, plan: IndexPlan, seed: int) -> None:
    """Train an IVF-PQ ``index`` on the ``training_rows`` sample of ``vectors`` (N x D, key order)."""
    train_on(index, np.ascontiguousarray(vectors[training_rows(plan, len(vectors), seed)], dtype=np.float32),
              plan, seed)


def train_on(index: faiss.Index, sample: np.ndarray, plan: IndexPlan, seed: int) -> None:
    """Train an IVF-PQ ``index``'s lists and product quantisers (FAISS k-means, seeded) on ``sample`` (float32)."""
    nlist = int(plan.params["nlist"])
    index.cp.seed = seed
    index.pq.cp.seed = seed
    index.pq.cp.min_points_per_centroid = 4  # few items per code is fine: the vectors re-rank the answer
    log.info("training IVF-PQ (%d lists, %d-byte codes) on %d vectors", nlist, plan.params["m"], len(sample))
    index.train(sample)
