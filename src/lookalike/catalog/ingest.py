"""Adding photos and products to a catalog: a folder or manifest (``add``), one upload (``add_image``), removal.

A part of ``Catalog`` (``catalog.py``), which inherits it; it reads the catalog's attributes set there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core import storage
from ..core.config import EncodeOptions
from ..core.errors import (
    ItemExistsError,
    QueryError,
    UnknownItemError,
)
from ..core.images import IMAGE_EXTENSIONS, content_hash, decode
from ..core.sources import SourceItem, is_folder_source, read_source, source_name
from ..engines.embed import (
    EncodedBatch,
    Engine,
    FileTask,
    encode_files,
)
from ..store import ItemRecord, StoredItem
from ..store.base import UPLOAD_PREFIX
from ..store.products import ProductRecord
from .browsing import CatalogItem
from .int8_labels import listing_labels
from .products import (
    changed_products,
    plan_photos,
    plan_products,
)

log = logging.getLogger(__name__)

# One transaction takes the batches that came back within COMMIT_SECONDS of the first one waiting, up to
# COMMIT_ROWS photos: 2,048 rows a transaction commit 20,000 photos in 0.70 s against 0.97 s at one 256-photo
# batch each (``benchmarks/ray_throughput.py --driver-only --driver-phases``, 2-core EPYC). A kill loses at
# most what waits: never a committed photo, and the next run embeds the rest.
COMMIT_ROWS = 2048
COMMIT_SECONDS = 0.25

UPLOADS_DIR = "uploads"  # images added one by one (REST API); named by content, so no id can steer a path
MAX_ID_LENGTH = 200


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


class Ingest:
    """What adds to and removes from a catalog: sources (photos embedded once, committed batch by batch with
    the products they show), uploads, removal of products."""

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
        try:
            return self._add(source, images, prune=prune, options=options, on_batch=on_batch, engine=engine,
                             product_column=product_column, product_per_folder=product_per_folder)
        finally:
            gc.unfreeze()  # the run's listing back in the collector's care (``collector_paused`` froze it)

    def _add(self, source: str | Path, images: str | Path | None, *, prune: bool, options: EncodeOptions | None,
             on_batch: Callable[[int], None] | None, engine: Engine | None, product_column: str | None,
             product_per_folder: bool) -> IndexReport:
        self.check_writable()
        options = options or EncodeOptions()
        started = time.perf_counter()
        with collector_paused():  # many objects, no cycles: a collection would walk them all, again and again
            listing = read_source(source, images, product_column=product_column, product_per_folder=product_per_folder)
            report = IndexReport(warnings=list(listing.warnings), skipped=dict(listing.skipped),
                                 notes=list(listing.notes))
            if not listing.items:
                looked = ", ".join(sorted(IMAGE_EXTENSIONS))
                report.warnings.append(f"{source}: no images found (looked for {looked})")
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
            note = self.calibrate_int8(options, [item.path for item, _, _, _ in todo], lambda: {
                str(item.path): listing_labels(by_photo.get(item.id, ())) for item in listed})
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
        """Write finished batches in transactions of their own: embedded photos with their vectors, failures with
        their reasons, and the products those photos show; unchanged content only touches size and mtime.
        Batches may come in any order. Batches that come back fast are gathered into one transaction (up to
        ``COMMIT_ROWS`` photos or ``COMMIT_SECONDS`` after the first one waiting), since a transaction's fixed
        cost is a third of a small batch's. Each transaction is written on a thread of its own while the next
        one gathers; the one before is then applied to the in-memory index and its rows spilled to the index's
        row file (``_spill_index``), so that the store's and the index's writes overlap on two cores. With
        ``on_batch``, each transaction is waited for before it is told the photos committed so far."""
        by_ref = {task.ref: (item, size, mtime) for item, task, size, mtime in todo}
        self._growing = len(todo)  # the index is planned for the size this run will reach (``_plan_ahead``)
        try:
            self._refresh_index(save=False, expect=len(todo))  # loaded (or built) now: each commit is applied to it
        except BaseException:
            self._growing = 0
            raise
        show = options.progress and sys.stderr.isatty()
        records: list[ItemRecord] = []
        waiting_since = 0.0
        embedded = 0
        writer = ThreadPoolExecutor(1, thread_name_prefix="lookalike-commit")
        in_flight: tuple[Future, int] | None = None  # the transaction being written, and its embedded photos

        def settle(written: tuple[Future, int] | None) -> None:
            """Wait for a transaction; apply it to the index, count its photos, spill the index's new rows."""
            if written is not None:
                self._follow(written[0].result())
                report.indexed += written[1]
                self._spill_index()

        def flush(notify: bool = True, wait: bool = False) -> None:
            nonlocal records, embedded, in_flight
            gathered, count, previous = records, embedded, in_flight
            records, embedded, in_flight = [], 0, None
            if gathered:
                shown = {id(p): p for rec in gathered for p in by_photo.get(rec.id, ())}
                in_flight = (writer.submit(self.store.write, gathered, list(shown.values())), count)
            settle(previous)  # the previous transaction, applied while this one is written
            if wait or on_batch is not None:
                current, in_flight = in_flight, None
                settle(current)
            if notify and on_batch is not None:
                on_batch(report.indexed)

        with tqdm(total=len(todo), unit="img", desc="indexing", disable=not show, dynamic_ncols=True) as bar, \
                contextlib.ExitStack() as stack:
            stack.enter_context(self.store.bulk())  # SQLite: the WAL checkpointed on a thread of its own
            stack.callback(writer.shutdown)
            stack.callback(setattr, self, "_growing", 0)
            try:
                for batch in batches:
                    if not records and not embedded:
                        waiting_since = time.monotonic()
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
                    embedded += len(batch.embedded)
                    bar.update(len(batch.embedded) + len(batch.others))
                    if len(records) >= COMMIT_ROWS or time.monotonic() - waiting_since >= COMMIT_SECONDS:
                        flush()
            except BaseException:  # an interrupt or a failed engine: keep what came back before it
                with contextlib.suppress(Exception):
                    flush(notify=False, wait=True)
                if self._index is not None:  # not saved by this run: its rows spilled so far count for nothing
                    self._index.discard_spill()
                raise
            flush(wait=True)

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
            target = write_once(self.path / UPLOADS_DIR / name, data)
            stat = target.stat()
            path, size, mtime_ns = str(target), stat.st_size, stat.st_mtime_ns
        self._follow(self.store.write([ItemRecord(
            id=item_id, path=path, size=size, mtime_ns=mtime_ns, sha256=sha, status="ok",
            width=image.width, height=image.height, vector=np.asarray(vector, dtype=np.float32))],
            [ProductRecord(id=item_id, photos=(item_id,), variants={item_id: dict(labels or {})})]))
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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the block (``gc.disable``), then what the block built frozen
    (``gc.freeze``: the collector's permanent generation) and the collector on again if it was on. The caller
    unfreezes (``gc.unfreeze``) when the run ends, so nothing stays out of the collector's reach.

    Listing and planning a source build several objects per photo and no reference cycles; while they grow,
    the collector's thresholds trigger full collections that walk every live object again (with PyTorch loaded,
    hundreds of thousands), and the commit loop's collections walk them again while they live: 0.3-0.5 s of
    the driver's 3.7 s for 20,000 photos (``benchmarks/ray_throughput.py --driver-only --driver-phases``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # what was built lives as long as the run: later collections (commit loop) skip it
        if enabled:
            gc.enable()


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


def _check_new_id(item_id: str) -> str:
    item_id = str(item_id).strip()
    if not item_id or len(item_id) > MAX_ID_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in item_id):
        raise QueryError(f"item id {item_id[:40]!r} must be 1 to {MAX_ID_LENGTH} printable characters")
    return item_id


def write_once(target: Path, data: bytes) -> Path:
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
