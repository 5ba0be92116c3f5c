"""Images in, L2-normalised float32 vectors out: batching, parallel decoding, device and precision.

The contract follows sentence-transformers' ``encode``: one image in gives one vector, a list gives a
matrix; ``device="auto"`` picks cuda, then mps, then cpu; finished batches move back to the CPU at once.
Catalog indexing uses ``encode_files``, which decodes in worker processes overlapped with the model and
reports every unreadable file with its reason instead of dropping or replacing it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import EncodeOptions
from .embedders.timm import TimmEmbedder, prepare_with
from .errors import LookalikeError
from .images import ImageInput, content_hash, decode, load_image, source_size

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu.

    Raises:
        LookalikeError: the named device is not present.
    """
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise LookalikeError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LookalikeError(f"--device {device}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LookalikeError(f"--device {device}: Apple MPS is not available here; use --device cpu or auto")
    return dev


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matrix work runs natively rather than emulated (and slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32.

    ``auto``: bf16 on CUDA GPUs that support it (else fp16), bf16 on CPUs with native bf16 units (the
    index benchmark checks recall@10 against fp32 stays >= 0.98), fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise LookalikeError("--precision fp16 is not supported on the CPU; use bf16 or fp32")
        return torch.float16
    if precision != "auto":
        raise LookalikeError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def default_batch_size(device: torch.device) -> int:
    # CPU: oneDNN runs ResNet-50 fastest at small batches (bs 8: 78-87 img/s bf16 vs 63 at bs 32 on 2 cores).
    return {"cuda": 256, "mps": 64}.get(device.type, 8)


def default_workers() -> int:
    """Decoding processes: one per core, capped; the model's own threads share the cores on CPU runs."""
    return max(1, min(_cores(), 16))


def _cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Encoder:
    """An embedder placed on a device in the chosen precision, ready to turn uint8 batches into vectors."""

    def __init__(self, embedder: TimmEmbedder, options: EncodeOptions | None = None):
        self.options = options or EncodeOptions()
        self.embedder = embedder
        self.device = resolve_device(self.options.device)
        self.dtype = resolve_precision(self.options.precision, self.device)
        self.batch_size = self.options.batch_size or default_batch_size(self.device)
        if self.batch_size < 1:
            raise LookalikeError(f"--batch-size {self.batch_size}: must be at least 1")
        self.model, self._whole_model_dtype = _place_model(embedder.model, self.device, self.dtype)

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @torch.inference_mode()
    def embed_uint8(self, batch: torch.Tensor) -> np.ndarray:
        """N x H x W x 3 uint8 -> N x D float32, unit length."""
        x = batch.to(self.device, non_blocking=True)
        x = self.embedder.normalize(x).contiguous(memory_format=torch.channels_last)
        if self._whole_model_dtype is not None:
            out = self.model(x.to(self._whole_model_dtype))
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float32,
                                enabled=self.dtype is not None):
                out = self.model(x)
        out = F.normalize(out.float().flatten(1), dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def encode(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """One image -> a D vector; a list -> an N x D matrix.

        Raises:
            ImageError: an image cannot be read (the message names it).
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        out = np.zeros((len(items), self.embedder.dim), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            arrays = [self.prepare(im) for im in chunk]
            out[start:start + len(chunk)] = self.embed_uint8(torch.from_numpy(np.stack(arrays)))
        return out[0] if single else out

    def prepare(self, image: ImageInput) -> np.ndarray:
        """Decode and resize one image to the model's uint8 H x W x 3 input, on the calling thread, so
        servers can decode in parallel and batch only the model call.

        Raises:
            ImageError: the image cannot be read.
        """
        return self.embedder.prepare(load_image(image, draft_size=self._draft, max_pixels=self.options.max_pixels))

    @property
    def _draft(self) -> int | None:
        return self.embedder.draft_size if self.options.draft else None


_NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)


def _place_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
                 ) -> tuple[torch.nn.Module, torch.dtype | None]:
    """Move the model to its device in channels-last; on CPU in bf16, fold BatchNorm into the convolutions
    and cast the whole model once.

    Autocast re-casts every weight on every call, which costs a ResNet-50 about a quarter of its CPU time
    at small batches; casting once is only safe when no normalisation layer is left to run in bf16 (with
    BN folded, vectors stay within cosine 0.99999 of fp32). Models that cannot be folded keep autocast.
    Returns the model and the dtype its inputs must have (None: use autocast).
    """
    model = model.to(device, memory_format=torch.channels_last).eval()
    if device.type == "cuda" and not torch.backends.cudnn.deterministic:  # a seeded training run asked for it
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN time its algorithms once
    if device.type != "cpu" or dtype is None:
        return model, None
    try:
        from torch.fx.experimental.optimization import fuse

        folded = fuse(model)
    except Exception as exc:  # noqa: BLE001 - fx cannot trace every timm model; autocast still works
        log.debug("BatchNorm folding not possible (%s); using autocast", exc)
        return model, None
    if any(isinstance(m, _NORMS) for m in folded.modules()):
        return model, None
    return folded.to(dtype=dtype, memory_format=torch.channels_last).eval(), dtype


@dataclass(frozen=True)
class FileTask:
    """A file to embed; ``known_hash`` lets a worker skip decoding when the content has not changed."""

    path: Path
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


class _FileDataset(torch.utils.data.Dataset):
    """Read, hash and decode one file in a worker; failures become results, never exceptions."""

    def __init__(self, tasks: Sequence[FileTask], embedder: TimmEmbedder, draft: int | None, max_pixels: int,
                 max_bytes: int):
        self.tasks = tasks
        self.pil_transform = embedder.pil_transform
        self.draft = draft
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> tuple[FileResult, np.ndarray | None]:
        task = self.tasks[i]
        result = FileResult(task)
        try:
            size = task.path.stat().st_size
            if size > self.max_bytes:
                result.size = size
                result.error = f"file is {size / 2**20:.0f} MB, over the {self.max_bytes / 2**20:.0f} MB limit"
                return result, None
            data = task.path.read_bytes()
        except OSError as exc:
            result.error = f"cannot read file ({exc.strerror or exc})"
            return result, None
        result.size = len(data)
        result.sha256 = content_hash(data)
        if task.known_hash is not None and task.known_hash == result.sha256:
            result.unchanged = True
            return result, None
        try:
            img = decode(data, draft_size=self.draft, max_pixels=self.max_pixels)
            result.width, result.height = source_size(img)
            return result, prepare_with(self.pil_transform, img)
        except LookalikeError as exc:
            result.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a transform may still choke on a strange file
            result.error = f"cannot prepare image ({type(exc).__name__}: {str(exc)[:120]})"
        return result, None


def _collate(items: list[tuple[FileResult, np.ndarray | None]]):
    ok = [(r, a) for r, a in items if a is not None]
    others = [r for r, a in items if a is None]
    arrays = torch.from_numpy(np.stack([a for _, a in ok])) if ok else None
    return [r for r, _ in ok], arrays, others


def _set_threads(threads: int, _worker: int) -> None:
    torch.set_num_threads(threads)


_worker_init = functools.partial(_set_threads, 1)  # decoding workers leave the cores to the model


@dataclass(frozen=True)
class WorkerPlan:
    """How ``encode_files`` spreads the work: ``workers`` processes, each decoding and, when
    ``embed_in_workers``, also running its own copy of the model on ``threads`` threads."""

    workers: int
    embed_in_workers: bool
    threads: int = 1


def plan_workers(encoder: Encoder, count: int) -> WorkerPlan:
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
    return WorkerPlan(workers, True, max(1, _cores() // workers))


def _can_fork() -> bool:
    """Linux forks safely whatever the default start method (Python 3.14 defaults to forkserver); macOS
    frameworks do not survive a fork, and Windows has none."""
    return sys.platform == "linux"


class _EmbeddedBatches(torch.utils.data.Dataset):
    """Batch ``b`` decoded and embedded inside a worker process: only vectors cross back."""

    def __init__(self, files: _FileDataset, encoder: Encoder):
        self.files = files
        self.encoder = encoder
        self.size = encoder.batch_size

    def __len__(self) -> int:
        return -(-len(self.files) // self.size)

    def __getitem__(self, b: int) -> EncodedBatch:
        start = b * self.size
        embedded, arrays, others = _collate([self.files[i] for i in range(start, min(start + self.size,
                                                                                      len(self.files)))])
        vectors = self.encoder.embed_uint8(arrays) if arrays is not None else None
        return EncodedBatch(embedded=embedded, vectors=vectors, others=others)


def encode_files(encoder: Encoder, tasks: Sequence[FileTask]) -> Iterator[EncodedBatch]:
    """Embed files in batches, decoding in parallel workers; yields batches in task order."""
    options = encoder.options
    plan = plan_workers(encoder, len(tasks))
    dataset = _FileDataset(tasks, encoder.embedder, encoder._draft, options.max_pixels, options.max_bytes)
    if plan.embed_in_workers:
        loader = torch.utils.data.DataLoader(
            _EmbeddedBatches(dataset, encoder),
            batch_size=None,
            num_workers=plan.workers,
            collate_fn=_as_is,
            worker_init_fn=functools.partial(_set_threads, plan.threads),
            prefetch_factor=2,
            multiprocessing_context="fork",
        )
        with _worker_deaths_explained(plan):
            yield from loader
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=encoder.batch_size,
        num_workers=plan.workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if plan.workers else None,
        prefetch_factor=4 if plan.workers else None,
        pin_memory=encoder.device.type == "cuda",
    )
    with _worker_deaths_explained(plan):
        for embedded, arrays, others in loader:
            vectors = encoder.embed_uint8(arrays) if arrays is not None else None
            yield EncodedBatch(embedded=embedded, vectors=vectors, others=others)


def _as_is(batch: EncodedBatch) -> EncodedBatch:
    return batch


@contextlib.contextmanager
def _worker_deaths_explained(plan: WorkerPlan) -> Iterator[None]:
    """A worker killed from outside (most often by the kernel, out of memory) becomes one line saying what
    to change; what earlier batches wrote stays written."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if "DataLoader worker" not in text or not any(
                died in text for died in ("exited unexpectedly", "killed by signal")):
            raise  # an error raised inside a worker is re-raised as itself: a bug to see, not a resource
        reason = text.split(". ", 1)[0].strip().rstrip(".")
        raise LookalikeError(
            f"a worker process stopped ({reason}); everything indexed so far is kept. If memory ran out, "
            f"rerun with fewer --workers (now {plan.workers}) or a smaller --batch-size; the rerun resumes"
        ) from exc

