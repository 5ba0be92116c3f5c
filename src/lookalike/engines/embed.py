"""Images in, L2-normalised float32 vectors out: batching, parallel decoding, device and precision.

The contract follows sentence-transformers' ``encode``: one image in gives one vector, a list gives a
matrix; ``device="auto"`` picks cuda, then mps, then cpu; finished batches move back to the CPU at once.
Catalog indexing uses ``encode_files``, which decodes in parallel workers and reports every unreadable file
with its reason instead of dropping or replacing it.

Network models run on PyTorch (``torch_runtime``, imported only for them) or, on x86 CPUs, on OpenVINO
(``openvino_runtime``: the same network converted once, in fp32, bf16 or int8); model-free embedders
(``colorhist``, ``pixels``) run on NumPy with decoding threads, and never import PyTorch.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..core import cpu
from ..core.config import EncodeOptions
from ..core.errors import LookalikeError
from ..core.images import ImageInput, load_image
from .files import (
    HOST_BATCH_SIZE,
    EncodedBatch,
    FileReader,
    FileResult,
    FileTask,
    WorkerPlan,
    cores,
    default_batch_size,
    default_workers,
    plan_workers,
    stack_results,
)

if TYPE_CHECKING:
    from ..models.base import Embedder
    from ..models.texttower import TextTower
    from .openvino_runtime import Int8Model

log = logging.getLogger(__name__)

__all__ = ["EncodedBatch", "Encoder", "Engine", "FileReader", "FileResult", "FileTask", "HostDevice", "WorkerPlan",
           "HOST_BATCH_SIZE", "cores", "default_batch_size", "default_workers", "encode_files", "plan_workers"]


class Engine(Protocol):
    """Somewhere other than this process that turns files into vectors (``ray_engine.RayEngine``).

    The contract is ``encode_files``': every task comes back exactly once, embedded (with its vector) or among
    ``others`` (failed with its reason, or unchanged); batches may come in any order. ``Catalog.add`` commits
    them with the same loop as the local encoder's.
    """

    name: str

    def encode_files(self, embedder: Embedder, options: EncodeOptions, tasks: Sequence[FileTask], *,
                     int8: Int8Model | None = None) -> Iterator[EncodedBatch]: ...

    def detail(self) -> dict: ...


@dataclass(frozen=True)
class HostDevice:
    """Where a model-free embedder runs: this process's CPU (NumPy). Prints and compares like a device."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


