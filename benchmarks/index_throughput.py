"""Index throughput, query speed and reduced-precision recall of lookalike against the seed notebooks' way.

What it measures, all in one run on the same machine:

* **Indexing, ours**: ``Catalog.create(tmp/"bench.lk", model="resnet50", weights="random")`` then
  ``catalog.add(images_folder, options=EncodeOptions(...))``, timed end to end from JPEG files on disk to a
  saved catalog (listing, hashing, decoding and batched embedding in worker processes on a CPU, or decoding
  workers feeding the GPU; SQLite writes, FAISS index build and save). Images/s = photos indexed / seconds.
  The model is built before the clock starts.
* **Indexing, baseline** (the seed notebooks' way): one photo at a time,
  ``PIL.Image.open(path).convert("RGB")`` (full decode), ``resize((224, 224))``, float32 tensor normalised
  with the ImageNet mean/std, a float32 batch-of-one forward of the same timm ResNet-50
  (``num_classes=0, global_pool="max"``, random weights, seed 0, plain contiguous NCHW, no autocast) on the
  same device, vectors appended to a list, then scikit-learn
  ``NearestNeighbors(algorithm="brute", metric="euclidean")`` fitted on the stacked vectors.
  ``--baseline-limit N`` times it on the first N photos only: the rate is what matters.
* **100 "similar" queries**: ours = ``catalog.similar(item_id, k=10)``; baseline =
  ``nn.kneighbors(vectors[i:i+1], n_neighbors=11)``, one at a time as the seed does, for the same 100 items
  (cycling when the catalog has fewer). Each is warmed up once first. The baseline's neighbour index always
  holds as many vectors as the catalog (its own when it embedded every photo, else the catalog's vectors,
  which cost the same to search), so both search the same amount of data.
* **Precision**: one extra indexing run in fp32 (its images/s shows what the automatic precision buys), then
  recall@10 of the automatic precision's neighbour lists against fp32's (exact inner-product kNN over all
  distinct photos, each without itself). bf16 may only be the automatic default while this is >= 0.98.

* **Runtimes side by side** (``--runtimes``, on by default on a CPU): the seed loop, PyTorch bf16, OpenVINO
  bf16 and OpenVINO int8 (calibrated on the catalog's photos, gate and all), each indexing the same photos
  end to end into its own catalog, in interleaved rounds (``--rounds``, default 2) so a busy shared machine
  slows each about equally; each runtime's rate is its best round. One-time costs are timed apart and not
  billed to the rate: converting the model to OpenVINO (cached afterwards) and int8's calibration and gate
  (once per catalog). Recall@10 of every runtime's neighbour lists against PyTorch fp32 vectors of the same
  photos is reported beside its rate.

Fairness: every photo is read once before any timing, so no run pays disk reads the others do not. One
untimed ``add`` of a few photos into a throwaway catalog pays the process's one-time start-up costs (lazy
initialisation in PyTorch, oneDNN, FAISS, SQLite), so they are not billed to whichever timed run comes
first; each timed run still starts its own catalog, model placement and decoding workers, and its first
full batch runs cold. The baseline model gets one warm-up forward before its clock starts.

Run it from the repository root (the package installed, e.g. ``pip install -e .[bench]``)::

    python benchmarks/index_throughput.py                          # CPU, the 364 photos of the dataset
    python benchmarks/index_throughput.py --limit 40 --baseline-limit 20   # a quick smoke run
    python benchmarks/index_throughput.py --repeat 5000 --device cuda     # GPU: 5,000 files
    python benchmarks/index_throughput.py --repeat 5000 --device cuda --baseline-limit 500  # faster baseline
    python benchmarks/index_throughput.py --runtimes '' --precision bf16   # the single-runtime run only

``--repeat N`` hard-links (or copies) the photos under distinct names (``r0_<name>``, ``r1_<name>``, ...)
into a temporary folder until there are N files. Copies of one photo have equal content, so ``similar``
leaves them out of each other's results and recall counts each distinct photo once. Random weights make
the figures timing-only: the neighbours are not meaningful as recommendations, but the arithmetic and its
precision are the real model's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from machine import describe_machine
from PIL import Image

from lookalike import Catalog, EncodeOptions, LookalikeError
from lookalike.core.sources import find_images
from lookalike.engines.embed import plan_workers
from lookalike.models.registry import resolve

MODEL = SEED_MODEL = "resnet50"
SEED_SAME = False  # --seed-model same: the seed loop runs our network, not the seed's ResNet-50
LABELS: dict[str, dict[str, str]] = {}  # --labels: photo path -> its labels, for the int8 gate
WEIGHTS = "random"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / ".." / "shared" / "datasets" / "fashion-products"
QUERIES = 100
K = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BASELINE_SIZE = (224, 224)
TARGET_INDEX_RATIO = 3.0
RUNTIME_RUNS = {"auto": ("auto", "auto"), "torch-bf16": ("torch", "bf16"), "torch-fp32": ("torch", "fp32"),
                "openvino-fp32": ("openvino", "fp32"), "openvino-bf16": ("openvino", "bf16"),
                "openvino-int8": ("openvino", "int8")}
DEFAULT_RUNTIMES = ("auto", "torch-bf16", "openvino-bf16", "openvino-int8")
AUTO_TARGET = TARGET_INDEX_RATIO  # `lookalike index` with its defaults, x the seed loop, on every kind of CPU
RUNTIME_TARGETS = {"openvino-bf16": 3.5, "openvino-int8": 5.0}  # x the seed loop, on the 2-core machine
TARGET_QUERY_RATIO = 5.0
MIN_RECALL = 0.98


@dataclass
class IndexRun:
    """One timed indexing run through the library."""

    precision: str
    device: str
    batch_size: int
    workers: int
    layout: str  # who runs the model: "model in each worker, N thread(s)" or "model here, workers decode"
    images: int
    failed: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BaselineRun:
    """The seed notebooks' one-at-a-time indexing, timed."""

    device: str
    images: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PrecisionCheck:
    """Neighbour lists of the automatic precision compared with fp32 ones."""

    precision: str
    items: int
    recall_at_10: float
    mean_cosine: float
    min_cosine: float


