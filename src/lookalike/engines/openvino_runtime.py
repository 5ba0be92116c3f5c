"""The OpenVINO side of ``Encoder``: which runtime runs a network on the CPU, converting a PyTorch embedder
to OpenVINO once (cached on disk), int8 quantisation with NNCF behind an accuracy gate, and the pipelines.

Importing this module is light (NumPy only): ``openvino``, ``nncf`` and ``torch`` are imported inside the
functions that need them, so choosing a runtime costs nothing and a missing package is one line.

What runs where (measured on 2 cores, see docs/architecture.md): one compiled model per process. ``encode``
and the server's batcher use a latency-compiled copy (one stream, every core); ``encode_files`` a
throughput-compiled one (one stream per core, one infer request per stream) fed by decoding threads, so
a preempted stream stalls only itself, unlike an OpenMP team.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import cpu
from ..core.errors import LookalikeError
from ..core.storage import as_location
from ..models.preprocess import Preprocess
from . import int8_gate as gate
from .files import EncodedBatch, FileReader, FileTask, cores, default_workers, stack_results
from .int8_gate import GATE_K, GATE_RECALL, Int8Model, neighbour_recall

if TYPE_CHECKING:
    from ..core.config import EmbedderInfo
    from ..models.base import Embedder
    from .embed import Encoder

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
CALIBRATION_PHOTOS = 300  # photos NNCF sees to set the int8 ranges
HELD_PHOTOS = 100  # photos the gate compares int8 with fp32 on (never among the calibration ones if possible)
MIN_SPLIT = 80  # below this many photos the held sample is the calibration sample too (said in the record)
MIN_PHOTOS = 12  # fewer photos than this cannot calibrate or gate anything (``--precision int8``)
AUTO_MIN_PHOTOS = 100  # ``auto`` tries int8 once a catalog has this many: a gate on fewer says little
CALIBRATION_BATCH = 8
SEED = 0
CONVERSION_FORMAT = 1  # bump when the converted graph changes meaning (the cache key holds it)
INSTALL = "pip install openvino nncf"


def require_openvino() -> Any:
    """``import openvino``, or one line saying how to get it.

    Raises:
        LookalikeError: the package is not installed (or cannot be loaded here).
    """
    try:
        import openvino
    except ImportError as exc:
        raise LookalikeError(
            f"--runtime openvino needs the openvino package, which cannot be imported here ({exc}); "
            f"`{INSTALL}`, or use --runtime torch") from exc
    return openvino


def openvino_available() -> bool:
    try:
        require_openvino()
    except LookalikeError:
        return False
    return True


def resolve_runtime(runtime: str, device_type: str, native_bf16: bool) -> str:
    """``torch`` or ``openvino`` for a network model on ``device_type``.

    ``auto`` picks OpenVINO where ``benchmarks/index_throughput.py`` measured it faster than PyTorch: on x86
    CPUs, with native bf16 units (AVX512-BF16 or AMX; it runs bf16) and without (AVX2; it runs fp32, or int8
    behind its gate), when the package is installed; PyTorch everywhere else (GPUs, Apple, ARM, where
    nothing was measured).

    Raises:
        LookalikeError: unknown name; OpenVINO asked for on a GPU, or not installed.
    """
    if runtime in (None, "", "auto"):
        if device_type == "cpu" and cpu.is_x86() and openvino_available():
            return "openvino"
        return "torch"
    if runtime == "torch":
        return "torch"
    if runtime != "openvino":
        raise LookalikeError(f"unknown runtime {runtime!r}; use auto, torch or openvino")
    if device_type != "cpu":
        raise LookalikeError(f"--runtime openvino runs on the CPU, not {device_type}; use --device cpu, or "
                             "--runtime torch on the GPU")
    require_openvino()
    return "openvino"


def resolve_precision(precision: str, native_bf16: bool, int8: Int8Model | None) -> str:
    """fp32, bf16 or int8 on OpenVINO. ``auto``: bf16 on CPUs with native bf16 units; elsewhere int8 when a
    model quantised on the catalog's photos passed the gate, else fp32.

    Why not int8 wherever it passed: with bf16 units, bf16 already indexes at 3.2-4x the seed notebooks' loop
    with recall@10 0.99 against fp32, while int8 costs a little of what users see (the built-in MobileNetV2 on
    the shared photos: leave-one-out P@5 by articleType 0.693 in bf16, 0.687 in int8); without them the choice
    is int8 or fp32 at half its speed (docs/benchmarks-speed.md). ``--precision int8`` is there either way.

    Raises:
        LookalikeError: fp16 or an unknown name; int8 without a calibrated model.
    """
    if precision in (None, "", "auto"):
        if native_bf16:
            return "bf16"
        return "int8" if int8 is not None and int8.passed else "fp32"
    if precision == "fp16":
        raise LookalikeError("--precision fp16 is not offered on the CPU; use bf16, int8 or fp32")
    if precision not in PRECISIONS:
        raise LookalikeError(f"unknown precision {precision!r}; use auto, fp32, bf16 or int8")
    if precision == "int8" and int8 is None:
        raise LookalikeError("--precision int8 needs a model quantised on a catalog's own photos; `lookalike index "
                             "SOURCE --catalog PATH --precision int8` makes one (then search and serve use it)")
    return precision


# -- conversion --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where converted models are kept: ``$LOOKALIKE_OPENVINO_CACHE``, else beside the Hugging Face hub cache
    (``$HF_HOME/lookalike/openvino``), where the weights they were made from live."""
    where = os.environ.get("LOOKALIKE_OPENVINO_CACHE")
    if where:
        return Path(where).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME).expanduser() / "lookalike" / "openvino"


