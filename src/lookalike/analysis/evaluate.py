"""How good are the recommendations? Retrieval metrics and a kNN classification report for a catalog.

Every query is answered at once from the stored vectors (blocks of matrix products, exact), not by one
``similar`` call per item. The catalog's items are its **products** (``catalog_data``: one row per product, its
vector the centroid of its photos'); leave-one-out leaves the whole product out, with every product made of
the same photos (its content group). Held-out queries (``--queries``) are photos. Definitions, for a query q
with label y and k returned neighbours:

* candidates: every catalog product except q itself and its exact copies (same content group) -- the items
  ``similar`` may return; relevant: the candidates whose label is y (R of them). Candidates without the
  label are never relevant. Queries without the label are not used and are counted as excluded.
* precision@k = hits / k' where k' = min(k, candidates); recall@k = hits / R; hit rate@k = [hits > 0];
  AP@k = sum over ranks j of precision@j * rel_j / min(R, k) (1.0 for a perfect list, even when R < k);
  nDCG@k with binary gains and log2(j + 1) discounts, ideal = min(R, k) relevant items first.
  Queries with R = 0 (the only item of their class) have no defined recall or AP: they are left out of the
  retrieval metrics (counted as ``no_relevant``) but kept in the classification report and distances.
* distance: euclidean between unit vectors, sqrt(2 - 2 cos), as the seed notebooks reported it; "mean
  distance" averages each query's mean distance to its k neighbours, "median" is the median of those.
* kNN classification: top-1 predicts the nearest neighbour's label; majority-of-k the most frequent label
  among the k neighbours (ties: larger summed similarity, then the nearer one); a neighbour without the label
  votes for nothing. Per-class and macro precision/recall/F1 come from scikit-learn over the queries' own
  classes (a prediction outside them is a miss for the true class, not a class of its own).
* ties in similarity are broken by catalog order (key), so every figure is deterministic.
* confidence intervals: 95 % percentile bootstrap over queries (``bootstrap`` resamples, seeded;
  ``scipy.stats.bootstrap``).

Reference rows: ``chance`` ranks candidates in a seeded random order through the same code (chance level
of every metric, and the mean distance between unrelated items); ``colorhist`` re-embeds the catalog's own
photos as colour histograms, so a table shows what the CNN adds over colour alone.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import EncodeOptions
from ..core.errors import QueryError
from .catalog_data import CatalogData, colour_histograms, load_catalog_data

log = logging.getLogger(__name__)

CHANCE = "chance"
COLORHIST = "colorhist"
REFERENCES = (CHANCE, COLORHIST)
NO_PREDICTION = "(none)"
RETRIEVAL_METRICS = ("precision", "recall", "map", "ndcg", "hit_rate")
METRIC_NAMES = {
    "precision": "precision@k", "recall": "recall@k", "map": "mAP@k", "ndcg": "nDCG@k", "hit_rate": "hit rate@k",
    "top1_accuracy": "top-1 accuracy", "majority_accuracy": "majority-of-k accuracy",
    "mean_distance": "mean distance", "median_distance": "median distance",
}
_BLOCK_CELLS = 1 << 24  # similarities held at once (64 MB of float32) while ranking


# -- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95 % bootstrap interval (None when there were too few queries to resample)."""

    value: float
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ClassificationReport:
    """kNN classification of the queries' labels from their neighbours' labels."""

    accuracy: Estimate
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, ClassScores]

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy.to_dict(), "macro_precision": self.macro_precision,
                "macro_recall": self.macro_recall, "macro_f1": self.macro_f1,
                "per_class": {c: asdict(s) for c, s in self.per_class.items()}}


@dataclass(frozen=True)
class ClassRow:
    """Retrieval figures averaged over one class's queries (``queries`` counts those with R > 0)."""

    label: str
    items: int  # catalog items with the label
    queries: int
    precision: float
    recall: float
    map: float
    hit_rate: float
    top1: ClassScores


@dataclass
class PerQuery:
    """Each query's neighbours and figures, for plots and reports (not part of ``to_dict``)."""

    ids: list[str]
    labels: list[str]
    neighbours: np.ndarray  # Q x k indices into ``base_ids``; -1 where fewer candidates
    similarity: np.ndarray  # Q x k
    relevant: np.ndarray  # Q x k bool
    precision: np.ndarray  # Q; nan where the query has no relevant item
    base_ids: list[str]


