"""Proof that a saved FAISS index belongs to the store it is opened with.

The index (``index/``) is a cache of the store's vectors, and caches get damaged: a file restored from a
backup, edited, or corrupted in place at the same size. The worst outcome is a wrong item returned with a
high score, so opening a saved index checks, cheaply at a million items:

* the row -> key map against the checksum in its stamp (``VectorIndex.load``);
* the count of vectors against the store's count of embedded items;
* a seeded sample of items: the vectors the index holds for each (its row file, and FAISS's own codes)
  against the store's;
* the same sample searched through the index: a hit that scores like the query itself must be an item whose
  stored vector is the query's (the item, or an exact copy).

Any disagreement rebuilds the index from the store.
"""

from __future__ import annotations

import numpy as np

from ..index.vector_index import VectorIndex
from ..store.base import Store

SAMPLE = 32  # items compared with the store
SEARCHED = 8  # of those, searched through the index
SAME = 0.999  # cosine above which two unit vectors count as the same vector (float16 storage included)


def index_disagrees(index: VectorIndex, store: Store, dim: int) -> str | None:
    """Why ``index`` does not hold the store's vectors, or None when the checks pass."""
    items = store.counts().get("ok", 0)
    if index.size != items:
        return f"it holds {index.size} vectors for {items} embedded items"
    keys = index.keys()
    if len(keys) == 0:
        return None
    rng = np.random.default_rng(len(keys))
    sample = np.sort(rng.choice(keys, size=min(SAMPLE, len(keys)), replace=False))
    stored = store.vectors_for(sample.tolist(), dim)
    if len(stored) != len(sample):
        return "it names items the store has no vector for"
    truth = np.stack([np.asarray(stored[int(k)], np.float32) for k in sample])
    held = np.stack([np.asarray(index.vector(int(k)), np.float32) for k in sample])
    agree = np.einsum("ij,ij->i", truth, held)
    if (agree < SAME).any():
        bad = int(sample[np.argmin(agree)])
        return f"its vector for item key {bad} differs from the store's (cosine {agree.min():.3f})"
    for key, want in zip(sample.tolist(), truth, strict=True):
        coded = index.faiss_vector(key)
        if coded is not None and float(np.dot(coded, want)) < SAME:
            return f"its FAISS codes for item key {key} differ from the store's vector"
    queries = truth[:SEARCHED]
    sims, found = index.search(queries, 1, settings=index.item_settings)
    for query, key, sim in zip(queries, found[:, 0].tolist(), sims[:, 0].tolist(), strict=True):
        if key < 0 or sim < SAME:
            continue  # an approximate index may miss; a miss returns nothing wrong with a high score
        hit = store.vectors_for([key], dim).get(key)
        if hit is None or float(np.dot(np.asarray(hit, np.float32), query)) < SAME:
            return f"a search returned item key {key} at similarity {sim:.3f} for another item's vector"
    return None
