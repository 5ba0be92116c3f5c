"""Index layer: the vector index (FAISS), a cache of the store's vectors: automatic choice (flat, HNSW,
IVF-PQ), recall tuning, incremental updates. Names are imported on first use (FAISS loads with them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .choice import IndexChoiceError, IndexOptions, IndexPlan, choose_index, format_bytes, parse_memory
    from .tuning import tune
    from .vector_index import Quality, SearchSettings, VectorIndex

_EXPORTS = {
    **{name: "choice" for name in ("IndexChoiceError", "IndexOptions", "IndexPlan", "choose_index", "format_bytes",
                                  "parse_memory")},
    "tune": "tuning",
    **{name: "vector_index" for name in ("Quality", "SearchSettings", "VectorIndex")},
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["IndexChoiceError", "IndexOptions", "IndexPlan", "Quality", "SearchSettings", "VectorIndex",
    "choose_index", "format_bytes", "parse_memory", "tune"]