class Encoder:
    """An embedder placed on a device in the chosen precision, ready to turn uint8 batches into vectors.

    ``runtime`` says what runs it: ``torch`` (``device`` a ``torch.device``, ``dtype`` the reduced precision or
    None), ``openvino`` (the CPU; ``model`` an ``openvino_runtime.OpenVinoModel`` in fp32, bf16 or int8) or
    ``numpy`` for model-free embedders (``device`` is ``HostDevice("cpu")``, PyTorch is never imported).
    ``int8`` is a model quantised on a catalog's photos (``Catalog`` passes its own); OpenVINO's ``auto``
    precision uses it when it passed its gate. ``text_tower`` is a LiT text tower trained against this image model
    (``models.texttower``; ``Catalog`` passes the one added to it): ``encode_text`` then uses it, in NumPy.

    Raises:
        LookalikeError: unknown or absent device, runtime or precision, batch size below 1.
    """

    def __init__(self, embedder: Embedder, options: EncodeOptions | None = None, *, int8: Int8Model | None = None,
                 cache_dir: Path | None = None, text_tower: TextTower | None = None):
        self.options = options or EncodeOptions()
        self.embedder = embedder
        self.text_tower = text_tower  # a LiT tower trained against this image model: words without the model's own
        self.model: Any = None
        self.text_model: Any = None  # the text tower, placed on the device when words are first embedded
        self.model_dtype: Any = None  # the dtype inputs are cast to when the whole model was cast (else autocast)
        self.dtype: Any = None
        self.int8 = int8
        converted_xml = getattr(embedder, "converted_xml", None)  # a ReplayedEmbedder: OpenVINO, no PyTorch
        if converted_xml is not None:
            from . import openvino_runtime as ovr

            native_bf16 = cpu.has_native_bf16()
            self.device, self.runtime = HostDevice(), "openvino"
            self._precision = ovr.resolve_precision(self.options.precision, native_bf16, int8)
            self.batch_size = self.options.batch_size or default_batch_size("cpu")
        elif getattr(embedder, "needs_torch", True):
            from . import openvino_runtime as ovr
            from . import torch_runtime as rt

            self.device, self.runtime, native_bf16 = resolve_network_runtime(self.options)
            if self.runtime == "openvino":
                self._precision = ovr.resolve_precision(self.options.precision, native_bf16, int8)
            else:
                self.dtype = rt.resolve_precision(self.options.precision, self.device)
                self._precision = rt.PRECISION_NAMES[self.dtype]
            self.batch_size = self.options.batch_size or rt.default_batch_size(self.device)
        else:
            self.runtime = "numpy"
            self.device, self._precision = HostDevice(), "fp32"
            self.batch_size = self.options.batch_size or HOST_BATCH_SIZE
        if self.batch_size < 1:
            raise LookalikeError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.runtime == "torch":
            self.model, self.model_dtype = rt.place_model(embedder.model, self.device, self.dtype)
        elif self.runtime == "openvino":
            if self._precision == "int8" and int8 is not None:
                xml = int8.path
            else:
                xml = converted_xml or ovr.converted(embedder, cache_dir)
            self.model = ovr.OpenVinoModel(xml, self._precision, native_bf16)

    @property
    def uses_torch(self) -> bool:
        return self.runtime == "torch"

    @property
    def precision(self) -> str:
        """fp32, bf16, fp16 or int8: what the model computes in."""
        return self._precision

    def describe(self) -> str:
        """e.g. ``openvino int8 on cpu``: the runtime, precision and device, as the CLI prints them."""
        runtime = "" if self.runtime == "numpy" else f"{self.runtime} "
        return f"{runtime}{self.precision} on {self.device}"

    def embed_uint8(self, batch) -> np.ndarray:
        """N x H x W x 3 uint8 (a NumPy array or a tensor) -> N x D float32, unit length."""
        if self.runtime == "numpy":
            return self.embedder.embed_arrays(np.asarray(batch))
        if self.runtime == "openvino":
            from .openvino_runtime import embed_batch as embed_openvino

            return embed_openvino(self, batch)
        from .torch_runtime import embed_batch

        return embed_batch(self, batch)

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
            out[start:start + len(chunk)] = self.embed_uint8(np.stack(arrays))
        return out[0] if single else out

    @property
    def has_text(self) -> bool:
        return self.text_tower is not None or bool(getattr(self.embedder, "has_text", False))

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """One text -> a D vector; a list -> an N x D matrix: the model's text tower, unit length, in the space of
        its photo vectors (same device and precision as the photos).

        Raises:
            NoTextModelError: the model embeds photos only (the message names models that embed words).
            ModelUnavailableError: the model's tokenizer cannot be loaded.
        """
        if not self.has_text:
            from ..models.registry import no_text_tower

            raise no_text_tower(self.embedder.info.name)
        single = isinstance(texts, str)
        items = [texts] if single else [str(t) for t in texts]
        if self.text_tower is not None:  # NumPy, whatever runs the image model
            out = self.text_tower.encode(items)
            return out[0] if single else out
        if self.runtime == "openvino":
            from .openvino_runtime import embed_texts
        else:
            from .torch_runtime import embed_texts
        out = embed_texts(self, items)
        return out[0] if single else out

    def prepare(self, image: ImageInput) -> np.ndarray:
        """Decode and resize one image to the model's uint8 H x W x 3 input, on the calling thread, so
        servers can decode in parallel and batch only the model call.

        Raises:
            ImageError: the image cannot be read.
        """
        return self.embedder.prepare(load_image(image, draft_size=self.draft_size,
                                                max_pixels=self.options.max_pixels))

    @property
    def draft_size(self) -> int | None:
        """The smallest side JPEG draft decoding may go down to (None: decode at full size)."""
        return self.embedder.draft_size if self.options.draft else None


