"""lookalike: recommend products that look like a given one.

    from lookalike import Catalog
    catalog = Catalog.create("shop.lk", model="resnet50")
    catalog.add("styles.csv", images="images")
    catalog.similar("15970", k=5, where={"articleType": "Tshirts"})
"""

from .catalog import Catalog, CatalogStatus, IndexReport
from .config import EmbedderInfo, EncodeOptions
from .embed import Encoder
from .embedders import create_embedder, list_models
from .errors import (
    CatalogError,
    ImageError,
    LookalikeError,
    ModelUnavailableError,
    QueryError,
    SourceError,
    UnknownModelError,
)
from .search import Match

__version__ = "0.1.0"


def open_catalog(path: str) -> Catalog:
    """Open an existing catalog (same as ``Catalog.open``)."""
    return Catalog.open(path)


__all__ = [
    "Catalog", "CatalogError", "CatalogStatus", "EmbedderInfo", "EncodeOptions", "Encoder", "ImageError",
    "IndexReport", "LookalikeError", "Match", "ModelUnavailableError", "QueryError", "SourceError",
    "UnknownModelError", "create_embedder", "list_models", "open_catalog", "__version__",
]