def input_shape(embedder: Embedder) -> tuple[int, int]:
    """The model's input height and width: what the embedder's PIL step makes of any picture."""
    from PIL import Image

    h, w, _ = embedder.prepare(Image.new("RGB", (1024, 1024), "white")).shape
    return int(h), int(w)


def model_key(embedder: Embedder, shape: tuple[int, ...], kind: str, extra: str = "") -> str:
    """Name + timm model + weights id + pooling + input shape + kind (+ extra): what makes two converted
    models the same; part of the cache file names."""
    return info_key(embedder.info, shape, kind, extra)


def info_key(info: EmbedderInfo, shape: tuple[int, ...], kind: str, extra: str = "") -> str:
    """``model_key`` from what a catalog records of its model (``EmbedderInfo``): no model needed."""
    ov = require_openvino()
    text = json.dumps({"name": info.name, "timm": info.timm_name, "weights": info.weights, "dim": info.dim,
                       "pool": info.pool, "shape": list(shape), "kind": kind, "extra": extra,
                       "openvino": ov.__version__.split("-")[0], "format": CONVERSION_FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name.split("#")[0]).name if name.endswith(".lkm") or "/" in name
                  else name)[:48]


def converted(embedder: Embedder, cache_dir: Path | None = None) -> Path:
    """The embedder as an OpenVINO model file (fp32 weights: bf16 is a compile-time hint), converted once
    per model, weights and input shape and then read from the cache.

    The graph takes the uint8 N x H x W x 3 batches the decoding workers make and returns the model's
    features; scaling and normalisation are inside it, the final L2 normalisation is not (int8 would
    quantise it; NumPy does it exactly).

    Raises:
        LookalikeError: the cache folder is not writable, or the model cannot be converted.
    """
    shape = input_shape(embedder)
    xml = _convert(embedder, "fp32", shape, lambda: _features_module(embedder),
                   lambda torch: torch.zeros((2, *shape, 3), dtype=torch.uint8), (-1, *shape, 3), cache_dir)
    _record_preprocess(xml.parent, Preprocess.of(embedder))
    return xml


