"""What to index: every image under a folder (local or an object-store prefix), or the rows of a CSV manifest
with their labels (``manifests``), grouped into products.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .errors import SourceError
from .images import IMAGE_EXTENSIONS, missing_decoder
from .listing import (
    FolderScan,
    SourceItem,
    SourceListing,
    file_ids,
    find_images,
    folder_listing,
    relative_ids,
    scan_folder,
    undecodable_counts,
    undecodable_lines,
)
from .manifests import ID_COLUMNS, MAX_FIELD_CHARS, PATH_COLUMNS, manifest_items
from .storage import is_url, list_objects, local_path

__all__ = ["ID_COLUMNS", "MAX_FIELD_CHARS", "PATH_COLUMNS", "FolderScan", "SourceItem", "SourceListing", "file_ids",
           "find_images", "is_folder_source", "read_source", "relative_ids", "scan_folder", "source_name"]

log = logging.getLogger(__name__)


def read_source(source: str | Path, images: str | Path | None = None, *, product_column: str | None = None,
                product_per_folder: bool = False) -> SourceListing:
    """List the photos of a folder or a CSV manifest, local or (a folder only) in an object store.

    ``file://`` URLs are local paths. Other URLs (``s3://bucket/photos/``, ``gs://``, ``memory://``: any
    fsspec protocol) name a prefix, listed recursively as a folder is.

    Products: by default a row (or a file) is one product with one photo. ``product_column`` names a manifest
    column whose equal values group rows into one product (the rows become its variants); a path cell may list
    several photos of a row, ``|``-separated. ``product_per_folder`` makes each leaf folder of a folder source
    one product, its id the folder's path (files directly in the source folder stay products of their own).

    Raises:
        SourceError: the source does not exist, a manifest has no id or path column, ``product_column`` is not
            one of its columns, or ``product_per_folder`` is given for a manifest.
    """
    if product_per_folder and product_column is not None:
        raise SourceError("--product-per-folder is for a folder source, --product-column for a manifest; give one")
    if is_url(source):
        local = local_path(str(source))
        if local is None:
            if product_column is not None:
                raise SourceError("--product-column is for a CSV manifest; an object-store prefix is listed as a "
                                  "folder (use --product-per-folder)")
            return _per_folder(_object_listing(str(source), images), product_per_folder)
        source = local
    if images is not None and is_url(images):
        local = local_path(str(images))
        if local is None:
            raise SourceError(f"--images {images}: a manifest's images are read from a local folder; index the "
                              "object-store prefix itself (its files become items, ids from their names)")
        images = local
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: no such folder or manifest; pass a folder of images or a CSV file")
    if source.is_dir():
        if images is not None:
            raise SourceError("--images is only for a CSV manifest; a folder source is scanned as is")
        if product_column is not None:
            raise SourceError(f"--product-column is for a CSV manifest; {source} is a folder (use "
                              "--product-per-folder to make each leaf folder one product)")
        return _per_folder(folder_listing(source), product_per_folder)
    if source.suffix.lower() in (".csv", ".tsv", ".txt"):
        if product_per_folder:
            raise SourceError(f"--product-per-folder is for a folder source; {source} is a manifest (use "
                              "--product-column NAME to group its rows into products)")
        return manifest_items(source, Path(images) if images is not None else None, product_column)
    raise SourceError(f"{source}: not a folder or a .csv manifest")


def _per_folder(listing: SourceListing, product_per_folder: bool) -> SourceListing:
    """Each file of a leaf folder made a photo of the product named by the folder's path (``shirts/a`` belongs
    to ``shirts``), in file-name order."""
    if not product_per_folder:
        return listing
    items = []
    positions: Counter[str] = Counter()
    for item in listing.items:
        folder = PurePosixPath(item.id).parent.as_posix()
        if folder == ".":
            items.append(item)
            continue
        items.append(dataclasses.replace(item, product=folder, position=positions[folder]))
        positions[folder] += 1
    listing.items = items
    return listing


def _object_listing(url: str, images: str | Path | None) -> SourceListing:
    """Every image object under a URL prefix, ids as for a folder (``shirts/a.jpg`` is ``shirts/a``)."""
    if images is not None:
        raise SourceError("--images is only for a CSV manifest; an object-store prefix is listed as is")
    if PurePosixPath(urlsplit(url).path).suffix.lower() in (".csv", ".tsv", ".txt"):
        raise SourceError(f"{url}: manifests are read from a local file; download it, or index the prefix that "
                          "holds the photos")
    objects = list_objects(url, IMAGE_EXTENSIONS)
    undecodable = [(o, reason) for o in objects if (reason := missing_decoder(o.relative)) is not None]
    if undecodable:
        objects = [o for o in objects if missing_decoder(o.relative) is None]
    stems = [PurePosixPath(o.relative).with_suffix("").as_posix() for o in objects]
    counts = Counter(stems)
    items = [SourceItem(id=stem if counts[stem] == 1 else o.relative, path=o.url, size=o.size, mtime_ns=o.mtime_ns)
             for o, stem in zip(objects, stems, strict=True)]
    warnings = ([f"{url}: skipped {', '.join(undecodable_lines(undecodable))}, e.g. {undecodable[0][0].url}"]
                if undecodable else [])
    return SourceListing(items=items, warnings=warnings, skipped=undecodable_counts(undecodable))


def source_name(source: str | Path) -> str:
    """The last part of a source's name (a folder's, a manifest's stem, a prefix's), for qualifying ids."""
    if is_url(source) and local_path(str(source)) is None:
        return PurePosixPath(urlsplit(str(source)).path.rstrip("/")).name or urlsplit(str(source)).netloc
    path = local_path(str(source)) if is_url(source) else Path(source)
    return path.resolve().name if path.is_dir() else path.stem


def is_folder_source(source: str | Path) -> bool:
    """A folder or an object-store prefix (its files' names are the ids), not a manifest (ids of its own)."""
    if is_url(source):
        local = local_path(str(source))
        return True if local is None else local.is_dir()
    return Path(source).is_dir()
