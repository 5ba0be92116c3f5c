"""``lookalike copy SRC DST``: a catalog moved between stores (a folder and a PostgreSQL URL, either way, or two of
the same kind) with its items, failures, labels, vectors (the stored bytes, float16 or float32), clusters, index
options and uploaded images; verified by counts and a seeded sample of vectors before it becomes a catalog.

Item keys are kept, so clusters and the generations stamped on derived data stay meaningful. The destination
becomes a catalog only at the end, as creation does: a folder is built in a hidden sibling and renamed into
place, a database gets its config row last; an interrupted copy leaves no catalog, and running it again starts
over. The copy's FAISS index is built from the copied vectors when it is first opened (at the end of ``copy``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.config import CatalogConfig
from ..core.errors import CatalogError
from ..store import Store, is_database_url, open_store
from ..store.base import ITEM_COLUMNS, UPLOAD_PREFIX
from ..store.sqlite import page_size_for
from .catalog import CONFIG_FILE, DB_FILE, UPLOADS_DIR, Catalog

SAMPLE = 64  # vectors compared byte for byte after the copy
ITEMS_BATCH = 5000
VECTORS_BATCH = 2000


@dataclass
class CopyReport:
    source: str
    destination: str
    items: int = 0
    failed: int = 0
    labels: int = 0
    vectors: int = 0
    clusters: int = 0
    uploads: int = 0
    sampled: int = 0
    seconds: float = 0.0
    index: str = ""

    def summary(self) -> str:
        return (f"copied {self.items} items ({self.failed} failed), {self.vectors} vectors, {self.labels} labels, "
                f"{self.clusters} clusters, {self.uploads} uploaded images in {self.seconds:.1f} s; verified by "
                f"counts and {self.sampled} vectors compared byte for byte")


def copy_catalog(source: str | Path, destination: str | Path) -> CopyReport:
    """Copy the catalog at ``source`` to ``destination`` (a folder or a postgresql:// URL holding no catalog).

    Raises:
        CatalogError: no catalog at ``source``; ``destination`` already holds one, or is a non-empty folder;
            the copy does not match its source (it is then left unfinished, not a catalog).
        StoreUnavailableError: a database cannot be reached.
    """
    started = time.perf_counter()
    with Catalog.open(source) as src:
        if Catalog.exists(destination):
            raise CatalogError(f"{_shown(destination)} already holds a catalog; choose another destination")
        config = src.config
        extra = {k: v for k, v in config.extra.items() if k != "catalog_id"}
        if is_database_url(destination):
            extra["catalog_id"] = uuid.uuid4().hex
        config = dataclasses.replace(config, extra=extra)
        report = CopyReport(source=src.name, destination=_shown(destination))
        if is_database_url(destination):
            dst = _fresh_database(str(destination))
            try:
                _copy_rows(src, dst, report, uploads_in_store=True, folder=None)
                _verify(src.store, dst, report, in_store=True)
                dst.set_meta("config", config.to_json())  # the commit point: now it is a catalog
            finally:
                dst.close()
        else:
            _copy_to_folder(src, Path(destination), config, report)
    with Catalog.open(destination) as copied:  # builds the index from the copied vectors, as a first open does
        report.index = copied.index.describe()
    report.seconds = time.perf_counter() - started
    return report


def _shown(location: str | Path) -> str:
    from ..store.urls import parse_database_url

    return parse_database_url(str(location)).display if is_database_url(location) else str(location)


def _fresh_database(url: str) -> Store:
    from ..store.postgres import PostgresStore

    store = PostgresStore(url, create=True)
    if not store.is_empty() or store.generation():  # an interrupted copy (no config, so not a catalog): start over
        store.drop()
        store.close()
        store = PostgresStore(url, create=True)
    return store


def _copy_to_folder(src: Catalog, path: Path, config: CatalogConfig, report: CopyReport) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CatalogError(f"{path}: exists and is not an empty folder; choose another destination")
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.copying-", dir=path.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        building.chmod(0o777 & ~umask)
        dst = open_store(building / DB_FILE, create=True, page_size=page_size_for(config.embedder.dim))
        try:
            _copy_rows(src, dst, report, uploads_in_store=False, folder=building, final=path)
            _verify(src.store, dst, report, in_store=False)
        finally:
            dst.close()
        config.save(building / CONFIG_FILE)
        if path.exists():
            path.rmdir()
        os.rename(building, path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _copy_rows(src: Catalog, dst: Store, report: CopyReport, uploads_in_store: bool, folder: Path | None,
               final: Path | None = None) -> None:
    """Items (upload paths rewritten for the destination), labels, vectors, clusters, meta; each batch one
    transaction, keys kept."""
    path_at = ITEM_COLUMNS.index("path")
    names: set[str] = set()
    after = -1
    while rows := src.store.item_rows(after, ITEMS_BATCH):
        out = []
        for row in rows:
            row = list(row)
            name = _upload_name(src, row[path_at])
            if name is not None:
                data = src.image_file(row[path_at]).read_bytes()
                if uploads_in_store:
                    dst.put_upload(name, data)
                    row[path_at] = UPLOAD_PREFIX + name
                else:
                    target = folder / UPLOADS_DIR / name
                    target.parent.mkdir(exist_ok=True)
                    target.write_bytes(data)
                    row[path_at] = str(final / UPLOADS_DIR / name)
                names.add(name)
            out.append(tuple(row))
        dst.import_rows(items=out)
        after = int(rows[-1][0])
    dst.import_rows(products=src.store.product_rows())
    links = src.store.product_photo_rows()
    for start in range(0, len(links), 20_000):
        dst.import_rows(product_photos=links[start:start + 20_000])
    labels = src.store.label_rows()
    for start in range(0, len(labels), 20_000):
        dst.import_rows(labels=labels[start:start + 20_000])
    after = -1
    while vectors := src.store.raw_vectors(after, VECTORS_BATCH):
        dst.import_rows(vectors=vectors)
        after = vectors[-1][0]
    clusters = sorted(src.store.clusters().items())
    generation, labels_generation = src.store.generations()
    meta = {"generation": str(generation), "labels_generation": str(labels_generation)}
    for name in ("index_options", "clusters", "ranking_rules"):
        value = src.store.get_meta(name)
        if value is not None:
            meta[name] = value
    dst.import_rows(clusters=clusters, meta=meta)
    report.uploads = len(names)


def _upload_name(src: Catalog, path: str) -> str | None:
    """The file name of an uploaded image (kept in the source's database, or in its folder's uploads/)."""
    if path.startswith(UPLOAD_PREFIX):
        return path[len(UPLOAD_PREFIX):]
    if not src.uploads_in_store:
        p = Path(path)
        if p.parent.resolve() == (src.folder / UPLOADS_DIR).resolve():
            return p.name
    return None


def _verify(src: Store, dst: Store, report: CopyReport, in_store: bool) -> None:
    """Counts of every table, and a seeded sample of vectors byte for byte. Uploaded images move between a
    folder's uploads/ and the database's uploads table: the destination holds each copied one once."""
    want, got = src.table_counts(), dst.table_counts()
    want["uploads"] = report.uploads if in_store else 0
    if want != got:
        wrong = next(k for k in want if want[k] != got.get(k))
        raise CatalogError(f"the copy holds {got.get(wrong)} {wrong} for the source's {want[wrong]}; it was left "
                           "unfinished (not a catalog): run the copy again")
    keys = src.vector_keys()
    rng = np.random.default_rng(len(keys))
    sample = sorted(rng.choice(keys, size=min(SAMPLE, len(keys)), replace=False).tolist()) if len(keys) else []
    for key in sample:
        a = src.raw_vectors(key - 1, 1)
        b = dst.raw_vectors(key - 1, 1)
        if not a or not b or a[0][:2] != b[0][:2]:
            raise CatalogError(f"the copy's vector for item key {key} differs from the source's; it was left "
                               "unfinished (not a catalog): run the copy again")
    report.items, report.failed = want["ok"] + want["failed"], want["failed"]
    report.labels, report.clusters, report.vectors = want["labels"], want["clusters"], want["vectors"]
    report.sampled = len(sample)