@dataclass
class Evaluation:
    """One row of the comparison table: a catalog (or a reference ranking) judged against one label."""

    name: str
    embedder: str
    label: str | None
    k: int
    mode: str  # "leave-one-out" or "held-out"
    items: int  # catalog items searched
    queries: int  # queries with the label: classification and distances
    retrieval_queries: int  # of those, queries with at least one relevant item: retrieval metrics
    excluded: dict[str, int]  # why other queries were not used: unlabelled, no_relevant, unreadable
    metrics: dict[str, Estimate]
    classification: dict[str, ClassificationReport] = field(default_factory=dict)  # "top1", "majority"
    per_class: list[ClassRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_query: PerQuery | None = None

    def to_dict(self, per_class: bool = True) -> dict:
        out = {
            "name": self.name, "embedder": self.embedder, "label": self.label, "k": self.k, "mode": self.mode,
            "items": self.items, "queries": self.queries, "retrieval_queries": self.retrieval_queries,
            "excluded": dict(self.excluded), "metrics": {n: e.to_dict() for n, e in self.metrics.items()},
            "classification": {n: r.to_dict() for n, r in self.classification.items()}, "notes": self.notes,
        }
        if per_class:
            out["per_class"] = [{**asdict(row), "top1": asdict(row.top1)} for row in self.per_class]
        return out


# -- ranking ------------------------------------------------------------------------------------------


def nearest(queries: np.ndarray, base: np.ndarray, k: int, query_groups: np.ndarray, base_groups: np.ndarray,
            *, ranking: str = "cosine", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k base rows per query row, never a base row of the query's own group (itself, exact copies).

    Returns (indices Q x k, cosine similarities Q x k); index -1 and similarity nan where a query has fewer
    than k candidates. ``ranking="random"`` orders candidates at random (seeded) instead of by similarity;
    the similarities returned are still the true ones, so distances to random neighbours are real.
    Ties are broken by base order. Exact: blocks of query rows times the whole base, in float32.
    """
    if ranking not in ("cosine", "random"):
        raise ValueError(f"ranking must be cosine or random, not {ranking!r}")
    n_q, n_b = len(queries), len(base)
    k_eff = min(k, n_b)
    idx_out = np.full((n_q, k), -1, dtype=np.int64)
    sim_out = np.full((n_q, k), np.nan, dtype=np.float32)
    if n_q == 0 or n_b == 0:
        return idx_out, sim_out
    rng = np.random.default_rng(seed)
    base = np.ascontiguousarray(base, dtype=np.float32)
    step = max(1, _BLOCK_CELLS // n_b)
    for start in range(0, n_q, step):
        stop = min(n_q, start + step)
        sims = np.ascontiguousarray(queries[start:stop], dtype=np.float32) @ base.T
        score = rng.random(sims.shape) if ranking == "random" else sims.astype(np.float64)
        banned = query_groups[start:stop, None] == base_groups[None, :]
        score[banned] = -np.inf
        picked = _top_k_stable(score, k_eff)
        rows = np.arange(stop - start)[:, None]
        ok = np.isfinite(score[rows, picked])
        idx_out[start:stop, :k_eff] = np.where(ok, picked, -1)
        sim_out[start:stop, :k_eff] = np.where(ok, sims[rows, picked], np.nan)
    return idx_out, sim_out


def _top_k_stable(score: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores, best first, ties to the lower index; O(N) per row."""
    n = score.shape[1]
    if k >= n:
        return np.lexsort((np.broadcast_to(np.arange(n), score.shape), -score), axis=1)
    kth = -np.partition(-score, k - 1, axis=1)[:, k - 1:k]  # the k-th largest score of each row
    above = score > kth
    tied = score == kth
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    cols = np.nonzero(chosen)[1].reshape(len(score), k)  # ascending index within each row
    rows = np.arange(len(score))[:, None]
    order = np.lexsort((cols, -score[rows, cols]), axis=1)
    return cols[rows, order]


# -- metrics ------------------------------------------------------------------------------------------


def evaluate_vectors(
    base: np.ndarray,
    base_labels: Sequence[str | None],
    k: int,
    *,
    queries: np.ndarray | None = None,
    query_labels: Sequence[str | None] | None = None,
    base_groups: Sequence | None = None,
    query_groups: Sequence | None = None,
    base_ids: Sequence[str] | None = None,
    query_ids: Sequence[str] | None = None,
    ranking: str = "cosine",
    bootstrap: int = 1000,
    seed: int = 0,
    name: str = "",
    embedder: str = "",
    label: str | None = None,
    excluded: dict[str, int] | None = None,
) -> Evaluation:
    """Judge neighbour lists against labels; leave-one-out over ``base`` unless ``queries`` are given.

    ``base_groups``/``query_groups`` name each item's content (e.g. its sha256): a query never finds an
    item of its own group. In leave-one-out the default gives each item a group of its own, so only the
    item itself is left out. Vectors must be unit length. ``label`` only names the label in the result.

    Raises:
        QueryError: bad ``k``, or shapes that do not match.
    """
    if not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be a positive whole number, got {k!r}")
    base = np.asarray(base, dtype=np.float32)
    n_b = len(base)
    base_labels = list(base_labels)
    base_ids = [str(i) for i in (base_ids if base_ids is not None else range(n_b))]
    loo = queries is None
    if loo:
        queries, query_labels, query_ids = base, base_labels, base_ids
        base_codes = content_group_codes(base_groups, n_b)
        query_codes = base_codes
    else:
        queries = np.asarray(queries, dtype=np.float32)
        if query_labels is None:
            raise QueryError("held-out queries need their labels (query_labels)")
        query_labels = list(query_labels)
        query_ids = [str(i) for i in (query_ids if query_ids is not None else range(len(queries)))]
        base_codes, query_codes = _shared_group_codes(base_groups, query_groups, n_b, len(queries))
    if len(base_labels) != n_b or len(query_labels) != len(queries) or len(query_ids) != len(queries):
        raise QueryError("every vector needs one label entry (None where it has none) and one id")
    if n_b and queries.shape[1] != base.shape[1]:
        raise QueryError(f"query vectors are {queries.shape[1]}-d but the catalog's are {base.shape[1]}-d")

    use = np.array([lab is not None for lab in query_labels], dtype=bool)
    excluded = {"unlabelled": int((~use).sum()), **(excluded or {})}
    q_vec, q_codes = queries[use], query_codes[use]
    q_labels = [lab for lab, u in zip(query_labels, use, strict=True) if u]
    q_ids = [i for i, u in zip(query_ids, use, strict=True) if u]

    classes = sorted({lab for lab in base_labels if lab is not None} | set(q_labels))
    code_of = {c: i for i, c in enumerate(classes)}
    b_lab = np.array([code_of[lab] if lab is not None else -1 for lab in base_labels], dtype=np.int64)
    q_lab = np.array([code_of[lab] for lab in q_labels], dtype=np.int64)

    idx, sim = nearest(q_vec, base, k, q_codes, base_codes, ranking=ranking, seed=seed)
    valid = idx >= 0
    rel = valid & (b_lab[np.where(valid, idx, 0)] == q_lab[:, None])
    n_rel = _relevant_counts(q_lab, q_codes, b_lab, base_codes)

    hits = rel.sum(axis=1)
    returned = valid.sum(axis=1)
    has_rel = n_rel > 0
    excluded["no_relevant"] = int((~has_rel).sum())
    ranks = np.arange(1, k + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(returned > 0, hits / np.maximum(returned, 1), 0.0)
        recall = hits / n_rel
        ideal = np.minimum(n_rel, k)
        ap = (np.cumsum(rel, axis=1) / ranks * rel).sum(axis=1) / ideal
        discounts = 1.0 / np.log2(ranks + 1)
        idcg = np.concatenate([[0.0], np.cumsum(discounts)])[ideal]
        ndcg = (rel * discounts).sum(axis=1) / idcg
        dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sim.astype(np.float64)))
        mean_dist = np.where(returned > 0, np.nansum(dist, axis=1) / np.maximum(returned, 1), np.nan)
    per_query = {"precision": precision, "recall": recall, "map": ap, "ndcg": ndcg, "hit_rate": (hits > 0) * 1.0}

    rng = np.random.default_rng(seed + 1)
    metrics = {name_: _mean_ci(values[has_rel], bootstrap, rng) for name_, values in per_query.items()}

    lab_names = np.array(classes + [NO_PREDICTION], dtype=object)
    first = idx[:, 0]
    top1 = lab_names[np.where(first >= 0, b_lab[np.maximum(first, 0)], -1)]  # -1: NO_PREDICTION
    majority = np.array([_majority(idx[i], sim[i], b_lab, lab_names) for i in range(len(q_ids))], dtype=object)
    truth = np.array(q_labels, dtype=object)
    classification = {}
    for kind, pred in (("top1", top1), ("majority", majority)):
        report = _classification(truth, pred, sorted(set(q_labels)), bootstrap, rng)
        classification[kind] = report
        metrics[f"{kind}_accuracy"] = report.accuracy
    finite = mean_dist[np.isfinite(mean_dist)]
    metrics["mean_distance"] = _mean_ci(finite, bootstrap, rng)
    metrics["median_distance"] = _median_ci(finite, bootstrap, rng)

    per_class = []
    item_counts = Counter(lab for lab in base_labels if lab is not None)
    top1_scores = classification["top1"].per_class
    for c in sorted(set(q_labels), key=lambda c: (-item_counts[c], c)):
        mine = (q_lab == code_of[c]) & has_rel
        means = {n: float(v[mine].mean()) if mine.any() else float("nan") for n, v in per_query.items()}
        per_class.append(ClassRow(label=c, items=item_counts[c], queries=int(mine.sum()),
                                  precision=means["precision"], recall=means["recall"], map=means["map"],
                                  hit_rate=means["hit_rate"], top1=top1_scores[c]))
    notes = []
    if excluded["no_relevant"]:
        notes.append(f"{excluded['no_relevant']} queries have no other item of their class; they count in the "
                     "classification and distances only")
    return Evaluation(
        name=name, embedder=embedder, label=label, k=k, mode="leave-one-out" if loo else "held-out", items=n_b,
        queries=len(q_ids), retrieval_queries=int(has_rel.sum()), excluded=excluded, metrics=metrics,
        classification=classification, per_class=per_class, notes=notes,
        per_query=PerQuery(ids=q_ids, labels=q_labels, neighbours=idx, similarity=sim, relevant=rel,
                           precision=np.where(has_rel, precision, np.nan), base_ids=base_ids),
    )


def content_group_codes(groups: Sequence | None, n: int) -> np.ndarray:
    """Integer code per item; items with equal non-empty group share it, None/"" get codes of their own."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    seen: dict = {}
    out = np.empty(n, dtype=np.int64)
    for i, g in enumerate(groups):
        out[i] = seen.setdefault(g, len(seen)) if g not in (None, "") else -(i + 1)
    return out


def _shared_group_codes(base_groups: Sequence | None, query_groups: Sequence | None, n_b: int, n_q: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    both = list(base_groups) if base_groups is not None else [None] * n_b
    both += list(query_groups) if query_groups is not None else [None] * n_q
    codes = content_group_codes(both, n_b + n_q)
    return codes[:n_b], codes[n_b:]


def _relevant_counts(q_lab: np.ndarray, q_codes: np.ndarray, b_lab: np.ndarray, b_codes: np.ndarray) -> np.ndarray:
    """Per query: base items of its class, minus those of its own group (itself and its copies)."""
    per_class = np.bincount(b_lab[b_lab >= 0], minlength=int(max(q_lab.max(initial=-1), b_lab.max(initial=-1)) + 1))
    same_group = Counter(zip(b_codes.tolist(), b_lab.tolist(), strict=True))
    own = np.array([same_group.get((g, c), 0) for g, c in zip(q_codes.tolist(), q_lab.tolist(), strict=True)])
    return (per_class[q_lab] - own).astype(np.int64) if len(q_lab) else np.zeros(0, dtype=np.int64)


def _majority(idx: np.ndarray, sim: np.ndarray, b_lab: np.ndarray, names: np.ndarray) -> str:
    votes: dict[int, list[float]] = {}
    for rank, (j, s) in enumerate(zip(idx.tolist(), sim.tolist(), strict=True)):
        if j < 0 or b_lab[j] < 0:
            continue
        entry = votes.setdefault(int(b_lab[j]), [0, 0.0, -rank])
        entry[0] += 1
        entry[1] += s
    if not votes:
        return str(names[-1])
    best = max(votes.items(), key=lambda item: (item[1][0], item[1][1], item[1][2]))
    return str(names[best[0]])


def _classification(truth: np.ndarray, pred: np.ndarray, classes: list[str], bootstrap: int,
                    rng: np.random.Generator) -> ClassificationReport:
    from sklearn.metrics import precision_recall_fscore_support

    correct = (truth == pred).astype(float)
    if not classes:
        return ClassificationReport(Estimate(float("nan")), float("nan"), float("nan"), float("nan"), {})
    p, r, f, s = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
    per_class = {c: ClassScores(float(p[i]), float(r[i]), float(f[i]), int(s[i])) for i, c in enumerate(classes)}
    return ClassificationReport(accuracy=_mean_ci(correct, bootstrap, rng), macro_precision=float(p.mean()),
                                macro_recall=float(r.mean()), macro_f1=float(f.mean()), per_class=per_class)


def bootstrap_mean(values, resamples: int, seed: int) -> Estimate:
    """The mean of per-query values with its 95 % percentile bootstrap interval (seeded)."""
    return _mean_ci(np.asarray(values, dtype=np.float64), resamples, np.random.default_rng(seed))


def _mean_ci(values: np.ndarray, bootstrap: int, rng: np.random.Generator) -> Estimate:
    return _bootstrap(values, bootstrap, rng, np.mean)


def _median_ci(values: np.ndarray, bootstrap: int, rng: np.random.Generator) -> Estimate:
    return _bootstrap(values, bootstrap, rng, np.median)


def _bootstrap(values: np.ndarray, resamples: int, rng: np.random.Generator, stat) -> Estimate:
    """``stat`` of per-query values with its 95 % percentile bootstrap interval (``scipy.stats.bootstrap``,
    Efron and Tibshirani 1993), resampled in batches that bound memory on big catalogs."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return Estimate(float("nan"))
    value = float(stat(values))
    if resamples < 1 or n < 2:
        return Estimate(value)
    result = bootstrap((values,), stat, n_resamples=resamples, batch=max(1, (1 << 22) // n), vectorized=True,
                       confidence_level=0.95, method="percentile", rng=rng)
    low, high = result.confidence_interval
    return Estimate(value, float(low), float(high))


# -- catalogs -----------------------------------------------------------------------------------------


def evaluate_catalog(
    catalog,
    label: str | None,
    k: int = 10,
    *,
    queries: str | Path | None = None,
    query_images: str | Path | None = None,
    references: Sequence[str] = REFERENCES,
    bootstrap: int = 1000,
    seed: int = 0,
    options: EncodeOptions | None = None,
    keep_per_query: bool = False,
) -> list[Evaluation]:
    """The catalog's own row, then the reference rows (``chance``, ``colorhist``), for one label.

    Leave-one-out over the catalog, or held-out ``queries`` (a CSV manifest like the one a catalog is built
    from: id or path column plus label columns; images from ``query_images``). Held-out photos are embedded
    with the catalog's own model; a query with the same content as a catalog item never finds that item.

    Raises:
        QueryError: unknown label, unknown reference, or a catalog without items.
        SourceError: the queries manifest cannot be read.
    """
    unknown = [r for r in references if r not in REFERENCES]
    if unknown:
        raise QueryError(f"unknown reference {unknown[0]!r}; choose from {', '.join(REFERENCES)}")
    data = load_catalog_data(catalog)
    if len(data) == 0:
        raise QueryError(f"{catalog.name} has no embedded items; index a source first")
    if label is None:
        raise QueryError("--label is needed: the label whose equal values count as relevant, e.g. articleType")
    base_labels = data.values(label)
    common = {"bootstrap": bootstrap, "seed": seed, "label": label, "base_ids": data.ids,
              "base_groups": data.content}
    held_out = None
    if queries is not None:
        held_out = _embed_queries(catalog.encoder(options or EncodeOptions(progress=False)), queries, query_images,
                                  label, data)
        common.update(queries=held_out.vectors, query_labels=held_out.labels, query_groups=held_out.groups,
                      query_ids=held_out.ids, excluded={"unreadable": held_out.unreadable})
    info = catalog.config.embedder
    rows = [evaluate_vectors(data.vectors, base_labels, k, name=catalog.name, embedder=info.name, **common)]
    if CHANCE in references:
        rows.append(evaluate_vectors(data.vectors, base_labels, k, ranking="random", name=CHANCE,
                                     embedder="random ranking", **common))
    if COLORHIST in references and info.name != COLORHIST:
        rows.append(_colorhist_row(catalog, data, base_labels, k, held_out, queries, query_images, common))
    if not keep_per_query:
        for row in rows:
            row.per_query = None
    return rows


@dataclass
class _Queries:
    ids: list[str]
    paths: list[str]
    labels: list[str | None]
    groups: list[str | None]
    vectors: np.ndarray
    unreadable: int


def _embed_queries(encoder, queries: str | Path, query_images: str | Path | None, label: str,
                   data: CatalogData) -> _Queries:
    from ..core.sources import read_source
    from ..engines.embed import FileTask, encode_files

    listing = read_source(queries, query_images)
    for warning in listing.warnings:
        log.warning(warning)
    items = listing.items
    group_by_id = dict(zip(data.ids, data.content, strict=True))
    group_by_photo = data.group_of_photo()
    vectors = np.zeros((len(items), encoder.embedder.dim), dtype=np.float32)
    sha: list[str | None] = [None] * len(items)
    ok = np.zeros(len(items), dtype=bool)
    for batch in encode_files(encoder, [FileTask(item.path, ref=i) for i, item in enumerate(items)]):
        for row, result in enumerate(batch.embedded):
            vectors[result.task.ref], sha[result.task.ref] = batch.vectors[row], result.sha256
            ok[result.task.ref] = True
        for result in batch.others:
            log.warning("query %s skipped: %s", result.task.path, result.error)
    keep = np.flatnonzero(ok)
    # A query that is itself a catalog product (same id) is of its group, whatever its bytes are now; a query
    # photo that is one of a product's photos is of that product's group (it never finds the product).
    groups = [group_by_id.get(items[i].id) or group_by_photo.get(sha[i] or "") or sha[i] for i in keep]
    return _Queries(ids=[items[i].id for i in keep], paths=[str(items[i].path) for i in keep],
                    labels=[items[i].labels.get(label) for i in keep], groups=groups, vectors=vectors[keep],
                    unreadable=int((~ok).sum()))


def _colorhist_row(catalog, data: CatalogData, base_labels, k, held_out: _Queries | None, queries,
                   query_images, common: dict) -> Evaluation:
    base_vectors, base_ok = colour_histograms(catalog, data)
    kept = np.flatnonzero(base_ok)
    notes = []
    if len(kept) < len(data):
        notes.append(f"{len(data) - len(kept)} catalog photos could not be re-read for the colour histograms")
    args = dict(common, base_ids=[data.ids[i] for i in kept], base_groups=[data.content[i] for i in kept])
    if held_out is not None:
        from ..engines.embed import Encoder
        from ..models.handcrafted import ColourHistogramEmbedder

        encoder = Encoder(ColourHistogramEmbedder(), EncodeOptions(precision="fp32", progress=False))
        args["queries"] = encoder.encode(held_out.paths) if held_out.paths else np.zeros((0, encoder.embedder.dim))
    row = evaluate_vectors(base_vectors[kept], [base_labels[i] for i in kept], k, name=COLORHIST,
                           embedder="colour histogram", **args)
    row.notes[:0] = notes
    return row


def evaluate_catalogs(paths: Sequence[str | Path], label: str, k: int = 10, **kwargs) -> list[Evaluation]:
    """Several catalogs side by side (e.g. one per embedder); reference rows come from the first only."""
    from ..catalog import Catalog

    rows: list[Evaluation] = []
    references = kwargs.pop("references", REFERENCES)
    for n, path in enumerate(paths):
        with Catalog.open(path) as catalog:
            rows.extend(evaluate_catalog(catalog, label, k, references=references if n == 0 else (), **kwargs))
    return rows


def format_estimate(e: Estimate, digits: int = 3) -> str:
    """``0.612 ±0.034`` (half the 95 % interval), or the bare value when there is none."""
    if e.value is None or (isinstance(e.value, float) and math.isnan(e.value)):
        return "-"
    if e.low is None or e.high is None:
        return f"{e.value:.{digits}f}"
    return f"{e.value:.{digits}f} ±{(e.high - e.low) / 2:.{digits}f}"
