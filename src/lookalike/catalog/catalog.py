"""A catalog and everything a user does with it: create, open, add a source, search, status.

A catalog is a folder (SQLite) or a ``postgresql://`` URL. Layout of a folder ``shop.lk/``::

    catalog.json     the embedder that made the vectors (a catalog never mixes models)
    catalog.sqlite   items, labels, failures and vectors; the source of truth
    index/           the FAISS index, derived and rebuilt when stale
    openvino/        int8 models quantised on this catalog's photos (OpenVINO runtime), named by their key
    text-tower.lkm   a text tower trained against the catalog's image model (LiT), when one was added

A database catalog holds the same in its schema (the config in ``meta``, uploaded images in ``uploads``); each
process keeps ``index/``, ``analysis/`` and ``openvino/`` in a cache folder of its own (``location.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core import storage
from ..core.config import CatalogConfig, EmbedderInfo, EncodeOptions
from ..core.errors import (
    CatalogError,
    UnknownItemError,
)
from ..engines.embed import (
    Encoder,
    openvino_without_torch,
    resolve_network_runtime,
)
from ..engines.openvino_runtime import AUTO_MIN_PHOTOS, MIN_PHOTOS, Int8Model, draw_sample
from ..index import IndexPlan, VectorIndex
from ..models.base import RANDOM_WEIGHTS, Embedder
from ..models.handcrafted import HANDCRAFTED
from ..models.preprocess import ReplayedEmbedder
from ..models.registry import DEFAULT_MODEL, canonical_name, create_embedder, weights_unchanged
from ..models.texttower import TextTower
from ..store import SQLiteStore, Store, is_database_url, open_store, parse_database_url
from ..store.base import UPLOAD_PREFIX, Watch
from ..store.sqlite import page_size_for
from .browsing import Browsing, CatalogItem
from .indexing import Indexing, ItemTable
from .ingest import MAX_ID_LENGTH, UPLOADS_DIR, IndexReport, Ingest, assign_item_ids, write_once
from .int8_labels import sample_labels
from .keywords import Keywords
from .location import database_cache
from .products import (
    ProductTable,
)
from .query import (
    photo_gone,
)
from .ranked import Ranked
from .searching import Searching, above
from .text import MAX_TEXT_CHARS, TEXT_TOWER_FILE, TextSearch

__all__ = ["CONFIG_FILE", "DB_FILE", "MAX_ID_LENGTH", "MAX_TEXT_CHARS", "TEXT_TOWER_FILE", "UPLOADS_DIR", "Catalog",
           "CatalogItem", "CatalogStatus", "IndexReport", "ItemTable", "above", "assign_item_ids"]

log = logging.getLogger(__name__)

CONFIG_FILE = "catalog.json"
DB_FILE = "catalog.sqlite"
INDEX_DIR = "index"
OPENVINO_DIR = "openvino"  # int8 models calibrated on this catalog's own photos


@dataclass
class CatalogStatus:
    path: str
    embedder: EmbedderInfo
    items: int
    failed: int
    labels: list[str]
    index: str
    failures: list[tuple[str, str, str]]
    index_detail: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)  # the last indexing run's runtime and precision, the int8 gate
    missing: int = 0  # searchable items whose photo file is gone (deleted or moved since indexing)
    missing_examples: list[tuple[str, str]] = field(default_factory=list)  # (id, path) of the first few
    products: int = 0  # products with at least one embedded photo (``items`` is the same number)
    photos: int = 0  # embedded photos (each file once, however many products show it)

    def to_dict(self) -> dict:
        return {
            "path": self.path, "model": self.embedder.describe(), "embedder": self.embedder.__dict__,
            "items": self.items, "products": self.products, "photos": self.photos, "failed": self.failed,
            "missing": self.missing,
            "missing_examples": [{"id": i, "path": p} for i, p in self.missing_examples],
            "labels": self.labels, "index": self.index,
            "index_detail": self.index_detail, "runtime": self.runtime,
            "failures": [{"id": i, "path": p, "reason": r} for i, p, r in self.failures],
        }


class Catalog(Ingest, Indexing, Browsing, Searching, Ranked, Keywords, TextSearch):
    """A searchable catalog of product images, in a folder or a PostgreSQL database. Use ``Catalog.create`` or
    ``Catalog.open``.

    ``name`` is where it is as a person may see it (a folder, or the URL without its password); ``folder`` is
    where this process keeps what it derives (the catalog folder itself, or a cache folder for a database);
    ``path`` is the folder of a folder catalog and ``name`` for a database one. ``address`` is what another
    process (a Ray actor) opens: the folder's absolute path, or the URL with its password (never shown).
    """

    def __init__(self, path: str | Path, config: CatalogConfig, embedder: Embedder | None = None,
                 store: Store | None = None):
        self.config = config
        self._scratch: Path | None = None
        if is_database_url(path):
            url = parse_database_url(str(path))
            self.store: Store = store or open_store(str(path))
            self.name = self.path = url.display
            self.address = str(path).strip()
            self.title = f"{url.display.rsplit('/', 1)[-1].split('?')[0]}/{url.schema}"
            folder = database_cache(url, str(config.extra.get("catalog_id") or "none"))
            if folder is None:  # LOOKALIKE_CACHE_DIR=memory: nothing kept after this process
                folder = self._scratch = Path(tempfile.mkdtemp(prefix="lookalike-cache-"))
            self.folder = folder
            self.index_dir: Path | None = None if self._scratch else folder / INDEX_DIR
            self.uploads_in_store = True
        else:
            self.path = Path(path)
            self.name, self.title, self.folder = str(self.path), self.path.name, self.path
            self.address = str(self.path.resolve())
            self.store = store or SQLiteStore(self.path / DB_FILE)
            self.index_dir = self.path / INDEX_DIR
            self.uploads_in_store = False
        self._embedder = embedder
        self._encoder: Encoder | None = None
        self._index: VectorIndex | None = None
        self._index_generation = -1
        self._saved_generation = -1  # the generation of the index saved under index_dir, as this process knows
        self._meta: ItemTable | None = None
        self._products: ProductTable | None = None
        self._checked_at = 0.0
        self._growing = 0  # photos this writer's run is about to commit (``Indexing._plan_ahead``)
        self._lagging: IndexPlan | None = None  # this writer's run follows no index: this IVF-PQ is built at its end
        self._labels_generation = -1
        self._label_counts: tuple[tuple[int, int], dict[str, dict[str, int]]] | None = None
        self._label_name_cache: tuple[tuple[int, int], list[str]] | None = None
        self._text_tower: TextTower | None = None

    # -- life cycle --------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, model: str = DEFAULT_MODEL, weights: str | None = None,
               embedder: Embedder | None = None) -> Catalog:
        """Make a new, empty catalog for ``model``; the model is loaded first, so a model that cannot be
        had leaves nothing on disk.

        ``embedder`` passes a model already loaded (its name must be ``model``).

        Raises:
            CatalogError: a catalog already exists at ``path``.
            StoreUnavailableError: ``path`` is a database URL and the database cannot be reached.
            UnknownModelError, ModelUnavailableError: see ``create_embedder``.
        """
        if is_database_url(path):
            return cls._create_in_database(str(path), model, weights, embedder)
        path = Path(path)
        if (path / CONFIG_FILE).exists():
            raise CatalogError(f"{path}: a catalog already exists; open it, or choose another --catalog path")
        if path.exists() and (not path.is_dir() or any(path.iterdir())) and not _unfinished_creation(path):
            raise CatalogError(f"{path}: exists and is not an empty folder; choose another --catalog path")
        embedder = embedder or create_embedder(model, weights)
        extra = {"weights_path": str(Path(weights).resolve())} if weights not in (None, RANDOM_WEIGHTS) else {}
        config = CatalogConfig(embedder=embedder.info, created=dt.datetime.now(dt.timezone.utc).isoformat(),
                               extra=extra)
        # Built whole in a hidden sibling, then renamed into place: a kill at any moment leaves either no
        # catalog or a complete one (rename(2) is atomic, and replaces an empty folder).
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.creating-*"):  # left by a creation that was killed
            shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".{path.name}.creating-", dir=path.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            building.chmod(0o777 & ~umask)  # mkdtemp makes it private; a catalog is shared like any folder
            SQLiteStore(building / DB_FILE, page_size=page_size_for(embedder.info.dim)).close()
            config.save(building / CONFIG_FILE)
            if path.exists():
                shutil.rmtree(path) if _unfinished_creation(path) else path.rmdir()
            os.rename(building, path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return cls(path, config, embedder)

    @classmethod
    def _create_in_database(cls, url: str, model: str, weights: str | None, embedder: Embedder | None) -> Catalog:
        """Tables first, then the config and the catalog's id in one transaction: the config is the commit point
        (a kill before it leaves empty tables, which the next creation reuses)."""
        from ..store.postgres import PostgresStore

        store = PostgresStore(url, create=True)
        try:
            if store.get_meta("config") is not None:
                raise CatalogError(f"{store.location}: a catalog already exists; open it, or choose another "
                                   "--catalog (another ?schema=)")
            if not store.is_empty():
                raise CatalogError(f"{store.location}: holds items but no catalog config (an unfinished "
                                   "`lookalike copy`?); run that copy again, or choose another ?schema=")
            embedder = embedder or create_embedder(model, weights)
            extra = {"weights_path": str(Path(weights).resolve())} if weights not in (None, RANDOM_WEIGHTS) else {}
            extra["catalog_id"] = uuid.uuid4().hex
            config = CatalogConfig(embedder=embedder.info, created=dt.datetime.now(dt.timezone.utc).isoformat(),
                                   extra=extra)
            store.set_meta("config", config.to_json())
        except BaseException:
            store.close()
            raise
        return cls(url, config, embedder, store=store)

    def discard_if_empty(self) -> bool:
        """Delete this catalog if nothing was ever added to it (a first ``index`` that failed before its first
        batch), so a retry may choose another model; returns whether it was deleted."""
        counts = self.store.counts()
        if counts.get("ok", 0) or counts.get("failed", 0):
            return False
        drop = getattr(self.store, "drop", None)
        if drop is not None:  # a database catalog: its tables go; the cache folder is this process's own
            drop()
            self.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            return True
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    @classmethod
    def open(cls, path: str | Path, embedder: Embedder | None = None) -> Catalog:
        """Open an existing catalog; the model is loaded only when an image must be embedded.

        ``embedder`` passes a model already loaded; it must be the one the catalog was built with.

        Raises:
            CatalogError: no catalog at ``path``, or ``embedder`` is not its model.
            StoreUnavailableError: ``path`` is a database URL and the database cannot be reached.
        """
        if is_database_url(path):
            return cls._open_database(str(path), embedder)
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise CatalogError(f"{path}: no catalog here; build one with `lookalike index SOURCE --catalog {path}`")
        try:
            config = CatalogConfig.load(path / CONFIG_FILE)
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"{path / CONFIG_FILE}: unreadable catalog config ({exc})") from exc
        if config.format != 1:
            raise CatalogError(f"{path}: catalog format {config.format} is newer than this lookalike; upgrade it")
        if embedder is not None and embedder.info != config.embedder:
            raise CatalogError(f"{path} was built with {config.embedder.describe()}, not {embedder.info.describe()}")
        return cls(path, config, embedder)

    @classmethod
    def _open_database(cls, url: str, embedder: Embedder | None) -> Catalog:
        store = open_store(url)
        try:
            text = store.get_meta("config")
            if text is None:
                raise CatalogError(f"{store.location}: no catalog here; build one with `lookalike index SOURCE "
                                   f"--catalog {store.location}`")
            try:
                config = CatalogConfig.from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                raise CatalogError(f"{store.location}: unreadable catalog config ({exc})") from exc
            if config.format != 1:
                raise CatalogError(f"{store.location}: catalog format {config.format} is newer than this lookalike; "
                                   "upgrade it")
            if embedder is not None and embedder.info != config.embedder:
                raise CatalogError(f"{store.location} was built with {config.embedder.describe()}, not "
                                   f"{embedder.info.describe()}")
        except BaseException:
            store.close()
            raise
        return cls(url, config, embedder, store=store)

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Is there a catalog at ``path``?

        Raises:
            StoreUnavailableError: ``path`` is a database URL and the database cannot be reached.
        """
        if is_database_url(path):
            try:
                store = open_store(str(path))
            except CatalogError:
                return False
            try:
                return store.get_meta("config") is not None
            finally:
                store.close()
        return (Path(path) / CONFIG_FILE).is_file()

    @classmethod
    def open_or_create(cls, path: str | Path, model: str | None = None, weights: str | None = None) -> Catalog:
        """Open ``path`` if it is a catalog (checking ``model``/``weights`` agree with it), else create it.

        Raises:
            CatalogError: the catalog was built with another model or other weights.
        """
        if not cls.exists(path):
            return cls.create(path, model or DEFAULT_MODEL, weights)
        catalog = cls.open(path)
        catalog.check_compatible(model, weights)
        return catalog

    def check_compatible(self, model: str | None, weights: str | None) -> None:
        """Refuse to mix vectors of two models in one catalog."""
        info = self.config.embedder
        if model is not None and canonical_name(model) != info.name:
            raise CatalogError(
                f"{self.name} holds {info.name} vectors; cannot add {model} vectors to it. Use the same "
                "--model, or another --catalog path for the new model"
            )
        if weights is not None:
            wanted = "random:" if weights == RANDOM_WEIGHTS else "file:"
            if not info.weights.startswith(wanted):
                raise CatalogError(
                    f"{self.name} was built with weights {info.weights}; --weights {weights} would mix vectors "
                    "of different weights. Drop --weights, or use another --catalog path"
                )
            if wanted == "file:":
                digest = self._use_weights(weights).info.weights
                if digest != info.weights:
                    raise CatalogError(
                        f"{self.name} was built with weights {info.weights}; {weights} is a different file "
                        f"({digest}). Use the original file, or another --catalog path"
                    )

    def _use_weights(self, weights: str) -> Embedder:
        """Load the model from the file the user named (it may have moved since the catalog was built)."""
        self._embedder = create_embedder(self.config.embedder.name, weights)
        return self._embedder

    def check_writable(self) -> None:
        """Raises:
            CatalogError: the catalog is read-only (one line: where, and what to do)."""
        if self.store.read_only:
            self.store._begin()  # raises the store's own one-line message
            raise CatalogError(f"{self.name}: the catalog is read-only")

    def close(self) -> None:
        self.store.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the model ---------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The catalog's own embedder, loaded on first use with the weights it was built with."""
        if self._embedder is None:
            info = self.config.embedder
            if info.weights.startswith("random:"):
                weights: str | None = RANDOM_WEIGHTS
            elif info.weights.startswith("file:"):
                weights = self.config.extra.get("weights_path")
            else:
                weights = None
            embedder = create_embedder(info.name, weights)
            if embedder.info.weights != info.weights:
                raise CatalogError(
                    f"{self.name}: the weights at {weights or info.name} changed since the catalog was built "
                    f"({embedder.info.weights} != {info.weights}); restore them or rebuild the catalog"
                )
            self._embedder = embedder
        return self._embedder

    def encoder(self, options: EncodeOptions | None = None) -> Encoder:
        """The catalog's model on the chosen runtime; on OpenVINO with its own int8 model, when it has one."""
        if self._encoder is None or (options is not None and options != self._encoder.options):
            embedder = self._embedder or self._replayed(options or EncodeOptions()) or self.embedder
            self._encoder = Encoder(embedder, options, int8=self.int8_model(), text_tower=self.text_tower)
        return self._encoder

    def _replayed(self, options: EncodeOptions) -> ReplayedEmbedder | None:
        """The catalog's model as its cached OpenVINO file and recorded preprocessing, when OpenVINO runs it
        under ``options`` and both are cached: a search, ``serve`` or ``tag`` then loads no PyTorch or timm.
        None for model-free embedders, text+image models (their tokenizer and text tower are PyTorch's) and
        models not converted here yet."""
        info = self.config.embedder
        if info.name in HANDCRAFTED or info.text or not openvino_without_torch(options):
            return None
        from ..engines.openvino_runtime import cached_conversion

        found = cached_conversion(info)
        if found is None or not weights_unchanged(info, self.config.extra.get("weights_path")):
            return None  # not converted here yet, or its files changed: loading the model says so in one line
        log.debug("%s: the converted model %s with its recorded preprocessing (no PyTorch)", self.name, found[0])
        return ReplayedEmbedder(info, found[1], found[0])

    def int8_model(self) -> Int8Model | None:
        """The int8 model quantised on this catalog's photos and its gate figure (None: none made yet)."""
        record = self.config.extra.get("int8")
        if not record:
            return None
        if Int8Model.outdated(record):
            log.info("%s: the int8 gate's label figures were measured by an earlier rule; measured again when int8 "
                     "is next considered", self.name)
            return None
        path = self.folder / record["model"]
        if not (path.is_file() and path.with_suffix(".bin").is_file()):
            return None
        sizes = record.get("files")  # recorded since the int8 model files are checked on open
        for file in (path, path.with_suffix(".bin")) if sizes else ():
            size = file.stat().st_size
            if size != sizes.get(file.name):
                log.warning("%s is %s bytes, written as %s: the int8 model is made again from the catalog's photos "
                            "when int8 is next used", file, f"{size:,}", sizes.get(file.name))
                return None
        return Int8Model.from_record(record, self.folder)

    def _record(self, **extra) -> None:
        """Update the config's extra record (``catalog.json``, atomically; a database catalog's ``meta``)."""
        self.config = dataclasses.replace(self.config, extra={**self.config.extra, **extra})
        if self.uploads_in_store:  # a database catalog: its config lives in the store
            self.store.set_meta("config", self.config.to_json())
        else:
            self.config.save(self.path / CONFIG_FILE)

    def calibrate_int8(self, options: EncodeOptions | None = None, new: list[Path] | None = None,
                       new_labels: Callable[[], Mapping[str, Mapping[str, str]]] | None = None) -> str | None:
        """Make the catalog's int8 model once, when OpenVINO runs the model and the precision is ``auto`` or
        ``int8``: NNCF calibrates it on a seeded sample of the catalog's photos (those stored and ``new``)
        and a gate compares its neighbour lists with fp32 on held photos and, where the photos have a category
        label (``int8_labels``: stored, or ``new_labels()``: path -> labels of the listing being indexed), their
        label precision (``engines.int8_gate``). ``auto`` then uses int8 only if the gate passed, and calibrates
        only once the catalog has ``AUTO_MIN_PHOTOS`` photos.

        Returns one line for the user (the gate's verdict), or None when nothing was to be done.

        Raises:
            LookalikeError: ``int8`` asked for where it cannot run, or with too few photos.
        """
        options = options or EncodeOptions()
        if options.precision not in ("auto", "int8") or self.int8_model() is not None:
            return None
        if not getattr(self.embedder, "needs_torch", True):
            if options.precision == "int8":
                raise CatalogError(f"{self.config.embedder.name} has no network to quantise; drop --precision int8")
            return None
        from ..engines import openvino_runtime as ovr

        # Which runtime the model would run on, without placing it (the encoder that embeds is made after this).
        _, runtime, native_bf16 = resolve_network_runtime(options)  # raises for int8 where OpenVINO cannot run
        if runtime != "openvino" or (options.precision == "auto" and native_bf16):
            return None  # auto runs bf16 on CPUs with bf16 units (ovr.resolve_precision): no int8 to weigh
        paths = {storage.as_location(str(path)) for _, _, path, _ in self.store.ok_items()
                 if not str(path).startswith(UPLOAD_PREFIX)} | set(new or [])
        fallback = ovr.resolve_precision("auto", native_bf16, None)
        if len(paths) < (MIN_PHOTOS if options.precision == "int8" else AUTO_MIN_PHOTOS):
            if options.precision == "int8":
                raise CatalogError(f"--precision int8 needs at least {MIN_PHOTOS} photos to calibrate and check it; "
                                   f"{self.name} with this run's files has {len(paths)}; use --precision bf16")
            return None  # too few to judge int8 by; tried again once the catalog has grown
        draft = self.embedder.draft_size if options.draft else None  # as the encoder decodes
        # A recorded model that int8_model() refused is missing or damaged: its files go first, as the same sample
        # names the same files, which quantize_int8 would otherwise take as already made.
        recorded = self.config.extra.get("int8", {}).get("model")
        for file in (self.folder / recorded, (self.folder / recorded).with_suffix(".bin")) if recorded else ():
            file.unlink(missing_ok=True)
        started = time.perf_counter()
        sample = draw_sample(sorted(paths, key=str))
        label, labels = sample_labels(self.store, [*sample.held, *sample.calibration],
                                      new_labels() if new_labels else None)
        int8 = ovr.quantize_int8(self.embedder, ovr.converted(self.embedder), sample, self.folder / OPENVINO_DIR,
                                 draft=draft, max_pixels=options.max_pixels, max_bytes=options.max_bytes,
                                 threshold=ovr.GATE_RECALL, labels=labels, label=label)
        self._record(int8={**int8.to_record(self.folder), "seconds": round(time.perf_counter() - started, 1),
                           "files": {p.name: p.stat().st_size for p in (int8.path, int8.path.with_suffix(".bin"))}})
        self._encoder = None
        if options.precision == "int8":
            return f"int8 forced: {int8.describe()}"
        if int8.passed:
            return f"int8 chosen: {int8.describe()}"
        return f"int8 not used, {fallback} instead: {int8.describe()}"

    # -- indexing ----------------------------------------------------------------------------------

    def image_file(self, path: str) -> storage.Location:
        """The file of an item's image (``CatalogItem.path``, ``Match.path``): the path itself, an object's URL
        (a string, read with ``core.storage``), or for an upload kept in the database, a copy read from it once
        into this process's cache folder.

        Raises:
            UnknownItemError: the database holds no such upload any more.
        """
        if not path.startswith(UPLOAD_PREFIX):
            return storage.as_location(path)
        name = path[len(UPLOAD_PREFIX):]
        target = self.folder / UPLOADS_DIR / Path(name).name
        if not target.exists():
            data = self.store.upload(name)
            if data is None:
                raise UnknownItemError(f"the uploaded image {name} is gone from {self.name}")
            write_once(target, data)
        return target

    # -- following other processes ---------------------------------------------------------------------

    def changed_elsewhere(self) -> None:
        """Another process wrote: look at the store on the next call instead of within 0.25 s (thread-safe)."""
        self._checked_at = 0.0

    def refresh(self) -> None:
        """Catch up with the store now (a server does this when told of a write, so the next request is fast).

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        self._refresh_index(save=False)

    def watch(self, on_change) -> Watch:
        """Call ``on_change`` on another thread soon after another process writes to this catalog (database
        catalogs: LISTEN/NOTIFY); readers of a folder catalog poll instead. ``close()`` the result to stop."""
        def heard() -> None:
            self.changed_elsewhere()
            on_change()

        return self.store.watch(heard)

    # -- searching ---------------------------------------------------------------------------------

    # -- status ------------------------------------------------------------------------------------

    def status(self, failures: int | None = 50) -> CatalogStatus:
        counts = self.store.counts()
        index = self.index
        gone = [(item_id, path) for _, item_id, path, _ in self.store.ok_items() if photo_gone(path)]
        return CatalogStatus(missing=len(gone), missing_examples=gone[:5], products=counts["products"],
            photos=counts["ok"],
            path=self.name, embedder=self.config.embedder, items=counts["products"], failed=counts["failed"],
            labels=self.store.label_names(), index=index.describe(),
            failures=self.store.failures(failures), index_detail=self._index_detail(index),
            runtime={key: self.config.extra[key] for key in ("runtime", "int8", "text_tower")
                     if self.config.extra.get(key)},
        )

    def _index_detail(self, index: VectorIndex) -> dict:
        items = max(index.size, 1)
        folder = self.index_dir
        on_disk = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) if folder and folder.exists() else 0
        on_disk += self.store.bytes_on_disk()
        q = index.quality
        return {
            "kind": index.plan.kind, "dtype": index.plan.dtype, "params": index.plan.params,
            "reason": index.plan.reason, "search": index.settings.__dict__,
            "recall": q.recall, "recall_k": q.k, "recall_queries": q.queries, "recall_target": q.target,
            "latency_ms": q.latency_ms, "vectors": index.size, "retired_rows": index.retired,
            "memory_bytes_per_item": round(index.memory_bytes() / items, 1) if index.size else None,
            "disk_bytes_per_item": round(on_disk / items, 1) if index.size else None,
            "options": self.index_options().to_dict(),
        }


def _unfinished_creation(path: Path) -> bool:
    """A folder left by a catalog creation that was killed before ``catalog.json`` was written (versions before
    atomic creation): only the store's files, holding no item. Safe to replace."""
    if not path.is_dir() or (path / CONFIG_FILE).exists():
        return False
    names = {p.name for p in path.iterdir()}
    if not names or not names <= {DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", INDEX_DIR}:
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path / DB_FILE}?mode=ro", uri=True)) as db:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
    except sqlite3.Error:
        return (path / DB_FILE).exists() and (path / DB_FILE).stat().st_size == 0