def _record_preprocess(folder: Path, preprocess: Preprocess | None) -> None:
    """Add the model's preprocessing to a converted model's ``source.json`` (models converted before it was
    recorded get it on their next use), atomically, so ``cached_conversion`` can replay it without PyTorch."""
    if preprocess is None:
        return
    source = folder / "source.json"
    try:
        record = json.loads(source.read_text())
        if record.get("preprocess") == preprocess.to_dict():
            return
        record["preprocess"] = preprocess.to_dict()
        tmp = folder / f".source-{os.getpid()}-{threading.get_ident()}.json"
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(source)
    except (OSError, ValueError) as exc:  # a read-only cache: the next search loads the model, as before
        log.info("cannot record the preprocessing in %s (%s)", source, exc)


def cached_conversion(info: EmbedderInfo, cache_dir: Path | None = None) -> tuple[Path, Preprocess] | None:
    """The fp32 OpenVINO file converted from the model ``info`` names, and its recorded preprocessing, when both
    are in the cache and whole; None otherwise (then the model must be loaded and converted). Imports no PyTorch:
    what a search on a cached model runs on (``models.preprocess.ReplayedEmbedder``)."""
    root = cache_dir or default_cache_dir()
    slug = _slug(info.name)
    try:
        sources = sorted(root.glob(f"{glob.escape(slug)}-*/source.json"))
    except OSError:
        return None
    for source in sources:
        folder = source.parent
        try:
            record = json.loads(source.read_text())
        except (OSError, ValueError):
            continue
        preprocess = Preprocess.from_dict(record.get("preprocess") or {})
        if record.get("kind") != "fp32" or preprocess is None:
            continue
        shape = tuple(int(v) for v in record.get("shape", ()))
        if shape != preprocess.crop or folder.name != f"{slug}-{info_key(info, shape, 'fp32')}":
            continue  # another model, weights, input shape or OpenVINO version under the same name
        if cache_damage(folder) is None:
            return folder / "model.xml", preprocess
    return None


def converted_text(embedder: Embedder, cache_dir: Path | None = None) -> Path:
    """A text+image embedder's text tower as an OpenVINO model file: N x L token ids (int64, L the model's
    context length, what ``embedder.tokenize`` makes) -> N x D features, not normalised; converted once per
    model and weights, like ``converted``.

    Raises:
        LookalikeError: the cache folder is not writable, or the tower cannot be converted.
    """
    length = int(embedder.tokenize([""]).shape[1])
    return _convert(embedder, "text", (length,), lambda: embedder.text_model.eval(),
                    lambda torch: torch.zeros((2, length), dtype=torch.long), (-1, length), cache_dir)


def _convert(embedder: Embedder, kind: str, shape: tuple[int, ...], module, example, dynamic: tuple[int, ...],
             cache_dir: Path | None) -> Path:
    """``openvino.convert_model(module(), example_input=example(torch))`` saved as fp32 IR in the cache, once per
    key (``model_key``): processes that ask at once wait on a lock file for the first one's result. PyTorch is
    imported only to convert, not to find a model converted before."""
    root = cache_dir or default_cache_dir()
    suffix = "" if kind == "fp32" else f"-{kind}"
    folder = root / f"{_slug(embedder.info.name)}-{model_key(embedder, shape, kind)}{suffix}"
    xml = folder / "model.xml"
    if folder.is_dir() and cache_damage(folder) is None:
        return xml
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LookalikeError(f"cannot write the OpenVINO model cache {root} ({exc.strerror or exc}); set "
                             "LOOKALIKE_OPENVINO_CACHE to a writable folder, or use --runtime torch") from exc
    with _conversion_lock(root / f".{folder.name}.lock"):
        if folder.is_dir():
            damage = cache_damage(folder)
            if damage is None:  # converted by another process while we waited
                return xml
            log.warning("%s: %s; converting the model again", folder, damage)
            shutil.rmtree(folder, ignore_errors=True)
        return _convert_unlocked(embedder, kind, shape, module, example, dynamic, root, folder)


