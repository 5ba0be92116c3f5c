"""The FAISS index of a catalog and the in-memory tables beside it, kept in step with the store.

A part of ``Catalog`` (``catalog.py``), which inherits it; it reads the catalog's attributes set there.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..core.errors import (
    StoreUnavailableError,
)
from ..index import IndexChoiceError, IndexOptions, IndexPlan, Quality, VectorIndex, choose_index, tune
from ..store import Store, Written
from .consistency import index_disagrees
from .products import (
    ProductTable,
)

log = logging.getLogger(__name__)

# Rows a pass over the store reads at a time when IVF-PQ is built in passes (``VectorIndex.build_streamed``):
# 128 MB of 2,048-d float32, the one block such a build holds besides its sample and codes.
STREAM_BLOCK = 16_384


class Indexing:
    """The FAISS index (caught up from the store's change log, rebuilt when its kind must change, tuned to a
    recall) and the in-memory photo and product tables, dropped whenever the store's generation moves."""

    @property
    def index(self) -> VectorIndex:
        self._refresh_index(save=False)
        assert self._index is not None
        return self._index

    def _refresh_index(self, save: bool, force_rebuild: bool = False, expect: int = 0) -> None:
        """Follow writes by this or another process; between queries, look at most every 0.25 s. ``expect``:
        items a writer is about to commit and apply (``_follow``), so that a flat index is built for its size.

        A stale index catches up from the store's change log (new, replaced and removed vectors) without
        a rebuild; it is rebuilt from the stored vectors only when there is none, when the catalog's size
        calls for another kind (``choose_index``), or when the kind says so (HNSW with many removals, IVF
        lists trained on a quarter of today's items). Only writers (``save``) persist the catch-up.
        """
        now = time.monotonic()
        if self._index is not None and not save and not force_rebuild and now - self._checked_at < 0.25:
            return
        self._checked_at = now
        try:
            generation, labels_generation = self.store.generations()
        except StoreUnavailableError:
            self._checked_at = 0.0  # the next call asks again (and is told at once while it is down)
            raise
        if labels_generation != self._labels_generation and self._meta is not None:
            self._meta.forget_labels()
        self._labels_generation = labels_generation
        if (self._index is not None and self._index_generation == generation and not force_rebuild
                and not (save and self._saved_generation != generation)):
            return
        folder = self.index_dir
        index, at = self._index, self._index_generation
        from_disk = False
        if index is None and folder is not None:
            loaded = VectorIndex.load(folder)
            if loaded is not None and loaded[1] <= generation:
                (index, at), from_disk = loaded, True
                self._saved_generation = at
        if index is not None and self._lagging:
            if self._growing:  # a run into IVF-PQ's range is committing: its writer follows nothing until it ends
                return
            self._lagging = None
            stored = self.store.counts()["ok"]
            options = self.index_options()
            if choose_index(stored, self.config.embedder.dim, options.memory, options.kind).kind == "ivfpq":
                index, from_disk = None, False  # built below from the store, in passes; no catch-up held first
        changed = index is None or at != generation or self._saved_generation != generation
        if index is not None and at != generation:
            keys, vectors = self.store.vectors(self.config.embedder.dim, index.plan.dtype, since=at)
            index.update(keys, vectors, self.store.removed_since(at))
        if from_disk and index is not None:  # prove the saved index belongs to this store before trusting it
            problem = index_disagrees(index, self.store, self.config.embedder.dim)
            if problem:
                log.warning("%s does not match the catalog's store (%s); rebuilding it from the stored vectors",
                            folder, problem)
                index, force_rebuild = None, True
        options = self.index_options()
        count = index.size if index is not None else self.store.counts()["ok"]
        plan = choose_index(count, self.config.embedder.dim, options.memory, options.kind)
        expect = max(expect, self._growing)
        plan = self._plan_ahead(plan, count, expect, options)
        rebuild = (force_rebuild or index is None or (index.plan.kind, index.plan.dtype) != (plan.kind, plan.dtype)
                   or index.needs_rebuild(extra=expect if plan.kind == "flat" else 0))
        if rebuild:
            log.info("building a %s index over %d vectors (%s)", plan.describe(), count, plan.reason)
            dim = self.config.embedder.dim
            if plan.kind == "ivfpq":  # in passes over the store: the sample, the codes and a block in memory
                index = VectorIndex.build_streamed(plan, count, dim,
                                                   lambda: self.store.iter_vectors(dim, batch=STREAM_BLOCK), folder)
            else:
                if index is not None and not force_rebuild and index.plan.dtype in ("float32", plan.dtype):
                    keys, vectors = index.live()  # up to date with the store: its rows hold the same vectors
                else:
                    keys, vectors = self.store.vectors(dim, plan.dtype)
                index = VectorIndex.build(keys, vectors, plan,
                                          expected=len(keys) + expect if plan.kind == "flat" else 0)
                del vectors
            tune(index, options.recall)
        elif save and index.needs_tuning():  # grown twice over since it was tuned (a graph built ahead of its run)
            tune(index, options.recall)
            changed = True
        self.store.vector_dtype = np.dtype((self._lagging or index.plan).dtype)  # float16 for a large one's run
        if (changed or rebuild) and folder is not None:
            try:
                if save or rebuild:
                    index.save(folder, generation)
                    self._saved_generation = generation
            except OSError as exc:  # a read-only catalog still searches
                if save:
                    raise
                log.info("could not save the index (%s)", exc)
        if folder is None:  # kept in memory only (a scratch cache): nothing to save
            self._saved_generation = generation
        if self._index is not None and self._index is not index:  # replaced by a rebuild: its spill counts for nothing
            self._index.discard_spill()
        self._index, self._index_generation, self._meta, self._products = index, generation, None, None

    def _plan_ahead(self, plan: IndexPlan, count: int, expect: int, options: IndexOptions) -> IndexPlan:
        """The index for a writer about to commit ``expect`` more photos into ``count``: where they take a flat
        index past its size (``FLAT_MAX_ITEMS``) into a graph's, the graph, built now over what is stored and
        followed commit by commit (float16 rows from the first, as the store's vectors then are), and tuned when
        the run ends (``needs_tuning``). Otherwise a run followed a flat index over every new vector and rebuilt
        it as a graph when it ended: each vector held three times at once (the flat rows, FAISS's copy, the
        float32 copy the rebuild starts from) and every vector stored as float32: a 100,000-photo driver run
        peaked at 4.24 GiB against 2.76 GiB now, and wrote 38.1 KB an image against 20.3
        (``benchmarks/ray_throughput.py --driver-only --driver-files 100000``, 2-core EPYC); the graph built in
        steps answers as one built at once (60,000 clustered vectors: recall@10 0.977 against 0.979 tuned).
        Where they take it past the graph's size, into IVF-PQ's (which trains on the vectors it will hold): no
        index is followed (``_lagging``, its vectors stored as float16) and the run's end builds IVF-PQ in two
        passes over the store (``VectorIndex.build_streamed``): a 100,000-photo run forced into IVF-PQ peaked at
        2.20 GiB against 3.88 GiB and wrote 16.2 KB an image against 34.1."""
        if not expect or plan.kind == "ivfpq":
            return plan
        try:
            ahead = choose_index(count + expect, self.config.embedder.dim, options.memory, options.kind)
        except IndexChoiceError:
            return plan
        if ahead.kind == "ivfpq":  # follow nothing: the run's end builds IVF-PQ from the store, in passes
            self._lagging = ahead
            return plan
        return ahead if ahead.kind == "hnsw" and plan.kind == "flat" else plan

    def _follow(self, written: Written) -> None:
        """Apply this process's own committed write to its in-memory index, from the vectors in hand: no read
        back from the store. Only when the index stood at the generation just before and no other writer came
        between; otherwise the next refresh catches up from the change log, as for anyone else's write. Saved
        by the writer's next ``_refresh_index(save=True)`` (the stamp then names this generation)."""
        index = self._index
        if (index is None or self._lagging or not written.alone
                or written.generation != self._index_generation + 1):
            return
        index.update(written.keys, written.vectors if written.vectors is not None
                     else np.empty((0, self.config.embedder.dim), np.float32), written.removed)
        self._index_generation = written.generation
        self._meta = self._products = None

    def _spill_index(self) -> None:
        """Write the rows this writer's index took since its last save to its row file now (``VectorIndex.spill``),
        while the next transaction is in flight: the save at the end of the run then has only what is left to
        write. Best effort: an index that cannot be written is saved (or kept in memory) as before."""
        if self._index is None or self.index_dir is None or self._lagging:
            return
        try:
            self._index.spill(self.index_dir)
        except OSError as exc:
            log.info("could not write the index's rows ahead of saving (%s)", exc)

    def index_options(self) -> IndexOptions:
        """The index settings chosen with ``lookalike index --index/--memory/--recall`` (or defaults)."""
        return IndexOptions.from_json(self.store.get_meta("index_options"))

    def configure_index(self, kind: str | None = None, memory: str | int | None = None,
                        recall: float | None = None) -> IndexOptions:
        """Choose the index kind (auto, flat, hnsw, ivfpq), memory budget and recall target; the index is
        rebuilt or re-tuned when that changes what it should be.

        Raises:
            IndexChoiceError: unknown kind, unreadable memory size, recall outside (0, 1].
        """
        old = self.index_options()
        new = old.changed(kind=kind, memory=memory, recall=recall)
        if new != old:
            self.store.set_meta("index_options", new.to_json())
            saved = self.index_dir is not None and (self.index_dir / "stamp.json").exists()
            if self._index is not None or saved:
                index = self.index
                plan = choose_index(index.size, self.config.embedder.dim, new.memory, new.kind)
                if (plan.kind, plan.dtype) != (index.plan.kind, index.plan.dtype):
                    self._refresh_index(save=True, force_rebuild=True)
                elif new.recall != old.recall:
                    self.tune(new.recall)
        return new

    def tune(self, recall: float | None = None) -> Quality:
        """Measure recall@10 against exact search on a sample of items and pick the fastest search setting
        reaching ``recall`` (default: the catalog's target); saved with the index.

        Raises:
            CatalogError: the catalog is read-only."""
        self.check_writable()
        index = self.index
        quality = tune(index, recall if recall is not None else self.index_options().recall)
        if self.index_dir is not None:
            index.save(self.index_dir, self._index_generation)
        return quality

    @property
    def table(self) -> ItemTable:
        """Id, path and content hash of every embedded item by store key (kept until the catalog changes)."""
        self._refresh_index(save=False)
        if self._meta is None:
            self._meta = ItemTable(self.store.ok_items())
        return self._meta

    @property
    def products(self) -> ProductTable:
        """The products of the embedded photos: ids, photos per product, products per photo (kept until the
        catalog changes)."""
        self._refresh_index(save=False)
        if self._products is None:
            self._products = ProductTable(self.store.products(), self.store.product_photos())
        return self._products


