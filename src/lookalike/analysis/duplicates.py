"""Exact and near-duplicate groups of a catalog, and collapsing them in result lists (``--dedupe``).

Shops list one product several times: the same file under two ids (exact: same content hash), or the same
photo resized, recompressed or slightly cropped (near: cosine similarity at or above a threshold). A group
is a connected component of the graph whose edges join exact copies and pairs at or above the threshold.

How edges are found: every item's ``neighbours`` nearest items through the catalog's index, in blocks (see
``neighbours.py``), never an N x N matrix. A row whose last neighbour is still at or above the threshold
may have more: it is searched again with four times as many, up to ``MAX_NEIGHBOURS``; rows still full at
that cap are counted in ``DuplicateReport.truncated`` (their group is still whole when the missing members
are linked through other members, as near-copies of one photo usually are). With an approximate index an
edge can be missed where the index misses a neighbour. Connected components chain: two members of a group
can be less similar than the threshold when each is close to a third; ``min_similarity`` shows it.

Products: the pass runs over photos (each photo once, however many products show it); a **group of products**
is a connected component of products joined when a photo of one is the same photo as, an exact copy of, or a
near-duplicate of a photo of the other (so sizes of one style that share their photos are one group, kind
``exact`` when the products' photos have the same contents). Ids in groups are product ids; a member's
similarity is its centroid's (``Catalog.vector``) to the representative's.

A whole-catalog run saves its photo groups in ``analysis/duplicates.npz`` (photo keys, what result lists are
collapsed by); ``search``/``similar`` with ``dedupe``
(``catalog.dedupe``) and ``recommend`` use them to show one item per group.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..catalog.dedupe import DEFAULT_THRESHOLD, save_groups, saved_groups
from ..catalog.query import Where
from ..core.errors import ImageError, QueryError
from ..core.images import read_size
from .neighbours import DEFAULT_BLOCK, DEFAULT_THREADS, ordered_map, progress_bar, query_blocks, search_until

log = logging.getLogger(__name__)

DEFAULT_NEIGHBOURS = 20
MAX_NEIGHBOURS = 1024
PAIRWISE_LIMIT = 512  # groups up to this size get exact pairwise min/max similarity; larger ones to the representative


@dataclass(frozen=True)
class DuplicateMember:
    id: str
    path: str
    similarity: float  # to the group's representative
    width: int
    height: int


@dataclass
class DuplicateGroup:
    """One product listed several times. ``representative`` is the copy to keep: the largest image (pixels),
    then the largest file (the least compressed), then the first added."""

    group: int
    kind: str  # "exact": every member has the same content hash; "near": otherwise
    representative: str
    members: list[DuplicateMember]
    min_similarity: float
    max_similarity: float

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.members]

    def to_dict(self) -> dict:
        return {"group": self.group, "kind": self.kind, "size": len(self.members),
                "representative": self.representative, "min_similarity": self.min_similarity,
                "max_similarity": self.max_similarity, "members": [dataclasses.asdict(m) for m in self.members]}


@dataclass
class DuplicateReport:
    threshold: float
    neighbours: int
    items: int  # items looked at
    groups: list[DuplicateGroup] = field(default_factory=list)
    truncated: int = 0  # items with more than MAX_NEIGHBOURS neighbours above the threshold
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Items that could go: every member of a group but its representative."""
        return sum(len(g.members) - 1 for g in self.groups)

    def summary(self) -> str:
        exact = sum(g.kind == "exact" for g in self.groups)
        rate = self.items / self.seconds if self.seconds > 0 else 0.0
        return (f"{len(self.groups)} groups ({exact} exact, {len(self.groups) - exact} near) holding "
                f"{self.duplicates + len(self.groups)} of {self.items} items; {self.duplicates} could go "
                f"(threshold {self.threshold}) in {self.seconds:.1f} s ({rate:.0f} items/s)")

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "neighbours": self.neighbours, "items": self.items,
                "duplicates": self.duplicates, "truncated": self.truncated, "seconds": self.seconds,
                "groups": [g.to_dict() for g in self.groups]}

    def write_csv(self, path: str | Path) -> Path:
        """One row per member: group, kind, size, id, path, representative (1/0), similarity to it."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["group", "kind", "size", "id", "path", "representative", "similarity", "width",
                             "height"])
            for g in self.groups:
                for m in g.members:
                    writer.writerow([g.group, g.kind, len(g.members), m.id, m.path, int(m.id == g.representative),
                                     f"{m.similarity:.6f}", m.width, m.height])
        os.replace(tmp, path)
        return path


def find_duplicates(catalog, threshold: float = DEFAULT_THRESHOLD, *, neighbours: int = DEFAULT_NEIGHBOURS,
                    where: Where = None, block: int = DEFAULT_BLOCK, threads: int = DEFAULT_THREADS,
                    progress: bool | None = None, save: bool = True) -> DuplicateReport:
    """Group exact and near duplicates among the catalog's items (those matching ``where``, if given).

    ``save`` keeps a whole-catalog result (no ``where``) for ``dedupe``.

    Raises:
        QueryError: threshold outside (0, 1], neighbours < 1, bad ``where``.
    """
    started = time.perf_counter()
    if not 0.0 < threshold <= 1.0:
        raise QueryError(f"threshold must be above 0 and at most 1 (cosine similarity), got {threshold}")
    if neighbours < 1:
        raise QueryError(f"neighbours must be at least 1, got {neighbours}")
    allowed_products = catalog.allowed(where)
    index = catalog.index  # taken once: worker threads never touch the catalog's SQLite connection
    table, products = catalog.table, catalog.products
    universe = np.array(sorted(table.id_by_key), dtype=np.int64)
    product_keys = np.array(sorted(products.photos_of), dtype=np.int64)
    allowed = None
    if allowed_products is not None:
        product_keys = np.intersect1d(product_keys, allowed_products)
        allowed = products.photo_keys(product_keys)
        universe = np.intersect1d(universe, allowed)
    report = DuplicateReport(threshold=threshold, neighbours=neighbours, items=len(product_keys))
    if len(product_keys) < 2:
        report.seconds = time.perf_counter() - started
        return report
    limit = min(MAX_NEIGHBOURS + 1, len(universe))

    def above(rows: np.ndarray, sims: np.ndarray, keys: np.ndarray) -> np.ndarray:
        return sims[:, -1] >= threshold

    def work(blk: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        qkeys, qvecs = blk
        sims, keys = search_until(index, qvecs, neighbours + 1, allowed, limit, above)
        full = (keys[:, -1] >= 0) & (sims[:, -1] >= threshold) & (keys.shape[1] >= limit) & (limit < len(universe))
        edge = (keys >= 0) & (sims >= threshold) & (keys != qkeys[:, None])
        rows, cols = np.nonzero(edge)
        return qkeys[rows], keys[rows, cols], sims[rows, cols], int(full.sum()), len(qkeys)

    src, dst, sim = [], [], []
    with progress_bar(len(universe), "duplicates", progress) as bar:
        for a, b, s, truncated, done in ordered_map(work, query_blocks(catalog, block, keys=allowed), threads):
            src.append(a)
            dst.append(b)
            sim.append(s)
            report.truncated += truncated
            bar.update(done)
    for keys in table.keys_by_hash.values():  # exact copies are one group even if an approximate index misses
        if len(keys) > 1:
            members = np.array(sorted(keys), dtype=np.int64)
            src.append(members[:-1])
            dst.append(members[1:])
            sim.append(np.ones(len(members) - 1, np.float32))
    src_k, dst_k, sims = np.concatenate(src), np.concatenate(dst), np.concatenate(sim)
    keep = np.isin(dst_k, universe) & np.isin(src_k, universe)
    src_k, dst_k, sims = src_k[keep], dst_k[keep], sims[keep]
    photo_labels = _components(universe, src_k, dst_k)
    report.groups = _product_groups(catalog, products, table, universe, photo_labels, product_keys)
    report.seconds = time.perf_counter() - started
    if report.truncated:
        log.warning("%d items have more than %d neighbours above %s; their groups rest on links through other "
                    "members (raise the threshold to split them)", report.truncated, MAX_NEIGHBOURS, threshold)
    if save and where is None:
        _save(catalog, report, universe, photo_labels)
    return report


def _components(universe: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected component of each photo of ``universe`` (sorted keys) in the graph of edges src -> dst."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(universe)
    a, b = np.searchsorted(universe, src), np.searchsorted(universe, dst)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)).tocsr()
    return connected_components(graph, directed=True, connection="weak")[1]


def _product_groups(catalog, products, table, universe: np.ndarray, photo_labels: np.ndarray,
                    product_keys: np.ndarray) -> list[DuplicateGroup]:
    """Groups of two or more products joined through their photos' components, largest first, each with its
    representative (the product whose first photo is largest, then the largest file, then the first added)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from .catalog_data import content_group

    n = len(product_keys)
    rows, cols = [], []
    for i, key in enumerate(product_keys.tolist()):
        photos = [int(p) for p in products.photos_of[key]]
        at = np.searchsorted(universe, photos)
        inside = (at < len(universe)) & (universe[np.minimum(at, len(universe) - 1)] == photos)
        for label in set(photo_labels[at[inside]].tolist()):
            rows.append(i)
            cols.append(label)
    # products x photo components: two products are joined when they touch one component
    bipartite = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, int(photo_labels.max()) + 1))
    joined = (bipartite @ bipartite.T).tocsr()
    _, labels = connected_components(joined, directed=False)
    counts = np.bincount(labels)
    by_label: dict[int, list[int]] = {}
    for i in np.flatnonzero(counts[labels] > 1).tolist():
        by_label.setdefault(int(labels[i]), []).append(int(product_keys[i]))
    if not by_label:
        return []
    firsts = {key: int(products.photos_of[key][0]) for keys in by_label.values() for key in keys}
    sizes = catalog.store.sizes_for(sorted(set(firsts.values())))
    groups = []
    for keys in by_label.values():
        size = [_true_size(table.path_by_key[firsts[k]], sizes.get(firsts[k], (0, 0, 0))) for k in keys]
        rep = max(range(len(keys)), key=lambda i: (size[i][0] * size[i][1], size[i][2], -keys[i]))
        ids = [products.id_by_key[k] for k in keys]
        vecs = np.stack([catalog.vector(pid) for pid in ids])
        to_rep = vecs @ vecs[rep]
        upper = (vecs @ vecs.T)[np.triu_indices(len(keys), 1)] if len(keys) <= PAIRWISE_LIMIT else to_rep
        contents = {content_group(tuple(table.hash_by_key.get(int(p)) for p in products.photos_of[k])) for k in keys}
        kind = "exact" if len(contents) == 1 and None not in contents else "near"
        members = [DuplicateMember(id=ids[i], path=table.path_by_key[firsts[k]],
                                   similarity=round(min(1.0, float(to_rep[i])), 6), width=size[i][0],
                                   height=size[i][1]) for i, k in enumerate(keys)]
        members.sort(key=lambda m: (m.id != ids[rep], -m.similarity, m.id))
        groups.append(DuplicateGroup(group=0, kind=kind, representative=ids[rep], members=members,
                                     min_similarity=round(min(1.0, float(upper.min())), 6),
                                     max_similarity=round(min(1.0, float(upper.max())), 6)))
    groups.sort(key=lambda g: (-len(g.members), g.representative))
    for number, g in enumerate(groups, start=1):
        g.group = number
    return groups


