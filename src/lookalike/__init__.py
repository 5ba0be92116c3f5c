"""lookalike: recommend products that look like a given one.

    from lookalike import Catalog
    catalog = Catalog.create("shop.lk", model="resnet50")
    catalog.add("styles.csv", images="images")
    catalog.similar("15970", k=5, where={"articleType": "Tshirts"})

The names below are imported on first use (PEP 562), so ``import lookalike`` and the command line start
without loading what they do not need (PyTorch, matplotlib, FastAPI). The layers, from the bottom:
core < models < engines < store, index < catalog < analysis < figures < train < cli, api
(``docs/architecture.md``); a module imports only from its own layer or below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports
from .core.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "Catalog": "catalog.catalog", "CatalogStatus": "catalog.catalog", "IndexReport": "catalog.catalog",
    "Match": "catalog.query", "EmbedderInfo": "core.config", "EncodeOptions": "core.config",
    "Encoder": "engines.embed", "create_embedder": "models.registry", "list_models": "models.registry",
    "CatalogError": "core.errors", "ImageError": "core.errors", "LookalikeError": "core.errors",
    "ModelUnavailableError": "core.errors", "QueryError": "core.errors", "SourceError": "core.errors",
    "UnknownModelError": "core.errors", "find_duplicates": "analysis.duplicates",
    "recommend": "analysis.recommend", "evaluate_catalog": "analysis.evaluate",
}

if TYPE_CHECKING:
    from .analysis.duplicates import find_duplicates
    from .analysis.evaluate import evaluate_catalog
    from .analysis.recommend import recommend
    from .catalog.catalog import Catalog, CatalogStatus, IndexReport
    from .catalog.query import Match
    from .core.config import EmbedderInfo, EncodeOptions
    from .core.errors import (
        CatalogError,
        ImageError,
        LookalikeError,
        ModelUnavailableError,
        QueryError,
        SourceError,
        UnknownModelError,
    )
    from .engines.embed import Encoder
    from .models.registry import create_embedder, list_models


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def open_catalog(path: str) -> Catalog:
    """Open an existing catalog (same as ``Catalog.open``).

    Raises:
        CatalogError: no catalog at ``path``.
    """
    from .catalog.catalog import Catalog

    return Catalog.open(path)


__all__ = ["Catalog", "CatalogError", "CatalogStatus", "EmbedderInfo", "EncodeOptions", "Encoder", "ImageError",
    "IndexReport", "LookalikeError", "Match", "ModelUnavailableError", "QueryError", "SourceError",
    "UnknownModelError", "__version__", "create_embedder", "evaluate_catalog", "find_duplicates", "list_models",
    "open_catalog", "recommend"]