MODEL_FILES = ("model.xml", "model.bin")


def cache_damage(folder: Path) -> str | None:
    """Why a converted model in the cache cannot be trusted (a file missing, or not the size it was written
    with: a truncated copy, a full disk), or None when it is whole. The sizes are recorded in its
    ``source.json`` when it is converted."""
    try:
        recorded = json.loads((folder / "source.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its record (source.json) is missing or unreadable"
    for name in MODEL_FILES:
        try:
            size = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != recorded.get(name):
            return f"{name} is {size:,} bytes, written as {recorded.get(name)!r}"
    return None


def openvino_reason(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what went wrong (its first lines name source files)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))
              and not line.endswith("failed with GeneralFailure:")]
    return ((useful or lines or [type(exc).__name__])[-1])[:200]


@contextlib.contextmanager
def _conversion_lock(path: Path) -> Iterator[None]:
    """One conversion of a model at a time on this machine (``flock``): Ray actors, server replicas or
    processes started together wait for the first one's result instead of each tracing the model again.
    Where locking is not available the conversions run side by side and the first rename wins."""
    try:
        import fcntl

        handle = open(path, "a+b")  # noqa: SIM115 - held for the whole conversion
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def _convert_unlocked(embedder: Embedder, kind: str, shape: tuple[int, ...], module, example,
                      dynamic: tuple[int, ...], root: Path, folder: Path) -> Path:
    ov = require_openvino()
    import torch

    xml = folder / "model.xml"
    try:
        building = Path(tempfile.mkdtemp(prefix=".converting-", dir=root))
    except OSError as exc:
        raise LookalikeError(f"cannot write the OpenVINO model cache {root} ({exc.strerror or exc}); set "
                             "LOOKALIKE_OPENVINO_CACHE to a writable folder, or use --runtime torch") from exc
    what = embedder.info.name if kind == "fp32" else f"{embedder.info.name} ({kind} tower)"
    log.info("converting %s to OpenVINO (once; cached in %s)", what, folder)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing's deprecation and shape notes: the graph is checked by tests
            model = ov.convert_model(module(), example_input=example(torch), input=[dynamic])
        ov.save_model(model, building / "model.xml", compress_to_fp16=False)
        files = {name: (building / name).stat().st_size for name in MODEL_FILES}
        (building / "source.json").write_text(json.dumps({**asdict(embedder.info), "shape": list(shape),
                                                          "kind": kind, "files": files}, indent=2))
        try:
            os.rename(building, folder)
        except OSError:  # another process converted it meanwhile
            if not xml.is_file():
                raise
    except LookalikeError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways; PyTorch still works
        raise LookalikeError(f"cannot convert {what} to OpenVINO ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); use "
                             "--runtime torch") from exc
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return xml


