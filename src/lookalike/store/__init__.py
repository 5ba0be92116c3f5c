"""Store layer: the source of truth for items, labels, vectors and the change log, in SQLite (a catalog folder's
``catalog.sqlite``) or PostgreSQL (a ``postgresql://`` URL), behind one interface (``base.Store``)."""

from __future__ import annotations

from pathlib import Path

from .base import ItemRecord, Store, StoredItem, Written
from .sqlite import SQLiteStore
from .urls import DatabaseURL, is_database_url, parse_database_url

__all__ = ["DatabaseURL", "ItemRecord", "SQLiteStore", "Store", "StoredItem", "is_database_url", "open_store",
           "parse_database_url", "Written"]


def open_store(location: str | Path, create: bool = False, page_size: int | None = None) -> Store:
    """The store at a SQLite file path or a ``postgresql://`` URL (psycopg is imported only for the latter);
    ``page_size``: of a SQLite file this creates (``sqlite.page_size_for``).

    Raises:
        StoreUnavailableError: the database cannot be reached.
        CatalogError: no catalog tables at the URL (unless ``create``).
    """
    if is_database_url(location):
        from .postgres import PostgresStore

        return PostgresStore(str(location), create=create)
    return SQLiteStore(Path(location), page_size=page_size)
