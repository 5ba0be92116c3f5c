"""Logging a server's answers and its shoppers' events off the request path.

``QueryLog`` hands every answer a random ``query_id`` (``secrets.token_urlsafe``: 128 bits, unguessable) and
queues what was asked; a thread of its own writes the queue in batches (at most every ``interval`` seconds, or
at once when ``batch`` answers wait), through a store connection of its own (SQLite: a second connection to the
WAL file; PostgreSQL: a small pool), so a search never waits for the database. If the queue is full (the
database is slower than the traffic) answers are still given, their log rows are dropped and counted.
``add_events`` first writes the answers still queued, so a click that follows its answer at once is kept.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..core.errors import LookalikeError
from ..store import Store, is_database_url, open_store
from ..store.events import EventRecord, QueryRecord
from .catalog import DB_FILE

log = logging.getLogger(__name__)

QUERY_ID_BYTES = 16  # 128 random bits, 22 URL-safe characters


def new_query_id() -> str:
    """A random, unguessable id for one answer (``secrets.token_urlsafe``)."""
    return secrets.token_urlsafe(QUERY_ID_BYTES)


def open_event_store(address: str | Path) -> Store:
    """A store connection of the log's own to a catalog (``Catalog.address``: its folder, or its database URL)."""
    if is_database_url(address):
        from ..store.postgres import PostgresStore

        return PostgresStore(str(address), max_connections=2)
    return open_store(Path(address) / DB_FILE)


class QueryLog:
    """Answers queued and written in batches by a thread of its own; ``close`` writes what is left.

    ``store``: where to write (``open_event_store``); a read-only store logs nothing (``enabled`` is False).
    """

    def __init__(self, store: Store, interval: float = 0.5, batch: int = 200, max_queued: int = 10_000):
        self.store = store
        self.enabled = not store.read_only
        self.interval = interval
        self.batch = batch
        self.dropped = 0
        self._queue: queue.Queue[QueryRecord] = queue.Queue(max_queued)
        self._write_lock = threading.RLock()  # one write at a time on the log's connection (threads share it)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lookalike-query-log", daemon=True)
        if self.enabled:
            self._thread.start()

    def log(self, kind: str, k: int, results: Sequence[str], where: Mapping[str, str] | None = None,
            item: str | None = None, photo: str | None = None, words: str | None = None,
            box: Sequence[int] | None = None) -> str:
        """Queue one answer (``results``: product ids, best first; ``box``: a region search's box in pixels of the
        upright photo) and return its new query id; never blocks."""
        qid = new_query_id()
        if not self.enabled:
            return qid
        record = QueryRecord(id=qid, at=time.time(), kind=kind, k=int(k), results=tuple(results), item=item,
                             photo=photo, words=words, where=dict(where or {}),
                             box=None if box is None else tuple(int(v) for v in box))  # type: ignore[arg-type]
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.warning("query log: %d answers not logged (the database is slower than the traffic)",
                            self.dropped)
        if self._queue.qsize() >= self.batch:
            self._wake.set()
        return qid

    def flush(self) -> int:
        """Write every queued answer now; returns how many."""
        written = 0
        with self._write_lock:
            while True:
                rows = self._take()
                if not rows:
                    return written
                try:
                    self.store.log_queries(rows)
                except BaseException:
                    for row in rows:  # kept for the next try, as far as the queue has room
                        try:
                            self._queue.put_nowait(row)
                        except queue.Full:
                            self.dropped += 1
                    raise
                written += len(rows)

    def add_events(self, events: Sequence[EventRecord]) -> tuple[int, int]:
        """Store events (after writing the answers still queued): (stored, unknown query ids, not stored).

        Raises:
            CatalogError: the store is read-only. StoreUnavailableError: the database is down.
        """
        with self._write_lock:
            self.flush()
            return self.store.add_events(events)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.enabled:
            try:
                self.flush()
            except LookalikeError as exc:
                log.warning("query log: %d answers not written at shutdown: %s", self._queue.qsize(), exc)
        self.store.close()

    def _take(self) -> list[QueryRecord]:
        rows: list[QueryRecord] = []
        while len(rows) < 1000:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except LookalikeError as exc:  # the database is down: rows stay queued (up to max_queued)
                log.info("query log: %s", exc)
            except Exception:  # pragma: no cover - never let the writer die silently
                log.exception("query log writer")
