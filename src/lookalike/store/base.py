"""The store contract, written once: every query of the catalog's source of truth, in the SQL that SQLite and
PostgreSQL share, over four primitives each backend supplies (read rows, stream rows, one write transaction,
close).

``Store`` is what the catalog and everything above it use. Its rules, the same on both backends:

* every write method is one transaction, all or nothing; writers are serialised (SQLite: ``BEGIN IMMEDIATE``,
  PostgreSQL: the ``generation`` row locked first), so two writers at once lose nothing;
* ``meta.generation`` rises by one for each transaction that changes items or vectors, and every vector row and
  every ``removed`` row carries the generation that wrote it: an index saved at generation g catches up with
  ``vectors(since=g)`` and ``removed_since(g)`` (the change log); ``meta.labels_generation`` rises when labels
  alone change; clusters bump neither;
* vectors are float32 bytes (float16 in large catalogs, told apart by their length);
* queries are parameterised (``?`` placeholders, turned into the driver's own).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from .events import EventTables
from .fulltext import KeywordIndex
from .fulltext import rebuild as rebuild_fulltext
from .products import ProductRecord, drop_orphans, merge_labels, write_products
from .sql import chunks, insert_rows, marks, replace_rows, where_in

# An index earlier releases kept on items (sha256) that no query reads: its keys are random, so every batch of
# new photos touched most of its pages, a write that grew with the catalog (SQLite, 64 KB pages: at 200,000
# photos a transaction of 2,048 new ones took 0.14 s against 0.064 s without it, and wrote 42-46 KB an image
# against 13-15). Catalogs written before lose it when a writer opens them.
DROP_UNUSED = "DROP INDEX IF EXISTS items_sha256"

ITEM_COLUMNS = ("key", "id", "path", "size", "mtime_ns", "sha256", "status", "reason", "width", "height", "updated")
UPLOAD_PREFIX = "upload:"  # items.path of an image kept in the store's ``uploads`` table, not in a file


@dataclass(frozen=True)
class ItemRecord:
    """One outcome to write: an embedded item (``vector`` set) or a failed one (``reason`` set)."""

    id: str
    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    status: str
    reason: str | None = None
    width: int | None = None
    height: int | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Written:
    """What one ``Store.write`` committed, for a writer's own in-memory index to follow without reading the
    vectors back: the generation it produced, the keys given vectors (int64, N) with those vectors as stored
    (N x D, row for row: float32, or float16 in large catalogs, so that an index built from them equals one
    built from the store) and the keys whose vectors it removed (int64). ``alone``: no other writer's commit
    came between the generation this write read and the one it produced (else follow the change log)."""

    generation: int
    keys: np.ndarray
    vectors: np.ndarray | None
    removed: np.ndarray
    alone: bool


@dataclass(frozen=True)
class StoredItem:
    key: int
    id: str
    path: str
    size: int | None
    mtime_ns: int | None
    sha256: str | None
    status: str
    reason: str | None


class Cursor:
    """What a write transaction hands its body: ``execute`` (returning something with ``fetchone``,
    ``fetchall`` and ``rowcount``) and ``executemany``, with ``?`` placeholders."""

    def execute(self, sql: str, args: tuple | list = ()) -> Any:  # pragma: no cover - protocol
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[tuple]) -> Any:  # pragma: no cover - protocol
        raise NotImplementedError


class Watch:
    """A subscription to another process's writes; ``close`` ends it. The base store has none to offer (its
    readers poll), so this one does nothing."""

    def close(self) -> None:
        return None


class Store(EventTables, KeywordIndex, ABC):
    """A catalog's source of truth: items, labels, failures, vectors, clusters, the change log, meta, uploads;
    and the query log and shoppers' events (``events.EventTables``)."""

    #: what the store is, for messages: a file path, or a database URL without its password
    location: str
    vector_dtype: np.dtype
    #: reads only (a SQLite file on a read-only mount): every write raises CatalogError in one line
    read_only: bool = False

    # -- what each backend supplies ------------------------------------------------------------------

    @abstractmethod
    def _rows(self, sql: str, args: tuple | list = (), binary: bool = False) -> list[tuple]:
        """All rows of one read."""

    @abstractmethod
    def _stream(self, sql: str, args: tuple | list, chunk: int) -> Iterator[list[tuple]]:
        """The rows of one read, ``chunk`` at a time, from one consistent view."""

    @abstractmethod
    def _begin(self) -> AbstractContextManager[Cursor]:
        """One write transaction, writers serialised: committed when the block ends, rolled back if it raises."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection(s)."""

    @abstractmethod
    def bytes_on_disk(self) -> int:
        """What the store takes on disk (file, or the schema's tables with their indexes and TOAST)."""

    def bulk(self) -> AbstractContextManager[None]:
        """A block of many write transactions in a row (an index run's commit loop), during which the backend
        may defer its upkeep to other threads; nothing changes for what each transaction guarantees."""
        return nullcontext()

    def watch(self, callback: Callable[[], None]) -> Watch:
        """Call ``callback`` (on another thread) soon after another process commits a write; where the backend
        cannot tell, nothing is called and readers keep polling ``generations``."""
        return Watch()

    def _one(self, sql: str, args: tuple | list = ()) -> tuple | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    # -- writing -----------------------------------------------------------------------------------

    def write(self, records: Iterable[ItemRecord], products: Sequence[ProductRecord] = ()) -> Written:
        """Insert or update photos (``items``) and their vectors, then the ``products`` that show them (linked to
        those of their photos that are stored), all or nothing; returns what was committed (``Written``). A few
        statements per batch, not a few per item: over a network every statement is a round trip."""
        now = time.time()
        with self._begin() as cur:
            gen = _next_generation(cur)
            by_id = {rec.id: rec for rec in records}  # one row per id (a later record of an id wins)
            rows = insert_rows(
                cur, "INSERT INTO items (id, path, size, mtime_ns, sha256, status, reason, width, height, updated) "
                "VALUES {} ON CONFLICT (id) DO UPDATE SET path=excluded.path, size=excluded.size, "
                "mtime_ns=excluded.mtime_ns, sha256=excluded.sha256, status=excluded.status, "
                "reason=excluded.reason, width=excluded.width, height=excluded.height, updated=excluded.updated "
                "RETURNING key, id",
                [(rec.id, rec.path, rec.size, rec.mtime_ns, rec.sha256, rec.status, rec.reason, rec.width,
                  rec.height, now) for rec in by_id.values()], per_statement=500)
            keys = {item_id: int(key) for key, item_id in rows}
            embedded = [rec for rec in by_id.values() if rec.vector is not None]
            vector_keys = np.fromiter((keys[rec.id] for rec in embedded), np.int64, count=len(embedded))
            stored = (np.ascontiguousarray(np.stack([rec.vector for rec in embedded]), dtype=self.vector_dtype)
                      if embedded else None)
            replace_rows(cur, "vectors", ("key", "vector", "gen"),
                         [(key, stored[i].data, gen) for i, key in enumerate(vector_keys.tolist())])
            failed = [keys[rec.id] for rec in by_id.values() if rec.vector is None and rec.status != "ok"]
            removed = [int(k) for (k,) in where_in(cur, "DELETE FROM vectors WHERE key IN ({}) RETURNING key", failed)]
            insert_rows(cur, "INSERT INTO removed (key, gen) VALUES {}", [(k, gen) for k in removed])
            if products:
                write_products(cur, products, photo_keys=keys)
                if any(p.variants is not None for p in products):
                    _bump(cur, "labels_generation")
            produced = _bump(cur)
        return Written(generation=produced, keys=vector_keys, vectors=stored,
                       removed=np.array(removed, dtype=np.int64), alone=produced == gen)

    def touch(self, updates: Iterable[tuple[str, str, int, int]]) -> None:
        """Record new path/size/mtime for files whose content did not change: (id, path, size, mtime_ns)."""
        rows = [(p, s, m, i) for i, p, s, m in updates]
        with self._begin() as cur:
            cur.executemany("UPDATE items SET path = ?, size = ?, mtime_ns = ? WHERE id = ?", rows)

    def set_products(self, products: Sequence[ProductRecord], relink: bool = True) -> None:
        """Insert or update products: their photo links and (where given) their variants' labels, in chunks of
        one transaction each; then drop products left without photos. The vector index stays valid; with
        ``relink`` (which photos make which product changed) readers reload their product tables, without it
        (labels alone changed) only their label caches."""
        products = list(products)
        for start in range(0, len(products), 5000):
            with self._begin() as cur:
                write_products(cur, products[start:start + 5000])
                drop_orphans(cur)
                _bump(cur, "labels_generation")
                if relink:
                    _bump(cur)

    def set_clusters(self, keys: np.ndarray, clusters: np.ndarray, info: Mapping[str, object]) -> None:
        """Replace every cluster assignment at once, with what made them (n, generation, ...) in meta."""
        rows = list(zip(np.asarray(keys).tolist(), np.asarray(clusters).tolist(), strict=True))
        with self._begin() as cur:
            cur.execute("DELETE FROM clusters")
            cur.executemany("INSERT INTO clusters (key, cluster) VALUES (?, ?)", rows)
            _put_meta(cur, "clusters", json.dumps(info))

    def set_predicted(self, name: str, keys: np.ndarray, values: Sequence[str], scores: np.ndarray,
                      info: Mapping[str, object]) -> None:
        """Replace the predicted label ``name`` of every item at once, with what made it in meta
        (``predicted:<name>``); the vector index stays valid, label caches are dropped."""
        rows = list(zip(np.asarray(keys).tolist(), [name] * len(values), list(values),
                        np.asarray(scores, dtype=np.float64).tolist(), strict=True))
        with self._begin() as cur:
            cur.execute("DELETE FROM predicted WHERE name = ?", (name,))
            if rows:
                cur.executemany("INSERT INTO predicted (key, name, value, score) VALUES (?, ?, ?, ?)", rows)
            _put_meta(cur, f"predicted:{name}", json.dumps(info))
            _bump(cur, "labels_generation")

    def remove_predicted(self, name: str) -> int:
        """Drop the predicted label ``name``; returns how many items carried it."""
        with self._begin() as cur:
            count = cur.execute("SELECT COUNT(*) FROM predicted WHERE name = ?", (name,)).fetchone()[0]
            cur.execute("DELETE FROM predicted WHERE name = ?", (name,))
            cur.execute("DELETE FROM meta WHERE name = ?", (f"predicted:{name}",))
            _bump(cur, "labels_generation")
        return int(count)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete photos by id (``items.id``), and the products left without a photo; returns how many photos."""
        ids = list(ids)
        with self._begin() as cur:
            gen = _next_generation(cur)
            for item_id in ids:
                row = cur.execute("SELECT key FROM items WHERE id = ?", (item_id,)).fetchone()
                if row:
                    cur.execute("INSERT INTO removed (key, gen) VALUES (?, ?)", (row[0], gen))
                    cur.execute("DELETE FROM items WHERE key = ?", (row[0],))
            drop_orphans(cur)
            _bump(cur)
        return len(ids)

    def delete_products(self, ids: Iterable[str]) -> tuple[int, list[str]]:
        """Delete products by id, and those of their photos no other product shows; returns (products deleted,
        paths of the photos deleted)."""
        ids = list(ids)
        with self._begin() as cur:
            gen = _next_generation(cur)
            keys = [int(r[0]) for chunk in chunks(ids, 900) for r in
                    cur.execute(f"SELECT key FROM products WHERE id IN ({marks(chunk)})", chunk).fetchall()]
            photos = {int(r[0]) for chunk in chunks(keys, 900) for r in cur.execute(
                f"SELECT photo FROM product_photos WHERE product IN ({marks(chunk)})", chunk).fetchall()}
            for chunk in chunks(keys, 900):
                cur.execute(f"DELETE FROM products WHERE key IN ({marks(chunk)})", chunk)
            shown = {int(r[0]) for chunk in chunks(sorted(photos), 900) for r in cur.execute(
                f"SELECT photo FROM product_photos WHERE photo IN ({marks(chunk)})", chunk).fetchall()}
            gone = sorted(photos - shown)
            paths = [r[0] for chunk in chunks(gone, 900) for r in
                     cur.execute(f"SELECT path FROM items WHERE key IN ({marks(chunk)})", chunk).fetchall()]
            insert_rows(cur, "INSERT INTO removed (key, gen) VALUES {}", [(k, gen) for k in gone])
            for chunk in chunks(gone, 900):
                cur.execute(f"DELETE FROM items WHERE key IN ({marks(chunk)})", chunk)
            _bump(cur)
        return len(keys), paths

    def set_meta(self, name: str, value: object) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        with self._begin() as cur:
            _put_meta(cur, name, text)

    def put_upload(self, name: str, data: bytes) -> None:
        """Keep an uploaded image's bytes in the store (where every replica can read them), once per name."""
        with self._begin() as cur:
            cur.execute("INSERT INTO uploads (name, data) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                        (name, data))

    def delete_uploads(self, names: Iterable[str]) -> None:
        """Drop uploaded images that no item uses any more."""
        names = list(names)
        with self._begin() as cur:
            for name in names:
                cur.execute("DELETE FROM uploads WHERE name = ? AND NOT EXISTS "
                            "(SELECT 1 FROM items WHERE path = ?)", (name, UPLOAD_PREFIX + name))

    # -- reading -----------------------------------------------------------------------------------

    def generation(self) -> int:
        """Changes whenever items or vectors change: the FAISS index built at another one is stale."""
        return self.generations()[0]

    def generations(self) -> tuple[int, int]:
        """(items and vectors, labels alone), read together."""
        rows = dict(self._rows("SELECT name, value FROM meta WHERE name IN ('generation', 'labels_generation')"))
        return int(rows["generation"]), int(rows["labels_generation"])

    def items(self) -> dict[str, StoredItem]:
        rows = self._rows("SELECT key, id, path, size, mtime_ns, sha256, status, reason FROM items")
        return {r[1]: StoredItem(*r) for r in rows}

    def item(self, item_id: str) -> StoredItem | None:
        row = self._one("SELECT key, id, path, size, mtime_ns, sha256, status, reason FROM items WHERE id = ?",
                        (item_id,))
        return StoredItem(*row) if row else None

    def labels(self) -> dict[int, dict[str, str]]:
        """Product key -> label name -> value; a label whose variants differ has its values joined
        (``products.joined``: ``"L | M | S"``)."""
        return merge_labels(self._rows("SELECT key, name, value FROM all_labels"))

    def labels_for(self, keys: Iterable[int]) -> dict[int, dict[str, str]]:
        """``labels`` of the given product keys (every key present, empty where it has none)."""
        keys = [int(k) for k in keys]
        out: dict[int, dict[str, str]] = {k: {} for k in keys}
        for chunk in chunks(keys, 900):
            out.update(merge_labels(self._rows(
                f"SELECT key, name, value FROM all_labels WHERE key IN ({marks(chunk)})", chunk)))
        return out

    def variants_for(self, keys: Iterable[int]) -> dict[int, dict[str, dict[str, str]]]:
        """Product key -> variant id -> its own labels (the manifest rows a product was made of)."""
        keys = [int(k) for k in keys]
        out: dict[int, dict[str, dict[str, str]]] = {}
        for chunk in chunks(keys, 900):
            for key, variant, name, value in self._rows(
                    f"SELECT key, variant, name, value FROM labels WHERE key IN ({marks(chunk)})", chunk):
                out.setdefault(int(key), {}).setdefault(variant, {})[name] = value
        return out

    def products(self) -> list[tuple[int, str]]:
        """(key, id) of every product, in key order."""
        return [(int(k), i) for k, i in self._rows("SELECT key, id FROM products ORDER BY key")]

    def product(self, product_id: str) -> int | None:
        row = self._one("SELECT key FROM products WHERE id = ?", (product_id,))
        return int(row[0]) if row else None

    def product_state(self) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, dict[str, str]]]]:
        """What ``add`` compares a listing with: product id -> its photos' ids in order, and product id ->
        variant id -> labels."""
        photos: dict[str, list[str]] = {}
        for pid, photo in self._rows("SELECT p.id, i.id FROM product_photos pp JOIN products p ON p.key = pp.product "
                                     "JOIN items i ON i.key = pp.photo ORDER BY p.id, pp.position"):
            photos.setdefault(pid, []).append(photo)
        variants: dict[str, dict[str, dict[str, str]]] = {}
        for pid, variant, name, value in self._rows(
                "SELECT p.id, l.variant, l.name, l.value FROM labels l JOIN products p ON p.key = l.key"):
            variants.setdefault(pid, {}).setdefault(variant, {})[name] = value
        return {pid: tuple(ids) for pid, ids in photos.items()}, variants

    def product_photos(self) -> list[tuple[int, int, int]]:
        """(product key, photo key, position) of every link to an embedded photo, by product and position."""
        return [(int(p), int(f), int(n)) for p, f, n in self._rows(
            "SELECT pp.product, pp.photo, pp.position FROM product_photos pp JOIN items i ON i.key = pp.photo "
            "WHERE i.status = 'ok' ORDER BY pp.product, pp.position")]

    def vectors(self, dim: int, dtype: str | np.dtype = np.float32, since: int | None = None,
                chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
        """Embedded items as (keys int64, vectors N x dim of ``dtype``), in key order; ``since``: only those
        written after that generation. Read in chunks into one preallocated matrix (a million 2048-d
        vectors must not be held twice)."""
        where = "WHERE i.status = 'ok'" + (" AND v.gen > ?" if since is not None else "")
        args = (since,) if since is not None else ()
        count = self._one(f"SELECT COUNT(*) FROM vectors v JOIN items i ON i.key = v.key {where}", args)[0]
        keys = np.empty(count, np.int64)
        mat = np.empty((count, dim), np.dtype(dtype))
        n = 0
        for rows in self._stream(
                f"SELECT v.key, v.vector FROM vectors v JOIN items i ON i.key = v.key {where} ORDER BY v.key",
                args, chunk):
            rows = rows[:count - n]  # rows written after the count: the next catch-up reads them again
            if not rows:
                break
            keys[n:n + len(rows)] = [key for key, _ in rows]
            mat[n:n + len(rows)] = decode_vectors([blob for _, blob in rows], dim)
            n += len(rows)
        return keys[:n], mat[:n]

    def vectors_for(self, keys: Iterable[int], dim: int) -> dict[int, np.ndarray]:
        """Stored vectors (float32 or float16, D) of the given item keys that have one."""
        keys = [int(k) for k in keys]
        out: dict[int, np.ndarray] = {}
        for chunk in chunks(keys, 500):
            for key, blob in self._rows(f"SELECT key, vector FROM vectors WHERE key IN ({marks(chunk)})", chunk,
                                        binary=True):
                out[int(key)] = decode_vector(blob, dim)
        return out

    def removed_since(self, generation: int) -> np.ndarray:
        """Keys whose vectors went away after ``generation`` (the index must drop them)."""
        rows = self._rows("SELECT DISTINCT key FROM removed WHERE gen > ?", (generation,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def vector_bytes(self) -> int:
        """Bytes of vector blobs stored."""
        return int(self._one("SELECT COALESCE(SUM(LENGTH(vector)), 0) FROM vectors")[0])

    def iter_vectors(self, dim: int, batch: int = 4096, after: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``vectors`` in blocks of at most ``batch`` items with keys above ``after``, in key order: a pass over
        every item (duplicates, recommend) holds one block at a time, not the whole catalog."""
        while True:
            rows = self._rows(
                "SELECT v.key, v.vector FROM vectors v JOIN items i ON i.key = v.key WHERE i.status = 'ok' "
                "AND v.key > ? ORDER BY v.key LIMIT ?", (int(after), int(batch)), binary=True)
            if not rows:
                return
            keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield keys, decode_vectors([blob for _, blob in rows], dim).astype(np.float32, copy=False)
            after = int(keys[-1])

    def sizes_for(self, keys: Iterable[int]) -> dict[int, tuple[int, int, int]]:
        """(width, height, file bytes) of items, 0 where unknown: the largest copy represents a duplicate group."""
        keys = [int(k) for k in keys]
        out: dict[int, tuple[int, int, int]] = {}
        for chunk in chunks(keys, 900):  # SQLite's bound-parameter limit
            for key, width, height, size in self._rows(
                    f"SELECT key, width, height, size FROM items WHERE key IN ({marks(chunk)})", chunk):
                out[key] = (width or 0, height or 0, size or 0)
        return out

    def label_values(self, name: str) -> list[tuple[int, str]]:
        """(product key, value) of every product carrying label ``name``, several values joined; one label of a
        large catalog, not all of them."""
        merged = merge_labels((k, name, v) for k, v in self._rows(
            "SELECT key, value FROM all_labels WHERE name = ?", (name,)))
        return [(key, labels[name]) for key, labels in sorted(merged.items())]

    def ok_items(self) -> list[tuple[int, str, str, str | None]]:
        """(key, id, path, sha256) of every embedded item."""
        rows = self._rows("SELECT key, id, path, sha256 FROM items WHERE status = 'ok' ORDER BY key")
        return [tuple(r) for r in rows]

    def keys_where(self, where: Mapping[str, str]) -> np.ndarray:
        """Keys of the products (int64, sorted) that have, for every term, a variant with that value."""
        sql = " INTERSECT ".join("SELECT key FROM all_labels WHERE name = ? AND value = ?" for _ in where)
        args = [x for pair in where.items() for x in pair]
        rows = self._rows(sql, args)  # a product with several variants of a value comes once per variant
        return np.unique(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))

    def label_counts(self, where: Mapping[str, str] | None = None) -> dict[str, dict[str, int]]:
        """How many products with an embedded photo carry each label value, among those matching ``where``."""
        sql = ("SELECT l.name, l.value, COUNT(DISTINCT l.key) FROM all_labels l WHERE l.key IN "
               "(SELECT pp.product FROM product_photos pp JOIN items i ON i.key = pp.photo WHERE i.status = 'ok')")
        args: list[str] = []
        if where:
            sql += " AND l.key IN (" + " INTERSECT ".join(
                "SELECT key FROM all_labels WHERE name = ? AND value = ?" for _ in where) + ")"
            args = [x for pair in where.items() for x in pair]
        out: dict[str, dict[str, int]] = {}
        for name, value, count in self._rows(sql + " GROUP BY l.name, l.value", args):
            out.setdefault(name, {})[value] = int(count)
        return out

    def clusters(self) -> dict[int, int]:
        """Cluster of each clustered item key (items added after clustering have none)."""
        return {int(k): int(c) for k, c in self._rows("SELECT key, cluster FROM clusters")}

    def cluster_info(self) -> dict | None:
        text = self.get_meta("clusters")
        return json.loads(text) if text else None

    def cluster_of(self, key: int) -> int | None:
        row = self._one("SELECT cluster FROM clusters WHERE key = ?", (int(key),))
        return int(row[0]) if row else None

    def keys_in_cluster(self, cluster: int) -> np.ndarray:
        rows = self._rows("SELECT key FROM clusters WHERE cluster = ?", (int(cluster),))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def label_names(self) -> list[str]:
        """Every label a filter may name: the source's and the predicted ones."""
        return [r[0] for r in self._rows("SELECT DISTINCT name FROM all_labels ORDER BY name")]

    def manifest_label_names(self) -> list[str]:
        """The labels that came with the source (a manifest's columns), without predicted ones."""
        return [r[0] for r in self._rows("SELECT DISTINCT name FROM labels ORDER BY name")]

    def predicted_names(self) -> list[str]:
        """The labels ``lookalike tag`` predicted (from their records in meta: no scan of the predictions)."""
        rows = self._rows("SELECT name FROM meta WHERE substr(name, 1, 10) = ? ORDER BY name", ("predicted:",))
        return [r[0].split(":", 1)[1] for r in rows]

    def predicted_info(self, name: str) -> dict | None:
        text = self.get_meta(f"predicted:{name}")
        return json.loads(text) if text else None

    def predicted_scores_for(self, keys: Iterable[int]) -> dict[int, dict[str, float]]:
        """Predicted label name -> the model's probability, per key (only keys with predictions)."""
        keys = [int(k) for k in keys]
        out: dict[int, dict[str, float]] = {}
        for chunk in chunks(keys, 900):
            for key, name, score in self._rows(
                    f"SELECT key, name, score FROM predicted WHERE key IN ({marks(chunk)})", chunk):
                out.setdefault(key, {})[name] = float(score)
        return out

    def failures_of_product(self, product_id: str) -> list[str]:
        """The reasons its photos failed, for a product none of whose photos could be embedded."""
        return [r[0] for r in self._rows(
            "SELECT i.reason FROM product_photos pp JOIN products p ON p.key = pp.product JOIN items i "
            "ON i.key = pp.photo WHERE p.id = ? AND i.status = 'failed' ORDER BY pp.position", (product_id,))]

    def counts(self) -> dict[str, int]:
        """Photos embedded (``ok``) and failed, and ``products`` with at least one embedded photo."""
        rows = dict(self._rows("SELECT status, COUNT(*) FROM items GROUP BY status"))
        products = self._one("SELECT COUNT(DISTINCT pp.product) FROM product_photos pp JOIN items i "
                             "ON i.key = pp.photo WHERE i.status = 'ok'")[0]
        return {"ok": int(rows.get("ok", 0)), "failed": int(rows.get("failed", 0)), "products": int(products)}

    def failures(self, limit: int | None = None) -> list[tuple[str, str, str]]:
        sql = "SELECT id, path, reason FROM items WHERE status = 'failed' ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [tuple(r) for r in self._rows(sql)]

    def get_meta(self, name: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return row[0] if row else None

    def upload(self, name: str) -> bytes | None:
        """The bytes of an uploaded image kept in the store, or None."""
        row = self._one("SELECT data FROM uploads WHERE name = ?", (name,))
        return bytes(row[0]) if row else None

    # -- whole tables, for `lookalike copy` ------------------------------------------------------------

    def item_rows(self, after: int = -1, batch: int = 5000) -> list[tuple]:
        """Every column of items (``ITEM_COLUMNS``) with keys above ``after``, in key order."""
        return [tuple(r) for r in self._rows(
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE key > ? ORDER BY key LIMIT ?", (after, batch))]

    def raw_vectors(self, after: int = -1, batch: int = 2000) -> list[tuple[int, bytes, int]]:
        """(key, stored bytes, generation) of vectors with keys above ``after``, in key order."""
        return [(int(k), bytes(v), int(g)) for k, v, g in self._rows(
            "SELECT key, vector, gen FROM vectors WHERE key > ? ORDER BY key LIMIT ?", (after, batch), binary=True)]

    def label_rows(self) -> list[tuple[int, str, str, str]]:
        return [tuple(r) for r in self._rows(
            "SELECT key, variant, name, value FROM labels ORDER BY key, variant, name")]

    def product_rows(self) -> list[tuple[int, str]]:
        return self.products()

    def product_photo_rows(self) -> list[tuple[int, int, int]]:
        return [tuple(r) for r in self._rows(
            "SELECT product, photo, position FROM product_photos ORDER BY product, photo")]

    def table_counts(self) -> dict[str, int]:
        """Rows of every table that holds catalog data (embedded and failed items apart): what a copy must match."""
        counts = self.counts()
        for table in ("products", "product_photos", "labels", "vectors", "clusters", "uploads"):
            counts[table] = int(self._one(f"SELECT COUNT(*) FROM {table}")[0])
        return counts

    def vector_keys(self) -> np.ndarray:
        return np.array([r[0] for r in self._rows("SELECT key FROM vectors ORDER BY key")], dtype=np.int64)

    def upload_names(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT name FROM uploads ORDER BY name")]

    def meta(self) -> dict[str, str]:
        return dict(self._rows("SELECT name, value FROM meta"))

    def is_empty(self) -> bool:
        """Nothing stored yet (no item, no vector, no upload)."""
        return self._one("SELECT (SELECT COUNT(*) FROM items) + (SELECT COUNT(*) FROM uploads)")[0] == 0

    def import_rows(self, items: list[tuple] = (), labels: list[tuple] = (), vectors: list[tuple] = (),
                    clusters: list[tuple] = (), meta: Mapping[str, str] | None = None,
                    products: list[tuple] = (), product_photos: list[tuple] = ()) -> None:
        """Write rows read from another store, keys kept, in one transaction (``lookalike copy``)."""
        with self._begin() as cur:
            if items:
                cur.executemany(f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) VALUES "
                                f"({marks(ITEM_COLUMNS)})", items)
            if products:
                cur.executemany("INSERT INTO products (key, id) VALUES (?, ?)", products)
            if product_photos:
                cur.executemany("INSERT INTO product_photos (product, photo, position) VALUES (?, ?, ?)",
                                product_photos)
            if labels:
                cur.executemany("INSERT INTO labels (key, variant, name, value) VALUES (?, ?, ?, ?)", labels)
            if vectors:
                cur.executemany("INSERT INTO vectors (key, vector, gen) VALUES (?, ?, ?)", vectors)
            if clusters:
                cur.executemany("INSERT INTO clusters (key, cluster) VALUES (?, ?)", clusters)
            for name, value in (meta or {}).items():
                _put_meta(cur, name, value)
            rebuild_fulltext(cur)  # labels were written directly: index them
            self._after_import(cur)

    def _after_import(self, cur: Cursor) -> None:  # noqa: B027 - optional upkeep, nothing to do by default
        """Backend upkeep after explicit keys were written (PostgreSQL moves its key sequence past them)."""


def decode_vector(blob: bytes, dim: int) -> np.ndarray:
    """A stored vector: float32, or float16 in large catalogs (half the length)."""
    return np.frombuffer(blob, dtype=np.float32 if len(blob) == 4 * dim else np.float16)


def decode_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stored vectors as one (N, dim) matrix, float32 or float16 as stored: one join and one view where they are
    all one width (a per-vector loop cost more than reading them), else vector by vector (as float32)."""
    width = len(blobs[0]) if blobs else 4 * dim
    if width in (4 * dim, 2 * dim) and all(len(blob) == width for blob in blobs):
        dtype = np.float32 if width == 4 * dim else np.float16
        return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), dim)
    return np.stack([decode_vector(blob, dim).astype(np.float32) for blob in blobs])


def _put_meta(cur: Cursor, name: str, text: str) -> None:
    cur.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, text))


def _next_generation(cur: Cursor) -> int:
    """The generation this transaction's _bump will produce (changes are logged under it)."""
    return int(cur.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()[0]) + 1


def _bump(cur: Cursor, counter: str = "generation") -> int:
    """Add one to a counter in meta; returns its new value."""
    return int(cur.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE name = ? "
                           "RETURNING value", (counter,)).fetchone()[0])
