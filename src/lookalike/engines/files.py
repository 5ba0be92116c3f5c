"""Files to embed and what became of each: tasks, results, batches, the reader that decodes them, and how
many worker processes read them (``plan_workers``). Shared by both runtimes of ``embed``; imports no
PyTorch."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import LookalikeError
from ..core.images import content_hash, decode, source_size
from ..core.storage import Location, read_bytes, size_of
from ..models.base import prepare_with

HOST_BATCH_SIZE = 64  # model-free embedders: NumPy work per batch is small, so batches are larger
# Images per model call by device type. CPU: oneDNN runs ResNet-50 fastest at small batches (bs 8: 78-87
# img/s bf16 vs 63 at bs 32 on 2 cores).
DEVICE_BATCH_SIZES = {"cuda": 256, "mps": 64}
CPU_BATCH_SIZE = 8


def default_batch_size(device_type: str, needs_torch: bool = True) -> int:
    """Images per model call when ``--batch-size`` is not given: by device for network models, larger for
    the NumPy embedders. Needs no PyTorch, so an engine can size batches before any model is placed."""
    if not needs_torch:
        return HOST_BATCH_SIZE
    return DEVICE_BATCH_SIZES.get(device_type, CPU_BATCH_SIZE)


def default_workers() -> int:
    """Decoding processes: one per core, capped; the model's own threads share the cores on CPU runs."""
    return max(1, min(cores(), 16))


def cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class FileTask:
    """A file to embed (a local path or an object's URL); ``known_hash`` lets a worker skip decoding when the
    content has not changed."""

    path: Location
    known_hash: str | None = None
    ref: int = -1  # the caller's handle for matching results back to its own records


@dataclass
class FileResult:
    task: FileTask
    size: int = 0
    sha256: str | None = None
    width: int = 0
    height: int = 0
    error: str | None = None  # one-line reason the file was not embedded
    unchanged: bool = False  # same content as known_hash: nothing to embed


@dataclass
class EncodedBatch:
    """A batch of results in task order; ``vectors[i]`` belongs to ``embedded[i]``."""

    embedded: list[FileResult] = field(default_factory=list)
    vectors: np.ndarray | None = None
    others: list[FileResult] = field(default_factory=list)  # failed or unchanged


class FileReader:
    """Read, hash and decode file ``i`` (in a worker process or thread); failures become results, never
    exceptions. A map-style dataset (``len`` and ``[i]``), so PyTorch's DataLoader takes it as it is."""

    def __init__(self, tasks: Sequence[FileTask], pil_transform, draft: int | None, max_pixels: int, max_bytes: int):
        self.tasks = tasks
        self.pil_transform = pil_transform
        self.draft = draft
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> tuple[FileResult, np.ndarray | None]:
        task = self.tasks[i]
        result = FileResult(task)
        try:
            size = size_of(task.path)
            if size > self.max_bytes:
                result.size = size
                result.error = f"file is {size / 2**20:.0f} MB, over the {self.max_bytes / 2**20:.0f} MB limit"
                return result, None
            data = read_bytes(task.path)
        except OSError as exc:
            result.error = f"cannot read file ({exc.strerror or exc})"
            return result, None
        result.size = len(data)
        result.sha256 = content_hash(data)
        if task.known_hash is not None and task.known_hash == result.sha256:
            result.unchanged = True
            return result, None
        try:
            img = decode(data, draft_size=self.draft, max_pixels=self.max_pixels, name=str(task.path))
            result.width, result.height = source_size(img)
            return result, prepare_with(self.pil_transform, img)
        except LookalikeError as exc:
            result.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a transform may still choke on a strange file
            result.error = f"cannot prepare image ({type(exc).__name__}: {str(exc)[:120]})"
        return result, None


def stack_results(items: list[tuple[FileResult, np.ndarray | None]]
                  ) -> tuple[list[FileResult], np.ndarray | None, list[FileResult]]:
    """Decoded rows stacked into one uint8 array; failed or unchanged files apart, in order."""
    ok = [(r, a) for r, a in items if a is not None]
    others = [r for r, a in items if a is None]
    return [r for r, _ in ok], (np.stack([a for _, a in ok]) if ok else None), others


@dataclass(frozen=True)
class WorkerPlan:
    """How ``encode_files`` spreads the work: ``workers`` processes, each decoding and, when
    ``embed_in_workers``, also running its own copy of the model on ``threads`` threads."""

    workers: int
    embed_in_workers: bool
    threads: int = 1


def plan_workers(encoder: Any, count: int) -> WorkerPlan:
    """The processes ``encode_files`` starts for ``count`` files.

    On an accelerator the model stays in this process and the workers only decode. On a CPU a model that
    shares its cores with decoding processes loses to preemption: one descheduled OpenMP thread stalls every
    convolution (ResNet-50 bf16, 2 cores: 66 img/s with two decoding workers, 73 decoding inline). So each
    worker gets a single-threaded copy of the model (forked, shared copy-on-write) and runs decode and
    forward for whole batches with no cross-core synchronisation (82 img/s). Where processes cannot be
    forked (macOS, Windows), copying the model into every worker would cost more than it saves: workers
    only decode.

    The split is for reduced precision only: bf16 convolutions scale linearly with threads (49.9 img/s on one,
    97 on two), fp32 ones do not (16.4 on one, 46.3 on two), so an fp32 model keeps all the cores.
    """
    workers = default_workers() if encoder.options.workers is None else encoder.options.workers
    batches = -(-count // max(1, encoder.batch_size))
    workers = min(workers, max(1, batches)) if workers else 0
    if encoder.device.type != "cpu" or encoder.dtype is None or workers < 2 or not _can_fork():
        return WorkerPlan(workers, False)
    return WorkerPlan(workers, True, max(1, cores() // workers))


def _can_fork() -> bool:
    """Linux forks safely whatever the default start method (Python 3.14 defaults to forkserver); macOS
    frameworks do not survive a fork, and Windows has none."""
    return sys.platform == "linux"