# -- command line ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Index throughput, query speed and bf16 recall of lookalike against the seed method.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="dataset folder with images/*.jpg (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=0, metavar="N",
                        help="hard-link the photos under distinct names until there are at least N files")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: chosen from the device")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes; default: from the cores")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (default: auto)")
    parser.add_argument("--originals", action="store_true",
                        help="upscale the photos 2x to the shop's original 1800x2400 before timing (real decode cost)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N photos")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="skip the slow one-at-a-time baseline indexing (its query timing still runs)")
    parser.add_argument("--baseline-limit", type=int, default=None, metavar="N",
                        help="time the baseline indexing on the first N photos only (default: all)")
    parser.add_argument("--runtimes", default=None, metavar="LIST",
                        help="compare these runtimes side by side with the seed loop instead of the single run: "
                             f"comma-separated from {', '.join(RUNTIME_RUNS)} (default on a CPU: "
                             f"{','.join(DEFAULT_RUNTIMES)}; '' for the single run)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --runtimes (default 2)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures here")
    parser.add_argument("--model", default=MODEL, help=f"what our runs index with (default {MODEL} with random "
                        "weights, the seed's architecture; another name, e.g. mobilenetv2, runs with its real "
                        "weights); the seed loop runs the seed's ResNet-50 unless --seed-model same")
    parser.add_argument("--seed-model", choices=("resnet50", "same"), default="resnet50",
                        help="the seed loop's network: the seed's ResNet-50 (default), or the same as --model, so "
                        "that the ratio compares the indexing pipelines and not the networks")
    parser.add_argument("--labels", type=Path, default=None, metavar="CSV",
                        help="a manifest of the photos' labels (an id column naming <id>.jpg, e.g. the dataset's "
                        "styles.csv): the int8 gate of the --runtimes runs weighs label precision as it does "
                        "when a shop indexes its manifest")
    args = parser.parse_args(argv)
    for name in ("repeat", "limit", "baseline_limit", "batch_size", "workers"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("repeat", "workers") else 1):
            parser.error(f"--{name.replace('_', '-')} {value}: too small")
    return args


