"""The Ray engine: the same files in, the same vectors out, on a Ray cluster (a local one, a ``ray start``
cluster, or KubeRay).

The driver (``Catalog.add``) lists the source, skips what the catalog holds and commits every batch that
comes back, exactly as for the local encoder; only embedding moves:

    tasks --from_items--> decoding tasks (CPU)  --map_batches, actor pool--> embedding actors --iter_batches--> driver
          ref, path,      ``FileReader``: read,     uint8 pixels               one model each, loaded   vectors, results
          known hash      hash, decode, prepare                                once (GPU when asked)

Decoding reuses ``files.FileReader``, so limits, draft decoding and failure reasons are the local path's; an
actor places the model with ``Encoder`` (same device rules, precision, BatchNorm folding, normalisation), so
the vectors are the local path's too. A bad image is a result row with its reason, never an exception, so no
actor crashes on one. Ray Data's own defaults make the rest fault tolerant: a killed actor is restarted
and its in-flight batches retried (``max_restarts=-1``, ``max_task_retries=-1`` for actor pools), a decoding
task lost with its worker or node runs again (``max_retries=-1``): a fault costs the batches in flight,
never the run. What the driver committed stays committed if the driver itself dies.

Ray is imported inside the functions that run it: importing this module loads neither Ray nor PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.config import EncodeOptions
from ..core.errors import LookalikeError
from ..core.storage import as_location
from .files import EncodedBatch, FileReader, FileResult, FileTask, cores, default_batch_size

if TYPE_CHECKING:
    from ..models.base import Embedder
    from .openvino_runtime import Int8Model

log = logging.getLogger(__name__)

# Files per decoding task: one model batch (an actor's call takes one task's output, and the driver commits
# it as one batch, so this is also what a fault costs), at least 16 to amortise a task's start, at most 256.
MIN_DECODE_ROWS, MAX_DECODE_ROWS = 16, 256
# Memory a decoding task reserves: its files and their pixels, with room for a large original. Also keeps
# Ray Data from fusing decoding into the actors (operators fuse only when their resources agree), so the
# actors' cores, or GPUs, never wait on JPEG decoding.
DECODE_MEMORY = 512 * 2**20  # a decoding worker imports torchvision for the transform: ~380 MB
ACTOR_START_SECONDS = int(os.environ.get("LOOKALIKE_RAY_ACTOR_START_SECONDS", "900"))  # model download included
CONNECT_SECONDS = float(os.environ.get("LOOKALIKE_RAY_CONNECT_SECONDS", "10"))  # a cluster's port must answer by then
PROGRESS_SECONDS = 10.0  # a progress line in the log (``-v``) this often, and whenever a node joins the work
SRC_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this ``lookalike`` package


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs.

    ``address``: None starts a local Ray for the run (or joins the one this process already started);
    ``"auto"`` or ``host:port`` joins a running cluster. ``actors``: embedding actors (None: one per
    ``gpus_per_actor`` GPUs of the cluster, or on CPUs one per ``cpus_per_actor`` CPUs left after a decoding
    task). ``decode_cpus``: CPUs each decoding task reserves.
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_cpus: float = 1.0

    def check(self) -> None:
        """Raises: LookalikeError: a count or share out of range."""
        if self.actors is not None and self.actors < 1:
            raise LookalikeError(f"--actors {self.actors}: must be at least 1")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0 or self.decode_cpus <= 0:
            raise LookalikeError("--gpus-per-actor must be >= 0, --cpus-per-actor and --decode-cpus > 0")


def check_reachable(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """A cluster named by ``HOST:PORT`` (or ``ray://HOST:PORT``) must accept a TCP connection within
    ``timeout`` seconds. Ray itself retries an unreachable address for minutes, printing a warning every few
    seconds; ``auto`` and other schemes are left to Ray, which answers them at once.

    Raises:
        LookalikeError: the address is malformed, its host unknown, or nothing answers at its port.
    """
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    target = address.removeprefix("ray://").rstrip("/")
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LookalikeError(f"--ray-address {address}: give the head node as HOST:PORT (e.g. 10.0.0.5:6379, "
                             "the port `ray start --head` printed), ray://HOST:10001, or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        raise LookalikeError(f"cannot reach Ray at {address} ({reason} within {timeout:g} s); start the cluster "
                             "with `ray start --head` there, check the address, or drop --ray-address to run a "
                             "local Ray") from exc


def actors_for(resources: dict[str, float], opts: RayOptions, decoding: bool = True) -> int:
    """How many actors a cluster with ``resources`` (``ray.cluster_resources()``) gets; ``decoding``: a
    decoding task must fit beside them (indexing; ``recommend`` has none).

    Raises:
        LookalikeError: the cluster cannot hold them and a decoding task at once (the pipeline would wait
            forever), with the numbers and what to change.
    """
    if not decoding:
        opts = replace(opts, decode_cpus=0.0)
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if opts.actors is not None:
        actors = opts.actors
    elif opts.gpus_per_actor > 0:
        actors = int(gpus // opts.gpus_per_actor)
    else:
        actors = max(1, int((cpus - opts.decode_cpus) // opts.cpus_per_actor))
    if opts.gpus_per_actor > 0 and (actors < 1 or actors * opts.gpus_per_actor > gpus + 1e-9):
        raise LookalikeError(
            f"the Ray cluster has {gpus:g} GPUs; {max(actors, 1)} actors x {opts.gpus_per_actor:g} GPUs do not fit. "
            "Lower --actors or --gpus-per-actor, or add GPU nodes")
    needed = actors * opts.cpus_per_actor + opts.decode_cpus
    if needed > cpus + 1e-9:
        task = f" plus one decoding task ({opts.decode_cpus:g} CPUs)" if decoding else ""
        raise LookalikeError(
            f"the Ray cluster has {cpus:g} CPUs; {actors} actors x {opts.cpus_per_actor:g} CPUs{task} need "
            f"{needed:g}. Lower --actors or --cpus-per-actor{' or --decode-cpus' if decoding else ''}")
    return actors


def local_cpus(opts: RayOptions) -> int:
    """CPUs a local Ray started for the run declares: this machine's cores, or more when the asked-for
    actors and a decoding task need more (they then share the cores, as the local engine's workers do)."""
    actors = opts.actors or max(1, int((cores() - opts.decode_cpus) // opts.cpus_per_actor))
    return max(cores(), math.ceil(actors * opts.cpus_per_actor + opts.decode_cpus))


@contextlib.contextmanager
def ray_session(opts: RayOptions) -> Iterator[None]:
    """Join (or start) Ray for a run; a Ray this call started is shut down after it.

    Workers import this process's ``lookalike`` where they share its file system (``PYTHONPATH`` in the job's
    runtime environment); elsewhere they import the one installed on their node.

    Everything Ray prints in this process while the session lasts goes to stderr, up to and including what
    ``ray.shutdown()`` flushes: Ray's driver prints cluster messages (a retried task, a dead node) and workers'
    deduplicated output to stdout from threads of its own, and stdout is the command's output (``--json``).

    Raises:
        LookalikeError: no cluster at ``opts.address``.
    """
    import ray

    with contextlib.redirect_stdout(sys.stderr):
        if ray.is_initialized():
            yield
            return
        with _joined(ray, opts):
            yield


@contextlib.contextmanager
def _joined(ray, opts: RayOptions) -> Iterator[None]:
    """``ray.init`` for ``opts`` and ``ray.shutdown`` after (see ``ray_session``)."""
    quiet = not log.isEnabledFor(logging.INFO)
    path = os.pathsep.join(p for p in (str(SRC_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    kwargs: dict[str, Any] = {
        "include_dashboard": False, "logging_level": logging.WARNING if quiet else logging.INFO,
        "log_to_driver": not quiet, "runtime_env": {"env_vars": {"PYTHONPATH": path}},
    }
    if opts.address is None:
        kwargs["num_cpus"] = local_cpus(opts)
    else:
        check_reachable(opts.address)
        kwargs["address"] = opts.address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = opts.address or "this machine"
        raise LookalikeError(f"cannot start or reach Ray at {where} ({str(exc).splitlines()[0][:200]}); start a "
                             "cluster with `ray start --head`, or drop --ray-address to run a local Ray") from exc
    try:
        yield
    finally:
        ray.shutdown()


class RayEngine:
    """``Engine`` on Ray Data: decoding tasks feed a pool of embedding actors; results stream back.

    After a run, ``detail()`` says how many actors and nodes did the work and how many images each actor
    embedded.
    """

    name = "ray"

    def __init__(self, options: RayOptions | None = None):
        """Raises: LookalikeError: Ray is not installed, or an option is out of range."""
        if importlib.util.find_spec("ray") is None:
            raise LookalikeError("--engine ray needs Ray Data: pip install 'lookalike[ray]' (or 'ray[data]')")
        self.options = options or RayOptions()
        self.options.check()
        self._detail: dict = {}

    def detail(self) -> dict:
        return dict(self._detail)

    def encode_files(self, embedder: Embedder, options: EncodeOptions, tasks: Sequence[FileTask], *,
                     int8: Int8Model | None = None) -> Iterator[EncodedBatch]:
        """Embed ``tasks`` on the cluster; yields batches as actors finish them (in any order). ``int8``: the
        catalog's quantised model (OpenVINO), shipped to the actors through the object store so that they run
        the precision the local engine would.

        Raises:
            LookalikeError: the cluster is too small, unreachable, or the run failed beyond Ray's retries
                (what was committed stays; a rerun resumes).
        """
        opts = self.options
        if options.device not in ("auto", "cpu") and opts.gpus_per_actor == 0 and options.device != "mps":
            raise LookalikeError(f"--device {options.device} with --engine ray needs --gpus-per-actor (Ray gives "
                                 "an actor a GPU only when asked)")
        needs_torch = getattr(embedder, "needs_torch", True)
        device_type = "cuda" if opts.gpus_per_actor > 0 else "cpu"
        batch_size = options.batch_size or default_batch_size(device_type, needs_torch)
        if batch_size < 1:
            raise LookalikeError(f"--batch-size {batch_size}: must be at least 1")
        options = replace(options, batch_size=batch_size)
        with ray_session(opts):  # Ray's own output goes to stderr (see ray_session)
            yield from self._run(embedder, options, list(tasks), batch_size, int8)

    def _run(self, embedder: Embedder, options: EncodeOptions, tasks: list[FileTask], batch_size: int,
             int8: Int8Model | None = None) -> Iterator[EncodedBatch]:
        import ray
        import ray.data

        configure_ray_data()
        opts = self.options
        resources = ray.cluster_resources()
        actors = actors_for(resources, opts)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("Ray: %d embedding actors (%g CPUs, %g GPUs each) on a cluster of %d nodes, %g CPUs, %g GPUs",
                 actors, opts.cpus_per_actor, opts.gpus_per_actor, len(nodes), resources.get("CPU", 0),
                 resources.get("GPU", 0))
        by_ref = {task.ref: task for task in tasks}
        per_actor: Counter[str] = Counter()
        per_node: Counter[str] = Counter()
        pids: dict[str, set[int]] = {}
        started = time.perf_counter()
        done, next_note = 0, PROGRESS_SECONDS
        self._detail = {"address": opts.address or "local", "actors": actors, "actors_used": 0, "nodes_used": 0,
                        "nodes_in_cluster": len(nodes), "cpus_per_actor": opts.cpus_per_actor,
                        "gpus_per_actor": opts.gpus_per_actor, "batch_size": batch_size, "images_per_actor": {}}
        if not tasks:
            return
        rows = [{"ref": t.ref, "path": str(t.path), "known": t.known_hash or ""} for t in tasks]
        reader = {"pil_transform": embedder.pil_transform,
                  "draft": embedder.draft_size if options.draft else None,
                  "max_pixels": options.max_pixels, "max_bytes": options.max_bytes}
        # Actors embed photos only: a text+image model travels without its text tower.
        model = ray.put(embedder.image_only() if hasattr(embedder, "image_only") else embedder)
        quantised = None
        if int8 is not None:  # the .xml and .bin travel as bytes: a worker node cannot see the driver's folder
            quantised = ray.put((int8, int8.path.read_bytes(), int8.path.with_suffix(".bin").read_bytes()))
        threads = max(1, int(opts.cpus_per_actor))
        per_block = min(MAX_DECODE_ROWS, max(MIN_DECODE_ROWS, batch_size))
        blocks = min(len(rows), max(math.ceil(len(rows) / per_block), 2 * actors))  # small runs still spread
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ds = ds.map_batches(decode_rows, batch_size=None, batch_format="numpy", fn_kwargs=reader,
                            num_cpus=opts.decode_cpus, memory=DECODE_MEMORY)
        ds = ds.map_batches(EmbedActor, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs={"model": [model], "options": options, "threads": threads,
                                                   "int8": [quantised]},
                            num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor or None)
        try:
            for cols in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                batch = to_encoded_batch(cols, by_ref)
                for actor, node, pid, embedded in zip(cols["actor"].tolist(), cols["node"].tolist(),
                                                      cols["pid"].tolist(), cols["embedded"].tolist(), strict=True):
                    per_actor[actor] += int(embedded)
                    per_node[node] += int(embedded)
                    pids.setdefault(actor, set()).add(int(pid))  # a restarted actor keeps its id, not its process
                seconds = time.perf_counter() - started
                if not done and len(cols["ref"]):  # the pool's start (model shipped, placed) ends with the first batch
                    self._detail.update(first_batch_seconds=round(seconds, 3), first_batch_images=len(batch.embedded),
                                        runtime=tuple(str(cols["runtime"][0]).split(" ", 2)))  # what actors ran
                done += len(batch.embedded) + len(batch.others)
                if seconds >= next_note or len(per_node) > len(self._detail.get("images_per_node", {})):
                    next_note = seconds + PROGRESS_SECONDS
                    rate = done / seconds if seconds > 0 else 0.0
                    eta = f", ETA {(len(tasks) - done) / rate:.0f} s" if rate > 0 and done < len(tasks) else ""
                    log.info("Ray: %d/%d images (%.1f images/s%s), %d actors on %d nodes", done, len(tasks), rate,
                             eta, len(per_actor), len(per_node))
                self._detail.update(
                    actors_used=len(per_actor), nodes_used=len(per_node), seconds=round(seconds, 3),
                    images_per_actor={a[:12]: n for a, n in per_actor.items()},
                    actor_pids={a[:12]: sorted(p) for a, p in pids.items()},
                    images_per_node={node[:12]: n for node, n in per_node.items()})
                yield batch
        except ray.exceptions.RayError as exc:
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise LookalikeError(f"the Ray run stopped ({reason}); everything indexed so far is kept and the "
                                 "next run resumes (with --engine ray or local)") from exc


def configure_ray_data(preserve_order: bool = False) -> None:
    """Our own progress bar and summary stand in for Ray Data's bars and execution logs; the actor pool is
    whole before the first batch is handed out (work spreads over every actor from the start, and a cluster
    that cannot place the pool says so after ``ACTOR_START_SECONDS`` instead of waiting forever);
    ``preserve_order``: results in input order (``recommend``), else as they finish (indexing)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.wait_for_min_actors_s = ACTOR_START_SECONDS
    ctx.execution_options.preserve_order = preserve_order
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def decode_rows(batch: dict[str, np.ndarray], *, pil_transform, draft: int | None, max_pixels: int,
                max_bytes: int) -> dict[str, Any]:
    """A decoding task: read, hash, decode and prepare each file with ``FileReader`` (the local engine's
    reader); failures and unchanged files come out as rows with their reasons, never as exceptions."""
    refs = batch["ref"].tolist()
    tasks = [FileTask(as_location(path), known or None, ref)
             for ref, path, known in zip(refs, batch["path"].tolist(), batch["known"].tolist(), strict=True)]
    reader = FileReader(tasks, pil_transform, draft, max_pixels, max_bytes)
    out: dict[str, list] = {k: [] for k in ("ref", "size", "sha256", "width", "height", "error", "unchanged",
                                            "shape", "pixels")}
    for i in range(len(reader)):
        result, array = reader[i]
        out["ref"].append(result.task.ref)
        out["size"].append(result.size)
        out["sha256"].append(result.sha256 or "")
        out["width"].append(result.width)
        out["height"].append(result.height)
        out["error"].append(result.error or "")
        out["unchanged"].append(result.unchanged)
        out["shape"].append(list(array.shape) if array is not None else [0, 0, 0])
        out["pixels"].append(np.ascontiguousarray(array).tobytes() if array is not None else b"")
    return {k: (np.asarray(v, dtype=np.int32) if k == "shape" else v) for k, v in out.items()}


class EmbedActor:
    """An embedding actor: the catalog's model, loaded once (from the driver's copy in the object store) and
    placed by ``Encoder`` exactly as the local engine places it; each call embeds the decoded rows of a batch
    and passes the rest through. Pixels never travel back, only vectors."""

    def __init__(self, model: list, options: EncodeOptions, threads: int, int8: list | None = None):
        import ray

        from .embed import Encoder

        embedder = ray.get(model[0])
        if getattr(embedder, "needs_torch", True):
            import torch

            torch.set_num_threads(threads)
        quantised = None
        if int8 and int8[0] is not None:
            quantised = _local_int8(*ray.get(int8[0]))
        self.encoder = Encoder(embedder, options, int8=quantised)
        if self.encoder.runtime == "openvino":
            self.encoder.model.threads = threads  # the actor's CPUs, not the node's: actors share a node
        self.runtime = f"{self.encoder.runtime} {self.encoder.precision} {self.encoder.device}"
        context = ray.get_runtime_context()
        self.node, self.actor, self.pid = context.get_node_id(), context.get_actor_id(), os.getpid()
        log.info("embedding actor %s on node %s: %s on %s (%s)", self.actor[:12], self.node[:12],
                 embedder.info.name, self.encoder.device, self.encoder.precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["ref"])
        shapes = batch["shape"]
        rows = [i for i in range(n) if shapes[i][0] > 0]
        vectors = np.zeros((n, self.encoder.embedder.dim), dtype=np.float32)
        if rows:
            arrays = np.stack([np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(shapes[i]) for i in rows])
            vectors[rows] = self.encoder.embed_uint8(arrays)
        embedded = np.zeros(n, dtype=bool)
        embedded[rows] = True
        out = {k: batch[k] for k in ("ref", "size", "sha256", "width", "height", "error", "unchanged")}
        out.update(embedded=embedded, vector=vectors, node=[self.node] * n, actor=[self.actor] * n,
                   pid=np.full(n, self.pid, dtype=np.int64), runtime=[self.runtime] * n)
        return out


def _local_int8(int8: Int8Model, xml: bytes, weights: bytes) -> Int8Model:
    """The driver's int8 model written where this actor can read it: the node's OpenVINO cache, named by its
    content, so the actors of a node and later runs share one copy (the weights first, the graph last: a
    graph on disk means its weights are whole)."""
    import hashlib

    from .openvino_runtime import default_cache_dir

    digest = hashlib.sha256(xml)
    digest.update(weights)
    folder = default_cache_dir() / "int8" / digest.hexdigest()[:16]
    target = folder / "model.xml"
    def whole(path: Path, data: bytes) -> bool:
        try:
            return path.stat().st_size == len(data)
        except OSError:
            return False

    if not (whole(target, xml) and whole(target.with_suffix(".bin"), weights)):  # missing, or cut short
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (("model.bin", weights), ("model.xml", xml)):
            partial = folder / f".{name}.{os.getpid()}"
            partial.write_bytes(data)
            partial.replace(folder / name)
    return replace(int8, path=target)


def to_encoded_batch(cols: dict[str, np.ndarray], by_ref: dict[int, FileTask]) -> EncodedBatch:
    """An actor's output rows as the ``EncodedBatch`` the commit loop takes."""
    embedded: list[FileResult] = []
    others: list[FileResult] = []
    rows: list[int] = []
    for i, ref in enumerate(cols["ref"].tolist()):
        result = FileResult(task=by_ref[int(ref)], size=int(cols["size"][i]), sha256=str(cols["sha256"][i]) or None,
                            width=int(cols["width"][i]), height=int(cols["height"][i]),
                            error=str(cols["error"][i]) or None, unchanged=bool(cols["unchanged"][i]))
        if cols["embedded"][i]:
            embedded.append(result)
            rows.append(i)
        else:
            others.append(result)
    vectors = np.ascontiguousarray(cols["vector"][rows], dtype=np.float32) if rows else None
    return EncodedBatch(embedded=embedded, vectors=vectors, others=others)
