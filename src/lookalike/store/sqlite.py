"""The catalog's source of truth: one SQLite file holding items, labels, failures and vectors.

Every batch is written in one transaction (WAL journal), so killing an index run at any moment leaves
the file as of the last finished batch; the FAISS index is derived from it and can always be rebuilt.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key       INTEGER PRIMARY KEY AUTOINCREMENT,  -- the FAISS id
    id        TEXT NOT NULL UNIQUE,               -- the id users search by
    path      TEXT NOT NULL,
    size      INTEGER,
    mtime_ns  INTEGER,
    sha256    TEXT,
    status    TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    reason    TEXT,
    width     INTEGER,
    height    INTEGER,
    updated   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_sha256 ON items (sha256);
CREATE TABLE IF NOT EXISTS labels (
    key   INTEGER NOT NULL REFERENCES items (key) ON DELETE CASCADE,
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key, name)
);
CREATE INDEX IF NOT EXISTS labels_name_value ON labels (name, value);
CREATE TABLE IF NOT EXISTS vectors (
    key    INTEGER PRIMARY KEY REFERENCES items (key) ON DELETE CASCADE,
    vector BLOB NOT NULL,  -- float32, or float16 in large catalogs (told apart by length)
    gen    INTEGER NOT NULL DEFAULT 0  -- the generation that wrote it: the index catches up from here
);
-- keys whose vector went away (item removed or now failing), by generation: the rest of the change log
CREATE TABLE IF NOT EXISTS removed (
    key INTEGER NOT NULL,
    gen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS removed_gen ON removed (gen);
-- k-means clusters of the vectors (`lookalike cluster`): derived data, kept apart from the source's labels
-- so re-indexing a manifest never erases them and a label can never collide with them.
CREATE TABLE IF NOT EXISTS clusters (
    key     INTEGER PRIMARY KEY REFERENCES items (key) ON DELETE CASCADE,
    cluster INTEGER NOT NULL
);
-- zero-shot labels (`lookalike tag`): derived like clusters, kept apart from the source's labels, read with them
-- through the all_labels view (filters, facets, results), each with the model's probability.
CREATE TABLE IF NOT EXISTS predicted (
    key   INTEGER NOT NULL REFERENCES items (key) ON DELETE CASCADE,
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (key, name)
);
CREATE INDEX IF NOT EXISTS predicted_name_value ON predicted (name, value);
CREATE VIEW IF NOT EXISTS all_labels AS
    SELECT key, name, value FROM labels UNION ALL SELECT key, name, value FROM predicted;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', '0');         -- items or vectors changed
INSERT OR IGNORE INTO meta (name, value) VALUES ('labels_generation', '0');  -- labels alone changed
"""


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
    labels: Mapping[str, str] | None = None  # None keeps the labels already stored


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