def _features_module(embedder: Embedder):
    """uint8 NHWC -> features, the embedder's own ``normalize`` and ``model`` (any embedder with a torch
    ``model``: timm CNNs, ``.lkm`` models)."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = embedder.model.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(embedder.normalize(x)).float().flatten(1)

    return Features().eval()


# -- running -----------------------------------------------------------------------------------------


def unit_rows(features: np.ndarray) -> np.ndarray:
    out = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


_LIVE: weakref.WeakSet = weakref.WeakSet()
_CORE: list = []  # the process's one ov.Core, never freed
_CORE_LOCK = threading.Lock()


def core() -> Any:
    """The process's one ``openvino.Core``, kept alive until exit.

    OpenVINO's CPU plugin gives the thread that first compiles a model an alternate signal stack, and frees
    it from whichever thread destroys the plugin (when the last Core goes). Freed from another thread, it
    leaves the first thread's signal stack pointing at unmapped memory, and that thread's next signal (a
    SIGCHLD from any subprocess) kills the process with SIGSEGV. One Core for the whole process loads the
    plugin once and never unloads it.
    """
    with _CORE_LOCK:
        if not _CORE:
            _CORE.append(require_openvino().Core())
        return _CORE[0]


def _release_all() -> None:
    """Drop every compiled model before the interpreter tears its modules down: OpenVINO objects freed
    during that teardown (after its threading runtime has gone) crash the process at exit."""
    for model in list(_LIVE):
        model.release()
    gc.collect()


@functools.cache
def _release_all_at_exit() -> None:
    """Register ``_release_all`` once per process. Registered again whenever the live set had emptied, a process
    that made models over and over (the test suite: about 30 times in test_openvino.py alone) ran as many full
    garbage collections at exit, 0.3 s each on a large heap."""
    atexit.register(_release_all)


class OpenVinoModel:
    """A converted model compiled for the CPU in one precision; the latency copy (one stream, every core)
    and the throughput copy (one stream per core) are compiled when first used."""

    def __init__(self, xml: Path, precision: str, native_bf16: bool | None = None):
        native_bf16 = cpu.has_native_bf16() if native_bf16 is None else native_bf16
        self.xml, self.precision = xml, precision
        # An int8 model still runs its unquantised operations in the hint's precision.
        self.hint = "f32" if precision == "fp32" or not native_bf16 else "bf16"
        self.core = core()
        self._latency: Any = None
        self._throughput: Any = None
        self.streams = 1
        self.threads = cores()  # fewer where several models share the cores (a Ray actor's CPUs)
        _release_all_at_exit()
        _LIVE.add(self)

    def release(self) -> None:
        """Free the compiled copies (they are compiled again if used)."""
        self._latency = self._throughput = None

    def _compile(self, config: dict) -> Any:
        if self.threads < cores():
            # Several models share this machine's cores (Ray actors): each process would pin its threads to the
            # same first cores, and two one-thread actors on two cores ran at one core's rate between them.
            config = {**config, "ENABLE_CPU_PINNING": False}
        try:
            return self.core.compile_model(self.core.read_model(self.xml), "CPU",
                                           {"INFERENCE_PRECISION_HINT": self.hint, **config})
        except RuntimeError as exc:
            raise LookalikeError(f"OpenVINO cannot compile {self.xml} ({openvino_reason(exc)}); "
                                 "delete it to convert again, or use --runtime torch") from exc

    def latency(self) -> Any:
        if self._latency is None:
            self._latency = self._compile({"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads})
        return self._latency

    def throughput(self) -> Any:
        if self._throughput is None:
            self._throughput = self._compile({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.threads,
                                              "INFERENCE_NUM_THREADS": self.threads})
            self.streams = int(self._throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        return self._throughput

    def __call__(self, batch: np.ndarray, dtype: Any = np.uint8) -> np.ndarray:
        """uint8 N x H x W x 3 (or, for a text tower, int64 N x L token ids with ``dtype=np.int64``) -> N x D
        unit float32 rows, on the calling thread."""
        return unit_rows(self.latency()(np.ascontiguousarray(batch, dtype=dtype))[0])


def embed_batch(encoder: Encoder, batch: Any) -> np.ndarray:
    return encoder.model(np.asarray(batch))


TEXT_BATCH_SIZE = 64


def embed_texts(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """Texts -> N x D float32 unit vectors with the encoder's text tower converted to OpenVINO (once, cached
    like the image tower), in bf16 where the image tower runs bf16 or int8 (the text tower is never quantised:
    a query is a few words), else fp32.

    Raises:
        LookalikeError: the text tower cannot be converted (``--runtime torch`` still runs it).
    """
    embedder = encoder.embedder
    if encoder.text_model is None:
        precision = "fp32" if encoder.precision == "fp32" else "bf16"
        encoder.text_model = OpenVinoModel(converted_text(embedder), precision)
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for start in range(0, len(texts), TEXT_BATCH_SIZE):
        tokens = embedder.tokenize(texts[start:start + TEXT_BATCH_SIZE]).numpy()
        out[start:start + len(tokens)] = encoder.text_model(tokens, dtype=np.int64)
    return out


def encode_files_openvino(encoder: Encoder, tasks: Sequence[FileTask]) -> Iterator[EncodedBatch]:
    """``embed.encode_files`` on OpenVINO: decoding threads (``--workers``; 0 decodes inline) stay a few
    batches ahead of one infer request per stream; yields batches in task order."""
    options = encoder.options
    model: OpenVinoModel = encoder.model
    compiled = model.throughput()
    requests = [compiled.create_infer_request() for _ in range(max(1, model.streams))]
    reader = FileReader(tasks, encoder.embedder.pil_transform, encoder.draft_size, options.max_pixels,
                        options.max_bytes)
    size, n = encoder.batch_size, len(reader)
    workers = default_workers() if options.workers is None else options.workers
    free = list(requests)
    inflight: deque = deque()  # (embedded, others, request or None), in task order

    def finish(entry) -> EncodedBatch:
        embedded, others, request = entry
        vectors = None
        if request is not None:
            request.wait()
            vectors = unit_rows(request.get_output_tensor(0).data.copy())
            free.append(request)
        return EncodedBatch(embedded=embedded, vectors=vectors, others=others)

    def batches() -> Iterator[list]:
        starts = iter(range(0, n, size))
        if workers == 0:
            for start in starts:
                yield [reader[i] for i in range(start, min(start + size, n))]
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-decode") as pool:
            ahead: deque[list[Future]] = deque()

            def submit() -> None:
                start = next(starts, None)
                if start is not None:
                    ahead.append([pool.submit(reader.__getitem__, i) for i in range(start, min(start + size, n))])

            for _ in range(len(requests) + 1):
                submit()
            while ahead:
                futures = ahead.popleft()
                submit()
                yield [f.result() for f in futures]

    try:
        for items in batches():
            embedded, arrays, others = stack_results(items)
            while len(inflight) >= len(requests) or (arrays is not None and not free):
                yield finish(inflight.popleft())
            request = None
            if arrays is not None:
                request = free.pop()
                request.start_async({0: arrays})
            inflight.append((embedded, others, request))
        while inflight:
            yield finish(inflight.popleft())
    finally:  # a consumer that stops early (an error, Ctrl-C) must not free requests still running
        for _, _, request in inflight:
            if request is not None:
                request.wait()


# -- int8 --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Photos drawn reproducibly from a catalog for calibration and for the gate."""

    calibration: list[Path]
    held: list[Path]
    overlap: bool


