"""Catalog layer: a directory with SQLite metadata + vectors and a derived FAISS index; add, search,
similar, status. Opening a catalog and searching by id import no PyTorch; importing this package imports
nothing heavy until a name is used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .catalog import Catalog, CatalogItem, CatalogStatus, IndexReport

_EXPORTS = {name: "catalog" for name in ("Catalog", "CatalogItem", "CatalogStatus", "IndexReport")}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["Catalog", "CatalogItem", "CatalogStatus", "IndexReport"]
