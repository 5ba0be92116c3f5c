"""Indexing on Ray against the local engine, in one run on one machine; and what that projects to at scale.

What it measures, in this order, on the same staged files:

* **local**: ``catalog.add(folder, options)`` with the local engine (on a CPU in bf16: a worker process per
  core, each decoding and embedding whole batches with a one-thread model). The model is placed before the
  clock starts, as ``index_throughput.py`` does.
* **Ray, 1 actor** and **Ray, 2 actors**: ``catalog.add(folder, options, engine=RayEngine(...))``. A local
  Ray is started first and timed on its own ("Ray start"); the add's clock then covers everything a run
  pays: the actor pool starting (the model shipped through the object store, unpickled and placed in each
  actor), decoding tasks, embedding, streaming back and committing. The steady rate leaves out the pool's
  start: images after the first batch / seconds after it. The per-actor rate is the steady rate / actors.

Every run is end to end, from JPEG files on disk to a saved catalog (listing, hashing, SQLite commits, FAISS
build). Ray's overhead = 1 - Ray rate / local rate. ResNet-50 with seeded random weights (``--weights
random``: no hub here); the arithmetic is the pretrained model's.

The photos (the 364 shared ones by default) are hard-linked (or copied) under distinct names until there are
``--files`` of them (default 2,000): not symbolic links, which the catalog resolves back to one item each.

Run it from the repository root::

    python benchmarks/ray_throughput.py                     # 2,000 files: local, Ray 1 actor, Ray 2 actors
    python benchmarks/ray_throughput.py --files 400         # a quick run

Last, the **driver's commit ceiling**: however many actors embed, one driver lists the source and commits
every vector into one catalog. ``--driver-files`` (default 20,000) hard links are indexed through
``Catalog.add`` with an engine that embeds nothing (``ReplayEngine``: each task comes back at once with the
file's precomputed size and digest and a random unit vector), so the clock holds the driver's work alone:
listing and stat-ing, the commit loop's transactions, the vectors and the FAISS build. Its rate is the most
images/s any cluster can index into one catalog; the ratio printed is against the local engine's rate. It is
printed on a line of its own, ``driver ceiling: sqlite N images/s`` (and ``postgresql``), beside the store's
own ceiling in the same run: the same number of 8 KB vectors written into a bare table with nothing of
lookalike's around them (``store_ceiling``), the most any driver could reach on this machine; then this disk's
sustained write rate and the bytes the SQLite driver wrote per image (``disk_write_rate``, ``bytes_written``):
what the disk alone allows that layout.

    python benchmarks/ray_throughput.py --driver-only --driver-pg   # the ceilings alone, SQLite and PostgreSQL
    python benchmarks/ray_throughput.py --driver-only --driver-phases --min-overhead 0.13  # where the time goes

Then the projection (``--gpu-rate``, ``--decode-ms``, ``--jpeg-kb``: see ``projection``) prints hours for
10 M and 100 M photos on N GPU nodes from the measured Ray overhead, capped by the measured driver ceiling.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from machine import describe_machine  # noqa: E402

from lookalike import Catalog, EncodeOptions
from lookalike.core.sources import find_images
from lookalike.engines.files import EncodedBatch, FileResult, FileTask, cores
from lookalike.engines.ray_engine import RayEngine, RayOptions, ray_session

MODEL = "resnet50"
WEIGHTS = "random"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "datasets" / "fashion-products"


@dataclass
class Run:
    name: str
    actors: int = 0
    images: int = 0
    failed: int = 0
    seconds: float = 0.0  # the add, end to end
    ray_start_seconds: float = 0.0
    first_batch_seconds: float = 0.0  # Ray: the pool's start, until its first batch came back
    steady_rate: float = 0.0
    detail: dict = field(default_factory=dict)
    written: int | None = None  # bytes the run sent to storage (the driver's runs; /proc/self/io)
    cpu_seconds: float = 0.0  # the driver's runs: CPU time of this process, every thread, user + system
    server_cpu_seconds: float | None = None  # a PostgreSQL run on this machine: its server processes' CPU time

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def per_actor(self) -> float:
        return self.steady_rate / self.actors if self.actors else 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (images/ inside)")
    parser.add_argument("--files", type=int, default=2000, help="files to index in each run (default 2000)")
    parser.add_argument("--precision", default="bf16", help="precision of every run (default bf16; auto would "
                        "calibrate int8 once per catalog, inside the timing)")
    parser.add_argument("--runs", default="local,ray1,ray2,local",
                        help="which runs, in order (default: local first and last, to bracket a shared machine's "
                        "drift, Ray with 1 and with 2 actors between)")
    parser.add_argument("--min-overhead", type=float, default=0.10,
                        help="Ray overhead the projection assumes at least (default 0.10), whatever was measured")
    parser.add_argument("--gpu-rate", type=float, default=2000.0,
                        help="assumed images/s of one GPU actor, ResNet-50 bf16 at batch 256 (not measured here)")
    parser.add_argument("--decode-ms", type=float, default=1.8,
                        help="CPU ms to decode one 900x1200 JPEG to the model's input (measured: README Speed)")
    parser.add_argument("--jpeg-kb", type=float, default=150.0, help="average photo size read from the store")
    parser.add_argument("--driver-files", type=int, default=20000,
                        help="files for the driver's commit ceiling (default 20000; 0 skips it)")
    parser.add_argument("--driver-pg", nargs="?", const="", default=None, metavar="URL",
                        help="also measure the driver's ceiling into PostgreSQL: a throwaway server (the tests' "
                        "own, durable), or the database at URL")
    parser.add_argument("--driver-only", action="store_true",
                        help="measure the driver's ceiling alone (no local or Ray runs), and beside it each store's "
                        "own ceiling for the same rows")
    parser.add_argument("--driver-index", default="auto", choices=("auto", "flat", "hnsw", "ivfpq"),
                        help="the driver's catalog's index kind (default auto: flat at 20,000; ivfpq measures a run "
                        "into IVF-PQ's range, which a catalog reaches past 2 M items, at a size this machine holds)")
    parser.add_argument("--driver-phases", action="store_true",
                        help="also print where the driver's time goes (per-phase timers around Catalog.add's steps)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.driver_only:
        args.runs = ""
    return args


def stage(data: Path, files: int, workdir: Path, name: str = "photos") -> Path:
    folder = data / "images" if (data / "images").is_dir() else data
    photos = find_images(folder)
    if not photos:
        raise SystemExit(f"{folder}: no images; pass --data DIR")
    staged = workdir / name
    staged.mkdir()
    for n in range(max(files, 1)):
        photo = photos[n % len(photos)]
        target = staged / f"r{n // len(photos)}_{photo.name}"
        try:
            os.link(photo, target)
        except OSError:
            shutil.copy2(photo, target)
    for path in staged.iterdir():  # every run reads from the page cache, none from the disk
        path.read_bytes()
    return staged


def run_local(folder: Path, workdir: Path, options: EncodeOptions) -> Run:
    with Catalog.create(Path(tempfile.mkdtemp(dir=workdir)) / "local.lk", model=MODEL, weights=WEIGHTS) as catalog:
        catalog.encoder(options)  # the model placed before the clock starts; add reuses it
        marks: list[tuple[float, int]] = []
        started = time.perf_counter()
        report = catalog.add(folder, options=options, on_batch=lambda n: marks.append((time.perf_counter(), n)))
        seconds = time.perf_counter() - started
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return Run("local", images=report.indexed, failed=report.failed, seconds=seconds,
               first_batch_seconds=t0 - started, steady_rate=(n1 - n0) / (t1 - t0) if t1 > t0 else 0.0)


def run_ray(folder: Path, workdir: Path, options: EncodeOptions, actors: int) -> Run:
    opts = RayOptions(actors=actors)
    path = Path(tempfile.mkdtemp(dir=workdir)) / f"ray{actors}.lk"
    with Catalog.create(path, model=MODEL, weights=WEIGHTS) as catalog:
        assert catalog.embedder is not None  # loaded before the clock starts, as the local run's is
        started = time.perf_counter()
        with ray_session(opts):
            ray_start = time.perf_counter() - started
            started = time.perf_counter()
            report = catalog.add(folder, options=options, engine=RayEngine(opts))
            seconds = time.perf_counter() - started
    detail = report.engine_detail
    first, last = detail.get("first_batch_seconds", 0.0), detail.get("seconds", 0.0)
    after_first = report.indexed - detail.get("first_batch_images", 0)
    steady = after_first / (last - first) if last > first else 0.0
    return Run(f"ray, {actors} actor{'s' * (actors > 1)}", actors=actors, images=report.indexed, failed=report.failed,
               seconds=seconds, ray_start_seconds=ray_start, first_batch_seconds=first, steady_rate=steady,
               detail=detail)


class ReplayEngine:
    """An ``Engine`` that embeds nothing: every task comes back at once, embedded, with its file's size and
    digest (computed before the clock starts) and a random unit vector, so that ``Catalog.add``'s time is the
    driver's own work. Not a stand-in for a user's run: it measures the ceiling that run cannot pass."""

    name = "replay"

    def __init__(self, files: dict[str, tuple[int, str]], dim: int, batch_size: int = 256, seed: int = 0):
        self.files, self.batch_size = files, batch_size
        vectors = np.random.default_rng(seed).standard_normal((4096, dim)).astype(np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def encode_files(self, embedder, options, tasks, *, int8=None):
        for start in range(0, len(tasks), self.batch_size):
            chunk: list[FileTask] = list(tasks[start:start + self.batch_size])
            results = []
            for task in chunk:
                size, digest = self.files[str(task.path)]
                results.append(FileResult(task=task, size=size, sha256=digest, width=224, height=224))
            offset = start % (len(self.vectors) - self.batch_size)
            yield EncodedBatch(embedded=results, vectors=self.vectors[offset:offset + len(chunk)])

    def detail(self) -> dict:
        return {}


# Catalog.add's steps, timed apart by ``--driver-phases``: (owner module, attribute, what it does). Nested steps
# (the store's write inside the commit loop, the index's save inside its refresh) are printed under their parent.
PHASES = (
    ("lookalike.catalog.ingest", "read_source", "listing (scandir, stat)"),
    ("lookalike.catalog.ingest", "plan_photos", "photo ids planned"),
    ("lookalike.catalog.ingest", "plan_products", "products planned"),
    ("lookalike.catalog.catalog", "Catalog._commit", "commit loop"),
    ("lookalike.store.base", "Store.write", "  of it: the store's transactions"),
    ("lookalike.catalog.catalog", "Catalog._refresh_index", "FAISS index brought up to date and saved"),
    ("lookalike.store.base", "Store.vectors", "  of it: vectors read back"),
    ("lookalike.index.vector_index", "VectorIndex._save", "  of it: index cache written"),
)


@contextlib.contextmanager
def phase_timers() -> Iterator[dict[str, float]]:
    """Seconds spent in each of ``PHASES`` while the block runs (the functions wrapped, then put back)."""
    import importlib

    spent: dict[str, float] = {label: 0.0 for _, _, label in PHASES}
    undo = []
    for module_name, attribute, label in PHASES:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        own = name in vars(owner)  # a method a class inherits is put back by deleting the wrapper
        original = getattr(owner, name)

        def timed(*args, _f=original, _label=label, **kwargs):
            started = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_label] += time.perf_counter() - started

        setattr(owner, name, timed)
        undo.append((owner, name, original if own else None))
    try:
        yield spent
    finally:
        for owner, name, original in reversed(undo):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def run_driver(data: Path, files: int, workdir: Path, options: EncodeOptions, location: str | None = None,
               phases: bool = False, index_kind: str = "auto") -> Run:
    """The driver's commit ceiling on ``files`` staged files (see the module's docstring), into a new folder
    catalog (SQLite) or the PostgreSQL catalog at ``location``; with ``phases``, the seconds of each of
    ``PHASES`` in ``Run.detail``."""
    folder = workdir / "driver-photos"
    if not folder.is_dir():
        stage(data, files, workdir, name=folder.name)
    digests: dict[tuple[int, int], str] = {}
    known: dict[str, tuple[int, str]] = {}
    for path in folder.iterdir():
        source = path.resolve()
        stat = path.stat()
        key = (stat.st_dev, stat.st_ino)  # hard links share one content: hash it once
        if key not in digests:
            digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        known[str(path)] = known[str(source)] = (stat.st_size, digests[key])
    where = location or Path(tempfile.mkdtemp(dir=workdir)) / "driver.lk"
    with Catalog.create(where, model=MODEL, weights=WEIGHTS) as catalog:
        if index_kind != "auto":
            catalog.configure_index(kind=index_kind)
        engine = ReplayEngine(known, catalog.embedder.dim)
        with phase_timers() if phases else contextlib.nullcontext({}) as spent:
            written = bytes_written()
            cpu, server = process_cpu(), server_cpu() if location else None
            started = time.perf_counter()
            report = catalog.add(folder, options=options, engine=engine)
            seconds = time.perf_counter() - started
            cpu = process_cpu() - cpu
            server = server_cpu() - server if server is not None else None
            written = bytes_written() - written if written is not None else None
    name = "driver, pg" if location else "driver ceiling"
    return Run(name, images=report.indexed, failed=report.failed, seconds=seconds, detail=dict(spent),
               written=written, cpu_seconds=cpu, server_cpu_seconds=server)


def process_cpu() -> float:
    """CPU seconds this process has used so far, all its threads, user + system (``getrusage``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu() -> float | None:
    """CPU seconds used so far by the PostgreSQL server processes on this machine (``/proc/<pid>/stat``: utime
    + stime of every process named ``postgres``, whoever started it); None where there is no ``/proc``. Only a
    server on this machine counts: one elsewhere reads as zero."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        name, _, rest = text.partition(" (")[2].rpartition(") ")
        if name == "postgres":
            fields = rest.split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / tick


def print_cpu(run: Run) -> None:
    """CPU per image (the driver's process, every thread; the server's where it runs here), the share of this
    machine's cores the run kept busy, and the rate those costs allow on every core: the ceiling's own limit."""
    per_image = (run.cpu_seconds + (run.server_cpu_seconds or 0.0)) / run.images
    server = (f" + the PostgreSQL server {run.server_cpu_seconds / run.images * 1e6:.0f} us"
              if run.server_cpu_seconds else "")
    busy = per_image * run.images / run.seconds / cores()
    print(f"cpu: the driver used {run.cpu_seconds / run.images * 1e6:.0f} us an image{server} (user + system, every "
          f"thread); {busy:.0%} of {cores()} cores busy; at that cost {cores()} cores allow at most "
          f"{cores() / per_image:.0f} images/s", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(f"memory: this process peaked at {peak / 2**30:.2f} GiB (ru_maxrss, the staging and every run before "
          "included)", flush=True)


def bytes_written() -> int | None:
    """Bytes this process has sent to storage so far (Linux ``/proc/self/io`` ``write_bytes``: counted when a
    page is dirtied, so SQLite's WAL, its checkpoints and the index's row file all count); None elsewhere."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def disk_write_rate(workdir: Path, total_mb: int = 1024) -> float:
    """This disk's sustained write rate, MB/s: ``total_mb`` of incompressible bytes written to a new file in
    ``workdir`` and fsynced, as ``dd conv=fdatasync`` measures it. Whatever the driver writes passes through it."""
    block = np.random.default_rng(2).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    path = workdir / "disk-rate.bin"
    started = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(total_mb // 16):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return total_mb * (1 << 20) / 1e6 / seconds


def print_phases(run: Run) -> None:
    """Where the driver's time went: each phase's seconds and share of the run, and what is left."""
    top = sum(v for k, v in run.detail.items() if not k.startswith(" "))
    for label, seconds in run.detail.items():
        print(f"  {label:48} {seconds:6.2f} s  {seconds / run.seconds:4.0%}")
    rest = run.seconds - top
    print(f"  {'the rest (ids, change checks, Python per photo)':48} {rest:6.2f} s  {rest / run.seconds:4.0%}",
          flush=True)


def store_ceiling(rows: int, dim: int, location: str | None, workdir: Path, batch: int = 256) -> float:
    """What the store itself takes in, rows/s, with nothing of lookalike's around it: ``rows`` (key, 8 KB float32
    vector) rows written into a bare two-column table, ``batch`` rows a transaction as the driver commits them.
    SQLite: ``executemany`` INSERT in WAL mode with ``synchronous=NORMAL`` and the catalog's page size
    (``store.sqlite.page_size_for``), as the catalog opens its file;
    PostgreSQL (``location``): binary ``COPY`` (psycopg's ``Copy.write_row``), default durability. The driver's
    ceiling cannot pass it, so it names this machine's limit."""
    vectors = np.random.default_rng(1).standard_normal((4096, dim)).astype(np.float32)
    blobs = [v.tobytes() for v in vectors]
    if location is None:
        import sqlite3

        from lookalike.store import sqlite as sqlite_store

        chosen = getattr(sqlite_store, "page_size_for", None)  # None: a release before the catalog chose it
        page_size = chosen(dim) if chosen else 4096
        conn = sqlite3.connect(str(Path(tempfile.mkdtemp(dir=workdir)) / "bare.sqlite"), isolation_level=None)
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE vectors (key INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
        started = time.perf_counter()
        for start in range(0, rows, batch):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO vectors VALUES (?, ?)",
                             ((k, blobs[k % len(blobs)]) for k in range(start, min(rows, start + batch))))
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
        conn.close()
        return rows / seconds
    import psycopg

    with psycopg.connect(location.split("?")[0], autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS lookalike_bare_vectors")
        conn.execute("CREATE TABLE lookalike_bare_vectors (key BIGINT PRIMARY KEY, vector BYTEA NOT NULL)")
        conn.execute("ALTER TABLE lookalike_bare_vectors ALTER COLUMN vector SET STORAGE EXTERNAL")
        started = time.perf_counter()
        for start in range(0, rows, batch):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY lookalike_bare_vectors (key, vector) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "bytea"])
                    for k in range(start, min(rows, start + batch)):
                        copy.write_row((k, blobs[k % len(blobs)]))
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE lookalike_bare_vectors")
    return rows / seconds


def projection(per_gpu: float, overhead: float, decode_ms: float, jpeg_kb: float,
               driver_rate: float | None = None) -> list[str]:
    """Hours to index 10 M and 100 M photos on N GPU nodes (8 GPUs each), from named assumptions; with
    ``driver_rate`` (the measured commit ceiling, img/s), a cluster faster than its driver runs at the driver's
    rate into one catalog."""
    rate = per_gpu * (1 - overhead)
    decode_cores = per_gpu * decode_ms / 1000
    lines = [f"projection: {per_gpu:.0f} img/s per GPU actor (assumed) less a Ray overhead of "
             f"{overhead:.0%} = {rate:.0f} img/s per GPU; each GPU needs {decode_cores:.1f} decoding cores at "
             f"{decode_ms} ms a photo and {per_gpu * jpeg_kb / 1024:.0f} MB/s of object-store reads "
             f"({jpeg_kb:.0f} KB a photo); 8 GPUs a node"
             + (f"; one driver commits at most {driver_rate:.0f} img/s (measured)" if driver_rate else "")]
    for nodes in (1, 4, 16, 64):
        gpus = 8 * nodes
        cluster = gpus * rate
        bound = min(cluster, driver_rate) if driver_rate else cluster
        hours = [n / bound / 3600 for n in (10e6, 100e6)]
        note = " (driver-bound)" if bound < cluster else ""
        lines.append(f"  {nodes:3d} nodes ({gpus:3d} GPUs, {gpus * decode_cores:.0f} decode cores, "
                     f"{8 * per_gpu * jpeg_kb / 1024**2:.1f} GB/s reads a node): 10 M photos {hours[0]:.2f} h, "
                     f"100 M photos {hours[1]:.2f} h{note}")
    lines.append("  (the hours of the commits alone: from 2 M items a catalog's index is IVF-PQ, built when the run "
                 "ends; benchmarks/index_build.py measures that build)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(describe_machine(), flush=True)  # which CPU: they differ between machines
    logging.basicConfig(level=logging.WARNING)
    # The runtime auto picks (OpenVINO on x86 CPUs with bf16 units) in bf16 for every run: the engines compared at
    # one precision, without the one-time int8 calibration that ``auto`` would add to each new catalog.
    options = EncodeOptions(progress=False, precision=args.precision)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="lookalike-ray-bench-") as tmp:
        workdir = Path(tmp)
        folder = stage(args.data, args.files, workdir)
        print(f"{args.files} files ({MODEL}, weights {WEIGHTS}) on {cores()} cores; machine shared with other "
              "work, so compare runs within this run only", flush=True)
        for name in filter(None, args.runs.split(",")):
            run = run_local(folder, workdir, options) if name == "local" else run_ray(
                folder, workdir, options, int(name.removeprefix("ray")))
            runs.append(run)
            extra = (f"; Ray start {run.ray_start_seconds:.1f} s, pool start {run.first_batch_seconds:.1f} s, "
                     f"steady {run.steady_rate:.1f} img/s = {run.per_actor:.1f} per actor"
                     f"{', nodes ' + str(run.detail.get('nodes_used')) if run.detail else ''}" if run.actors else
                     f"; first batch {run.first_batch_seconds:.1f} s, steady {run.steady_rate:.1f} img/s")
            print(f"{run.name:15} {run.images} images in {run.seconds:.1f} s = {run.rate:.1f} img/s{extra}",
                  flush=True)
        if args.driver_files > 0:
            driver = run_driver(args.data, args.driver_files, workdir, options, phases=args.driver_phases,
                                index_kind=args.driver_index)
            runs.append(driver)
            print(f"{driver.name:15} {driver.images} images in {driver.seconds:.1f} s = {driver.rate:.0f} img/s "
                  "(SQLite: listing, commits, vectors, FAISS build; nothing embedded)", flush=True)
            print(f"driver ceiling: sqlite {driver.rate:.0f} images/s", flush=True)
            print_cpu(driver)
            if args.driver_phases:
                print_phases(driver)
            dim = 2048  # the vectors of the driver's runs (ResNet-50)
            bare = store_ceiling(args.driver_files, dim, None, workdir)
            print(f"store ceiling: sqlite {bare:.0f} rows/s of {dim * 4 // 1024} KB vectors into a bare table (the "
                  f"driver reaches {driver.rate / bare:.0%} of it)", flush=True)
            if driver.written:
                disk = disk_write_rate(workdir)
                per_image = driver.written / driver.images
                print(f"disk: {disk:.0f} MB/s sustained (1 GiB written and fsynced in this run); the driver wrote "
                      f"{per_image / 1024:.1f} KB an image (WAL, checkpoint, index rows), so the disk alone allows "
                      f"{disk * 1e6 / per_image:.0f} images/s", flush=True)
            if args.driver_pg is not None:
                from pg_common import drop_schema, postgres

                with postgres(args.driver_pg or None) as url:
                    drop_schema(url, "ray_driver_ceiling")
                    driver = run_driver(args.data, args.driver_files, workdir, options,
                                        f"{url}?schema=ray_driver_ceiling", phases=args.driver_phases,
                                        index_kind=args.driver_index)
                    drop_schema(url, "ray_driver_ceiling")
                    bare = store_ceiling(args.driver_files, dim, url, workdir)
                runs.append(driver)
                print(f"{driver.name:15} {driver.images} images in {driver.seconds:.1f} s = {driver.rate:.0f} "
                      "img/s (PostgreSQL: the same)", flush=True)
                print(f"driver ceiling: postgresql {driver.rate:.0f} images/s", flush=True)
                print_cpu(driver)
                if args.driver_phases:
                    print_phases(driver)
                print(f"store ceiling: postgresql {bare:.0f} rows/s of {dim * 4 // 1024} KB vectors by binary COPY "
                      f"into a bare table (the driver reaches {driver.rate / bare:.0%} of it)", flush=True)
    locals_ = [r for r in runs if r.name == "local"]
    ray_runs = [r for r in runs if r.actors]
    driver_rate = next((r.rate for r in runs if r.name == "driver ceiling"), None)
    if locals_:
        local_rate = sum(r.rate for r in locals_) / len(locals_)
        local_steady = sum(r.steady_rate for r in locals_) / len(locals_)
        print(f"local, mean of {len(locals_)} runs: {local_rate:.1f} img/s end to end, {local_steady:.1f} steady")
        for run in ray_runs:
            print(f"{run.name:15} overhead vs local: {1 - run.rate / local_rate:.0%} end to end, "
                  f"{1 - run.steady_rate / local_steady:.0%} steady", flush=True)
        if driver_rate:
            print(f"driver ceiling: {driver_rate:.0f} img/s = {driver_rate / local_rate:.0f}x the local engine's rate "
                  "(the most one catalog takes in, whatever the cluster)")
        if ray_runs:
            best = max(ray_runs, key=lambda r: r.steady_rate)
            measured = 1 - best.steady_rate / local_steady
            overhead = max(measured, args.min_overhead)
            print(f"Ray overhead measured {measured:.0%} (steady, best pool); the projection assumes {overhead:.0%}")
            for line in projection(args.gpu_rate, overhead, args.decode_ms, args.jpeg_kb, driver_rate):
                print(line)
    if not ray_runs:  # the ceilings alone: Ray's overhead is not measured in this run, only assumed
        for run in (r for r in runs if r.name.startswith("driver")):
            print(f"projection into {'PostgreSQL' if run.name == 'driver, pg' else 'SQLite'} (Ray overhead "
                  f"assumed {args.min_overhead:.0%}, not measured in this run):")
            for line in projection(args.gpu_rate, args.min_overhead, args.decode_ms, args.jpeg_kb, run.rate):
                print(line)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "rate": r.rate, "per_actor": r.per_actor} for r in runs],
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
