"""Groups and maps of the embedding space: k-means clusters stored per item, and 2D layouts for plots.

Clusters live in their own table of the catalog (``clusters``), not among the labels: labels are the
source's data and are rewritten whenever the manifest is re-indexed, clusters are derived from the vectors
and must survive that; and a manifest column that happens to be called "cluster" can never collide with
them. ``similar --same-cluster`` and ``--label cluster`` / ``--color-by cluster`` read that table.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.errors import LookalikeError, QueryError

log = logging.getLogger(__name__)

DEFAULT_RANGE = (2, 12)
SILHOUETTE_SAMPLE = 5000  # silhouette is quadratic in the items; score a seeded sample beyond this
METHODS = ("pca", "tsne", "umap")


@dataclass
class ClusterSummary:
    cluster: int
    size: int
    top_label: str | None = None  # the most common value of the purity label
    top_share: float | None = None  # its share among the cluster's labelled items
    samples: list[str] = field(default_factory=list)  # item ids nearest the centre


@dataclass
class ClusterResult:
    """What ``cluster_catalog`` found and stored."""

    n: int
    items: int
    silhouette: float
    inertia: float
    scores: dict[int, float]  # n -> silhouette, when chosen with --auto
    label: str | None
    purity: float | None  # share of labelled items whose label is their cluster's most common one
    clusters: list[ClusterSummary]
    generation: int = 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["scores"] = {str(n): s for n, s in self.scores.items()}
        return out


def kmeans(vectors: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(cluster per row, centres, inertia) of scikit-learn k-means on the vectors.

    Raises:
        QueryError: n < 2 or more clusters than distinct vectors.
    """
    from sklearn.cluster import KMeans

    if n < 2:
        raise QueryError(f"-n {n}: ask for at least 2 clusters")
    distinct = len(np.unique(vectors, axis=0))
    if n > distinct:
        raise QueryError(f"-n {n}: the catalog has only {distinct} distinct vectors; ask for at most that many")
    model = KMeans(n_clusters=n, n_init=10, random_state=seed).fit(vectors)
    return model.labels_.astype(np.int64), model.cluster_centers_, float(model.inertia_)


def silhouette(vectors: np.ndarray, clusters: np.ndarray, seed: int = 0) -> float:
    """Mean silhouette (cosine), on a seeded sample of at most ``SILHOUETTE_SAMPLE`` items."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(clusters)) < 2:
        return float("nan")
    sample = min(len(vectors), SILHOUETTE_SAMPLE)
    return float(silhouette_score(vectors, clusters, metric="cosine", sample_size=sample, random_state=seed))


def choose_n(vectors: np.ndarray, low: int, high: int, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The n in [low, high] with the best silhouette, and every n's score (ties: the smaller n)."""
    if low < 2 or high < low:
        raise QueryError(f"--range {low}:{high}: give two whole numbers, 2 <= low <= high")
    high = min(high, len(np.unique(vectors, axis=0)) - 1)
    if high < low:
        raise QueryError(f"too few distinct vectors ({len(vectors)}) to choose between {low} clusters and more")
    scores = {n: silhouette(vectors, kmeans(vectors, n, seed)[0], seed) for n in range(low, high + 1)}
    best = max(scores, key=lambda n: (scores[n], -n))
    return best, scores


def purity(clusters: Sequence[int], labels: Sequence[str | None]) -> float:
    """Share of labelled items whose label is the most common one of their cluster (items without the
    label are left out); 1.0 means every cluster holds a single label."""
    by_cluster: dict[int, Counter] = {}
    for c, lab in zip(clusters, labels, strict=True):
        if lab is not None:
            by_cluster.setdefault(int(c), Counter())[lab] += 1
    total = sum(sum(cnt.values()) for cnt in by_cluster.values())
    if total == 0:
        return float("nan")
    return sum(cnt.most_common(1)[0][1] for cnt in by_cluster.values()) / total


