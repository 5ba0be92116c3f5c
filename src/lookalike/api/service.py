"""What the server holds for its whole life: the catalog, its model placed on the device, the batcher and
the thumbnail cache. Routes call these methods; nothing here knows about HTTP."""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import io
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
from PIL import Image

from ..catalog import Catalog
from ..catalog.catalog import CatalogItem
from ..catalog.events import QueryLog, new_query_id, open_event_store
from ..catalog.look import Look, Region, detect_items, detection_words
from ..catalog.query import Match, QueryPart, Where, check_k, parse_where
from ..catalog.ranking import Ranking
from ..core.config import EncodeOptions
from ..core.errors import CatalogError, LookalikeError, QueryError
from ..core.images import decode
from ..core.regions import Box, crop, crop_region, parse_box
from ..models.detector import (
    DEFAULT_MAX_BOXES,
    DEFAULT_NMS_IOU,
    DEFAULT_THRESHOLD,
    detector_name,
    detector_ready,
)
from ..store.events import EventRecord
from .batcher import EmbedBatcher
from .settings import ServeSettings
from .thumbnails import ThumbnailCache

log = logging.getLogger(__name__)
T = TypeVar("T")
Versioned = tuple[Match, str | None]  # a result and its content hash


class CatalogService:
    """Opened once at startup. Catalog reads and writes run one at a time on a thread of their own (each
    takes about a millisecond), the model on the batcher's thread, decoding on the request threads.

    Why one catalog thread rather than a lock: FAISS runs OpenMP too, and every long-lived thread that has
    run OpenMP work makes PyTorch's own OpenMP workers slower (see batcher.py); one thread, limited to one
    OpenMP thread for single-query searches, keeps the model at full speed.
    """

    def __init__(self, settings: ServeSettings):
        """Raises: CatalogError, ModelUnavailableError (the CLI prints them on one line)."""
        self.settings = settings
        self._catalog_thread = ThreadPoolExecutor(1, thread_name_prefix="lookalike-catalog",
                                                  initializer=faiss.omp_set_num_threads, initargs=(1,))
        try:
            self.catalog = self._call(Catalog.open, settings.catalog)
            options = EncodeOptions(device=settings.device, runtime=settings.runtime, precision=settings.precision,
                                    max_pixels=settings.max_pixels, progress=False, workers=0)
            self.batcher = EmbedBatcher(lambda: self.catalog.encoder(options), max_batch=settings.max_batch)
        except BaseException:
            self._catalog_thread.shutdown()
            raise
        self.encoder = self.batcher.encoder
        self._detect_thread = ThreadPoolExecutor(1, thread_name_prefix="lookalike-detect")
        self._can_detect: bool | None = None
        self.thumbnails = ThumbnailCache(settings.thumbnail_cache or self.catalog.folder / "thumbnails")
        # Warm up so the first user does not pay for lazy initialisation (oneDNN kernels, CUDA context, the
        # index and the catalog's tables), then leave what start-up built out of the garbage collector's scans.
        self.batcher.embed(self.encoder.prepare(Image.new("RGB", (64, 64), "white")))
        self._call(self._warm)
        # Writes by other replicas or jobs: a database catalog says so at once (LISTEN/NOTIFY) and the catalog
        # thread catches up before the next request; without that, requests look every 0.25 s (polling).
        self._refresh_queued = threading.Event()
        self._watch = self.catalog.watch(self._changed)
        # Answers are logged under their query_id by a writer of their own, off the request path.
        self.query_log: QueryLog | None = None
        if settings.log_queries and not self.catalog.store.read_only:
            self.query_log = QueryLog(open_event_store(self.catalog.address))

    def _changed(self) -> None:
        """Called on the listening thread: one catch-up queued on the catalog thread, however many writes."""
        if self._refresh_queued.is_set():
            return
        self._refresh_queued.set()
        try:
            self._catalog_thread.submit(self._catch_up)
        except RuntimeError:  # shutting down
            pass

    def _catch_up(self) -> None:
        self._refresh_queued.clear()
        try:
            self.catalog.refresh()
        except LookalikeError as exc:  # the database went away again; requests answer 503 until it is back
            log.info("catching up: %s", exc)

    def _warm(self) -> None:
        """Load the index and the catalog's tables now (on the catalog thread), then ``freeze_heap``."""
        try:
            self.catalog.index  # noqa: B018 - loads it
            self.catalog.table  # noqa: B018
            self.catalog.products  # noqa: B018
        except LookalikeError as exc:  # an empty or unreachable catalog: requests say so
            log.info("warming up: %s", exc)
        freeze_heap()

    def close(self) -> None:
        if self.query_log is not None:
            self.query_log.close()
        self._watch.close()
        self.batcher.close()
        self._call(self.catalog.close)
        self._catalog_thread.shutdown()
        self._detect_thread.shutdown()

    def _call(self, fn: Callable[..., T], *args) -> T:
        """Run a catalog call on the catalog thread and wait for it."""
        return self._catalog_thread.submit(fn, *args).result()

    # -- searching ---------------------------------------------------------------------------------

    def embed(self, data: bytes) -> np.ndarray:
        """Decode and embed in a shared batch.

        Raises:
            ImageError: not an image, corrupt, or over the pixel limit.
        """
        return self.batcher.embed(data)

    def search(self, data: bytes | None, k: int, where: Where, min_similarity: float | None, dedupe: bool = False,
               text: str | None = None, ranking: Ranking | None = None, rules: bool = True) -> list[Versioned]:
        """The k items most like an uploaded image, words, or both ("this, but ..."), each with its content hash
        (for cacheable URLs). Photo and words are combined as ``Catalog.search`` combines them.

        Raises:
            QueryError: neither a photo nor words; bad filter. NoTextModelError: words for an image-only model.
        """
        check_k(k)
        texts = [text] if text is not None and text.strip() else []
        if data is None and not texts:
            raise QueryError("send a photo (image), words (text), or both")
        self._call(self._check, where, ranking)  # a bad filter or rule fails before the model runs
        self.catalog.check_text(texts, need_model=False)  # image-only models search words as keywords
        return self._search(None if data is None else self.embed(data), texts, k, where, min_similarity, dedupe,
                            ranking, rules)

    def search_region(self, data: bytes, box: str, k: int, where: Where, min_similarity: float | None,
                      dedupe: bool = False, text: str | None = None, ranking: Ranking | None = None,
                      rules: bool = True) -> tuple[list[Versioned], Box, tuple[int, int]]:
        """``search`` for a region of the uploaded photo (``core.regions``: fractions or pixels of the upright
        photo): (results, the box in pixels, the photo's upright size). The region is searched as a picture
        of its own, so the exact-copy rule of a whole photo does not apply.

        Raises:
            QueryError: a malformed, empty, outside or too small box; see ``search``.
        """
        check_k(k)
        texts = [text] if text is not None and text.strip() else []
        spec = parse_box(box)
        self._call(self._check, where, ranking)
        self.catalog.check_text(texts, need_model=False)
        photo = self._decode(data)
        region, resolved = crop_region(photo, spec)
        vector = self.batcher.embed(self.encoder.prepare(region))
        return (self._search(vector, texts, k, where, min_similarity, dedupe, ranking, rules), resolved,
                photo.size)

    def detect(self, data: bytes, words: list[str] | None, label: str | None, k: int, where: Where,
               min_similarity: float | None, dedupe: bool = False, threshold: float = DEFAULT_THRESHOLD,
               max_boxes: int = DEFAULT_MAX_BOXES, ranking: Ranking | None = None, rules: bool = True
               ) -> tuple[Look, list[list[Versioned]]]:
        """Shop the look: the items the server's detector finds in the photo (``catalog.look``), each region
        searched; (what was found, each region's results with their content hashes).

        Raises:
            ModelUnavailableError: the detector is not on this server. QueryError: no words and no category
                label, bad options or filter.
        """
        check_k(k)
        self._call(self._check, where, ranking)
        wanted, source = self._call(detection_words, self.catalog, words, label)
        photo = self._decode(data)
        found = self._detect_thread.submit(detect_items, photo, wanted, self.settings.detector, self.settings.device,
                                           threshold, DEFAULT_NMS_IOU, max_boxes).result()
        vectors = [self.batcher.embed(self.encoder.prepare(crop(photo, d.box))) for d in found]
        results = [self._search(v, [], k, where, min_similarity, dedupe, ranking, rules) for v in vectors]
        regions = [Region(d.box, [m for m, _ in r], d.label, d.score) for d, r in zip(found, results, strict=True)]
        return Look(photo.size, detector_name(self.settings.detector), wanted, regions, source), results

    @property
    def can_detect(self) -> bool:
        """Whether the detector's files are on this server (checked once)."""
        if self._can_detect is None:
            self._can_detect = detector_ready(self.settings.detector)
        return self._can_detect

    def _check(self, where: Where, ranking: Ranking | None) -> None:
        """A request's filter and rules checked (on the catalog thread: one hop for both)."""
        self.catalog.check_where(where)
        if ranking is not None:
            self.catalog.check_ranking(ranking)

    def _decode(self, data: bytes) -> Image.Image:
        return decode(data, max_pixels=self.settings.max_pixels, name="the uploaded photo")

    def _search(self, vector: np.ndarray | None, texts: list[str], k: int, where: Where,
                min_similarity: float | None, dedupe: bool, ranking: Ranking | None = None, rules: bool = True
                ) -> list[Versioned]:
        if not texts:
            return self._call(self._versioned, functools.partial(self.catalog.search_vector, dedupe=dedupe,
                                                                 ranking=ranking, rules=rules),
                              (vector, k, where), min_similarity)
        keywords = " ".join(texts)
        if not self.catalog.has_text and vector is None:  # words alone, no text tower: keywords alone
            return self._call(self._versioned, functools.partial(self.catalog.search_keywords, ranking=ranking,
                                                                 rules=rules), (keywords, k, where), None)
        parts = self._text_parts(texts) if self.catalog.has_text else []  # keywords are fused either way
        if vector is not None:
            parts.insert(0, QueryPart("image", vector, False, "upload"))
        return self._call(self._versioned, functools.partial(self.catalog.search_parts, dedupe=dedupe,
                                                             ranking=ranking, rules=rules, keywords=keywords),
                          (parts, k, where), min_similarity)

    def _text_parts(self, texts: list[str]) -> list[QueryPart]:
        vectors = self.batcher.embed_text(texts)
        return [QueryPart("text", v, False, t) for v, t in zip(vectors, texts, strict=True)]

    async def similar(self, item_id: str, k: int, where: Where, min_similarity: float | None, dedupe: bool = False,
                      text: str | None = None, ranking: Ranking | None = None, rules: bool = True
                      ) -> list[Versioned]:
        """More like a catalog item (with ``text``: but with those words); awaited on the event loop, so a
        request by id costs one thread hop."""
        if text is not None and text.strip():
            self.catalog.check_text([text])
            loop = asyncio.get_running_loop()
            parts = await loop.run_in_executor(None, self._text_parts, [text])
            find = functools.partial(self.catalog.search_parts, dedupe=dedupe, items=[item_id], ranking=ranking,
                                     rules=rules)
            future = self._catalog_thread.submit(self._versioned, find, (parts, k, where), min_similarity)
        else:
            future = self._catalog_thread.submit(
                self._versioned, functools.partial(self.catalog.similar, dedupe=dedupe, ranking=ranking,
                                                   rules=rules), (item_id, k, where),
                min_similarity)
        return await asyncio.wrap_future(future)

    def _versioned(self, find: Callable[..., list[Match]], args: tuple, min_similarity: float | None
                   ) -> list[Versioned]:
        matches = _above(find(*args), min_similarity)
        return [(m, self.catalog.item(m.id, m.photo or None).sha256) for m in matches]

    # -- the query log and events -----------------------------------------------------------------

    def log_answer(self, kind: str, k: int, results: list[str], where: Where, item: str | None = None,
                   photo: str | None = None, words: str | None = None, box: list[int] | None = None) -> str:
        """A new query id for an answer, its query queued for the log (``catalog.events.QueryLog``)."""
        if self.query_log is None:
            return new_query_id()
        return self.query_log.log(kind, k, results, parse_where(where), item=item, photo=photo, words=words,
                                  box=box)

    def add_events(self, events: list[EventRecord]) -> tuple[int, int]:
        """Store events: (stored, unknown query ids).

        Raises:
            CatalogError: this server logs no answers (read-only catalog, or logging turned off).
        """
        if self.query_log is None:
            raise CatalogError("this server stores no events: its catalog is read-only or it logs no answers "
                               "(server setting LOOKALIKE_LOG_QUERIES)")
        return self.query_log.add_events(events)

    # -- browsing ----------------------------------------------------------------------------------

    def item(self, item_id: str, photo: str | None = None) -> CatalogItem:
        return self._call(self.catalog.item, item_id, photo)

    def browse(self, offset: int, limit: int, where: Where) -> tuple[int, list[CatalogItem], dict, list[str]]:
        """A page of items, the label facets, and which labels were predicted (``lookalike tag``)."""
        def page() -> tuple[int, list[CatalogItem], dict, list[str]]:
            total, items = self.catalog.browse(offset, limit, where)
            return total, items, self.catalog.facets(where), self.catalog.store.predicted_names()

        return self._call(page)

    def size(self) -> int:
        return self._call(self.catalog.__len__)

    def thumbnail(self, item: CatalogItem, size: int) -> Path:
        return self.thumbnails.get(self.image_file(item.path), item.sha256, size)

    def image_file(self, path: str) -> Path | str:
        """The image file of an item, or its object's URL (an upload kept in the database is read into the cache
        folder once)."""
        return self.catalog.image_file(path)

    # -- writing -----------------------------------------------------------------------------------

    def add(self, data: bytes, item_id: str | None, labels: dict[str, str]) -> CatalogItem:
        vector = self.embed(data)
        return self._call(self.catalog.add_image, data, item_id, labels, vector)

    def remove(self, item_id: str) -> None:
        self._call(self.catalog.remove, [item_id])

    # -- the seed system's answer ------------------------------------------------------------------

    def predict(self, data: bytes, k: int) -> tuple[list[str], str]:
        """Base64 JPEGs of the k closest images and of the upload, as the seed's /api/predict gave."""
        closest = [_jpeg_base64(self.thumbnails.get(self.image_file(m.path), sha, 512))
                   for m, sha in self.search(data, k, None, None)]
        uploaded = decode(data, max_pixels=self.settings.max_pixels, name="the uploaded photo")
        uploaded.thumbnail((512, 512))
        buffer = io.BytesIO()
        uploaded.save(buffer, "JPEG", quality=90)
        return closest, base64.b64encode(buffer.getvalue()).decode("ascii")


def freeze_heap() -> None:
    """Move every object alive now (the index, the catalog's id, label and product tables: millions of objects
    on a large catalog) to the collector's permanent generation (``gc.freeze``, Python 3.7+), so that the
    collections a request's allocations trigger do not walk them again and again: on 100k products, plain
    search's p50 went from 8.6-9.0 ms to 7.2-7.5 ms (``benchmarks/ranking_latency.py``). Called once, at
    start-up; no collection first (a full one costs a tenth of a second with PyTorch loaded, on every server start), and
    what later writes build ages into the collector's generations as usual."""
    gc.freeze()


def _above(matches: list[Match], min_similarity: float | None) -> list[Match]:
    if min_similarity is None:
        return matches
    return [m for m in matches if m.similarity >= min_similarity]


def _jpeg_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")

