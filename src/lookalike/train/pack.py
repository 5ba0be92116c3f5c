"""A catalog decoded once into one memory-mappable file, so a training epoch reads pixels at memory speed.

The seed autoencoder trained from a pre-packed binary copy of the dataset because decoding JPEGs one by one
each epoch was too slow. A pack is that copy, built with the core decoder (``engines.embed.FileReader``: draft
decoding, EXIF, the same limits and one-line reasons for bad files) and a letterbox resize that keeps the
aspect ratio. Layout of one ``.pack`` file::

    magic (8 bytes) | header length (uint64 LE) | header JSON (padded) | pixels N x S x S x 3 uint8 | status N uint8

The header holds the ids, paths, labels and size, fixed when the pack is started; ``status`` says per row
whether it is still to do (0), packed (1) or failed (2), and is written after the row's pixels, so a killed
run leaves only rows marked done that really are. Running ``pack`` again on the same source resumes. Failure
reasons go in a fixed-width block after ``status``.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.config import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from ..core.errors import SourceError, TrainingError
from ..core.sources import read_source
from ..models.letterbox import Letterbox

log = logging.getLogger(__name__)

MAGIC = b"LKPACK\x00\x01"
PACK_VERSION = 1
ALIGN = 4096
REASON_BYTES = 160
TODO, DONE, FAILED = 0, 1, 2


@dataclass
class PackReport:
    path: Path
    total: int
    packed: int  # rows packed by this run
    failed: int  # rows failed by this run
    already: int  # rows done by an earlier run (resumed)

    def summary(self) -> str:
        resumed = f", {self.already} already packed" if self.already else ""
        return f"{self.packed} images packed, {self.failed} failed{resumed}; {self.total} rows"


class Pack:
    """A packed catalog opened read-only: ``images`` (N x S x S x 3 uint8, memory-mapped) of the rows that
    decoded, with their ``ids``, ``paths`` and ``labels`` (column -> list of values, None where missing)."""

    def __init__(self, path: Path, header: dict, pixels: np.memmap, status: np.ndarray, reasons: list[str]):
        self.path = path
        self.header = header
        self.size: int = header["size"]
        self.rows = np.flatnonzero(status == DONE)
        self._pixels = pixels
        all_ids = header["ids"]
        self.ids: list[str] = [all_ids[i] for i in self.rows]
        self.paths: list[str] = [header["paths"][i] for i in self.rows]
        self.labels: dict[str, list[str | None]] = {
            col: [values[i] for i in self.rows] for col, values in header["labels"].items()
        }
        self.failures = [(all_ids[i], header["paths"][i], reasons[i]) for i in np.flatnonzero(status == FAILED)]
        self.pending = int((status == TODO).sum())

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def images(self) -> np.ndarray:
        """All packed images; a view when every row decoded, else a copy of the good rows."""
        if len(self.rows) == len(self._pixels):
            return self._pixels
        return self._pixels[self.rows]

    def batch(self, index: np.ndarray) -> np.ndarray:
        """Images at positions ``index`` (into ``ids``), gathered from the map in storage order."""
        rows = self.rows[np.asarray(index, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        out[order] = self._pixels[rows[order]]
        return out

    @classmethod
    def open(cls, path: str | Path) -> Pack:
        """Open a pack for reading.

        Raises:
            TrainingError: not a pack, from another version, or truncated.
        """
        path = Path(path)
        header, offsets = _read_header(path)
        n, s = header["count"], header["size"]
        pixels = np.memmap(path, dtype=np.uint8, mode="r", offset=offsets["pixels"], shape=(n, s, s, 3))
        status = np.fromfile(path, dtype=np.uint8, count=n, offset=offsets["status"])
        raw = np.fromfile(path, dtype=f"S{REASON_BYTES}", count=n, offset=offsets["reasons"])
        reasons = [r.decode("utf-8", "replace") for r in raw]
        return cls(path, header, pixels, status, reasons)


def pack_source(
    source: str | Path,
    out: str | Path,
    *,
    size: int = 128,
    images: str | Path | None = None,
    workers: int | None = 0,
    chunk: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_progress: Callable[[int], None] | None = None,
) -> PackReport:
    """Decode a folder or manifest into ``out``, resuming a pack of the same source and size.

    Rows are written ``chunk`` at a time; each chunk's pixels are flushed before its status, so a killed run
    resumes from the last finished chunk.

    Raises:
        SourceError: the source cannot be read or lists no image.
        TrainingError: ``out`` exists and is not a pack of this source at this size.
    """
    import torch

    from ..engines.embed import FileReader, FileTask
    from ..engines.torch_runtime import decoding_worker_init

    if not 8 <= size <= 1024:
        raise TrainingError(f"--size {size}: choose a square side between 8 and 1024 pixels")
    listing = read_source(source, images)
    for warning in listing.warnings:
        log.warning(warning)
    items = listing.items
    if not items:
        raise SourceError(f"{source}: no images found")
    out = Path(out)
    columns = sorted({col for item in items for col in item.labels})
    header = {
        "format": "lookalike-pack", "version": PACK_VERSION, "size": size, "count": len(items),
        "source": str(Path(source).resolve()),
        "ids": [item.id for item in items], "paths": [str(item.path) for item in items],
        "labels": {col: [item.labels.get(col) for item in items] for col in columns},
    }
    if out.exists():
        old, offsets = _read_header(out)
        if old["size"] != size or old["ids"] != header["ids"]:
            raise TrainingError(
                f"{out}: a pack of {old['count']} images at {old['size']} px is already there and this source "
                f"or size differs; remove it or choose another --out"
            )
        header = old
    else:
        offsets = _create(out, header)
    n = header["count"]
    status = np.memmap(out, dtype=np.uint8, mode="r+", offset=offsets["status"], shape=(n,))
    pixels = np.memmap(out, dtype=np.uint8, mode="r+", offset=offsets["pixels"], shape=(n, size, size, 3))
    reasons = np.memmap(out, dtype=f"S{REASON_BYTES}", mode="r+", offset=offsets["reasons"], shape=(n,))
    todo = np.flatnonzero(status == TODO)
    already = n - len(todo)
    tasks = [FileTask(Path(header["paths"][i]), ref=int(i)) for i in todo]

    dataset = FileReader(tasks, Letterbox(size), size, max_pixels, max_bytes)
    workers = 0 if workers is None else workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=chunk, num_workers=workers, collate_fn=list,
                                         worker_init_fn=decoding_worker_init if workers else None)
    packed = failed = 0
    try:
        for batch in loader:
            done_rows, failed_rows = [], []
            for result, array in batch:
                row = result.task.ref
                if array is None:
                    reasons[row] = result.error.encode("utf-8")[:REASON_BYTES]
                    failed_rows.append(row)
                    log.info("%s: %s", result.task.path, result.error)
                else:
                    pixels[row] = array
                    done_rows.append(row)
            pixels.flush()
            reasons.flush()
            status[done_rows] = DONE
            status[failed_rows] = FAILED
            status.flush()
            packed += len(done_rows)
            failed += len(failed_rows)
            if on_progress:
                on_progress(len(batch))
    finally:
        del pixels, status, reasons
    return PackReport(path=out, total=n, packed=packed, failed=failed, already=already)


def _create(out: Path, header: dict) -> dict[str, int]:
    body = json.dumps(header, separators=(",", ":")).encode("utf-8")
    start = len(MAGIC) + 8
    pixel_offset = _align(start + len(body))
    n, s = header["count"], header["size"]
    status_offset = pixel_offset + n * s * s * 3
    reasons_offset = status_offset + n
    total = reasons_offset + n * REASON_BYTES
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", len(body)) + body)
        fh.truncate(total)  # sparse: zero status = every row still to do
    tmp.replace(out)
    return {"pixels": pixel_offset, "status": status_offset, "reasons": reasons_offset}


def _read_header(path: Path) -> tuple[dict, dict[str, int]]:
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(MAGIC))
            if magic[:6] != MAGIC[:6]:
                raise TrainingError(f"{path}: not a lookalike pack; make one with `lookalike pack SOURCE --out {path}`")
            if magic != MAGIC:
                raise TrainingError(f"{path}: pack format {magic[6:]!r} is not the one this lookalike reads "
                                    f"(version {PACK_VERSION}); pack the images again")
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length).decode("utf-8"))
    except FileNotFoundError as exc:
        raise TrainingError(f"{path}: no such pack; make one with `lookalike pack SOURCE --out {path}`") from exc
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{path}: unreadable pack header ({exc}); pack the images again") from exc
    n, s = header["count"], header["size"]
    pixel_offset = _align(len(MAGIC) + 8 + length)
    offsets = {"pixels": pixel_offset, "status": pixel_offset + n * s * s * 3}
    offsets["reasons"] = offsets["status"] + n
    if path.stat().st_size < offsets["reasons"] + n * REASON_BYTES:
        raise TrainingError(f"{path}: pack is truncated; remove it and pack the images again")
    return header, offsets


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