# -- the photos --------------------------------------------------------------------------------------


def source_photos(data: Path, limit: int | None) -> tuple[Path, list[Path]]:
    """The image folder of a dataset and its photos in the catalog's own listing order."""
    folder = data / "images" if (data / "images").is_dir() else data
    if not folder.is_dir():
        raise SystemExit(f"{data}: no such dataset folder; pass --data DIR")
    photos = find_images(folder)
    if not photos:
        raise SystemExit(f"{folder}: no images found")
    return folder, photos[:limit] if limit else photos


def stage_photos(folder: Path, photos: list[Path], repeat: int, limited: bool, workdir: Path,
                 scale: float = 1.0) -> Path:
    """The folder to index: the dataset's own when it is used whole, else hard links in ``workdir``.

    ``scale`` > 1 re-creates the shop's full-size originals (the shared copies were downscaled from
    1800x2400 to 900x1200): decoding then costs what it costs on a real catalog.
    """
    if not limited and repeat <= len(photos) and scale == 1.0:
        return folder
    staged = workdir / "photos"
    staged.mkdir()
    total = max(repeat, len(photos))
    for n in range(total):
        photo = photos[n % len(photos)]
        name = "_".join(photo.relative_to(folder).parts)
        if repeat > len(photos):
            name = f"r{n // len(photos)}_{name}"
        if scale != 1.0 and n < len(photos):
            with Image.open(photo) as im:
                big = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
            big.save(staged / name, quality=90)
        elif scale != 1.0:
            _link_or_copy(staged / "_".join(photos[n % len(photos)].relative_to(folder).parts), staged / name)
        else:
            _link_or_copy(photo, staged / name)
    return staged


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # not a symlink: the catalog resolves those back to one path
    except OSError:
        shutil.copy2(src, dst)


def warm_file_cache(files: list[Path]) -> None:
    """Read every file once so the first timed run pays no disk reads the later ones do not."""
    for path in files:
        path.read_bytes()


# -- ours --------------------------------------------------------------------------------------------


def new_catalog(path: Path, options: EncodeOptions, count: int) -> tuple[Catalog, IndexRun]:
    """An empty catalog with its model already on the device, and the settings its indexing will use."""
    catalog = Catalog.create(path, model=MODEL, weights=WEIGHTS)
    encoder = catalog.encoder(options)  # places the model before the clock starts; ``add`` reuses it
    plan = plan_workers(encoder, count)
    layout = (f"model in each worker, {plan.threads} thread(s)" if plan.embed_in_workers
              else f"model here on {torch.get_num_threads()} thread(s), workers decode")
    run = IndexRun(precision=encoder.precision, device=str(encoder.device), batch_size=encoder.batch_size,
                   workers=plan.workers, layout=layout, images=0, failed=0, seconds=0.0)
    return catalog, run


def time_add(catalog: Catalog, folder: Path, options: EncodeOptions, run: IndexRun) -> None:
    """Index every photo of ``folder``, end to end to a saved catalog, and record it in ``run``."""
    started = time.perf_counter()
    report = catalog.add(folder, options=options)
    run.seconds = time.perf_counter() - started
    run.images, run.failed = report.indexed, report.failed


def time_ours_queries(catalog: Catalog, ids: list[str]) -> float:
    """Seconds for ``similar`` on every id, after one warm-up query."""
    catalog.similar(ids[0], k=K)
    started = time.perf_counter()
    for item_id in ids:
        catalog.similar(item_id, k=K)
    return time.perf_counter() - started


