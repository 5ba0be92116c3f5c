"""The FAISS index over a catalog's vectors: exact inner product (cosine on unit vectors), keyed by item.

The index is derived data: it is saved beside the catalog stamped with the store's generation and
rebuilt from the stored vectors whenever the stamp is stale (after a killed run, or another writer).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
STAMP_FILE = "stamp.json"


class VectorIndex:
    """Nearest neighbours by inner product over unit vectors, with ids equal to the store's item keys."""

    def __init__(self, index: faiss.Index, kind: str = "flat"):
        self.index = index
        self.kind = kind

    @classmethod
    def build(cls, keys: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        dim = vectors.shape[1]
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(keys):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), keys.astype(np.int64))
        return cls(index)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, keys) per query row; missing slots have key -1.

        ``allowed`` restricts the search to those item keys (label filters) inside FAISS, so a filter
        never shortens the result list while enough matching items exist.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, self.size)) if self.size else 1
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64)))
        return self.index.search(queries, k, params=params)

    def vector(self, key: int) -> np.ndarray:
        return self.index.reconstruct(int(key))

    def save(self, folder: Path, generation: int) -> None:
        """Write the index then its stamp, each atomically; a stale or missing stamp means rebuild."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (INDEX_FILE + ".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, folder / INDEX_FILE)
        stamp_tmp = folder / (STAMP_FILE + ".tmp")
        stamp_tmp.write_text(json.dumps({"generation": generation, "size": self.size, "kind": self.kind}))
        os.replace(stamp_tmp, folder / STAMP_FILE)

    @classmethod
    def load(cls, folder: Path, generation: int) -> VectorIndex | None:
        """The saved index if it matches ``generation``; None if it must be rebuilt."""
        try:
            stamp = json.loads((folder / STAMP_FILE).read_text())
            if stamp.get("generation") != generation:
                return None
            return cls(faiss.read_index(str(folder / INDEX_FILE)), stamp.get("kind", "flat"))
        except (OSError, ValueError, RuntimeError) as exc:
            log.info("index in %s not usable (%s); rebuilding from stored vectors", folder, exc)
            return None