def _true_size(path: str, stored: tuple[int, int, int]) -> tuple[int, int, int]:
    """(width, height, bytes) with the size from the file's header: catalogs indexed before the store
    recorded the photo's own size hold the decoded size (JPEG draft mode shrinks large photos), which cannot
    rank copies by resolution."""
    try:
        width, height = read_size(path)
    except ImageError:
        return stored
    return width, height, stored[2]


# -- saved groups (for --dedupe, see catalog.dedupe) ---------------------------------------------------


def _save(catalog, report: DuplicateReport, universe: np.ndarray, photo_labels: np.ndarray) -> None:
    """Photo key -> group number (components of two or more photos), with the threshold and generation that
    made them: result lists collapse on the photos they were found by."""
    counts = np.bincount(photo_labels)
    multi = counts[photo_labels] > 1
    info = {"threshold": report.threshold, "generation": catalog.store.generation(), "items": report.items}
    save_groups(catalog, universe[multi].tolist(), (photo_labels[multi] + 1).tolist(), info)


def group_codes(catalog, threshold: float = DEFAULT_THRESHOLD, *, progress: bool | None = None,
                threads: int = DEFAULT_THREADS) -> np.ndarray:
    """Near-duplicate group of every item key as a dense array (index = key): the smallest key of its group,
    or its own key. Uses the saved groups when they were made at this threshold from the catalog as it is
    now; otherwise finds (and saves) them first."""
    table = catalog.table
    size = (max(table.id_by_key) + 1) if table.id_by_key else 1
    codes = np.arange(size, dtype=np.int64)
    saved = saved_groups(catalog)
    if saved is None or saved[0].get("threshold") != threshold or \
            saved[0].get("generation") != catalog.store.generation():
        log.info("finding duplicate groups at threshold %s first", threshold)
        find_duplicates(catalog, threshold, progress=progress, threads=threads, save=True)
        saved = saved_groups(catalog)
    assert saved is not None
    by_group: dict[int, list[int]] = {}
    for key, number in saved[1].items():
        if key < size:
            by_group.setdefault(number, []).append(key)
    for keys in by_group.values():
        codes[keys] = min(keys)
    return codes