class ItemTable:
    """Id, path and content hash of every embedded item, held in memory for fast result rows."""

    def __init__(self, rows: list[tuple[int, str, str, str | None]]):
        self.id_by_key = {key: item_id for key, item_id, _, _ in rows}
        self.key_by_id = {item_id: key for key, item_id, _, _ in rows}
        self.path_by_key = {key: path for key, _, path, _ in rows}
        self.keys_by_hash: dict[str, set[int]] = {}
        self.hash_by_key: dict[int, str | None] = {}
        self._labels: dict[int, dict[str, str]] = {}
        self._predicted: dict[int, dict[str, float]] = {}
        self._any_predicted: bool | None = None
        for key, _, _, sha in rows:
            self.hash_by_key[key] = sha
            if sha:
                self.keys_by_hash.setdefault(sha, set()).add(key)

    def forget_labels(self) -> None:
        self._labels.clear()
        self._predicted.clear()
        self._any_predicted = None

    def predicted_for(self, keys: list[int], store: Store) -> dict[int, dict[str, float]]:
        """Which of the result rows' labels were predicted (``lookalike tag``), with their probabilities,
        remembered like labels; no query at all in a catalog without predictions."""
        if self._any_predicted is None:
            self._any_predicted = bool(store.predicted_names())
        if not self._any_predicted:
            return {}
        missing = [k for k in keys if k not in self._predicted]
        if missing:
            found = store.predicted_scores_for(missing)
            self._predicted.update({k: found.get(k, {}) for k in missing})
        return {k: self._predicted[k] for k in keys if self._predicted[k]}

    def labels_for(self, keys: list[int], store: Store) -> dict[int, dict[str, str]]:
        """Labels of result rows, remembered: popular items come back in many result lists."""
        missing = [k for k in keys if k not in self._labels]
        if missing:
            self._labels.update(store.labels_for(missing))
        return {k: self._labels[k] for k in keys}

    def same_content(self, key: int) -> set[int]:
        sha = self.hash_by_key.get(key)
        return set(self.keys_by_hash.get(sha, {key})) | {key} if sha else {key}