def resolve_network_runtime(options: EncodeOptions) -> tuple[Any, str, bool]:
    """(``torch.device``, ``"torch"`` or ``"openvino"``, whether the CPU has native bf16) for a network model
    under ``options``, without placing any model: what ``Encoder`` starts from, and what a caller asks before
    deciding whether there is anything to quantise.

    Raises:
        LookalikeError: unknown or absent device or runtime; ``--precision int8`` where OpenVINO does not run.
    """
    from . import openvino_runtime as ovr
    from . import torch_runtime as rt

    device = rt.resolve_device(options.device)
    native_bf16 = cpu.has_native_bf16()
    runtime = ovr.resolve_runtime(options.runtime, device.type, native_bf16)
    if runtime != "openvino" and options.precision == "int8":
        raise LookalikeError("--precision int8 runs on OpenVINO: add --runtime openvino (a CPU run on x86), or "
                             "choose bf16 or fp32")
    return device, runtime, native_bf16


def openvino_without_torch(options: EncodeOptions) -> bool:
    """Would a network model run on OpenVINO under ``options`` here, as far as can be told without importing
    PyTorch? True for ``--device cpu`` or ``auto`` on a machine with no GPU device (``cpu.accelerator_possible``),
    when ``--runtime`` (``auto`` included) resolves to OpenVINO on the CPU. False whenever in doubt: the caller
    then loads the model and asks ``resolve_network_runtime``, which gives the same answer the slow way."""
    from . import openvino_runtime as ovr

    device = options.device or "auto"
    if device not in ("auto", "cpu") or (device == "auto" and cpu.accelerator_possible()):
        return False
    try:
        return ovr.resolve_runtime(options.runtime, "cpu", cpu.has_native_bf16()) == "openvino"
    except LookalikeError:
        return False


def encode_files(encoder: Encoder, tasks: Sequence[FileTask]) -> Iterator[EncodedBatch]:
    """Embed files in batches, decoding in parallel; yields batches in task order.

    Network models go through PyTorch DataLoader workers (``torch_runtime.encode_files_torch``); model-free
    embedders decode in a thread pool (Pillow releases the GIL while decoding and resizing) one batch ahead
    of NumPy.
    """
    if encoder.runtime == "torch":
        from .torch_runtime import encode_files_torch

        yield from encode_files_torch(encoder, list(tasks))
        return
    if encoder.runtime == "openvino":
        from .openvino_runtime import encode_files_openvino

        yield from encode_files_openvino(encoder, list(tasks))
        return
    options = encoder.options
    reader = FileReader(tasks, encoder.embedder.pil_transform, encoder.draft_size, options.max_pixels,
                        options.max_bytes)
    size, n = encoder.batch_size, len(reader)
    starts = iter(range(0, n, size))
    workers = default_workers() if options.workers is None else options.workers

    def finish(items: list[tuple[FileResult, np.ndarray | None]]) -> EncodedBatch:
        embedded, arrays, others = stack_results(items)
        vectors = encoder.embed_uint8(arrays) if arrays is not None else None
        return EncodedBatch(embedded=embedded, vectors=vectors, others=others)

    if workers == 0:
        for start in starts:
            yield finish([reader[i] for i in range(start, min(start + size, n))])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-decode") as pool:
        pending: deque = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append([pool.submit(reader.__getitem__, i) for i in range(start, min(start + size, n))])

        submit()
        submit()
        while pending:
            futures = pending.popleft()
            submit()
            yield finish([f.result() for f in futures])