def read_labels(manifest: Path, files: list[Path]) -> dict[str, dict[str, str]]:
    """Photo path -> its labels from a manifest whose ``id`` column names the photo ``<id>.<ext>`` (the
    dataset's styles.csv); photos without a row are left out."""
    import csv

    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = {row["id"]: {k: v for k, v in row.items() if k != "id" and v} for row in csv.DictReader(fh)}
    return {str(f): rows[f.stem] for f in files if f.stem in rows}


# -- the baseline ------------------------------------------------------------------------------------


def baseline_model(device: torch.device) -> torch.nn.Module:
    """The seed's ResNet-50 with global max pooling, random weights from seed 0, float32, NCHW; with
    ``--seed-model same``, our runs' network instead (its timm module, with its weights)."""
    import timm

    if SEED_SAME:
        from lookalike.models.registry import create_embedder

        return create_embedder(MODEL, weights=WEIGHTS).model.to(device).eval()
    spec = resolve(SEED_MODEL)
    torch.manual_seed(0)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, global_pool="max")
    return model.to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def index_baseline(files: list[Path], device: torch.device) -> tuple[BaselineRun, np.ndarray]:
    """Embed photos one at a time as the seed notebooks do, then fit a brute-force neighbour index.

    Returns the run and the stacked vectors.
    """
    from PIL import Image
    from sklearn.neighbors import NearestNeighbors

    model = baseline_model(device)
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)
    std = np.array(IMAGENET_STD, dtype=np.float32)
    with torch.no_grad():
        model(torch.zeros(1, 3, *BASELINE_SIZE, device=device))  # warm-up, outside the clock
    _sync(device)
    started = time.perf_counter()
    vectors: list[np.ndarray] = []
    with torch.no_grad():
        for path in files:
            img = Image.open(path).convert("RGB").resize(BASELINE_SIZE)
            arr = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
            x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0).to(device)
            vectors.append(model(x)[0].cpu().numpy())
    matrix = np.stack(vectors)
    NearestNeighbors(algorithm="brute", metric="euclidean").fit(matrix)
    seconds = time.perf_counter() - started
    return BaselineRun(device=str(device), images=len(files), seconds=seconds), matrix


def time_baseline_queries(matrix: np.ndarray, rows: list[int]) -> float:
    """Seconds for one ``kneighbors`` call per row, as the seed does, after one warm-up query."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(algorithm="brute", metric="euclidean").fit(matrix)
    nn.kneighbors(matrix[rows[0]:rows[0] + 1], n_neighbors=K + 1)
    started = time.perf_counter()
    for i in rows:
        nn.kneighbors(matrix[i:i + 1], n_neighbors=K + 1)
    return time.perf_counter() - started


# -- precision ---------------------------------------------------------------------------------------


def distinct_vectors(catalog: Catalog) -> dict[str, np.ndarray]:
    """Stored vector per item id, one item per distinct file content (copies would tie as neighbours)."""
    keys, matrix = catalog.store.vectors(catalog.config.embedder.dim)
    row_of = {int(key): row for row, key in enumerate(keys.tolist())}
    out: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for key, item_id, _path, sha in catalog.store.ok_items():
        if sha is not None and sha in seen:
            continue
        if sha is not None:
            seen.add(sha)
        out[item_id] = matrix[row_of[key]]
    return out


def neighbours(matrix: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k rows per row, leaving each row itself out (order within top-k unsorted)."""
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k) if hits else float("nan")


