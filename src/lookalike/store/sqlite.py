"""The catalog's source of truth in one SQLite file (WAL journal): a folder catalog's ``catalog.sqlite``.

Every batch is written in one transaction, so killing an index run at any moment leaves the file as of the
last finished batch; the FAISS index is derived from it and can always be rebuilt. The queries are the
shared ones of ``base.Store``; this module holds the schema and the connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.errors import CatalogError
from .base import DROP_UNUSED, ItemRecord, Store, StoredItem
from .events import SQLITE_EVENT_TABLES, add_box_column
from .fulltext import SQLITE_MISSING as FULLTEXT_MISSING
from .fulltext import SQLITE_TABLES as FULLTEXT_TABLES
from .fulltext import rebuild as rebuild_fulltext
from .products import FORMAT, SQLITE_READ_ONLY_VIEWS, SQLITE_TABLES, SQLITE_UPGRADE

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
CREATE INDEX IF NOT EXISTS items_path ON items (path);
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
-- images added as bytes, when they must live in the store rather than in the catalog folder (copies of a
-- PostgreSQL catalog); a folder catalog keeps its uploads under uploads/
CREATE TABLE IF NOT EXISTS uploads (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', '0');         -- items or vectors changed
INSERT OR IGNORE INTO meta (name, value) VALUES ('labels_generation', '0');  -- labels alone changed
"""
# products, their photos and labels, k-means clusters and zero-shot labels (``store/products.py``): clusters and
# predictions are derived data, kept apart from the source's labels (re-indexing never erases them, a label
# never collides with them); predictions are read with the labels through the all_labels view.
SCHEMA += SQLITE_TABLES
SCHEMA += SQLITE_EVENT_TABLES  # the query log and shoppers' events (store/events.py)
SCHEMA += FULLTEXT_TABLES  # the keyword index of products' labels (store/fulltext.py)

# SQLite's largest page size, bytes. A catalog file is made with it when its float32 vectors do not fit inside a
# 4 KB page (``page_size_for``): a 2,048-d vector (8 KB) then lies inside its row's page instead of in a chain of
# 4 KB overflow pages, which the WAL writes and later copies back page by page: 20,000 such rows go into a bare
# table at 53,000-57,000 rows/s against 27,000-29,000 with 4 KB pages (benchmarks/ray_throughput.py's store
# ceiling on a 2-core EPYC). Small vectors keep SQLite's default, cheaper for small transactions (a one-row
# commit: 26 us at 4 KB, 136 us at 64 KB). SQLite's docs, "PRAGMA page_size" and "Database File Format".
LARGE_PAGE_SIZE = 65536
DEFAULT_PAGE_SIZE = 4096


def page_size_for(dim: int) -> int:
    """The page size of a new catalog file whose vectors have ``dim`` float32 values: 4,096 (SQLite's default)
    while a vector fits in a 4 KB page's cell (up to 1,000 values: a cell holds 4,061 bytes at most), else
    ``LARGE_PAGE_SIZE``."""
    return DEFAULT_PAGE_SIZE if dim * 4 <= 4000 else LARGE_PAGE_SIZE


