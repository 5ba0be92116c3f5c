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
import difflib
import io
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core import storage
from ..core.config import CatalogConfig, EmbedderInfo, EncodeOptions
from ..core.errors import (
    CatalogError,
    ItemExistsError,
    ModelFileError,
    QueryError,
    StoreUnavailableError,
    UnknownItemError,
)
from ..core.images import IMAGE_EXTENSIONS, ImageInput, content_hash, decode
from ..core.sources import SourceItem, is_folder_source, read_source, source_name
from ..engines.embed import (
    EncodedBatch,
    Encoder,
    Engine,
    FileTask,
    encode_files,
    openvino_without_torch,
    resolve_network_runtime,
)
from ..engines.openvino_runtime import AUTO_MIN_PHOTOS, MIN_PHOTOS, Int8Model, draw_sample
from ..index import IndexOptions, Quality, VectorIndex, choose_index, tune
from ..models.base import RANDOM_WEIGHTS, Embedder
from ..models.handcrafted import HANDCRAFTED
from ..models.preprocess import ReplayedEmbedder
from ..models.registry import DEFAULT_MODEL, canonical_name, create_embedder, no_text_tower, weights_unchanged
from ..models.texttower import TextTower, load_text_tower
from ..store import ItemRecord, SQLiteStore, Store, StoredItem, is_database_url, open_store, parse_database_url
from ..store.base import UPLOAD_PREFIX, Watch
from ..store.products import ProductRecord
from .consistency import index_disagrees
from .dedupe import nearest_distinct
from .location import database_cache
from .products import (
    ProductTable,
    changed_products,
    check_by,
    matching_variants,
    merge_best,
    plan_photos,
    plan_products,
    product_centroid,
)
from .query import (
    Match,
    QueryPart,
    QueryWeights,
    Where,
    check_k,
    combine,
    distance_from_similarity,
    parse_where,
    photo_gone,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "catalog.json"
DB_FILE = "catalog.sqlite"
INDEX_DIR = "index"
OPENVINO_DIR = "openvino"  # int8 models calibrated on this catalog's own photos
TEXT_TOWER_FILE = "text-tower.lkm"  # a LiT text tower added with `lookalike text add` (a copy of the file)
UPLOADS_DIR = "uploads"  # images added one by one (REST API); named by content, so no id can steer a path
MAX_ID_LENGTH = 200
MAX_TEXT_CHARS = 1000  # words in one query (the REST API's limit too)


@dataclass
class IndexReport:
    """What one ``add`` did; the CLI prints it as the summary line."""

    indexed: int = 0  # embedded now (new or changed)
    unchanged: int = 0  # already in the catalog, file untouched
    failed: int = 0  # could not be embedded now (reasons in status)
    failed_before: int = 0  # failed earlier and unchanged since: not retried
    pruned: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # files the source passed over, by reason (warned above)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # each also logged once (the command line shows the log)
    runtime: str = ""  # what embedded them: e.g. "openvino int8 on cpu" (empty when nothing was embedded)
    notes: list[str] = field(default_factory=list)  # one line each, e.g. the int8 gate's verdict
    engine: str = "local"  # what embedded: "local" (this machine's encoder) or "ray"
    engine_detail: dict = field(default_factory=dict)  # the Ray engine's actors, nodes and rates
    products: int = 0  # products the source lists
    photos: int = 0  # distinct photo files the source lists

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        parts = [f"indexed {self.indexed}", f"unchanged {self.unchanged}", f"failed {self.failed}"]
        if self.failed_before:
            parts.append(f"failed earlier, unchanged {self.failed_before}")
        if self.pruned:
            parts.append(f"pruned {self.pruned}")
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
            parts.append(f"skipped {sum(self.skipped.values())} ({reasons})")
        runtime = f", {self.runtime}" if self.runtime else ""
        rate = f" ({self.images_per_second:.1f} images/s{runtime})" if self.indexed else ""
        where = ""
        if self.engine != "local" and self.engine_detail.get("actors_used"):
            d = self.engine_detail
            where = (f" on {self.engine} ({d['actors_used']} actor{'s' * (d['actors_used'] != 1)}, "
                     f"{d['nodes_used']} node{'s' * (d['nodes_used'] != 1)})")
        grouped = f" ({self.products} products of {self.photos} photos)" if self.products != self.photos else ""
        return ", ".join(parts) + f" in {self.seconds:.1f} s{rate}{where}{grouped}"


@dataclass(frozen=True)
class CatalogItem:
    """An embedded catalog item as browsing shows it."""

    id: str
    path: str
    labels: dict[str, str]
    sha256: str | None = None
    predicted: dict[str, float] = field(default_factory=dict)  # labels from `lookalike tag`: name -> probability
    photos: list[str] = field(default_factory=list)  # every photo's path, ``path`` first

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "labels": self.labels, "predicted": self.predicted,
                "photos": self.photos or [self.path]}


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


