"""Passes over every item of a catalog: query vectors in blocks, searched through the catalog's own index.

``duplicates`` and ``recommend`` both need every item's nearest neighbours. They never build an N x N matrix:
query vectors are read from the store one block at a time (key order, so a pass can resume after a key) and
each block goes through ``catalog.index.search``, whatever kind of index the catalog has. FAISS releases the
GIL while it searches, so a small thread pool overlaps one block's search with the previous block's
post-processing and writing; results still come back in block order.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from tqdm import tqdm

DEFAULT_BLOCK = 1024  # queries per index.search call: large enough for BLAS, small enough to stay in cache
DEFAULT_THREADS = 2

T = TypeVar("T")
R = TypeVar("R")


def query_blocks(catalog, block: int = DEFAULT_BLOCK, keys: np.ndarray | None = None,
                 after: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, vectors) of embedded items in key order, ``block`` at a time; only ``keys`` when given, only
    keys above ``after`` (a resumed pass)."""
    dim = catalog.config.embedder.dim
    wanted = None if keys is None else np.unique(np.asarray(keys, dtype=np.int64))
    for bkeys, bvecs in catalog.store.iter_vectors(dim, block, after=after):
        if wanted is not None:
            inside = np.isin(bkeys, wanted, assume_unique=True)
            if not inside.any():
                continue
            bkeys, bvecs = bkeys[inside], bvecs[inside]
        yield bkeys, bvecs


def ordered_map(work: Callable[[T], R], items: Iterable[T], threads: int = DEFAULT_THREADS) -> Iterator[R]:
    """``work(item)`` for each item on ``threads`` threads, yielded in input order, with at most
    ``threads + 1`` items in flight so memory stays bounded however long the input is."""
    if threads <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lookalike-pass") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def progress_bar(total: int, desc: str, progress: bool | None) -> tqdm:
    """A tqdm bar on stderr; ``progress=None`` shows it only on a terminal."""
    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, unit="item", desc=desc, disable=not show, dynamic_ncols=True, smoothing=0.05)


def search_until(index, queries: np.ndarray, fetch: int, allowed: np.ndarray | None, limit: int,
                 need_more: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Search ``fetch`` neighbours per query, then search again with four times as many for the rows where
    ``need_more(rows, sims, keys)`` says so (``rows``: their positions among the queries; ``sims``, ``keys``:
    what they have so far), until no row asks or ``limit`` neighbours were fetched.

    Returns (sims, keys) padded with nan / -1 to the widest fetch: rows that needed more come back longer.
    """
    fetch = max(1, min(fetch, limit))
    sims, keys = search_block(index, queries, fetch, allowed)
    sims, keys = np.asarray(sims, dtype=np.float32), np.asarray(keys, dtype=np.int64)
    rows = np.arange(len(queries))
    while fetch < limit:
        full = keys[rows, -1] >= 0 if keys.shape[1] == fetch else np.zeros(len(rows), bool)
        full_rows = rows[full]
        again = full_rows[need_more(full_rows, sims[full_rows], keys[full_rows])] if len(full_rows) else full_rows
        if len(again) == 0:
            break
        fetch = min(limit, fetch * 4)
        more_sims, more_keys = search_block(index, queries[again], fetch, allowed)
        width = more_keys.shape[1]
        if width > keys.shape[1]:
            pad = width - keys.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=np.nan)
            keys = np.pad(keys, ((0, 0), (0, pad)), constant_values=-1)
        sims[again, :width], keys[again, :width] = more_sims, more_keys
        rows = again
    return sims, keys


def first_in_row(codes: np.ndarray) -> np.ndarray:
    """True where a row's code appears for the first time in that row (left to right): one per group."""
    order = np.argsort(codes, axis=1, kind="stable")
    ranked = np.take_along_axis(codes, order, axis=1)
    first = np.ones(codes.shape, dtype=bool)
    first[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    out = np.empty_like(first)
    np.put_along_axis(out, order, first, axis=1)
    return out


def search_block(index, queries: np.ndarray, fetch: int, allowed: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The queries of a pass are catalog items: the index's setting tuned for them, where it has one."""
    settings = getattr(index, "item_settings", None)
    if settings is None:
        return index.search(queries, fetch, allowed)
    return index.search(queries, fetch, allowed, settings=settings)


# -- products: a pass over products queries with every photo of each product --------------------------------


class PhotoOwners:
    """Photo key -> the keys of the products that show it, as two flat arrays (picklable, so Ray actors get the
    same table): the owners of photo ``h`` are ``products[start[h]:start[h + 1]]``, in key order."""

    def __init__(self, products_of: dict[int, tuple[int, ...]]):
        size = (max(products_of) + 2) if products_of else 1
        counts = np.zeros(size, np.int64)
        for photo, owners in products_of.items():
            counts[photo + 1] = len(owners)
        self.start = np.cumsum(counts)
        self.products = np.zeros(int(self.start[-1]), np.int64)
        for photo, owners in products_of.items():
            self.products[self.start[photo]:self.start[photo + 1]] = owners

    def of(self, photo: int) -> np.ndarray:
        if photo < 0 or photo + 1 >= len(self.start):
            return self.products[:0]
        return self.products[self.start[photo]:self.start[photo + 1]]


def product_blocks(catalog, block: int = DEFAULT_BLOCK, keys: np.ndarray | None = None,
                   after: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(product keys, their photos' keys, the photos' vectors P x D float32, each photo row's product
    position) of the products with an embedded photo, in product key order, ``block`` products at a time;
    only ``keys`` when given, only keys above ``after`` (a resumed pass)."""
    all_keys = np.array(sorted(catalog.products.photos_of), dtype=np.int64)
    all_keys = all_keys[all_keys > after]
    wanted = None if keys is None else np.unique(np.asarray(keys, dtype=np.int64))
    for start in range(0, len(all_keys), block):  # cut as query_blocks cuts (then keep the wanted keys)
        chunk = all_keys[start:start + block]
        if wanted is not None:
            chunk = chunk[np.isin(chunk, wanted, assume_unique=True)]
        if len(chunk):
            yield product_inputs(catalog, chunk)


def product_inputs(catalog, qkeys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``product_blocks``' tuple for one block of product keys (read from this process's catalog)."""
    products = catalog.products
    photos = [products.photos_of[int(k)] for k in qkeys.tolist()]
    owner = np.repeat(np.arange(len(qkeys)), [len(p) for p in photos]).astype(np.int64)
    photo_keys = np.concatenate(photos).astype(np.int64) if photos else np.zeros(0, np.int64)
    stored = catalog.store.vectors_for(photo_keys.tolist(), catalog.config.embedder.dim)
    vectors = np.stack([stored[int(p)] for p in photo_keys]).astype(np.float32, copy=False) if len(photo_keys) \
        else np.zeros((0, catalog.config.embedder.dim), np.float32)
    return qkeys, photo_keys, vectors, owner
