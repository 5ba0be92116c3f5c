"""One item per near-duplicate group in a result list (``search``/``similar(dedupe=True)``).

The groups are those of the last whole-catalog ``duplicates`` run (``analysis.duplicates``), saved in
``analysis/duplicates.npz`` as member key -> group number with the threshold and store generation that made
them. Without saved groups a result list is collapsed on its own: a result is dropped when it is an exact
copy of, or at least ``DEFAULT_THRESHOLD`` similar to, a better-ranked result (or the query item).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from .query import Match

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95  # cosine similarity from which two items count as near-duplicates
SAVED = Path("analysis") / "duplicates.npz"


def save_groups(catalog, keys: list[int], numbers: list[int], info: dict) -> None:
    """Keep member key -> group number with ``info`` (threshold, generation, items) for ``dedupe``; a
    read-only catalog keeps nothing and says so in the log."""
    path = catalog.folder / SAVED
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys, np.int64), groups=np.array(numbers, np.int64),
                 info=np.array(json.dumps(info)))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only catalog still reports its duplicates
        log.info("could not save duplicate groups (%s)", exc)
    _cache.clear()


_cache: dict[tuple[str, int, int], tuple[dict, dict[int, int]]] = {}


def saved_groups(catalog) -> tuple[dict, dict[int, int]] | None:
    """(info, key -> group) from the last whole-catalog ``duplicates`` run, or None if there was none."""
    path = catalog.folder / SAVED
    try:
        stat = path.stat()
    except OSError:
        return None
    stamp = (str(path), stat.st_mtime_ns, stat.st_size)
    if stamp not in _cache:
        with np.load(path) as data:
            info = json.loads(str(data["info"]))
            _cache.clear()
            _cache[stamp] = (info, dict(zip(data["keys"].tolist(), data["groups"].tolist(), strict=True)))
    return _cache[stamp]


def nearest_distinct(catalog, vector: np.ndarray, k: int, allowed: np.ndarray | None, exclude: set[int],
                     query_key: int | None = None, exclude_products: set[int] | frozenset[int] = frozenset(),
                     by: str = "product") -> list[Match]:
    """Like ``catalog.nearest``, but one result per near-duplicate group of the photos they were found by,
    still k results when enough groups exist (fetches more until it has them). With ``query_key`` (a photo
    key: ``similar``) the query's own group is left out too: a near-copy of the item is not "another" item."""
    saved = saved_groups(catalog)
    groups = saved[1] if saved is not None else None
    table = catalog.table
    size = len(catalog)
    fetch = 3 * k + len(exclude)
    while True:
        matches = catalog.nearest(vector, fetch, allowed, exclude, exclude_products=exclude_products, by=by)
        picked = _collapse(catalog, table, matches, groups, vector, query_key, k)
        if len(picked) >= k or len(matches) < fetch or fetch >= size:
            break
        fetch *= 4
    return [dataclasses.replace(m, rank=rank) for rank, m in enumerate(picked[:k], start=1)]


def _collapse(catalog, table, matches: list[Match], groups: dict[int, int] | None, vector: np.ndarray,
              query_key: int | None, k: int) -> list[Match]:
    def group_of(key: int):
        if groups is not None and key in groups:
            return ("g", groups[key])
        sha = table.hash_by_key.get(key)
        return ("h", sha) if sha else ("k", key)

    keys = [table.key_by_id[m.photo] for m in matches]
    if groups is not None:
        seen = {group_of(query_key)} if query_key is not None else set()
        picked = []
        for key, m in zip(keys, matches, strict=True):
            g = group_of(key)
            if g not in seen:
                seen.add(g)
                picked.append(m)
        return picked
    # no saved groups: a result goes when it is a copy of, or too like, a better one (or the query item)
    index = catalog.index
    kept: list[np.ndarray] = [np.asarray(vector, np.float32).ravel()] if query_key is not None else []
    hashes = {table.hash_by_key.get(query_key)} if query_key is not None else set()
    picked = []
    for key, m in zip(keys, matches, strict=True):
        sha = table.hash_by_key.get(key)
        if sha and sha in hashes:
            continue
        v = np.asarray(index.vector(key), np.float32)
        if kept and float(np.max(np.stack(kept) @ v)) >= DEFAULT_THRESHOLD:
            continue
        kept.append(v)
        hashes.add(sha)
        picked.append(m)
        if len(picked) == k:
            break
    return picked
