"""The vector index: automatic choice (flat, HNSW, IVF-PQ), recall tuning, incremental updates."""

from .choice import IndexChoiceError, IndexOptions, IndexPlan, choose_index, format_bytes, parse_memory
from .tuning import tune
from .vector_index import Quality, SearchSettings, VectorIndex

__all__ = ["IndexChoiceError", "IndexOptions", "IndexPlan", "Quality", "SearchSettings", "VectorIndex",
           "choose_index", "format_bytes", "parse_memory", "tune"]
