"""The catalog: a directory with SQLite metadata + vectors and a derived FAISS index."""

from .catalog import Catalog, CatalogStatus, IndexReport

__all__ = ["Catalog", "CatalogStatus", "IndexReport"]