def compare_precision(ours: Catalog, fp32: Catalog, precision: str) -> PrecisionCheck:
    a, b = distinct_vectors(ours), distinct_vectors(fp32)
    ids = [i for i in a if i in b]
    if len(ids) < 2:
        raise SystemExit("too few distinct photos to compare neighbour lists")
    ma = np.stack([a[i] for i in ids]).astype(np.float32)
    mb = np.stack([b[i] for i in ids]).astype(np.float32)
    k = min(K, len(ids) - 1)
    cosines = (ma * mb).sum(axis=1)
    return PrecisionCheck(precision=precision, items=len(ids),
                          recall_at_10=recall_at_k(neighbours(ma, k), neighbours(mb, k)),
                          mean_cosine=float(cosines.mean()), min_cosine=float(cosines.min()))


# -- report ------------------------------------------------------------------------------------------


def _ratio(ours: float | None, base: float | None) -> float | None:
    return ours / base if ours and base else None


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return ""
    return "ok" if value >= target else "BELOW TARGET"


def summary_lines(ours: IndexRun, fp32: IndexRun | None, baseline: BaselineRun | None, query_ms: float,
                  baseline_query_ms: float, check: PrecisionCheck | None) -> list[str]:
    lines = []
    if baseline is not None:
        ratio = _ratio(ours.rate, baseline.rate)
        lines.append(f"index  ours: {ours.rate:.1f} img/s   baseline: {baseline.rate:.1f} img/s   "
                     f"ratio {ratio:.1f}x (target >= {TARGET_INDEX_RATIO:g}x) "
                     f"{_verdict(ratio, TARGET_INDEX_RATIO)}")
    else:
        lines.append(f"index  ours: {ours.rate:.1f} img/s   baseline: skipped")
    if fp32 is not None:
        lines.append(f"index  ours {ours.precision}: {ours.rate:.1f} img/s   ours fp32: {fp32.rate:.1f} img/s"
                     f"   {ours.precision} speed-up {_ratio(ours.rate, fp32.rate):.2f}x")
    qratio = _ratio(baseline_query_ms, query_ms)
    lines.append(f"similar x{QUERIES}  ours: {query_ms:.1f} ms   baseline: {baseline_query_ms:.1f} ms   "
                 f"ratio {qratio:.0f}x (target >= {TARGET_QUERY_RATIO:g}x) "
                 f"{_verdict(qratio, TARGET_QUERY_RATIO)}")
    if check is not None:
        verdict = "ok" if check.recall_at_10 >= MIN_RECALL else "TOO LOW"
        lines.append(f"recall@10 {check.precision} vs fp32: {check.recall_at_10:.3f} "
                     f"(needs >= {MIN_RECALL} to be the default) {verdict}   "
                     f"[{check.items} distinct photos, vector cosine mean {check.mean_cosine:.5f}, "
                     f"min {check.min_cosine:.5f}]")
    else:
        lines.append("recall@10: not checked (the run already used fp32)")
    return lines


def say(text: str) -> None:
    print(text, flush=True)


# -- main --------------------------------------------------------------------------------------------


def warm_up_process(folder: Path, files: list[Path], options: EncodeOptions, workdir: Path) -> None:
    """Untimed: index a few photos once so one-time process start-up is billed to no timed run."""
    few = workdir / "warm-up"
    few.mkdir()
    for path in files[:4]:
        _link_or_copy(path, few / "_".join(path.relative_to(folder).parts))
    with Catalog.create(workdir / "warm-up.lk", model=MODEL, weights=WEIGHTS) as catalog:
        catalog.add(few, options=options)
        catalog.similar(catalog.ids()[0], k=K)


def check_precision(ours: Catalog, run: IndexRun, folder: Path, options: EncodeOptions, count: int,
                    workdir: Path) -> tuple[IndexRun, PrecisionCheck]:
    """Index the same photos again in fp32 (timed too) and compare neighbour lists with ``ours``."""
    fp32_options = EncodeOptions(**{**asdict(options), "precision": "fp32"})
    fp32_catalog, fp32_run = new_catalog(workdir / "bench-fp32.lk", fp32_options, count)
    with fp32_catalog:
        time_add(fp32_catalog, folder, fp32_options, fp32_run)
        say(f"ours fp32  {fp32_run.images} images in {fp32_run.seconds:.2f} s = {fp32_run.rate:.1f} img/s")
        check = compare_precision(ours, fp32_catalog, run.precision)
    say(f"precision  recall@10 {run.precision} vs fp32 over {check.items} distinct photos: "
        f"{check.recall_at_10:.3f}")
    return fp32_run, check


