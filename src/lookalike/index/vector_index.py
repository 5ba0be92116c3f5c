"""The FAISS index over a catalog's vectors, keyed by item, of the kind ``choice.choose_index`` picks.

FAISS ids are *rows*: positions in an append-only vector file (``rows.py``). An item's key maps to its
live row; an update appends a new row and retires the old one, a removal retires it. Flat and IVF-PQ
indexes drop retired rows from FAISS at once; HNSW cannot, so its retired rows are masked at search time
until they pass ``HNSW_MAX_RETIRED`` and the graph is rebuilt. IVF-PQ answers are re-ranked with the exact
vectors read back from the row file.

The index is derived data: saved beside the catalog stamped with the store's generation, caught up from
the store's change log when stale, rebuilt from the stored vectors when that is not possible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .choice import IVF_MIN_POINTS_PER_LIST, IndexPlan, format_bytes
from .faiss_parts import flat_faiss, holds_float16, new_faiss_index, train, train_on, training_rows
from .rows import RowVectors

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
ROWS_FILE = "rows.npy"
VECTORS_FILE = "vectors.bin"
STAMP_FILE = "stamp.json"
FORMAT = 2
# A label filter matching at most this many items is answered exactly from the row file: always k results.
EXACT_SUBSET_MAX = 20_000
HNSW_MAX_RETIRED = 0.2  # retired share of an HNSW graph that triggers a rebuild
# A flat float32 index keeps float16 copies in FAISS: a single query scans half the bytes (0.49 ms against
# 1.44 ms at 5k x 2048, 6.5 against 17.7 ms at 50k) and the answer is made exact again below.
SCREEN_MAX_QUERIES = 20  # from this many queries at once, BLAS over the float32 rows is faster
SCREEN_MIN_ITEMS = 8192  # below this, scanning the float32 rows directly costs less than screen + proof
SCREEN_EXTRA = 16  # candidates beyond 2k that the float16 scan passes to the exact re-ranking
REFINE_BLOCK = 64  # queries re-ranked at once (64 x 10 x 16 candidates x 2048-d float32 = 80 MB)


@dataclass(frozen=True)
class SearchSettings:
    """Search-time knobs, set by tuning: HNSW ``ef_search``; IVF ``nprobe``; ``refine`` x k candidates."""

    ef_search: int = 64
    nprobe: int = 16
    refine: int = 1
    exact: bool = False  # tuning found no setting reaching the recall target: scan exactly until one does

    def describe(self, kind: str) -> str:
        if self.exact and kind != "flat":
            return "exact scan (no setting reached the recall target)"
        if kind == "hnsw":
            return f"efSearch={self.ef_search}"
        if kind == "ivfpq":
            return f"nprobe={self.nprobe}, re-rank {self.refine}k from vectors"
        return "exact"


@dataclass
class Quality:
    """Recall@k against exact search, measured on a sample of catalog items (``tuning.py``)."""

    recall: float | None = None
    k: int = 10
    queries: int = 0
    latency_ms: float | None = None
    target: float | None = None
    table: list[dict[str, Any]] = field(default_factory=list)
    items: int = 0  # the index's size when measured (0: not recorded, an index saved by an earlier release)


class VectorIndex:
    """Nearest neighbours by inner product over unit vectors; answers carry the store's item keys."""

    def __init__(self, plan: IndexPlan, index: faiss.Index, row_keys: np.ndarray, vectors: RowVectors,
                 settings: SearchSettings | None = None, quality: Quality | None = None, built_count: int = 0):
        self.plan = plan
        self.index = index
        self.row_keys = row_keys  # row -> item key; -1 for a retired row
        self._keys_buffer: np.ndarray | None = None  # what row_keys views while rows are appended
        self.vectors = vectors
        self.settings = settings or SearchSettings()
        # Queries that are catalog items (similar, recommend, duplicates) start next to their own node and
        # reach the target with a cheaper setting than new photos; tuning sets both.
        self.item_settings = self.settings
        self.quality = quality or Quality(recall=1.0 if plan.kind == "flat" and plan.dtype == "float32" else None)
        self.built_count = built_count or int((row_keys >= 0).sum())
        self._key_rows = _invert(row_keys)
        self._screened = plan.kind == "flat" and plan.dtype == "float32" and holds_float16(index)
        self._live_bitmap: np.ndarray | None = None
        self._size: int | None = None
        self._memory_bytes: int | None = None

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def build(cls, keys: np.ndarray, vectors: np.ndarray, plan: IndexPlan | None = None, seed: int = 0,
              expected: int = 0) -> VectorIndex:
        """A fresh index of ``plan`` over (keys, unit vectors); default an exact float32 flat index. ``expected``:
        how many items it will hold once rows now being committed are added (a flat index takes its float16
        screen from the start, not in a rebuild at the end)."""
        plan = plan or IndexPlan("flat")
        keys = np.asarray(keys, dtype=np.int64)
        dim = vectors.shape[1]
        index = new_faiss_index(plan, dim, max(len(keys), expected) >= SCREEN_MIN_ITEMS)
        rows = RowVectors(dim, plan.dtype)
        rows.append(vectors)
        if plan.kind == "ivfpq":
            train(index, vectors, plan, seed)
        self = cls(plan, index, np.empty(0, np.int64), rows, built_count=len(keys))
        self.row_keys = keys.copy()
        self._key_rows = _invert(self.row_keys)
        self._size = self._memory_bytes = None
        self._add_to_faiss(vectors, np.arange(len(keys), dtype=np.int64))  # float32 one block at a time
        return self

    @classmethod
    def build_streamed(cls, plan: IndexPlan, count: int, dim: int,
                       chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
                       folder: Path | None = None, seed: int = 0) -> VectorIndex:
        """The IVF-PQ index ``build`` makes over ``count`` vectors, from two passes over ``chunks()`` (keys int64
        in ascending order with float32 unit vectors, a block at a time, as ``Store.iter_vectors`` gives them)
        instead of one matrix: the first keeps the training sample ``build`` would draw, the second adds each
        block and, with ``folder``, writes its rows to the folder's row file as it goes (``RowVectors.spill``;
        saved by ``save``). It holds the sample, the codes and one block, not every vector: 231 GB at 10 M
        2,048-d items the other way (``benchmarks/index_build.py``). Vectors are rounded to the plan's dtype
        first, as ``Store.vectors`` gives them to ``build``: the same sample, codes and answers.

        Raises:
            ValueError: the plan is not IVF-PQ.
        """
        if plan.kind != "ivfpq":
            raise ValueError(f"only IVF-PQ is built in passes, not {plan.kind}")
        dtype = np.dtype(plan.dtype)
        pick, samples, seen = training_rows(plan, count, seed), [], 0
        for _, block in chunks():
            inside = pick[(pick >= seen) & (pick < seen + len(block))] - seen
            samples.append(block[inside].astype(dtype).astype(np.float32))
            seen += len(block)
        index = new_faiss_index(plan, dim)
        train_on(index, np.concatenate(samples) if samples else np.empty((0, dim), np.float32), plan, seed)
        del samples
        self = cls(plan, index, np.empty(0, np.int64), RowVectors(dim, plan.dtype), built_count=seen)
        for keys, block in chunks():
            self._append(np.asarray(keys, dtype=np.int64), block.astype(dtype))
            if folder is not None:
                self.spill(folder)
        self.built_count = self.size
        return self

    def _add_to_faiss(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        for start in range(0, len(rows), 65_536):
            block = np.ascontiguousarray(vectors[start:start + 65_536], dtype=np.float32)
            ids = rows[start:start + 65_536]
            if self.plan.kind == "hnsw":
                assert self.index.ntotal == ids[0], "HNSW rows must be appended in order"
                self.index.add(block)
            else:
                self.index.add_with_ids(block, ids)
        self._live_bitmap = None

    # -- incremental updates -----------------------------------------------------------------------

    def update(self, keys: np.ndarray, vectors: np.ndarray, removed: np.ndarray | None = None) -> None:
        """Insert or replace (keys, vectors) and drop ``removed`` keys, without rebuilding."""
        keys = np.asarray(keys, dtype=np.int64)
        gone = np.concatenate([keys, np.asarray(removed if removed is not None else [], dtype=np.int64)])
        self._retire(gone)
        self._append(keys, vectors)

    def _append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """New rows for (keys int64, vectors), none of them in the index yet: rows, key maps and FAISS."""
        if len(keys):
            first = self.vectors.rows
            rows = np.arange(first, first + len(keys), dtype=np.int64)
            self.vectors.append(vectors)
            self._append_row_keys(keys)
            self._size = self._memory_bytes = None
            self._key_rows = _invert(self.row_keys, self._key_rows, rows)
            self._add_to_faiss(vectors, rows)

    def _append_row_keys(self, keys: np.ndarray) -> None:
        """``row_keys`` + ``keys``, written into spare room at the end of the buffer ``row_keys`` views, grown by
        doubling: a run committing millions of rows batch by batch copies each key O(1) times, not once a batch."""
        n, total = len(self.row_keys), len(self.row_keys) + len(keys)
        buffer = self._keys_buffer
        if buffer is None or self.row_keys.base is not buffer or len(buffer) < total:
            buffer = np.empty(max(total, 2 * n, 1024), np.int64)
            buffer[:n] = self.row_keys
            self._keys_buffer = buffer
        buffer[n:total] = keys
        self.row_keys = buffer[:total]

    def _retire(self, keys: np.ndarray) -> None:
        keys = keys[(keys >= 0) & (keys < len(self._key_rows))]
        rows = self._key_rows[keys]
        rows = np.unique(rows[rows >= 0])
        if not len(rows):
            return
        self.row_keys[rows] = -1
        self._key_rows[keys] = -1
        self._size = self._memory_bytes = None
        if self.plan.kind != "hnsw":
            self.index.remove_ids(faiss.IDSelectorBatch(rows))
        self._live_bitmap = None

    @property
    def retired(self) -> int:
        return int(self.vectors.rows - self.size)

    def needs_rebuild(self, extra: int = 0) -> bool:
        """HNSW carrying too many retired rows, IVF lists trained on a quarter of today's items, or a flat
        index whose size (plus ``extra`` items about to be added) has left the band its float16 screen (or lack
        of one) was chosen for."""
        if self.plan.kind == "flat" and self.plan.dtype == "float32":
            size = self.size + extra
            return (size >= 2 * SCREEN_MIN_ITEMS) if not self._screened else (size < SCREEN_MIN_ITEMS // 2)
        if self.plan.kind == "hnsw":
            return self.retired > HNSW_MAX_RETIRED * max(self.vectors.rows, 1)
        if self.plan.kind == "ivfpq":
            return self.size > 4 * max(self.built_count, 1) and self.size > 4 * IVF_MIN_POINTS_PER_LIST
        return False

    def needs_tuning(self) -> bool:
        """An approximate index never measured though it holds items now (one built empty, ahead of the run that
        fills it), or twice the size it was measured at: its search setting is to be chosen again (``tune``)."""
        if self.plan.kind == "flat" and self.plan.dtype == "float32" or self.size < 2:
            return False
        q = self.quality
        return q.queries == 0 if not q.items else self.size >= 2 * q.items

    # -- reading -----------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.plan.kind

    @property
    def size(self) -> int:
        """Live items; counted once per change, not per query (a million-row scan costs ~0.5 ms)."""
        if self._size is None:
            self._size = int((self.row_keys >= 0).sum())
        return self._size

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def keys(self) -> np.ndarray:
        return self.row_keys[self.row_keys >= 0]

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live (key, vector), in key order as ``Store.vectors`` gives them: keys int64 (N,), vectors
        float32 (N x D), a copy. What a rebuild of an up-to-date index starts from, instead of the store."""
        rows = np.flatnonzero(self.row_keys >= 0)
        order = np.argsort(self.row_keys[rows], kind="stable")
        rows = rows[order]
        return self.row_keys[rows], self.vectors.get(rows)

    def vector(self, key: int) -> np.ndarray:
        row = self._row(key)
        if row < 0:
            raise KeyError(key)
        return self.vectors.get(np.array([row]))[0]

    def vectors_of(self, keys: np.ndarray) -> np.ndarray:
        """The stored vectors of these keys (N x D float32), in one read.

        Raises:
            KeyError: a key is not in the index.
        """
        keys = np.asarray(keys, dtype=np.int64)
        inside = (keys >= 0) & (keys < len(self._key_rows))
        rows = np.where(inside, self._key_rows[np.clip(keys, 0, max(len(self._key_rows) - 1, 0))], -1) \
            if len(self._key_rows) else np.full(len(keys), -1)
        if (rows < 0).any():
            raise KeyError(int(keys[np.argmax(rows < 0)]))
        return np.asarray(self.vectors.get(rows), dtype=np.float32).reshape(len(keys), -1)

    def faiss_vector(self, key: int) -> np.ndarray | None:
        """The vector FAISS itself holds for an item (decoded from its float32 or float16 codes), to check the
        index file against the store; None for IVF-PQ, whose codes keep no faithful copy.

        Raises:
            KeyError: the item is not in the index.
        """
        row = self._row(key)
        if row < 0:
            raise KeyError(key)
        if self.plan.kind == "ivfpq":
            return None
        try:
            return np.asarray(self.index.reconstruct(row), np.float32)
        except RuntimeError:
            return None

    def _row(self, key: int) -> int:
        return int(self._key_rows[key]) if 0 <= key < len(self._key_rows) else -1

    def memory_bytes(self) -> int:
        """Bytes the FAISS index holds in memory: its serialised size (the row file stays on disk). Taken
        from the index file when it is as saved; serialising a million-item index copies gigabytes."""
        if self._memory_bytes is None:
            if self.plan.kind == "flat":  # codes and ids, as serialised, without copying them
                inner = faiss.downcast_index(self.index.index)
                self._memory_bytes = int(self.index.ntotal) * (int(inner.code_size) + 8)
            else:
                self._memory_bytes = int(faiss.serialize_index(self.index).nbytes)
        return self._memory_bytes

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               settings: SearchSettings | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, keys) per query row, best first; missing slots have key -1.

        ``allowed`` restricts the answer to those item keys (label filters): a small set is searched
        exactly, a large one inside FAISS, and a query left short of k is answered exactly, so a filter
        never shortens the list while enough matching items exist.
        """
        settings = settings or self.settings
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.size)) if self.size else 1
        if not self.size:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        allowed_rows = None
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            allowed = allowed[(allowed >= 0) & (allowed < len(self._key_rows))]
            allowed_rows = np.unique(self._key_rows[allowed])
            allowed_rows = allowed_rows[allowed_rows >= 0]
            if len(allowed_rows) <= EXACT_SUBSET_MAX:
                sims, rows = self._exact(queries, k, allowed_rows)
                return sims, self._to_keys(rows)
        sims, rows = self._approximate(queries, k, settings, allowed_rows)
        short = (rows < 0).any(axis=1)
        if short.any() and self.plan.kind != "flat":
            wanted = min(k, len(allowed_rows) if allowed_rows is not None else self.size)
            short &= (rows >= 0).sum(axis=1) < wanted
            if short.any():
                pool = allowed_rows if allowed_rows is not None else np.flatnonzero(self.row_keys >= 0)
                sims[short], rows[short] = self._exact(queries[short], k, pool)
        return sims, self._to_keys(rows)

    def _to_keys(self, rows: np.ndarray) -> np.ndarray:
        keys = np.where(rows >= 0, self.row_keys[np.clip(rows, 0, None)], -1)
        return keys.astype(np.int64)

    def _exact(self, queries: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the given rows, read from the row file in blocks."""
        nq = len(queries)
        best_s = np.full((nq, k), -np.inf, np.float32)
        best_r = np.full((nq, k), -1, np.int64)
        for start in range(0, len(rows), 65_536):
            part = rows[start:start + 65_536]
            kk = min(k, len(part))  # FAISS's own exact kNN: BLAS for batches, SIMD for single queries
            sims, top = faiss.knn(queries, np.ascontiguousarray(self.vectors.get(part)), kk,
                                  metric=faiss.METRIC_INNER_PRODUCT)
            cand_s = np.concatenate([best_s, sims], axis=1)
            cand_r = np.concatenate([best_r, np.where(top >= 0, part[np.clip(top, 0, None)], -1)], axis=1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s, best_r = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_r, order, 1)
        return best_s, best_r

    def _approximate(self, queries: np.ndarray, k: int, settings: SearchSettings,
                     allowed_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if settings.exact and self.plan.kind != "flat":
            return self._exact(queries, k, allowed_rows if allowed_rows is not None else self._live_rows())
        if self._screened:
            return self._screened_exact(queries, k, allowed_rows)
        selector, keep = self._selector(allowed_rows)
        kind = self.plan.kind
        fetch = k
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(settings.ef_search, k), sel=selector)
        elif kind == "ivfpq":
            params = faiss.SearchParametersIVF(nprobe=settings.nprobe, sel=selector)
            fetch = k * max(1, settings.refine)
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        sims, rows = self.index.search(queries, fetch, params=params)
        del keep
        if kind == "ivfpq":  # exact similarities from the row file, also when refine is 1
            sims, rows = self._rerank(queries, rows, k)
        return sims, rows

    def _screened_exact(self, queries: np.ndarray, k: int, allowed_rows: np.ndarray | None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of a flat index from its float16 copies: scan them for candidates, re-rank those with
        the float32 rows, and prove no other row could rank higher.

        A float16 copy of a vector moves its inner product with q by at most ||q|| (2^-11 + 2 d 2^-24)
        (rounding of each component, plus both sums' float32 rounding). Every row left out scored at most the
        last candidate's float16 similarity, so once the k-th exact similarity beats that plus the bound, the
        answer is the exact one. A query that cannot show it (near-ties at the boundary) is answered by a
        full exact scan, as are batches, where BLAS over the float32 rows is the faster scan anyway.
        """
        pool = allowed_rows
        available = len(allowed_rows) if allowed_rows is not None else self.size
        if len(queries) >= SCREEN_MAX_QUERIES or available < SCREEN_MIN_ITEMS:
            _, rows = self._exact(queries, k, pool if pool is not None else self._live_rows())
            return self._rerank(queries, rows, k)  # scores computed one way, however many queries came
        fetch = min(available, max(2 * k, k + SCREEN_EXTRA))
        selector, keep = self._selector(allowed_rows)
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        rough, candidates = self.index.search(queries, fetch, params=params)
        del keep
        sims, rows = self._rerank(queries, candidates, k)
        if fetch >= available:
            return sims, rows  # every row was a candidate
        bound = np.linalg.norm(queries, axis=1) * (2.0 ** -11 + 2 * self.dim * 2.0 ** -24)
        proven = (candidates[:, -1] < 0) | (sims[:, k - 1] > rough[:, -1] + bound)
        if not proven.all():
            doubt = ~proven
            _, exact_rows = self._exact(queries[doubt], k, pool if pool is not None else self._live_rows())
            sims[doubt], rows[doubt] = self._rerank(queries[doubt], exact_rows, k)
        return sims, rows

    def _live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.row_keys >= 0)

    def _selector(self, allowed_rows: np.ndarray | None):
        """A bitmap of the rows a search may return (allowed and live); None when every row may.

        Flat and IVF-PQ indexes no longer hold retired rows; only HNSW needs them masked.
        """
        if allowed_rows is None and (self.retired == 0 or self.plan.kind != "hnsw"):
            return None, None
        if allowed_rows is None:
            if self._live_bitmap is None:
                self._live_bitmap = np.packbits(self.row_keys >= 0, bitorder="little")
            bitmap = self._live_bitmap
        else:
            mask = np.zeros(self.vectors.rows, dtype=bool)
            mask[allowed_rows] = True
            bitmap = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        return sel, bitmap

    def _rerank(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_r = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), REFINE_BLOCK):
            cand = rows[start:start + REFINE_BLOCK]
            vecs = self.vectors.get(np.clip(cand, 0, None))
            sims = np.einsum("qd,qcd->qc", queries[start:start + REFINE_BLOCK], vecs)
            sims[cand < 0] = -np.inf
            kk = min(k, cand.shape[1])
            order = np.lexsort((cand, -sims), axis=1)[:, :kk]  # equal scores: lower row first, however found
            out_s[start:start + REFINE_BLOCK, :kk] = np.take_along_axis(sims, order, 1)
            out_r[start:start + REFINE_BLOCK, :kk] = np.take_along_axis(cand, order, 1)
        out_r[~np.isfinite(out_s)] = -1
        return out_s, out_r

    # -- persistence -------------------------------------------------------------------------------

    def spill(self, folder: Path) -> None:
        """Write the rows added since the last save or spill to ``folder``'s row file ahead of ``save``
        (``RowVectors.spill``): a writer calls it between its transactions, so that the bytes go out while the
        next one is written. Nothing counts as saved until ``save``."""
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder, exclusive=True):
            self.vectors.spill(folder / VECTORS_FILE)

    def discard_spill(self) -> None:
        """Forget rows spilled but not saved (``RowVectors.discard_spill``)."""
        self.vectors.discard_spill()

    def save(self, folder: Path, generation: int) -> None:
        """Write vectors, rows, index, then the stamp, each atomically; the stamp is the commit point. Processes
        sharing the folder (replicas of a database catalog on one machine) take turns (``folder/.lock``)."""
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder, exclusive=True):
            self._save(folder, generation)

    def _save(self, folder: Path, generation: int) -> None:
        self.vectors.save(folder / VECTORS_FILE)
        _write_atomic(folder / ROWS_FILE, lambda p: _save_npy(p, self.row_keys))
        # A flat index's codes are its rows' vectors (or their float16 encoding): it is built again from the
        # row file on load instead of being written a second time (a 2,048-d catalog writes 8 KB an item once).
        derived = self.plan.kind == "flat"
        if not derived:
            _write_atomic(folder / INDEX_FILE, lambda p: faiss.write_index(self.index, str(p)))
            self._memory_bytes = (folder / INDEX_FILE).stat().st_size
        stamp = {
            "format": FORMAT, "generation": generation, "rows": int(self.vectors.rows), "size": self.size,
            "plan": self.plan.to_dict(), "settings": self.settings.__dict__,
            "item_settings": self.item_settings.__dict__, "quality": self.quality.__dict__,
            "built_count": self.built_count, "rows_sha256": _rows_digest(self.row_keys),
            "faiss": "rows" if derived else "file", "dim": self.dim, "float16_codes": holds_float16(self.index),
        }
        _write_atomic(folder / STAMP_FILE, lambda p: p.write_text(json.dumps(stamp, indent=1)))
        if derived:  # after the stamp, the commit point: a crash before it leaves the old stamp's file in place
            (folder / INDEX_FILE).unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path) -> tuple[VectorIndex, int] | None:
        """The saved index and the store generation it reflects; None if there is none usable."""
        if not (folder / STAMP_FILE).exists():
            return None
        with _folder_lock(folder, exclusive=False):
            return cls._load(folder)

    @classmethod
    def _load(cls, folder: Path) -> tuple[VectorIndex, int] | None:
        try:
            stamp = json.loads((folder / STAMP_FILE).read_text())
            if stamp.get("format") != FORMAT:
                return None
            plan = IndexPlan.from_dict(stamp["plan"])
            row_keys = np.load(folder / ROWS_FILE)
            if stamp.get("rows_sha256") not in (None, _rows_digest(row_keys)):
                log.warning("%s does not match its checksum (damaged); rebuilding the index from the store",
                            folder / ROWS_FILE)
                return None
            derived = stamp.get("faiss") == "rows"
            index = None if derived else faiss.read_index(str(folder / INDEX_FILE))
            dim = int(stamp["dim"]) if derived else index.d
            rows = RowVectors.load(folder / VECTORS_FILE, dim, plan.dtype, int(stamp["rows"]))
            if len(row_keys) != rows.rows:
                return None
            if derived:
                index = _flat_from_rows(rows, row_keys, bool(stamp.get("float16_codes")))
            self = cls(plan, index, row_keys, rows, SearchSettings(**stamp.get("settings", {})),
                       Quality(**stamp.get("quality", {})), int(stamp.get("built_count", 0)))
            self.item_settings = SearchSettings(**stamp.get("item_settings", stamp.get("settings", {})))
            if not derived:
                self._memory_bytes = (folder / INDEX_FILE).stat().st_size
            return self, int(stamp["generation"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.info("index in %s not usable (%s); rebuilding from stored vectors", folder, exc)
            return None

    def describe(self) -> str:
        if not self.size:
            return f"{self.plan.describe()}, empty"
        q = self.quality
        exact = self.plan.kind == "flat" and self.plan.dtype == "float32"
        recall = "" if exact else (f", recall@{q.k} {q.recall:.3f} on {q.queries} items" if q.recall is not None
                                   else ", recall not measured")
        per_item = self.memory_bytes() / max(self.size, 1)
        return (f"{self.plan.describe()}, {self.size:,} vectors, {self.settings.describe(self.plan.kind)}{recall}, "
                f"{format_bytes(per_item)}/item in memory")

    def with_settings(self, settings: SearchSettings, quality: Quality,
                      item_settings: SearchSettings | None = None) -> VectorIndex:
        self.settings, self.quality = settings, quality
        self.item_settings = item_settings or settings
        return self


def _invert(row_keys: np.ndarray, previous: np.ndarray | None = None, new_rows: np.ndarray | None = None
            ) -> np.ndarray:
    """key -> live row (-1 none), as a dense array over keys (SQLite keys are small, increasing integers)."""
    if previous is not None and new_rows is not None:
        keys = row_keys[new_rows]
        top = int(keys.max()) + 1 if len(keys) else 0
        out = previous if top <= len(previous) else np.concatenate(
            [previous, np.full(max(top, 2 * len(previous)) - len(previous), -1, np.int64)])
        out[keys] = new_rows
        return out
    live = np.flatnonzero(row_keys >= 0)
    top = int(row_keys.max()) + 1 if len(row_keys) and row_keys.max() >= 0 else 0
    out = np.full(top, -1, np.int64)
    out[row_keys[live]] = live
    return out


def _flat_from_rows(rows: RowVectors, row_keys: np.ndarray, float16_codes: bool) -> faiss.Index:
    """A saved flat index built again from its row file: every live row added under its row number, 65,536 rows
    at a time (a million 2,048-d rows are never held twice as float32)."""
    index = flat_faiss(rows.dim, float16_codes)
    live = np.flatnonzero(row_keys >= 0)
    for start in range(0, len(live), 65_536):
        block = live[start:start + 65_536]
        index.add_with_ids(np.ascontiguousarray(rows.get(block), dtype=np.float32), block)
    return index


def _rows_digest(row_keys: np.ndarray) -> str:
    """sha256 of the row -> key map (8 MB at a million rows: a few milliseconds), kept in the stamp."""
    return hashlib.sha256(np.ascontiguousarray(row_keys, dtype=np.int64).tobytes()).hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)




@contextlib.contextmanager
def _folder_lock(folder: Path, exclusive: bool):
    """An advisory lock on ``folder/.lock`` (none where there is no flock, or the folder is read-only)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per folder, as before
        yield
        return
    try:
        fh = open(folder / ".lock", "a+b")  # noqa: SIM115 - closed below, after the lock is released
    except OSError:
        yield
        return
    try:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fh.close()