class Catalog:
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
        self._meta: ItemTable | None = None
        self._products: ProductTable | None = None
        self._checked_at = 0.0
        self._labels_generation = -1
        self._label_counts: tuple[tuple[int, int], dict[str, dict[str, int]]] | None = None
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
            SQLiteStore(building / DB_FILE).close()
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
        return Int8Model(path=path, recall=float(record["recall"]), k=int(record["k"]), held=int(record["held"]),
                         calibration=int(record["calibration"]), overlap=bool(record["overlap"]),
                         threshold=float(record["threshold"]))

    def _record(self, **extra) -> None:
        """Update the config's extra record (``catalog.json``, atomically; a database catalog's ``meta``)."""
        self.config = dataclasses.replace(self.config, extra={**self.config.extra, **extra})
        if self.uploads_in_store:  # a database catalog: its config lives in the store
            self.store.set_meta("config", self.config.to_json())
        else:
            self.config.save(self.path / CONFIG_FILE)

    def calibrate_int8(self, options: EncodeOptions | None = None, new: list[Path] | None = None) -> str | None:
        """Make the catalog's int8 model once, when OpenVINO runs the model and the precision is ``auto`` or
        ``int8``: NNCF calibrates it on a seeded sample of the catalog's photos (those stored and ``new``)
        and a gate compares its neighbour lists with fp32 on held photos. ``auto`` then uses int8 only if the
        gate passed, and calibrates only once the catalog has ``AUTO_MIN_PHOTOS`` photos.

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
        if runtime != "openvino":
            return None
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
        int8 = ovr.quantize_int8(self.embedder, ovr.converted(self.embedder), draw_sample(sorted(paths, key=str)),
                                 self.folder / OPENVINO_DIR, draft=draft, max_pixels=options.max_pixels,
                                 max_bytes=options.max_bytes, threshold=ovr.GATE_RECALL)
        self._record(int8={"model": int8.path.relative_to(self.folder).as_posix(), "recall": round(int8.recall, 4),
                           "k": int8.k, "held": int8.held, "calibration": int8.calibration, "overlap": int8.overlap,
                           "threshold": int8.threshold, "seconds": round(time.perf_counter() - started, 1),
                           "files": {p.name: p.stat().st_size for p in (int8.path, int8.path.with_suffix(".bin"))}})
        self._encoder = None
        if options.precision == "int8":
            return f"int8 forced: {int8.describe()}"
        if int8.passed:
            return f"int8 chosen: {int8.describe()}"
        return f"int8 not used, {fallback} instead: {int8.describe()}"

    # -- indexing ----------------------------------------------------------------------------------

    def add(self, source: str | Path, images: str | Path | None = None, *, prune: bool = False,
            options: EncodeOptions | None = None,
            on_batch: Callable[[int], None] | None = None, engine: Engine | None = None,
            product_column: str | None = None, product_per_folder: bool = False) -> IndexReport:
        """Embed every new or changed photo of a folder or manifest; keep the rest.

        Each photo (file) is decoded and embedded once, however many rows or products name it
        (``catalog.products``); each row or file is a product of its own unless ``product_column`` groups a
        manifest's rows or ``product_per_folder`` a folder's leaf folders. Each batch is committed on its own with
        the products its photos show, so an interrupted run keeps what it finished and the next run resumes.
        Unreadable files are recorded with their reason and retried only once they change. ``engine`` embeds
        elsewhere (``engines.ray_engine.RayEngine``: a Ray cluster); this process still lists, skips and commits,
        the same way as for the local encoder.

        Raises:
            SourceError: the source cannot be read, or the product options do not fit it.
        """
        self.check_writable()
        options = options or EncodeOptions()
        started = time.perf_counter()
        listing = read_source(source, images, product_column=product_column, product_per_folder=product_per_folder)
        report = IndexReport(warnings=list(listing.warnings), skipped=dict(listing.skipped), notes=list(listing.notes))
        if not listing.items:
            report.warnings.append(f"{source}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        stored = self.store.items()
        listed = assign_item_ids(plan_photos(listing.items), stored, source, report.warnings)
        for warning in report.warnings:
            log.warning(warning)
        products = plan_products(listing.items, {str(item.path): item.id for item in listed})
        by_photo: dict[str, list[ProductRecord]] = {}
        for record in products:
            for photo in record.photos:
                by_photo.setdefault(photo, []).append(record)
        todo: list[tuple[SourceItem, FileTask, int, int]] = []
        touch: list[tuple[str, str, int, int]] = []
        for item in listed:
            if item.size is not None:  # the listing's stat (a folder) or the object store's (a prefix)
                size, mtime = item.size, item.mtime_ns or 0
            else:
                try:
                    stat = Path(item.path).stat()
                except OSError as exc:
                    report.warnings.append(f"{item.path}: cannot stat ({exc.strerror})")
                    log.warning(report.warnings[-1])
                    continue
                size, mtime = stat.st_size, stat.st_mtime_ns
            old = stored.get(item.id)
            same_file = (old is not None and old.path == str(item.path) and old.size == size
                         and old.mtime_ns == mtime)
            if same_file:
                if old.status == "ok":
                    report.unchanged += 1
                else:
                    report.failed_before += 1
                continue
            known = old.sha256 if old is not None and old.status == "ok" else None
            todo.append((item, FileTask(item.path, known, ref=len(todo)), size, mtime))
        if todo:
            note = self.calibrate_int8(options, [item.path for item, _, _, _ in todo])
            if note:
                report.notes.append(note)
                log.info(note)
            self._embed(todo, options, report, touch, on_batch, engine, by_photo)
        if touch:
            self.store.touch(touch)
        stored_photos, stored_variants = self.store.product_state()
        changed = changed_products(products, stored_photos, stored_variants)
        if changed:
            self.store.set_products(changed, relink=any(stored_photos.get(p.id) != p.photos for p in changed))
        report.products, report.photos = len(products), len(listed)
        if prune:
            listed_paths = {str(item.path) for item in listed}
            gone = [i for i, row in self.store.items().items()
                    if row.path not in listed_paths and not row.path.startswith(UPLOAD_PREFIX)
                    and not storage.exists(row.path)]
            report.pruned = self.store.delete(gone) if gone else 0
        self._refresh_index(save=True)
        report.seconds = time.perf_counter() - started
        return report

    def _embed(self, todo, options: EncodeOptions, report: IndexReport, touch: list,
               on_batch: Callable[[int], None] | None, engine: Engine | None,
               by_photo: Mapping[str, list[ProductRecord]]) -> None:
        """Embed ``todo`` with the local encoder or ``engine`` (Ray), then commit what comes back, batch by
        batch, through the one commit loop both engines share; record the runtime and precision that wrote
        the vectors."""
        tasks = [task for _, task, _, _ in todo]
        if engine is None:
            encoder = self.encoder(options)
            batches = encode_files(encoder, tasks)
            self._record_runtime(encoder.runtime, encoder.precision, str(encoder.device))
            report.runtime = encoder.describe()
        else:
            batches = engine.encode_files(self.embedder, options, tasks, int8=self.int8_model())
            report.engine = engine.name
        try:
            self._commit(batches, todo, options, report, touch, on_batch, by_photo)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stop the engine's workers now, not when the generator is collected
            if engine is not None:
                report.engine_detail = detail = engine.detail()
                if detail.get("runtime"):  # what the actors ran, e.g. ("openvino", "bf16", "cpu")
                    self._record_runtime(*detail["runtime"])
                    report.runtime = "{} {} on {}".format(*detail["runtime"])

    def _record_runtime(self, runtime: str, precision: str, device: str) -> None:
        """Record what wrote the vectors: the last run, and every runtime and precision so far."""
        last = self.config.extra.get("runtime", {})
        used = sorted({*last.get("used", []), f"{runtime} {precision}"})
        record = {"runtime": runtime, "precision": precision, "device": device, "used": used}
        if record != last:
            self._record(runtime=record)

    def _commit(self, batches: Iterable[EncodedBatch], todo, options: EncodeOptions, report: IndexReport,
                touch: list, on_batch: Callable[[int], None] | None,
                by_photo: Mapping[str, list[ProductRecord]]) -> None:
        """Write each finished batch in its own transaction: embedded photos with their vectors, failures with
        their reasons, and the products those photos show; unchanged content only touches size and mtime.
        Batches may come in any order."""
        by_ref = {task.ref: (item, size, mtime) for item, task, size, mtime in todo}
        show = options.progress and sys.stderr.isatty()
        with tqdm(total=len(todo), unit="img", desc="indexing", disable=not show, dynamic_ncols=True) as bar:
            for batch in batches:
                records: list[ItemRecord] = []
                for i, result in enumerate(batch.embedded):
                    item, size, mtime = by_ref[result.task.ref]
                    records.append(ItemRecord(
                        id=item.id, path=str(item.path), size=size, mtime_ns=mtime, sha256=result.sha256,
                        status="ok", width=result.width, height=result.height, vector=batch.vectors[i]))
                for result in batch.others:
                    item, size, mtime = by_ref[result.task.ref]
                    if result.unchanged:
                        touch.append((item.id, str(item.path), size, mtime))
                        report.unchanged += 1
                        continue
                    log.warning("skipped %s: %s", item.path, result.error)
                    records.append(ItemRecord(
                        id=item.id, path=str(item.path), size=size, mtime_ns=mtime, sha256=result.sha256,
                        status="failed", reason=result.error))
                    report.failed += 1
                report.indexed += len(batch.embedded)
                if records:
                    shown = {id(p): p for rec in records for p in by_photo.get(rec.id, ())}
                    self.store.write(records, list(shown.values()))
                bar.update(len(batch.embedded) + len(batch.others))
                if on_batch is not None:
                    on_batch(report.indexed)

    def add_image(self, data: bytes, item_id: str | None = None, labels: Mapping[str, str] | None = None,
                  vector: np.ndarray | None = None) -> CatalogItem:
        """Add one image given as bytes (an upload): kept under ``uploads/`` inside a folder catalog, or in the
        database of a database catalog (where every replica can serve it), named by its content hash, embedded
        (unless ``vector`` is passed, already embedded by the caller's encoder)
        and searchable at once. ``item_id`` defaults to the first 16 hex digits of the content hash.

        Raises:
            ImageError: the bytes are not a readable image (nothing is written).
            ItemExistsError: an item with this id is already in the catalog.
            QueryError: the id is empty, too long or has control characters.
            CatalogError: the catalog is read-only.
        """
        self.check_writable()
        sha = content_hash(data)
        item_id = _check_new_id(item_id if item_id is not None else sha[:16])
        image = decode(data, max_pixels=self.encoder().options.max_pixels, name=f"upload {item_id}")  # raises first
        if vector is None:
            vector = self.encoder().encode(image)
        if self.store.item(item_id) is not None or self.store.product(item_id) is not None:
            raise ItemExistsError(f"item {item_id!r} is already in the catalog; delete it first or choose another id")
        fmt = (_opened_format(data) or "png").lower()
        name = f"{sha[:32]}.{'jpg' if fmt == 'jpeg' else fmt}"
        if self.uploads_in_store:
            self.store.put_upload(name, data)
            path, size, mtime_ns = UPLOAD_PREFIX + name, len(data), time.time_ns()
        else:
            target = _write_once(self.path / UPLOADS_DIR / name, data)
            stat = target.stat()
            path, size, mtime_ns = str(target), stat.st_size, stat.st_mtime_ns
        self.store.write([ItemRecord(
            id=item_id, path=path, size=size, mtime_ns=mtime_ns, sha256=sha, status="ok",
            width=image.width, height=image.height, vector=np.asarray(vector, dtype=np.float32))],
            [ProductRecord(id=item_id, photos=(item_id,), variants={item_id: dict(labels or {})})])
        self._refresh_index(save=True)
        return self.item(item_id)

    def remove(self, ids: list[str]) -> int:
        """Drop products by id, with those of their photos no other product shows; returns how many products
        were removed. Uploaded files no other photo uses are deleted; files of an indexed folder are left alone
        (index that folder again and they come back).

        Raises:
            UnknownItemError: an id is not in the catalog (nothing is removed).
        """
        missing = [i for i in ids if self.store.product(i) is None]
        if missing:
            raise UnknownItemError(f"unknown item id {missing[0]!r}; `lookalike status` lists the catalog")
        removed, paths = self.store.delete_products(ids)
        uploads = (self.path / UPLOADS_DIR).resolve() if not self.uploads_in_store else None
        still_used = {row.path for row in self.store.items().values()}
        stored = [p[len(UPLOAD_PREFIX):] for p in paths if p.startswith(UPLOAD_PREFIX)]
        if stored:
            self.store.delete_uploads(stored)  # those no other item shows
            for name in stored:
                if UPLOAD_PREFIX + name not in still_used:
                    (self.folder / UPLOADS_DIR / name).unlink(missing_ok=True)
        for photo_path in paths:
            path = Path(photo_path)
            if uploads is not None and path.parent.resolve() == uploads and str(path) not in still_used:
                path.unlink(missing_ok=True)
        self._refresh_index(save=True)
        return removed

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
            _write_once(target, data)
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

    @property
    def index(self) -> VectorIndex:
        self._refresh_index(save=False)
        assert self._index is not None
        return self._index

    def _refresh_index(self, save: bool, force_rebuild: bool = False) -> None:
        """Follow writes by this or another process; between queries, look at most every 0.25 s.

        A stale index catches up from the store's change log (new, replaced and removed vectors) without
        a rebuild; it is rebuilt from the stored vectors only when there is none, when the catalog's size
        calls for another kind (``choose_index``), or when the kind says so (HNSW with many removals, IVF
        lists trained on a quarter of today's items). Only writers (``save``) persist the catch-up.
        """
        now = time.monotonic()
        if self._index is not None and not save and not force_rebuild and now - self._checked_at < 0.25:
            return
        self._checked_at = now
        try:
            generation, labels_generation = self.store.generations()
        except StoreUnavailableError:
            self._checked_at = 0.0  # the next call asks again (and is told at once while it is down)
            raise
        if labels_generation != self._labels_generation and self._meta is not None:
            self._meta.forget_labels()
        self._labels_generation = labels_generation
        if self._index is not None and self._index_generation == generation and not force_rebuild:
            return
        folder = self.index_dir
        index, at = self._index, self._index_generation
        from_disk = False
        if index is None and folder is not None:
            loaded = VectorIndex.load(folder)
            if loaded is not None and loaded[1] <= generation:
                (index, at), from_disk = loaded, True
        changed = index is None or at != generation
        if index is not None and at != generation:
            keys, vectors = self.store.vectors(self.config.embedder.dim, index.plan.dtype, since=at)
            index.update(keys, vectors, self.store.removed_since(at))
        if from_disk and index is not None:  # prove the saved index belongs to this store before trusting it
            problem = index_disagrees(index, self.store, self.config.embedder.dim)
            if problem:
                log.warning("%s does not match the catalog's store (%s); rebuilding it from the stored vectors",
                            folder, problem)
                index, force_rebuild = None, True
        options = self.index_options()
        count = index.size if index is not None else self.store.counts()["ok"]
        plan = choose_index(count, self.config.embedder.dim, options.memory, options.kind)
        rebuild = (force_rebuild or index is None or (index.plan.kind, index.plan.dtype) != (plan.kind, plan.dtype)
                   or index.needs_rebuild())
        if rebuild:
            log.info("building a %s index over %d vectors (%s)", plan.describe(), count, plan.reason)
            keys, vectors = self.store.vectors(self.config.embedder.dim, plan.dtype)
            index = VectorIndex.build(keys, vectors, plan)
            del vectors
            tune(index, options.recall)
        self.store.vector_dtype = np.dtype(index.plan.dtype)
        if (changed or rebuild) and folder is not None:
            try:
                if save or rebuild:
                    index.save(folder, generation)
            except OSError as exc:  # a read-only catalog still searches
                if save:
                    raise
                log.info("could not save the index (%s)", exc)
        self._index, self._index_generation, self._meta, self._products = index, generation, None, None

    def index_options(self) -> IndexOptions:
        """The index settings chosen with ``lookalike index --index/--memory/--recall`` (or defaults)."""
        return IndexOptions.from_json(self.store.get_meta("index_options"))

    def configure_index(self, kind: str | None = None, memory: str | int | None = None,
                        recall: float | None = None) -> IndexOptions:
        """Choose the index kind (auto, flat, hnsw, ivfpq), memory budget and recall target; the index is
        rebuilt or re-tuned when that changes what it should be.

        Raises:
            IndexChoiceError: unknown kind, unreadable memory size, recall outside (0, 1].
        """
        old = self.index_options()
        new = old.changed(kind=kind, memory=memory, recall=recall)
        if new != old:
            self.store.set_meta("index_options", new.to_json())
            saved = self.index_dir is not None and (self.index_dir / "stamp.json").exists()
            if self._index is not None or saved:
                index = self.index
                plan = choose_index(index.size, self.config.embedder.dim, new.memory, new.kind)
                if (plan.kind, plan.dtype) != (index.plan.kind, index.plan.dtype):
                    self._refresh_index(save=True, force_rebuild=True)
                elif new.recall != old.recall:
                    self.tune(new.recall)
        return new

    def tune(self, recall: float | None = None) -> Quality:
        """Measure recall@10 against exact search on a sample of items and pick the fastest search setting
        reaching ``recall`` (default: the catalog's target); saved with the index.

        Raises:
            CatalogError: the catalog is read-only."""
        self.check_writable()
        index = self.index
        quality = tune(index, recall if recall is not None else self.index_options().recall)
        if self.index_dir is not None:
            index.save(self.index_dir, self._index_generation)
        return quality

    @property
    def table(self) -> ItemTable:
        """Id, path and content hash of every embedded item by store key (kept until the catalog changes)."""
        self._refresh_index(save=False)
        if self._meta is None:
            self._meta = ItemTable(self.store.ok_items())
        return self._meta

    @property
    def products(self) -> ProductTable:
        """The products of the embedded photos: ids, photos per product, products per photo (kept until the
        catalog changes)."""
        self._refresh_index(save=False)
        if self._products is None:
            self._products = ProductTable(self.store.products(), self.store.product_photos())
        return self._products

    def __len__(self) -> int:
        """How many products can be found (those with at least one embedded photo)."""
        return len(self.products)

    def ids(self) -> list[str]:
        """The ids of the products that can be found, in the order they were added."""
        return list(self.products.id_by_key.values())

    def labels(self, item_id: str) -> dict[str, str]:
        """The labels of a product (empty when its source had none); a label whose variants differ has its
        values joined (``"L | M | S"``)."""
        key = self._key(item_id)
        return self.table.labels_for([key], self.store)[key]

    def photo_vectors(self, item_id: str) -> np.ndarray:
        """The stored vectors of a product's photos, P x D float32, in the product's photo order.

        Raises:
            UnknownItemError: unknown id, or none of its photos could be embedded.
        """
        index = self.index
        return np.stack([np.asarray(index.vector(int(k)), np.float32)
                         for k in self.products.photos_of[self._key(item_id)]])

    def vector(self, item_id: str) -> np.ndarray:
        """A product's vector (float32, D, unit length): its photo's, or the renormalised mean of its photos'
        (the centroid that analyses such as clusters and maps use for a product).

        Raises:
            UnknownItemError: unknown id, or none of its photos could be embedded.
        """
        return product_centroid(self.photo_vectors(item_id))

    def item(self, item_id: str, photo: str | None = None) -> CatalogItem:
        """One product: id, its first photo's path (or ``photo``'s, one of its photo ids: ``Match.photo``),
        labels, and every photo's path.

        Raises:
            UnknownItemError: no product with an embedded photo has this id, or ``photo`` is not one of its photos.
        """
        key = self._key(item_id)
        table, photos = self.table, self.products.photos_of[key]
        first = int(photos[0])
        if photo is not None and photo != table.id_by_key.get(first):
            first = table.key_by_id.get(str(photo), -1)
            if first not in set(photos.tolist()):
                raise UnknownItemError(f"item {item_id!r} has no photo {str(photo)[:80]!r}")
        return CatalogItem(id=self.products.id_by_key[key], path=table.path_by_key[first],
                           labels=table.labels_for([key], self.store)[key], sha256=table.hash_by_key.get(first),
                           predicted=table.predicted_for([key], self.store).get(key, {}),
                           photos=[table.path_by_key[int(p)] for p in photos])

    def browse(self, offset: int = 0, limit: int = 50, where: Where = None) -> tuple[int, list[CatalogItem]]:
        """A page of the catalog in the order items were added, and how many items match ``where``.

        Raises:
            QueryError: bad ``where``, negative offset or limit.
        """
        if offset < 0 or limit < 0:
            raise QueryError(f"offset and limit must be 0 or more, got offset={offset}, limit={limit}")
        allowed = self.allowed(where)
        table, products = self.table, self.products
        keys = sorted(products.id_by_key) if allowed is None else sorted(
            k for k in allowed.tolist() if k in products.id_by_key)
        page = keys[offset:offset + limit]
        labels = table.labels_for(page, self.store)
        predicted = table.predicted_for(page, self.store)
        out = []
        for k in page:
            photos = [int(p) for p in products.photos_of[k]]
            out.append(CatalogItem(id=products.id_by_key[k], path=table.path_by_key[photos[0]], labels=labels[k],
                                   sha256=table.hash_by_key.get(photos[0]), predicted=predicted.get(k, {}),
                                   photos=[table.path_by_key[p] for p in photos]))
        return len(keys), out

    def facets(self, where: Where = None, max_values: int = 50) -> dict[str, dict[str, int]]:
        """Label values and their item counts, for filtering by label; values most frequent first.

        Labels that identify items rather than group them (names, free text) are left out: those with more
        than ``max_values`` distinct values in the whole catalog, or whose every value is unique.

        Raises:
            QueryError: bad ``where``.
        """
        terms = self.check_where(where)
        everything = self._all_label_counts()
        wanted = {name for name, values in everything.items()
                  if len(values) <= max_values and len(values) < sum(values.values())}
        counts = self.store.label_counts(terms) if terms else everything
        return {name: dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
                for name, values in sorted(counts.items()) if name in wanted}

    def _all_label_counts(self) -> dict[str, dict[str, int]]:
        """Counts over the whole catalog, kept until items or labels change: every browse page needs them."""
        generations = self.store.generations()
        if self._label_counts is None or self._label_counts[0] != generations:
            self._label_counts = (generations, self.store.label_counts())
        return self._label_counts[1]

    def search(self, image: ImageInput | Sequence[ImageInput] | None = None, k: int = 10, where: Where = None,
               dedupe: bool = False, *, text: str | Sequence[str] | None = None, items: Sequence[str] = (),
               not_items: Sequence[str] = (), not_text: str | Sequence[str] | None = None,
               not_images: ImageInput | Sequence[ImageInput] | None = None,
               weights: QueryWeights | Mapping[str, float] | Sequence[str] | None = None,
               min_similarity: float | None = None, by: str = "product") -> list[Match]:
        """The k catalog products (``by="photo"``: photos) most like a query: a photo (a path, bytes or a PIL
        image), words (``text``, for a catalog whose model has a text tower), catalog ``items``, or any mix of
        them, each also as something to avoid (``not_images``, ``not_text``, ``not_items``). A mix is one vector
        (``query.combine``: a weighted sum of unit vectors, renormalised; ``weights`` per kind). Items named in
        the query and their exact copies are never results. ``dedupe``: one item per near-duplicate group (see
        ``duplicates``); ``min_similarity``: leave out results less similar to the query. A product scores the
        best of its photos (``Match.photo`` names it, ``Match.photos`` counts them).

        Raises:
            ImageError: a query image cannot be read.
            NoTextModelError: words for a catalog whose model embeds photos only (the message names models
                that embed words).
            QueryError: bad ``k``, ``where`` or ``weights``; an unknown item; nothing to look for.
        """
        check_k(k)
        images, texts = _listed(image), _listed(text)
        avoid_images, avoid_texts = _listed(not_images), _listed(not_text)
        weights = QueryWeights.parse(weights)
        self.check_text(texts + avoid_texts)
        if not (images or texts or items):
            raise QueryError("nothing to search for: give a photo, words (text) or catalog items")
        check_by(by)
        allowed = self.allowed(where)
        if len(images) == 1 and not (texts or items or avoid_images or avoid_texts or not_items):
            vector = self.encoder().encode(images[0])
            if dedupe:
                return above(nearest_distinct(self, vector, k, allowed, exclude=set(), by=by), min_similarity)
            matches = self._with_exact_copies(self.nearest(vector, k, allowed, exclude=set(), by=by,
                                                           where=where), images[0], vector, k, allowed, by)
            return above(matches, min_similarity)
        parts = [*self.image_parts(images), *self.image_parts(avoid_images, negative=True),
                 *self.text_parts(texts), *self.text_parts(avoid_texts, negative=True)]
        return self.search_parts(parts, k, where, dedupe, items=items, not_items=not_items, weights=weights,
                                 min_similarity=min_similarity, by=by)

    def image_parts(self, images: Sequence[ImageInput], negative: bool = False) -> list[QueryPart]:
        """Photos embedded as query parts.

        Raises:
            ImageError: a photo cannot be read.
        """
        if not images:
            return []
        vectors = self.encoder().encode(list(images))
        return [QueryPart("image", v, negative, _describe(im)) for v, im in zip(vectors, images, strict=True)]

    def text_parts(self, texts: Sequence[str], negative: bool = False) -> list[QueryPart]:
        """Words embedded by the catalog's text tower as query parts.

        Raises:
            NoTextModelError: the catalog's model embeds photos only and no text tower was added.
        """
        if not texts:
            return []
        self.check_text(texts)
        vectors = self.encode_text(list(texts))
        return [QueryPart("text", v, negative, t) for v, t in zip(vectors, texts, strict=True)]

    def encode_text(self, texts: Sequence[str], options: EncodeOptions | None = None) -> np.ndarray:
        """Texts -> N x D float32 unit vectors in the space of the stored vectors: the added text tower (LiT, in
        NumPy: the image model is not loaded), else the catalog model's own.

        Raises:
            NoTextModelError: neither exists. ModelFileError: the added tower's file is missing or changed.
        """
        self.check_text(texts)
        if self.text_tower is not None:
            return self.text_tower.encode(list(texts))
        return self.encoder(options).encode_text(list(texts))

    @property
    def has_text(self) -> bool:
        """Can the catalog be searched by words: its model has a text tower, or a LiT text tower was added."""
        return bool(self.config.embedder.text or self.config.extra.get("text_tower"))

    @property
    def text_tower(self) -> TextTower | None:
        """The text tower added with ``add_text_tower`` (None: none), loaded on first use and checked against
        the digest recorded when it was added.

        Raises:
            ModelFileError: its file is gone or has changed since.
        """
        record = self.config.extra.get("text_tower")
        if not record:
            return None
        if self._text_tower is None:
            path = self.folder / record["file"] if record.get("file") else Path(record["path"])
            if not path.is_file():
                raise ModelFileError(f"{self.name}: its text tower {path} is gone; add it again with "
                                     f"`lookalike text add TOWER.lkm --catalog {self.name}`")
            tower = load_text_tower(path)
            if tower.digest != record["digest"]:
                raise ModelFileError(f"{self.name}: its text tower {path} changed since it was added "
                                     f"(file:{tower.digest} != file:{record['digest']}); add it again with "
                                     "`lookalike text add`")
            tower.check_fits(self.name, self.config.embedder)
            self._text_tower = tower
        return self._text_tower

    def add_text_tower(self, path: str | Path) -> TextTower:
        """Give the catalog search by words with a text tower trained against its image model (LiT, ``train clip
        --image-model NAME --lock-image``); no vector is embedded again. A folder catalog keeps a copy of the file
        (``text-tower.lkm``), a database catalog its absolute path; both record its digest. Replaces a tower
        added before.

        Raises:
            ModelFileError: not a text tower, or trained against another image model, other weights or another
                dimension (one line naming both).
        """
        tower = load_text_tower(path)
        tower.check_fits(self.name, self.config.embedder)
        record = {"digest": tower.digest, "image_model": tower.image.name, "image_weights": tower.image.weights,
                  "added": dt.datetime.now(dt.timezone.utc).isoformat(), "source": str(Path(path).resolve()),
                  "metrics": tower.meta.training.get("metrics", {}).get("after", {})}
        if self.uploads_in_store:
            record["path"] = str(Path(path).resolve())
        else:
            tmp = self.path / (TEXT_TOWER_FILE + ".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(self.path / TEXT_TOWER_FILE)
            record["file"] = TEXT_TOWER_FILE
        self._record(text_tower=record)
        self._text_tower, self._encoder = None, None
        return self.text_tower

    def remove_text_tower(self) -> bool:
        """Drop the added text tower (the model's own, if any, is searched again); returns whether there was one."""
        record = self.config.extra.get("text_tower")
        if not record:
            return False
        self._record(text_tower=None)
        if record.get("file") and not self.uploads_in_store:
            (self.path / record["file"]).unlink(missing_ok=True)
        self._text_tower, self._encoder = None, None
        return True

    def check_text(self, texts: Sequence[str]) -> None:
        """Refuse words the catalog cannot search by, before any model is loaded.

        Raises:
            NoTextModelError: the catalog's model embeds photos only (the message names models with a text tower).
            QueryError: empty words.
        """
        if texts and not self.has_text:
            raise no_text_tower(self.config.embedder.name)
        if any(not str(t).strip() for t in texts):
            raise QueryError("empty words in the query; write what to look for, e.g. --text 'red summer dress'")
        longest = max((len(str(t)) for t in texts), default=0)
        if longest > MAX_TEXT_CHARS:
            raise QueryError(f"words of {longest:,} characters; at most {MAX_TEXT_CHARS:,} are taken (a text+image "
                             "model reads only its first few dozen words anyway): shorten them")

    def search_parts(self, parts: Sequence[QueryPart], k: int = 10, where: Where = None, dedupe: bool = False, *,
                     items: Sequence[str] = (), not_items: Sequence[str] = (),
                     weights: QueryWeights | Mapping[str, float] | Sequence[str] | None = None,
                     min_similarity: float | None = None, by: str = "product") -> list[Match]:
        """``search`` for parts already embedded (the server embeds photos and words on its model thread), plus
        catalog items by id, for or against; never returns the items named, or their exact copies.

        Raises:
            QueryError: bad ``k``, ``where`` or ``weights``; an unknown item; nothing to look for.
        """
        check_k(k)
        check_by(by)
        allowed = self.allowed(where)
        parts = list(parts)
        exclude: set[int] = set()
        named: set[int] = set()
        first_item: int | None = None
        for negative, ids in ((False, items), (True, not_items)):
            for item_id in ids:
                key = self._key(str(item_id))
                photos = self.products.photos_of[key]
                first_item = int(photos[0]) if first_item is None and not negative else first_item
                parts.append(QueryPart("item", self.vector(str(item_id)), negative, str(item_id)))
                named.add(key)
                for photo in photos.tolist():
                    exclude |= self.table.same_content(photo)
        vector = combine(parts, QueryWeights.parse(weights))
        return above(self._answer(vector, k, allowed, exclude, dedupe, first_item, named, by, where), min_similarity)

    def _answer(self, vector: np.ndarray, k: int, allowed: np.ndarray | None, exclude: set[int], dedupe: bool,
                query_key: int | None = None, exclude_products: set[int] | frozenset[int] = frozenset(),
                by: str = "product", where: Where = None) -> list[Match]:
        if dedupe:
            return nearest_distinct(self, vector, k, allowed, exclude, query_key=query_key,
                                    exclude_products=exclude_products, by=by)
        return self.nearest(vector, k, allowed, exclude=exclude, exclude_products=exclude_products, by=by,
                            where=where)

    def _with_exact_copies(self, matches: list[Match], image: ImageInput, vector: np.ndarray, k: int,
                           allowed: np.ndarray | None, by: str = "product") -> list[Match]:
        """A product with a photo whose file is byte for byte the query photo always comes back, whatever an
        approximate index missed."""
        data = image if isinstance(image, bytes) else None
        if isinstance(image, (str, Path)):
            try:
                data = Path(image).read_bytes()
            except OSError:
                data = None
        table, products = self.table, self.products
        copies = table.keys_by_hash.get(content_hash(data), set()) if data is not None else set()
        if not copies:
            return matches
        allowed_set = set(allowed.tolist()) if allowed is not None else None
        shown = {m.id for m in matches}
        extra = []
        for photo in sorted(copies):
            sim = float(np.dot(self.index.vector(photo), vector))
            if by == "photo":
                owners = [p for p in products.products_of.get(photo, ()) if allowed_set is None or p in allowed_set]
                if owners and table.id_by_key[photo] not in shown:
                    extra += self._matches([(owners[0], photo, sim)], by=by)
                continue
            hits = [(p, photo, sim) for p in products.products_of.get(photo, ())
                    if (allowed_set is None or p in allowed_set) and products.id_by_key.get(p) not in shown]
            extra += self._matches(hits)
            shown |= {m.id for m in extra}
        if not extra:
            return matches
        ranked = sorted([*extra, *matches], key=lambda m: -m.similarity)[:k]
        return [dataclasses.replace(m, rank=rank) for rank, m in enumerate(ranked, start=1)]

    def search_vector(self, vector: np.ndarray, k: int = 10, where: Where = None, dedupe: bool = False
                      ) -> list[Match]:
        check_k(k)
        if dedupe:
            return nearest_distinct(self, np.asarray(vector, dtype=np.float32), k, self.allowed(where), set())
        return self.nearest(np.asarray(vector, dtype=np.float32), k, self.allowed(where), exclude=set(), where=where)

    def similar(self, item_id: str, k: int = 10, where: Where = None, same_cluster: bool = False,
                dedupe: bool = False, *, text: str | Sequence[str] | None = None,
                not_text: str | Sequence[str] | None = None,
                weights: QueryWeights | Mapping[str, float] | Sequence[str] | None = None,
                min_similarity: float | None = None, by: str = "product") -> list[Match]:
        """"More like this": the k products most like a catalog product, never itself, and never by its own
        photos or their exact copies. A product of several photos queries with all of them: another product
        scores its best (query photo, photo) pair.

        ``same_cluster`` keeps to the item's k-means cluster (``lookalike cluster``), as the autoencoder
        seed recommended; it combines with ``where`` (both must hold). ``dedupe`` shows one item per
        near-duplicate group and leaves out the item's own near-copies (see ``duplicates``). ``text`` (and
        ``not_text``): "more like this, but ..." in words, combined with the item as ``search`` combines parts.

        Raises:
            NoTextModelError: words for a catalog whose model embeds photos only.
            QueryError: unknown id, bad ``k`` or ``where``; ``same_cluster`` without clusters for the item.
        """
        check_k(k)
        check_by(by)
        texts, avoid_texts = _listed(text), _listed(not_text)
        self.check_text(texts + avoid_texts)
        weights = QueryWeights.parse(weights)
        allowed = self.allowed(where)
        key = self._key(item_id)
        if same_cluster:
            members = self._cluster_members(item_id, key)
            allowed = members if allowed is None else np.intersect1d(allowed, members)
        photos = [int(p) for p in self.products.photos_of[key]]
        exclude: set[int] = set()
        for photo in photos:
            exclude |= self.table.same_content(photo)
        itself = {key}
        if texts or avoid_texts:
            parts = [QueryPart("item", self.vector(item_id), False, str(item_id)), *self.text_parts(texts),
                     *self.text_parts(avoid_texts, negative=True)]
            return above(self._answer(combine(parts, weights), k, allowed, exclude, dedupe, photos[0], itself, by,
                                      where), min_similarity)
        if dedupe:
            return above(nearest_distinct(self, self.index.vector(photos[0]), k, allowed, exclude,
                                          query_key=photos[0], exclude_products=itself, by=by), min_similarity)
        lists = [self.nearest(self.index.vector(photo), k, allowed, exclude=exclude, items=True,
                              exclude_products=itself, by=by, where=where) for photo in photos]
        return above(merge_best(lists, k), min_similarity)

    def forget_labels(self) -> None:
        """Drop cached labels and counts now (after this process rewrote labels, e.g. ``lookalike tag``); other
        processes' writes are noticed within a quarter of a second anyway."""
        if self._meta is not None:
            self._meta.forget_labels()
        self._label_counts = None
        self._labels_generation = self.store.generations()[1]

    def remove_predicted(self, column: str) -> int:
        """Delete a label predicted by ``lookalike tag``; returns how many items had it.

        Raises:
            QueryError: no predicted label has this name.
        """
        if column not in self.store.predicted_names():
            names = ", ".join(self.store.predicted_names()) or "none"
            raise QueryError(f"no predicted label {column!r}; predicted labels in this catalog: {names}")
        removed = self.store.remove_predicted(column)
        self.forget_labels()
        return removed

    def clusters(self) -> dict[str, int]:
        """Product id -> k-means cluster, as stored by ``lookalike cluster`` (empty before clustering)."""
        by_key = self.store.clusters()
        ids = self.products.id_by_key
        return {ids[key]: c for key, c in by_key.items() if key in ids}

    def _cluster_members(self, item_id: str, key: int) -> np.ndarray:
        cluster = self.store.cluster_of(key)
        if cluster is None:
            if self.store.cluster_info() is None:
                raise QueryError(f"{self.name} has no clusters yet; run `lookalike cluster --catalog {self.name} "
                                 "-n 6` (or --auto) first")
            raise QueryError(f"item {item_id!r} was added after the last clustering; run `lookalike cluster "
                             f"--catalog {self.name}` again")
        return self.store.keys_in_cluster(cluster)

    def _key(self, item_id: str) -> int:
        """The key of a product that can be found.

        Raises:
            UnknownItemError: no such product, or none of its photos could be embedded (the reason is named).
        """
        key = self.products.key_by_id.get(str(item_id))
        if key is None:
            if self.store.product(str(item_id)) is not None:
                failed = self.store.failures_of_product(str(item_id))
                reason = f" ({failed[0]})" if failed else ""
                raise UnknownItemError(f"item {item_id!r} could not be embedded{reason}; fix the file and "
                                       "re-index")
            raise UnknownItemError(f"unknown item id {item_id!r}; `lookalike status` shows the catalog")
        return key

    def check_where(self, where: Where) -> dict[str, str]:
        """Parse a filter and check that its labels exist in this catalog.

        Raises:
            QueryError: malformed, or names a label the catalog does not have.
        """
        terms = parse_where(where)
        known = set(self.store.label_names()) if terms else set()
        unknown = [name for name in terms if name not in known]
        if unknown:
            listing = ", ".join(sorted(known)) or "none (index from a manifest to add labels)"
            raise QueryError(f"unknown label {unknown[0]!r} in filter; labels in this catalog: {listing}")
        return terms

    def check_values(self, where: Where) -> dict[str, str]:
        """``check_where``, and each value must be one some item has: a misspelt value (``articleType=Tshirt``)
        is told with the values that exist, closest first, rather than matching nothing. What the command line
        asks; the REST API keeps an empty answer for a value no item has (its page offers only real values).

        Raises:
            QueryError: malformed filter, unknown label, or a value no item has.
        """
        terms = self.check_where(where)
        counts = self._all_label_counts()
        for name, value in terms.items():
            values = counts.get(name, {})
            if value in values:
                continue
            close = difflib.get_close_matches(value, list(values), n=len(values), cutoff=0.0)
            near = difflib.get_close_matches(value.lower(), [v.lower() for v in values], n=len(values), cutoff=0.6)
            ordered = sorted(values, key=lambda v: (v.lower() not in near, close.index(v)))
            shown = ", ".join(ordered[:12]) + (f" and {len(ordered) - 12} more" if len(ordered) > 12 else "")
            raise QueryError(f"no item has {name}={value!r}; values of {name}, closest first: {shown or '(none)'}")
        return terms

    def allowed(self, where: Where) -> np.ndarray | None:
        """Store keys of the items matching ``where`` (int64, sorted), or None for no filter.

        Raises:
            QueryError: malformed filter or unknown label.
        """
        terms = self.check_where(where)
        return self.store.keys_where(terms) if terms else None

    def nearest(self, vector: np.ndarray, k: int, allowed: np.ndarray | None, exclude: set[int],
                items: bool = False, *, exclude_products: set[int] | frozenset[int] = frozenset(),
                by: str = "product", where: Where = None) -> list[Match]:
        """The k best products (``by="photo"``: photos) for a unit ``vector`` (float32, D) among the products
        keyed in ``allowed`` (None: all), leaving out the photo keys in ``exclude`` and the product keys in
        ``exclude_products``; ``items``: the query is a catalog item (use the index's item setting). A product
        ranks by its best photo (``catalog.products``); ``where`` names the variants that matched."""
        products, index = self.products, self.index
        allowed_set = None
        photos_allowed = None
        if allowed is not None:
            allowed_set = set(allowed.tolist()) - set(exclude_products)
            photos_allowed = products.photo_keys(allowed_set)
            if exclude:
                photos_allowed = photos_allowed[~np.isin(photos_allowed, list(exclude))]
            if len(photos_allowed) == 0:
                return []
        settings = index.item_settings if items else None
        total = index.size
        fetch = k + len(exclude) + (0 if products.one_to_one else 2 * k)
        while True:
            sims, keys = index.search(vector, fetch, photos_allowed, settings=settings)
            hits = [(key, sim) for key, sim in zip(keys[0].tolist(), sims[0].tolist(), strict=True)
                    if key >= 0 and key not in exclude]
            if by == "photo":
                picked = []
                for key, sim in hits:
                    owners = products.products_of.get(key, ())
                    if owners and all(o in exclude_products for o in owners):
                        continue
                    if allowed_set is not None and not any(o in allowed_set for o in owners):
                        continue
                    picked.append((owners[0] if owners else -1, key, sim))
                    if len(picked) == k:
                        break
            else:
                picked = products.group([h[0] for h in hits], [h[1] for h in hits], k, allowed_set,
                                        exclude_products)
            if len(picked) >= k or fetch >= total:
                break
            fetch = min(total, fetch * 4)
        return self._matches(picked, by=by, where=where)

    def _matches(self, picked: Sequence[tuple[int, int, float]], by: str = "product", where: Where = None,
                 start: int = 1) -> list[Match]:
        """Result rows for (product key, photo key, similarity) triples, ranked from ``start``."""
        table, products = self.table, self.products
        product_keys = [p for p, _, _ in picked]
        labels = table.labels_for(product_keys, self.store)
        predicted = table.predicted_for(product_keys, self.store)
        terms = parse_where(where) if where else {}
        variants = (matching_variants(self.store.variants_for(product_keys), terms) if terms else {})
        out = []
        for rank, (product, photo, sim) in enumerate(picked, start=start):
            photos = products.photos_of.get(product)
            out.append(Match(
                rank=rank, id=table.id_by_key[photo] if by == "photo" else products.id_by_key[product],
                path=table.path_by_key[photo], similarity=float(sim), distance=distance_from_similarity(sim),
                labels=labels.get(product, {}), predicted=predicted.get(product, {}),
                photo=table.id_by_key[photo], photos=len(photos) if photos is not None else 1,
                product=products.id_by_key.get(product, ""), variants=variants.get(product, [])))
        return out

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


def _listed(value) -> list:
    """None -> [], one query value (a path, bytes, an image, a string) -> [it], a list or tuple -> a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _describe(image) -> str:
    return str(image) if isinstance(image, (str, Path)) else type(image).__name__


def above(matches: list[Match], min_similarity: float | None) -> list[Match]:
    """Results at least ``min_similarity`` similar to the query (all when None)."""
    if min_similarity is None:
        return matches
    return [m for m in matches if m.similarity >= min_similarity]


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


def assign_item_ids(items: list[SourceItem], stored: Mapping[str, StoredItem], source: str | Path,
                    warnings: list[str]) -> list[SourceItem]:
    """The ids listed files get in a catalog that may already hold them: an item is a file.

    1. A file already in the catalog (same resolved path) keeps its id, whichever folder, manifest or id
       scheme lists it now, so re-indexing never doubles an item.
    2. An id that already names another file that still exists is a conflict, said in one line naming both
       files. From a folder, the file already in the catalog keeps the id and the new file gets it qualified
       by the folder's name (``shopB/shoe``, then ``shopB/shoe~2`` ...). From a manifest, whose ids are the
       shop's own, the manifest wins (the item now shows the new file), unless the old file is listed too:
       then the new one is qualified by the manifest's name.
    3. An id whose old file is gone (moved or renamed) simply follows the new file.
    """
    by_path = {row.path: item_id for item_id, row in stored.items()}
    listed_paths = {str(item.path) for item in items}
    folder = is_folder_source(source)
    taken = set(stored) | {item.id for item in items}
    out: list[SourceItem] = []
    kept = 0
    for item in items:
        path = str(item.path)
        known = by_path.get(path)
        if known is not None:
            kept += known != item.id
            out.append(item if known == item.id else dataclasses.replace(item, id=known))
            continue
        old = stored.get(item.id)
        if old is None or old.path == path or not storage.exists(old.path):
            out.append(item)
            continue
        if not folder and old.path not in listed_paths:
            warnings.append(f"item {item.id!r} now shows {path} (was {old.path}, which the manifest no longer "
                            "names for this id)")
            out.append(item)
            continue
        base = f"{source_name(source)}/{item.id}"
        new_id, n = base, 1
        while new_id in taken:
            n += 1
            new_id = f"{base}~{n}"
        taken.add(new_id)
        warnings.append(f"id {item.id!r} already names {old.path}; {path} is indexed as {new_id!r}")
        out.append(dataclasses.replace(item, id=new_id))
    if kept:
        warnings.append(f"{kept} files already in the catalog keep their ids (an item is a file, whichever source "
                        "lists it)")
    return out


class ItemTable:
    """Id, path and content hash of every embedded item, held in memory for fast result rows."""

    def __init__(self, rows: list[tuple[int, str, str, str | None]]):
        self.id_by_key = {key: item_id for key, item_id, _, _ in rows}
        self.key_by_id = {item_id: key for key, item_id, _, _ in rows}
        self.path_by_key = {key: path for key, _, path, _ in rows}
        self.keys_by_hash: dict[str, set[int]] = {}
        self.hash_by_key: dict[int, str | None] = {}
        self._labels: dict[int, dict[str, str]] = {}
        self._predicted: dict[int, dict[str, float]] = {}
        self._any_predicted: bool | None = None
        for key, _, _, sha in rows:
            self.hash_by_key[key] = sha
            if sha:
                self.keys_by_hash.setdefault(sha, set()).add(key)

    def forget_labels(self) -> None:
        self._labels.clear()
        self._predicted.clear()
        self._any_predicted = None

    def predicted_for(self, keys: list[int], store: Store) -> dict[int, dict[str, float]]:
        """Which of the result rows' labels were predicted (``lookalike tag``), with their probabilities,
        remembered like labels; no query at all in a catalog without predictions."""
        if self._any_predicted is None:
            self._any_predicted = bool(store.predicted_names())
        if not self._any_predicted:
            return {}
        missing = [k for k in keys if k not in self._predicted]
        if missing:
            found = store.predicted_scores_for(missing)
            self._predicted.update({k: found.get(k, {}) for k in missing})
        return {k: self._predicted[k] for k in keys if self._predicted[k]}

    def labels_for(self, keys: list[int], store: Store) -> dict[int, dict[str, str]]:
        """Labels of result rows, remembered: popular items come back in many result lists."""
        missing = [k for k in keys if k not in self._labels]
        if missing:
            self._labels.update(store.labels_for(missing))
        return {k: self._labels[k] for k in keys}

    def same_content(self, key: int) -> set[int]:
        sha = self.hash_by_key.get(key)
        return set(self.keys_by_hash.get(sha, {key})) | {key} if sha else {key}


def _check_new_id(item_id: str) -> str:
    item_id = str(item_id).strip()
    if not item_id or len(item_id) > MAX_ID_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in item_id):
        raise QueryError(f"item id {item_id[:40]!r} must be 1 to {MAX_ID_LENGTH} printable characters")
    return item_id


def _write_once(target: Path, data: bytes) -> Path:
    """Write a file named by its content, atomically, unless it is already there."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    return target


def _opened_format(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data)) as img:
        return img.format