def writable(path: Path) -> bool:
    """Can this process write the database file and its folder (the journal lives beside it)? False on a
    read-only mount (``access(2)`` says EROFS even to root) or a folder without write permission."""
    folder = path.parent if str(path.parent) else Path(".")
    return os.access(folder, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


class SQLiteStore(Store):
    """``read_only``: None decides by whether the file can be written (``writable``); a read-only store serves
    every read and refuses every write with one line (a shop serving its catalog from a read-only volume).
    ``page_size``: of a file this creates (``page_size_for``); an existing file keeps its own."""

    dialect = "sqlite"

    def __init__(self, path: Path, read_only: bool | None = None, page_size: int | None = None):
        self.path = Path(path)
        self.page_size = page_size
        self.location = str(path)
        self.read_only = (not writable(self.path)) if read_only is None else read_only
        if self.read_only:
            self.conn = _open_read_only(self.path)
        else:
            try:
                self.conn = self._open_writable()
            except sqlite3.OperationalError:  # e.g. a mount that says it is writable but is not
                if not self.path.is_file():
                    raise
                self.read_only = True
                self.conn = _open_read_only(self.path)
        self.vector_dtype = np.dtype(np.float32)  # the catalog switches to float16 when it grows large

    def _open_writable(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            if self.page_size:
                conn.execute(f"PRAGMA page_size={int(self.page_size)}")  # a new file only: one keeps its own
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            _upgrade(conn)
            had_fulltext = conn.execute(FULLTEXT_MISSING).fetchone() is not None
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('store_format', ?)", (FORMAT,))
            columns = {r[1] for r in conn.execute("PRAGMA table_info(vectors)")}
            if "gen" not in columns:  # a catalog from before the change log: its vectors count as generation 0
                conn.execute("ALTER TABLE vectors ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
            conn.execute("CREATE INDEX IF NOT EXISTS vectors_gen ON vectors (gen)")
            conn.execute(DROP_UNUSED)
            add_box = add_box_column(r[1] for r in conn.execute("PRAGMA table_info(queries)"))
            if add_box:  # a query log from before region searches were logged
                conn.execute(add_box)
            if not had_fulltext:  # a catalog from before the keyword index (or a new one): index its labels
                with _Transaction(conn) as cur:
                    rebuild_fulltext(cur)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Checkpoint the WAL on a thread of its own while the block writes (``Checkpointer``): the commits stop
        copying their pages into the database file themselves, which took 0.22 of 0.72 s per 20,000 2,048-d
        vectors (SQLite's automatic checkpoint, every 1,000 WAL pages, runs inside the COMMIT that crosses it)."""
        if self.read_only:
            yield
            return
        checkpointer = Checkpointer(self.path)
        pages = int(self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA wal_autocheckpoint={pages}")
            checkpointer.stop()

    def bytes_on_disk(self) -> int:
        return self.path.stat().st_size

    def _rows(self, sql: str, args: tuple | list = (), binary: bool = False) -> list[tuple]:
        return self.conn.execute(sql, args).fetchall()

    def _stream(self, sql: str, args: tuple | list, chunk: int) -> Iterator[list[tuple]]:
        cursor = self.conn.execute(sql, args)
        while rows := cursor.fetchmany(chunk):
            yield rows

    def _begin(self) -> _Transaction:
        if self.read_only:
            raise CatalogError(f"{self.path.parent}: the catalog is read-only (a read-only mount or folder); it "
                               "can be searched, but to change it copy it to a writable folder first")
        return _Transaction(self.conn)


def _format(conn: sqlite3.Connection) -> str | None:
    """The store format of an existing file (None: a new, empty file); files from before products were format 1."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        return None
    row = conn.execute("SELECT value FROM meta WHERE name = 'store_format'").fetchone()
    if row:
        return row[0]
    return FORMAT if "products" in tables else "1"


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring a file written by an earlier release up to this format, in one transaction (all or nothing);
    refuse one written by a later release."""
    found = _format(conn)
    if found is None or found == FORMAT:
        return
    if found != "1":
        raise CatalogError(f"{conn.execute('PRAGMA database_list').fetchone()[2]}: store format {found} is newer "
                           "than this lookalike; upgrade lookalike")
    conn.execute("PRAGMA foreign_keys=OFF")  # tables are rebuilt under their children
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in SQLITE_UPGRADE.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('store_format', ?)", (FORMAT,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("PRAGMA foreign_keys=ON")


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Open for reading only. A WAL database whose ``-shm`` file cannot be made (a read-only folder after a clean
    close) is opened as immutable: nothing can change it while the folder is read-only."""
    if not path.is_file():
        raise CatalogError(f"{path}: no catalog database here, and the folder is read-only")
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    for query in ("?mode=ro", "?mode=ro&immutable=1"):
        conn = sqlite3.connect(uri + query, uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("SELECT count(*) FROM meta").fetchone()
            if _format(conn) == "1":  # an earlier release's file that cannot be upgraded here: read it as format 2
                conn.executescript(SQLITE_READ_ONLY_VIEWS)
            return conn
        except sqlite3.OperationalError:
            conn.close()
            if query.endswith("immutable=1"):
                raise
    raise AssertionError("unreachable")


class Checkpointer:
    """A thread with its own connection that runs passive WAL checkpoints (``PRAGMA wal_checkpoint(PASSIVE)``:
    copy the committed pages back into the database file, never blocking the writer or readers) every
    ``interval`` seconds until ``stop``, then once more. Checkpoints only copy what is already committed, so
    killing the process at any point leaves the file as SQLite's own recovery expects it."""

    def __init__(self, path: Path, interval: float = 0.05):
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lookalike-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:  # busy: the next one (or the final one in ``stop``) catches up
            pass

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._checkpoint()
        self._conn.close()


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