def query_timings(ours: Catalog, baseline_matrix: np.ndarray | None) -> tuple[float, float, int]:
    """(ours seconds, baseline seconds, catalog size) for the same 100 items, cycling through the ids."""
    ids = ours.ids()
    query_s = time_ours_queries(ours, [ids[i % len(ids)] for i in range(QUERIES)])
    if baseline_matrix is None or len(baseline_matrix) != len(ids):
        _, baseline_matrix = ours.store.vectors(ours.config.embedder.dim)  # same size: same search cost
    baseline_s = time_baseline_queries(baseline_matrix, [i % len(baseline_matrix) for i in range(QUERIES)])
    return query_s, baseline_s, len(ids)


# -- runtimes side by side ---------------------------------------------------------------------------


@dataclass
class RuntimeRun:
    """Every timed round of one runtime and precision, its one-time costs and its recall against fp32."""

    name: str
    runtime: str
    precision: str
    rates: list[float]
    images: int = 0
    one_time_s: float = 0.0  # conversion (if not cached) + int8 calibration and gate, before the clock
    gate: str = ""
    recall_vs_fp32: float | None = None
    chosen: str = ""  # what the run reported it ran, e.g. "openvino int8 on cpu" (what auto picked)

    @property
    def rate(self) -> float:
        return max(self.rates) if self.rates else 0.0


def _vectors_by_content(catalog: Catalog) -> dict[str, np.ndarray]:
    """Stored vector per distinct file content (sha256), so catalogs built apart line up row for row."""
    keys, matrix = catalog.store.vectors(catalog.config.embedder.dim)
    row_of = {int(key): row for row, key in enumerate(keys.tolist())}
    return {sha: matrix[row_of[key]] for key, _id, _path, sha in catalog.store.ok_items() if sha is not None}


