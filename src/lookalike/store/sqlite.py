"""The catalog's source of truth in one SQLite file (WAL journal): a folder catalog's ``catalog.sqlite``.

Every batch is written in one transaction, so killing an index run at any moment leaves the file as of the
last finished batch; the FAISS index is derived from it and can always be rebuilt. The queries are the
shared ones of ``base.Store``; this module holds the schema and the connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import ItemRecord, Store, StoredItem

__all__ = ["ItemRecord", "SQLiteStore", "StoredItem"]

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
CREATE INDEX IF NOT EXISTS items_path ON items (path);
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
-- images added as bytes, when they must live in the store rather than in the catalog folder (copies of a
-- PostgreSQL catalog); a folder catalog keeps its uploads under uploads/
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
CREATE TABLE IF NOT EXISTS uploads (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', '0');         -- items or vectors changed
INSERT OR IGNORE INTO meta (name, value) VALUES ('labels_generation', '0');  -- labels alone changed
"""


class SQLiteStore(Store):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.location = str(path)
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

    def bytes_on_disk(self) -> int:
        return self.path.stat().st_size

    def _rows(self, sql: str, args: tuple | list = (), binary: bool = False) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()

    def _stream(self, sql: str, args: tuple | list, chunk: int) -> Iterator[list[tuple]]:
        cursor = self.conn.execute(sql, args)
        while rows := cursor.fetchmany(chunk):
            yield rows

    def _begin(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Cursor:
        self.conn.execute("BEGIN IMMEDIATE")  # the write lock first: writers are serialised
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
