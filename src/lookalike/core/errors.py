"""Errors a user can cause. Each message names the file or value and says what to do.

The CLI prints ``str(error)`` on one line and exits with code 2; library callers catch
``LookalikeError`` to handle every expected failure in one place.
"""

from __future__ import annotations


class LookalikeError(Exception):
    """Base class for every expected, user-fixable failure."""


class ModelUnavailableError(LookalikeError):
    """The embedder's weights could not be loaded (offline, missing file, wrong architecture)."""


class UnknownModelError(LookalikeError):
    """The embedder name is not in the registry and is not ``timm:<name>`` of a known timm model."""


class CatalogError(LookalikeError):
    """The catalog is missing, of an unknown format, or asked to mix models."""


class SourceError(LookalikeError):
    """The folder or manifest given as a source cannot be read."""


class ImageError(LookalikeError):
    """An image cannot be decoded: corrupt, truncated, empty, not an image, or too large."""


class NotAnImageError(ImageError):
    """The bytes are empty or in no format Pillow reads (a text file, a PDF); the REST API answers 415."""


class QueryError(LookalikeError):
    """A search request is malformed: unknown item id, bad ``where`` filter, bad ``k``."""


class NoTextModelError(QueryError):
    """Words were asked of a catalog or model without a text tower; the message names the models with one."""


class UnknownItemError(QueryError):
    """No embedded catalog item has this id; the REST API answers 404."""


class ItemExistsError(CatalogError):
    """An item with this id is already in the catalog; the REST API answers 409."""


class IndexChoiceError(CatalogError):
    """No index fits the memory budget, or an index option is invalid."""


class OutputError(LookalikeError):
    """A result file cannot be written: unknown format or extension, a folder that cannot be written."""


class ModelFileError(ModelUnavailableError):
    """A ``.lkm`` model file is missing, corrupt, not a lookalike model, or from an incompatible version."""


class TrainingError(LookalikeError):
    """Training cannot start or go on: too few images or labels, a bad option, a pack that does not fit."""


class StoreUnavailableError(LookalikeError):
    """The catalog's database cannot be reached (down, restarting, network); the REST API answers 503 and the
    command line stops with one line; finished batches are kept and the next run resumes."""