class Store:
    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.executescript(SCHEMA)
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(vectors)")}
        if "gen" not in columns:  # a catalog from before the change log: its vectors count as generation 0
            self.conn.execute("ALTER TABLE vectors ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
        self.conn.execute("CREATE INDEX IF NOT EXISTS vectors_gen ON vectors (gen)")
        self.vector_dtype = np.dtype(np.float32)  # the catalog switches to float16 when it grows large

    def close(self) -> None:
        self.conn.close()

    # -- writing -----------------------------------------------------------------------------------

    def _begin(self):
        return _Transaction(self.conn)

    def write(self, records: Iterable[ItemRecord]) -> None:
        """Insert or update items, their vectors and labels, all or nothing."""
        now = time.time()
        with self._begin() as cur:
            gen = _next_generation(cur)
            for rec in records:
                key = cur.execute(
                    """INSERT INTO items (id, path, size, mtime_ns, sha256, status, reason, width, height, updated)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (id) DO UPDATE SET path=excluded.path, size=excluded.size,
                         mtime_ns=excluded.mtime_ns, sha256=excluded.sha256, status=excluded.status,
                         reason=excluded.reason, width=excluded.width, height=excluded.height,
                         updated=excluded.updated
                       RETURNING key""",
                    (rec.id, rec.path, rec.size, rec.mtime_ns, rec.sha256, rec.status, rec.reason,
                     rec.width, rec.height, now),
                ).fetchone()[0]
                if rec.vector is not None:
                    blob = np.ascontiguousarray(rec.vector, dtype=self.vector_dtype).tobytes()
                    cur.execute("INSERT OR REPLACE INTO vectors (key, vector, gen) VALUES (?, ?, ?)",
                                (key, blob, gen))
                elif rec.status != "ok":
                    if cur.execute("DELETE FROM vectors WHERE key = ?", (key,)).rowcount:
                        cur.execute("INSERT INTO removed (key, gen) VALUES (?, ?)", (key, gen))
                if rec.labels is not None:
                    _write_labels(cur, key, rec.labels)
            _bump(cur)

    def touch(self, updates: Iterable[tuple[str, str, int, int]]) -> None:
        """Record new path/size/mtime for files whose content did not change: (id, path, size, mtime_ns)."""
        with self._begin() as cur:
            cur.executemany("UPDATE items SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                            [(p, s, m, i) for i, p, s, m in updates])

    def set_labels(self, labels_by_id: Mapping[str, Mapping[str, str]]) -> None:
        with self._begin() as cur:
            for item_id, labels in labels_by_id.items():
                row = cur.execute("SELECT key FROM items WHERE id = ?", (item_id,)).fetchone()
                if row:
                    _write_labels(cur, row[0], labels)
            _bump(cur, "labels_generation")  # the vector index stays valid

    def set_clusters(self, keys: np.ndarray, clusters: np.ndarray, info: Mapping[str, object]) -> None:
        """Replace every cluster assignment at once, with what made them (n, generation, ...) in meta."""
        with self._begin() as cur:
            cur.execute("DELETE FROM clusters")
            cur.executemany("INSERT INTO clusters (key, cluster) VALUES (?, ?)",
                            zip(np.asarray(keys).tolist(), np.asarray(clusters).tolist(), strict=True))
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('clusters', ?)", (json.dumps(info),))

    def set_predicted(self, name: str, keys: np.ndarray, values: Sequence[str], scores: np.ndarray,
                      info: Mapping[str, object]) -> None:
        """Replace the predicted label ``name`` of every item at once, with what made it in meta
        (``predicted:<name>``); the vector index stays valid, label caches are dropped."""
        with self._begin() as cur:
            cur.execute("DELETE FROM predicted WHERE name = ?", (name,))
            cur.executemany("INSERT INTO predicted (key, name, value, score) VALUES (?, ?, ?, ?)",
                            zip(np.asarray(keys).tolist(), [name] * len(values), list(values),
                                np.asarray(scores, dtype=np.float64).tolist(), strict=True))
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                        (f"predicted:{name}", json.dumps(info)))
            _bump(cur, "labels_generation")

    def remove_predicted(self, name: str) -> int:
        with self._begin() as cur:
            count = cur.execute("DELETE FROM predicted WHERE name = ?", (name,)).rowcount
            cur.execute("DELETE FROM meta WHERE name = ?", (f"predicted:{name}",))
            _bump(cur, "labels_generation")
        return count

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        with self._begin() as cur:
            gen = _next_generation(cur)
            for item_id in ids:
                row = cur.execute("SELECT key FROM items WHERE id = ?", (item_id,)).fetchone()
                if row:
                    cur.execute("INSERT INTO removed (key, gen) VALUES (?, ?)", (row[0], gen))
                    cur.execute("DELETE FROM items WHERE key = ?", (row[0],))
            _bump(cur)
        return len(ids)

    # -- reading -----------------------------------------------------------------------------------

    def generation(self) -> int:
        """Changes whenever items or vectors change: the FAISS index built at another one is stale."""
        return self.generations()[0]

    def generations(self) -> tuple[int, int]:
        """(items and vectors, labels alone), read together."""
        rows = dict(self.conn.execute(
            "SELECT name, value FROM meta WHERE name IN ('generation', 'labels_generation')").fetchall())
        return int(rows["generation"]), int(rows["labels_generation"])

    def items(self) -> dict[str, StoredItem]:
        rows = self.conn.execute(
            "SELECT key, id, path, size, mtime_ns, sha256, status, reason FROM items").fetchall()
        return {r[1]: StoredItem(*r) for r in rows}

    def item(self, item_id: str) -> StoredItem | None:
        row = self.conn.execute(
            "SELECT key, id, path, size, mtime_ns, sha256, status, reason FROM items WHERE id = ?", (item_id,)
        ).fetchone()
        return StoredItem(*row) if row else None

    def labels(self) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {}
        for key, name, value in self.conn.execute("SELECT key, name, value FROM all_labels"):
            out.setdefault(key, {})[name] = value
        return out

    def labels_for(self, keys: Iterable[int]) -> dict[int, dict[str, str]]:
        keys = [int(k) for k in keys]
        out: dict[int, dict[str, str]] = {k: {} for k in keys}
        if not keys:
            return out
        marks = ",".join("?" * len(keys))
        for key, name, value in self.conn.execute(
                f"SELECT key, name, value FROM all_labels WHERE key IN ({marks})", keys):
            out[key][name] = value
        return out

    def vectors(self, dim: int, dtype: str | np.dtype = np.float32, since: int | None = None,
                chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
        """Embedded items as (keys int64, vectors N x dim of ``dtype``), in key order; ``since``: only those
        written after that generation. Read in chunks into one preallocated matrix (a million 2048-d
        vectors must not be held twice)."""
        where = "WHERE i.status = 'ok'" + (" AND v.gen > ?" if since is not None else "")
        args = (since,) if since is not None else ()
        count = self.conn.execute(f"SELECT COUNT(*) FROM vectors v JOIN items i ON i.key = v.key {where}",
                                  args).fetchone()[0]
        keys = np.empty(count, np.int64)
        mat = np.empty((count, dim), np.dtype(dtype))
        cursor = self.conn.execute(
            f"SELECT v.key, v.vector FROM vectors v JOIN items i ON i.key = v.key {where} ORDER BY v.key", args)
        n = 0
        while n < count:
            rows = cursor.fetchmany(chunk)
            if not rows:
                break
            for key, blob in rows:
                keys[n] = key
                mat[n] = _decode(blob, dim)
                n += 1
        return keys[:n], mat[:n]

    def vectors_for(self, keys: Iterable[int], dim: int) -> dict[int, np.ndarray]:
        """Stored vectors (float32 or float16, D) of the given item keys that have one."""
        keys = [int(k) for k in keys]
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self.conn.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk):
                out[int(key)] = _decode(blob, dim)
        return out

    def removed_since(self, generation: int) -> np.ndarray:
        """Keys whose vectors went away after ``generation`` (the index must drop them)."""
        rows = self.conn.execute("SELECT DISTINCT key FROM removed WHERE gen > ?", (generation,)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def vector_bytes(self) -> int:
        """Bytes of vector blobs stored in SQLite."""
        return int(self.conn.execute("SELECT COALESCE(SUM(LENGTH(vector)), 0) FROM vectors").fetchone()[0])

    def iter_vectors(self, dim: int, batch: int = 4096, after: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``vectors`` in blocks of at most ``batch`` items with keys above ``after``, in key order: a pass over
        every item (duplicates, recommend) holds one block at a time, not the whole catalog."""
        while True:
            rows = self.conn.execute(
                "SELECT v.key, v.vector FROM vectors v JOIN items i ON i.key = v.key WHERE i.status = 'ok' "
                "AND v.key > ? ORDER BY v.key LIMIT ?", (int(after), int(batch))).fetchall()
            if not rows:
                return
            keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            mat = np.empty((len(rows), dim), np.float32)
            for i, (_, blob) in enumerate(rows):
                mat[i] = _decode(blob, dim)
            yield keys, mat
            after = int(keys[-1])

    def sizes_for(self, keys: Iterable[int]) -> dict[int, tuple[int, int, int]]:
        """(width, height, file bytes) of items, 0 where unknown: the largest copy represents a duplicate group."""
        keys = [int(k) for k in keys]
        out: dict[int, tuple[int, int]] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for key, width, height, size in self.conn.execute(
                    f"SELECT key, width, height, size FROM items WHERE key IN ({marks})", chunk):
                out[key] = (width or 0, height or 0, size or 0)
        return out

    def label_values(self, name: str) -> list[tuple[int, str]]:
        """(key, value) of every item carrying label ``name``; one label of a large catalog, not all of them."""
        return self.conn.execute("SELECT key, value FROM all_labels WHERE name = ?", (name,)).fetchall()

    def ok_items(self) -> list[tuple[int, str, str, str | None]]:
        """(key, id, path, sha256) of every embedded item."""
        return self.conn.execute(
            "SELECT key, id, path, sha256 FROM items WHERE status = 'ok' ORDER BY key").fetchall()

    def keys_where(self, where: Mapping[str, str]) -> np.ndarray:
        sql = " INTERSECT ".join("SELECT key FROM all_labels WHERE name = ? AND value = ?" for _ in where)
        args = [x for pair in where.items() for x in pair]
        return np.array([r[0] for r in self.conn.execute(sql, args)], dtype=np.int64)

    def label_counts(self, where: Mapping[str, str] | None = None) -> dict[str, dict[str, int]]:
        """How many embedded items carry each label value, among those matching ``where``."""
        sql = ("SELECT l.name, l.value, COUNT(*) FROM all_labels l JOIN items i ON i.key = l.key "
               "WHERE i.status = 'ok'")
        args: list[str] = []
        if where:
            sql += " AND l.key IN (" + " INTERSECT ".join(
                "SELECT key FROM all_labels WHERE name = ? AND value = ?" for _ in where) + ")"
            args = [x for pair in where.items() for x in pair]
        out: dict[str, dict[str, int]] = {}
        for name, value, count in self.conn.execute(sql + " GROUP BY l.name, l.value", args):
            out.setdefault(name, {})[value] = count
        return out

    def clusters(self) -> dict[int, int]:
        """Cluster of each clustered item key (items added after clustering have none)."""
        return dict(self.conn.execute("SELECT key, cluster FROM clusters").fetchall())

    def cluster_info(self) -> dict | None:
        text = self.get_meta("clusters")
        return json.loads(text) if text else None

    def cluster_of(self, key: int) -> int | None:
        row = self.conn.execute("SELECT cluster FROM clusters WHERE key = ?", (int(key),)).fetchone()
        return int(row[0]) if row else None

    def keys_in_cluster(self, cluster: int) -> np.ndarray:
        rows = self.conn.execute("SELECT key FROM clusters WHERE cluster = ?", (int(cluster),)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def label_names(self) -> list[str]:
        """Every label a filter may name: the source's and the predicted ones."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT name FROM all_labels ORDER BY name")]

    def manifest_label_names(self) -> list[str]:
        """The labels that came with the source (a manifest's columns), without predicted ones."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT name FROM labels ORDER BY name")]

    def predicted_names(self) -> list[str]:
        """The labels ``lookalike tag`` predicted (from their records in meta: no scan of the predictions)."""
        rows = self.conn.execute("SELECT name FROM meta WHERE name LIKE 'predicted:%' ORDER BY name").fetchall()
        return [r[0].split(":", 1)[1] for r in rows]

    def predicted_info(self, name: str) -> dict | None:
        text = self.get_meta(f"predicted:{name}")
        return json.loads(text) if text else None

    def predicted_scores_for(self, keys: Iterable[int]) -> dict[int, dict[str, float]]:
        """Predicted label name -> the model's probability, per key (only keys with predictions)."""
        keys = [int(k) for k in keys]
        out: dict[int, dict[str, float]] = {}
        for start in range(0, len(keys), 900):
            chunk = keys[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for key, name, score in self.conn.execute(
                    f"SELECT key, name, score FROM predicted WHERE key IN ({marks})", chunk):
                out.setdefault(key, {})[name] = float(score)
        return out

    def counts(self) -> dict[str, int]:
        rows = dict(self.conn.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
        return {"ok": rows.get("ok", 0), "failed": rows.get("failed", 0)}

    def failures(self, limit: int | None = None) -> list[tuple[str, str, str]]:
        sql = "SELECT id, path, reason FROM items WHERE status = 'failed' ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.conn.execute(sql).fetchall()

    def get_meta(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: object) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        with self._begin() as cur:
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, text))


def _write_labels(cur: sqlite3.Cursor, key: int, labels: Mapping[str, str]) -> None:
    cur.execute("DELETE FROM labels WHERE key = ?", (key,))
    cur.executemany("INSERT INTO labels (key, name, value) VALUES (?, ?, ?)",
                    [(key, str(n), str(v)) for n, v in labels.items()])


def _decode(blob: bytes, dim: int) -> np.ndarray:
    """A stored vector: float32, or float16 in large catalogs (half the length)."""
    return np.frombuffer(blob, dtype=np.float32 if len(blob) == 4 * dim else np.float16)


def _next_generation(cur: sqlite3.Cursor) -> int:
    """The generation this transaction's _bump will produce (changes are logged under it)."""
    return int(cur.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()[0]) + 1


def _bump(cur: sqlite3.Cursor, counter: str = "generation") -> None:
    cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = ?", (counter,))


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Cursor:
        self.conn.execute("BEGIN IMMEDIATE")
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