def compare_runtimes(names: list[str], indexed: Path, files: list[Path], options: EncodeOptions, rounds: int,
                     baseline_limit: int | None, skip_baseline: bool, workdir: Path) -> dict:
    """Index the same photos with the seed loop and each runtime in interleaved rounds; see the docstring."""
    from lookalike.engines.openvino_runtime import converted

    runs = [RuntimeRun(name, *RUNTIME_RUNS[name], rates=[]) for name in names]
    catalogs: dict[str, Catalog] = {}
    for run in runs:  # one-time work, outside the clock: conversion, int8 calibration and gate
        catalog = catalogs[run.name] = Catalog.create(workdir / f"{run.name}.lk", model=MODEL, weights=WEIGHTS)
        opts = replace(options, runtime=run.runtime, precision=run.precision)
        started = time.perf_counter()
        if run.runtime in ("openvino", "auto"):
            converted(catalog.embedder)
        if run.precision in ("int8", "auto"):  # auto: what `lookalike index` does first (int8 behind its gate)
            run.gate = catalog.calibrate_int8(opts, files, new_labels=(lambda: LABELS) if LABELS else None) or ""
            skipped = "no int8 weighed (a CPU with bf16 units, not on OpenVINO, or too few photos)"
            say(f"{run.name:14} {run.gate or skipped}")
        encoder = catalog.encoder(opts)
        if encoder.runtime == "openvino":
            encoder.model.throughput()  # compiled before the clock, as PyTorch's model is placed before it
        run.one_time_s = time.perf_counter() - started
        say(f"{run.name:14} one-time preparation {run.one_time_s:.1f} s (conversion if not cached, calibration)")
    baseline_rates: list[float] = []
    subset = files[:baseline_limit] if baseline_limit else files
    for r in range(rounds):
        if not skip_baseline:
            base, _ = index_baseline(subset, torch.device("cpu"))
            baseline_rates.append(base.rate)
            say(f"round {r + 1}  {'seed loop':14} {base.images} images in {base.seconds:.2f} s = {base.rate:.1f} img/s "
                f"(load {os.getloadavg()[0]:.1f})")
        for run in runs:
            catalog = catalogs[run.name]
            if len(catalog):
                catalog.remove(catalog.ids())  # the next add embeds every photo again, with the same model
            opts = replace(options, runtime=run.runtime, precision=run.precision)
            started = time.perf_counter()
            report = catalog.add(indexed, options=opts)
            seconds = time.perf_counter() - started
            run.images = report.indexed
            run.rates.append(report.indexed / seconds)
            run.chosen = report.runtime
            say(f"round {r + 1}  {run.name:14} {report.indexed} images in {seconds:.2f} s = {run.rates[-1]:.1f} "
                f"img/s ({report.runtime}, load {os.getloadavg()[0]:.1f})")
    with Catalog.create(workdir / "fp32-reference.lk", model=MODEL, weights=WEIGHTS) as reference:
        reference.add(indexed, options=replace(options, runtime="torch", precision="fp32"))
        truth = _vectors_by_content(reference)
    for run in runs:
        found = _vectors_by_content(catalogs[run.name])
        shas = [sha for sha in truth if sha in found]
        run.recall_vs_fp32 = recall_at_k(neighbours(np.stack([found[s] for s in shas]), K),
                                         neighbours(np.stack([truth[s] for s in shas]), K))
        catalogs[run.name].close()
    baseline_rate = max(baseline_rates) if baseline_rates else None
    say("")
    say(f"{'runtime':14} {'img/s (best)':>12} {'rounds':>18} {'x seed loop':>11} {'recall@10 vs fp32':>17}")
    if baseline_rate:
        say(f"{'seed loop':14} {baseline_rate:12.1f} {', '.join(f'{x:.1f}' for x in baseline_rates):>18} "
            f"{1.0:11.2f} {'-':>17}")
    for run in runs:
        ratio = _ratio(run.rate, baseline_rate)
        target = AUTO_TARGET if run.name == "auto" else RUNTIME_TARGETS.get(run.name)
        verdict = f" (target >= {target:g}x {_verdict(ratio, target)})" if target and ratio else ""
        picked = f" [{run.chosen}]" if run.name == "auto" else ""
        say(f"{run.name:14} {run.rate:12.1f} {', '.join(f'{x:.1f}' for x in run.rates):>18} "
            f"{(ratio or 0):11.2f} {run.recall_vs_fp32:17.3f}{verdict}{picked}")
    return {"seed_loop": {"rates": baseline_rates, "images": len(subset)},
            "runtimes": [{**asdict(run), "best": run.rate, "x_seed_loop": _ratio(run.rate, baseline_rate)}
                         for run in runs]}


