"""Where a catalog is, and where this process keeps what it derives from it.

A folder catalog keeps everything inside its folder: ``catalog.json``, ``catalog.sqlite``, the FAISS cache
(``index/``), ``analysis/``, ``uploads/``. A ``postgresql://`` catalog keeps its config, items, vectors and
uploaded images in the database, shared by every process; each process keeps what it derives (the FAISS
cache, analysis files, thumbnails, uploads read back from the database) in a per-user cache folder named by
the database and the catalog's own id, or in memory (``LOOKALIKE_CACHE_DIR=memory``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..store.urls import DatabaseURL

CACHE_ENV = "LOOKALIKE_CACHE_DIR"
MEMORY = "memory"


def cache_root() -> Path | None:
    """The per-user cache folder (``$LOOKALIKE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lookalike``, else
    ``~/.cache/lookalike``); None when the cache is to be kept in memory only."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == MEMORY:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "lookalike"


def database_cache(url: DatabaseURL, catalog_id: str) -> Path | None:
    """This process's cache folder for a database catalog, keyed by the database (host, port, name, schema)
    and by the catalog's id, so a catalog dropped and built again never meets the old cache."""
    root = cache_root()
    return None if root is None else root / "catalogs" / f"{url.cache_key}-{catalog_id[:16]}"