def draw_sample(paths: Sequence[Path | str], calibration: int = CALIBRATION_PHOTOS, held: int = HELD_PHOTOS) -> Sample:
    """A seeded shuffle of the sorted paths: the first ``held`` (a quarter at most) are the gate's, the
    next ``calibration`` NNCF's. Below ``MIN_SPLIT`` photos both are every photo, and the record says so."""
    ordered = sorted({str(p) for p in paths})
    order = np.random.default_rng(SEED).permutation(len(ordered))
    shuffled = [as_location(ordered[i]) for i in order]
    if len(shuffled) < MIN_SPLIT:
        return Sample(calibration=shuffled[:calibration], held=shuffled[:held], overlap=True)
    h = min(held, len(shuffled) // 4)
    return Sample(calibration=shuffled[h:h + calibration], held=shuffled[:h], overlap=False)


def decode_photos(embedder: Embedder, paths: Sequence[Path], draft: int | None, max_pixels: int, max_bytes: int
                  ) -> tuple[np.ndarray, list[str]]:
    """The model inputs (n x H x W x 3 uint8) of the readable photos among ``paths`` and their paths (``str`` of
    ``as_location``), in order; unreadable ones are left out."""
    reader = FileReader([FileTask(as_location(str(p))) for p in paths], embedder.pil_transform, draft, max_pixels,
                        max_bytes)
    with ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="lookalike-decode") as pool:
        items = list(pool.map(reader.__getitem__, range(len(reader))))
    done, arrays, _ = stack_results(items)
    if arrays is None:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8), []
    return arrays, [str(r.task.path) for r in done]