def main(argv: list[str] | None = None) -> int:
    global MODEL, WEIGHTS, SEED_SAME
    args = parse_args(argv)
    say(describe_machine())
    if args.model != MODEL:
        MODEL, WEIGHTS = args.model, None  # a real model with its own weights; the seed loop stays ResNet-50
    SEED_SAME = args.seed_model == "same"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder, photos = source_photos(args.data.resolve(), args.limit)
    options = EncodeOptions(device=args.device, precision=args.precision, batch_size=args.batch_size,
                            workers=args.workers, progress=False)
    figures: dict = {"model": MODEL, "weights": WEIGHTS, "torch_threads": torch.get_num_threads()}
    fp32_run: IndexRun | None = None
    check: PrecisionCheck | None = None
    baseline: BaselineRun | None = None
    baseline_matrix: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        workdir = Path(tmp)
        indexed = stage_photos(folder, photos, args.repeat, args.limit is not None, workdir,
                               scale=2.0 if args.originals else 1.0)
        files = find_images(indexed)
        warm_file_cache(files)
        if args.labels is not None:
            LABELS.update(read_labels(args.labels, files))
            say(f"labels     {args.labels}: {len(LABELS)} of {len(files)} photos labelled (the int8 gate's "
                "label rule)")
        say(f"data       {indexed}: {len(files)} files, made from {len(photos)} photos of {folder}")
        say(f"model      {MODEL}, " + ("random weights (timing only)" if WEIGHTS else "its real weights")
            + ("; the seed loop: the same network" if SEED_SAME else "; the seed loop: ResNet-50, random weights"))
        warm_up_process(indexed, files, options, workdir)
        names = _runtime_names(args, options)
        if names:
            say(f"runtimes   {', '.join(names)} and the seed loop, {args.rounds} interleaved rounds; "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} (a shared machine slows every run)")
            figures["runtimes"] = compare_runtimes(names, indexed, files, options, args.rounds, args.baseline_limit,
                                                   args.skip_baseline, workdir)
            if args.json is not None:
                args.json.write_text(json.dumps(figures, indent=2) + "\n")
                say(f"figures written to {args.json}")
            return 0

        ours, run = new_catalog(workdir / "bench.lk", options, len(files))
        with ours:
            say(f"device     {run.device}   workers {run.workers} ({run.layout})   precision {run.precision}   "
                f"batch size {run.batch_size}")
            time_add(ours, indexed, options, run)
            say(f"ours       {run.images} images in {run.seconds:.2f} s = {run.rate:.1f} img/s "
                f"({run.precision})" + (f", {run.failed} failed" if run.failed else ""))
            if run.images < 2:
                raise SystemExit("fewer than 2 photos could be indexed; nothing to compare")
            if run.precision != "fp32":
                fp32_run, check = check_precision(ours, run, indexed, options, len(files), workdir)
            if not args.skip_baseline:
                subset = files[:args.baseline_limit] if args.baseline_limit else files
                baseline, baseline_matrix = index_baseline(subset, torch.device(run.device))
                say(f"baseline   {baseline.images} images in {baseline.seconds:.2f} s = {baseline.rate:.1f} "
                    f"img/s (one at a time, fp32, {baseline.device})")
            query_s, baseline_query_s, items = query_timings(ours, baseline_matrix)

    figures["ours"] = {**asdict(run), "images_per_s": run.rate}
    if fp32_run is not None and check is not None:
        figures["ours_fp32"] = {**asdict(fp32_run), "images_per_s": fp32_run.rate}
        figures["precision_check"] = asdict(check)
    if baseline is not None:
        figures["baseline"] = {**asdict(baseline), "images_per_s": baseline.rate}
    figures["similar"] = {"queries": QUERIES, "k": K, "catalog_items": items,
                          "ours_ms": query_s * 1e3, "baseline_ms": baseline_query_s * 1e3}
    figures["index_ratio"] = _ratio(run.rate, baseline.rate if baseline else None)
    figures["similar_ratio"] = _ratio(baseline_query_s, query_s)
    say("")
    for line in summary_lines(run, fp32_run, baseline, query_s * 1e3, baseline_query_s * 1e3, check):
        say(line)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        say(f"figures written to {args.json}")
    return 0


def _runtime_names(args: argparse.Namespace, options: EncodeOptions) -> list[str]:
    if args.runtimes is None:
        from lookalike.engines.torch_runtime import resolve_device

        return list(DEFAULT_RUNTIMES) if resolve_device(options.device).type == "cpu" else []
    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNTIME_RUNS]
    if unknown:
        raise SystemExit(f"--runtimes: unknown {', '.join(unknown)}; choose from {', '.join(RUNTIME_RUNS)}")
    return names


def cli() -> int:
    try:
        return main()
    except LookalikeError as exc:  # a bad --device/--precision/--batch-size, an unreadable source
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
