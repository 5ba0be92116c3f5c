"""The PyTorch side of ``Encoder``: device, precision, placing the model, and the DataLoader pipelines.

Imported only when an embedder needs a network (``needs_torch``): catalogs of model-free embedders, and
every command that reads stored vectors, never load PyTorch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..core import cpu
from ..core.errors import LookalikeError
from .files import EncodedBatch, FileReader, FileResult, WorkerPlan, plan_workers
from .files import default_batch_size as default_batch_size_for

if TYPE_CHECKING:
    from .embed import Encoder
    from .files import FileTask

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
    if device.type == "cpu" and cpu.has_native_bf16():
        return torch.bfloat16
    return None


def default_batch_size(device: torch.device) -> int:
    return default_batch_size_for(device.type)


PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def embed_batch(encoder: Encoder, batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 N x H x W x 3 -> N x D float32, unit length, with the encoder's placed model."""
    with torch.inference_mode():
        x = torch.as_tensor(batch).to(encoder.device, non_blocking=True)
        x = encoder.embedder.normalize(x).contiguous(memory_format=torch.channels_last)
        if encoder.model_dtype is not None:
            out = encoder.model(x.to(encoder.model_dtype))
        else:
            with torch.autocast(device_type=encoder.device.type, dtype=encoder.dtype or torch.float32,
                                enabled=encoder.dtype is not None):
                out = encoder.model(x)
        out = F.normalize(out.float().flatten(1), dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)


TEXT_BATCH_SIZE = 256  # texts per text-tower call: short token rows, so larger batches than photos


def embed_texts(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Texts -> N x D float32 unit vectors with the encoder's text tower (placed on its device on first use;
    autocast in the encoder's precision)."""
    embedder = encoder.embedder
    if encoder.text_model is None:
        encoder.text_model = embedder.text_model.to(encoder.device).eval()
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), TEXT_BATCH_SIZE):
            tokens = embedder.tokenize(texts[start:start + TEXT_BATCH_SIZE]).to(encoder.device)
            with torch.autocast(device_type=encoder.device.type, dtype=encoder.dtype or torch.float32,
                                enabled=encoder.dtype is not None):
                features = encoder.text_model(tokens)
            out[start:start + len(tokens)] = F.normalize(features.float(), dim=1).cpu().numpy()
    return out


_NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)


def place_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
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


def collate(items: list[tuple[FileResult, np.ndarray | None]]):
    """DataLoader collate: decoded rows stacked into one uint8 tensor, failed or unchanged files apart."""
    ok = [(r, a) for r, a in items if a is not None]
    others = [r for r, a in items if a is None]
    arrays = torch.from_numpy(np.stack([a for _, a in ok])) if ok else None
    return [r for r, _ in ok], arrays, others


def set_threads(threads: int, _worker: int) -> None:
    torch.set_num_threads(threads)


decoding_worker_init = functools.partial(set_threads, 1)  # decoding workers leave the cores to the model


class EmbeddedBatches(torch.utils.data.Dataset):
    """Batch ``b`` decoded and embedded inside a worker process: only vectors cross back."""

    def __init__(self, files: FileReader, encoder: Encoder):
        self.files = files
        self.encoder = encoder
        self.size = encoder.batch_size

    def __len__(self) -> int:
        return -(-len(self.files) // self.size)

    def __getitem__(self, b: int) -> EncodedBatch:
        start = b * self.size
        embedded, arrays, others = collate([self.files[i] for i in range(start, min(start + self.size,
                                                                                      len(self.files)))])
        vectors = embed_batch(self.encoder, arrays) if arrays is not None else None
        return EncodedBatch(embedded=embedded, vectors=vectors, others=others)


def encode_files_torch(encoder: Encoder, tasks: list[FileTask]) -> Iterator[EncodedBatch]:
    """``embed.encode_files`` for network models: DataLoader workers decode (on a CPU in reduced precision
    they also embed, see ``plan_workers``); yields batches in task order."""
    options = encoder.options
    plan = plan_workers(encoder, len(tasks))
    dataset = FileReader(tasks, encoder.embedder.pil_transform, encoder.draft_size, options.max_pixels,
                         options.max_bytes)
    if plan.embed_in_workers:
        loader = torch.utils.data.DataLoader(
            EmbeddedBatches(dataset, encoder),
            batch_size=None,
            num_workers=plan.workers,
            collate_fn=_as_is,
            worker_init_fn=functools.partial(set_threads, plan.threads),
            prefetch_factor=2,
            multiprocessing_context="fork",
        )
        with _worker_deaths_explained(plan), _workers_stopped(iter(loader)) as batches:
            yield from batches
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=encoder.batch_size,
        num_workers=plan.workers,
        collate_fn=collate,
        worker_init_fn=decoding_worker_init if plan.workers else None,
        prefetch_factor=4 if plan.workers else None,
        pin_memory=encoder.device.type == "cuda",
    )
    with _worker_deaths_explained(plan), _workers_stopped(iter(loader)) as batches:
        for embedded, arrays, others in batches:
            vectors = embed_batch(encoder, arrays) if arrays is not None else None
            yield EncodedBatch(embedded=embedded, vectors=vectors, others=others)


@contextlib.contextmanager
def _workers_stopped(batches: Iterator) -> Iterator[Iterator]:
    """Stop a DataLoader iterator's worker processes as soon as the loop over it ends, also on an error or an
    abandoned generator: left to the garbage collector, an iterator kept alive by the error's traceback stopped
    its workers only when collected, and that shutdown waited out a 5 s join timeout per worker."""
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # absent with no workers (num_workers=0)
        if shutdown is not None:
            shutdown()


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