def cluster_catalog(catalog, n: int | None = None, *, auto: tuple[int, int] | None = None, label: str | None = None,
                    seed: int = 0, samples: int = 6, store: bool = True) -> ClusterResult:
    """k-means on a catalog's vectors (``n`` clusters, or the best silhouette over ``auto`` = (low, high)),
    stored per item unless ``store`` is False.

    Raises:
        QueryError: neither or both of ``n`` and ``auto``; too few items; unknown ``label``.
    """
    from .catalog_data import load_catalog_data

    if (n is None) == (auto is None):
        raise QueryError("give either -n N or --auto (choose n by silhouette)")
    data = load_catalog_data(catalog)
    if len(data) < 3:
        raise QueryError(f"{catalog.name} has {len(data)} embedded items; clustering needs at least 3")
    labels = data.values(label) if label is not None else None
    scores: dict[int, float] = {}
    if auto is not None:
        n, scores = choose_n(data.vectors, *auto, seed=seed)
    assignment, centres, inertia = kmeans(data.vectors, int(n), seed)
    result = ClusterResult(
        n=int(n), items=len(data), silhouette=scores.get(n, silhouette(data.vectors, assignment, seed)),
        inertia=inertia, scores=scores, label=label,
        purity=purity(assignment, labels) if labels is not None else None,
        clusters=summarise(data.vectors, assignment, centres, data.ids, labels, samples),
        generation=catalog.store.generation(),
    )
    if store:
        catalog.store.set_clusters(data.keys, assignment, {"n": result.n, "generation": result.generation,
                                                           "seed": seed, "silhouette": result.silhouette})
    return result


def summarise(vectors: np.ndarray, assignment: np.ndarray, centres: np.ndarray, ids: Sequence[str],
              labels: Sequence[str | None] | None, samples: int = 6) -> list[ClusterSummary]:
    """Per cluster: size, most common label and its share, and the ids of the items nearest its centre."""
    out = []
    for c in range(len(centres)):
        members = np.flatnonzero(assignment == c)
        order = members[np.argsort(((vectors[members] - centres[c]) ** 2).sum(axis=1), kind="stable")]
        summary = ClusterSummary(cluster=c, size=len(members), samples=[ids[i] for i in order[:samples]])
        if labels is not None:
            counts = Counter(labels[i] for i in members if labels[i] is not None)
            if counts:
                top, count = counts.most_common(1)[0]
                summary.top_label, summary.top_share = top, count / sum(counts.values())
        out.append(summary)
    return out


def stored_summaries(data, label: str | None = None, samples: int = 6) -> list[ClusterSummary]:
    """Summaries of the clusters stored in a catalog (``catalog_data.CatalogData``); centres are member means.

    Raises:
        QueryError: the catalog has no clusters yet.
    """
    if not data.clusters:
        raise QueryError(f"{data.path} has no clusters yet; run `lookalike cluster --catalog {data.path} -n 6` "
                         "(or --auto)")
    keep = [i for i, key in enumerate(data.keys.tolist()) if key in data.clusters]
    assignment = np.array([data.clusters[int(data.keys[i])] for i in keep])
    found = sorted(set(assignment.tolist()))
    dense = np.searchsorted(found, assignment)
    vectors = data.vectors[keep]
    centres = np.stack([vectors[dense == c].mean(axis=0) for c in range(len(found))])
    values = data.values(label) if label else None
    labels = [values[i] for i in keep] if values is not None else None
    summaries = summarise(vectors, dense, centres, [data.ids[i] for i in keep], labels, samples)
    for s, c in zip(summaries, found, strict=True):
        s.cluster = c
    return summaries


def project_2d(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """N x 2 coordinates for a map: PCA (linear, fast), t-SNE (scikit-learn) or UMAP (umap-learn).

    Raises:
        LookalikeError: unknown method, or UMAP asked for and umap-learn is not installed.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if method not in METHODS:
        raise LookalikeError(f"unknown map method {method!r}; choose one of {', '.join(METHODS)}")
    if len(vectors) < 3:
        raise LookalikeError(f"a map needs at least 3 items, the catalog has {len(vectors)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine",
                    random_state=seed).fit_transform(vectors)
    try:
        import umap
    except ImportError:
        raise LookalikeError("--method umap needs umap-learn: pip install 'lookalike[umap]' "
                             "(or use --method pca or tsne)") from None
    neighbours = min(15, len(vectors) - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state": we want it seeded
        return umap.UMAP(n_components=2, n_neighbors=neighbours, metric="cosine",
                         random_state=seed).fit_transform(vectors)