def _embed(model: OpenVinoModel, arrays: np.ndarray) -> np.ndarray:
    return np.concatenate([model(arrays[i:i + CALIBRATION_BATCH]) for i in range(0, len(arrays), CALIBRATION_BATCH)])


def quantize_int8(embedder: Embedder, fp32_xml: Path, sample: Sample, out_dir: Path, *, draft: int | None,
                  max_pixels: int, max_bytes: int, threshold: float = GATE_RECALL,
                  labels: Mapping[str, str] | None = None, label: str | None = None) -> Int8Model:
    """Quantise the converted model to int8 with NNCF's post-training quantisation, calibrated on
    ``sample.calibration``, then gate it (``int8_gate``): recall@10 of the held photos' neighbour lists
    against fp32 and, given ``labels`` (photo path -> value of the category ``label``), label precision@5 of
    every labelled photo embedded (held and calibration ones) against the others, fp32 vs int8.

    Raises:
        LookalikeError: nncf is missing, or too few photos could be read.
    """
    ov = require_openvino()
    # NNCF imports PyTorch's extension builder, which warns on every CPU-only machine; the CLI owns the terminal.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError as exc:
        raise LookalikeError(f"--precision int8 needs the nncf package ({exc}); `{INSTALL}`, or use "
                             "--precision bf16") from exc
    calibration, calibration_paths = decode_photos(embedder, sample.calibration, draft, max_pixels, max_bytes)
    held, held_paths = ((calibration, calibration_paths) if sample.overlap
                        else decode_photos(embedder, sample.held, draft, max_pixels, max_bytes))
    held, held_paths = held[:len(sample.held)], held_paths[:len(sample.held)]
    if len(calibration) < MIN_PHOTOS or len(held) < MIN_PHOTOS:
        raise LookalikeError(f"int8 needs at least {MIN_PHOTOS} readable photos to calibrate and check it; this "
                             f"catalog has {len(calibration)}; use --precision bf16")
    key = model_key(embedder, tuple(calibration.shape[1:3]), "int8",
                    hashlib.sha256("\n".join(map(str, sample.calibration)).encode()).hexdigest()[:16])
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"int8-{key}.xml"
    if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
        batches = [calibration[i:i + CALIBRATION_BATCH] for i in range(0, len(calibration), CALIBRATION_BATCH)]
        log.info("quantising %s to int8 on %d photos", embedder.info.name, len(calibration))
        nncf.set_log_level(logging.ERROR)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # NNCF's progress bars
            quantized = nncf.quantize(core().read_model(fp32_xml), nncf.Dataset(batches),
                                      subset_size=len(batches))
        tmp = out_dir / f".int8-{key}-{os.getpid()}.xml"
        ov.save_model(quantized, tmp, compress_to_fp16=False)
        tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        tmp.replace(xml)
    fp32 = OpenVinoModel(fp32_xml, "fp32")
    int8 = OpenVinoModel(xml, "int8")
    k = min(GATE_K, len(held) - 1)
    recall = neighbour_recall(_embed(int8, held), _embed(fp32, held), k)
    figures = {}
    if labels and label:
        labels = {str(as_location(str(path))): value for path, value in labels.items()}
        gallery, gallery_paths = ((calibration, calibration_paths) if sample.overlap else
                                  (np.concatenate([held, calibration]), held_paths + calibration_paths))
        figures = gate.label_figures({"fp32": _embed(fp32, gallery), "int8": _embed(int8, gallery)}, gallery_paths,
                                     held_paths, labels, label)
    return Int8Model(path=xml, recall=recall, k=k, held=len(held), calibration=len(calibration),
                     overlap=sample.overlap, threshold=threshold, min_queries=gate.LABEL_MIN_QUERIES,
                     label_recall=gate.LABEL_RECALL, max_drop=gate.LABEL_DROP, **figures)
