"""Store layer: the source of truth for items, labels, vectors and the change log (SQLite today)."""

from .sqlite import ItemRecord, Store

__all__ = ["ItemRecord", "Store"]
