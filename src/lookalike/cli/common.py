"""What every command group shares: argument types, the parent parsers, encode options and result tables.

Imports nothing heavy: the parser for every command is built from this without loading PyTorch, FAISS,
matplotlib or FastAPI; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.config import DEFAULT_MAX_PIXELS, EncodeOptions

if TYPE_CHECKING:
    from rich.console import Console

    from ..catalog.query import Match

EXIT_USAGE = 2  # expected failures: one line on stderr, this exit code
CATALOG_ENV = "LOOKALIKE_CATALOG"  # the catalog every command (and `serve`) uses when --catalog is not given


def int_at_least(lowest: int):
    """An argparse type: a whole number of at least ``lowest``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {lowest}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_above(lowest: float, inclusive: bool):
    """An argparse type: a number above ``lowest`` (or equal, when ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < lowest or (value == lowest and not inclusive) or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} must be {'at least' if inclusive else 'above'} {lowest:g}")
        return value

    return parse


positive_float = float_above(0.0, inclusive=False)
non_negative_float = float_above(0.0, inclusive=True)


def similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a cosine similarity above 0 and at most 1, e.g. 0.95")
    return value


def figure_path(text: str) -> str:
    """Refuse a wrong extension before any work is done."""
    from ..figures.plots import FORMATS

    if Path(text).suffix.lower() not in FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: write the figure as .png or .svg")
    return text


def int_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write LOW:HIGH, e.g. 2:12") from None
    if not sep or lo < 2 or hi < lo:
        raise argparse.ArgumentTypeError(f"{text!r}: need 2 <= LOW <= HIGH, e.g. 2:12")
    return lo, hi


@dataclass(frozen=True)
class Parents:
    """Option groups that several commands take (argparse parent parsers)."""

    common: argparse.ArgumentParser  # -q/--quiet, -v/--verbose
    run: argparse.ArgumentParser  # device, precision, batch size, workers, pixel limit, draft (training too)
    embed: argparse.ArgumentParser  # run's options for inference: runtime, and int8 among the precisions
    catalog: argparse.ArgumentParser  # --catalog
    query: argparse.ArgumentParser  # -k, --where, --json, --dedupe
    engine: argparse.ArgumentParser  # --engine local|ray and the Ray options


RUNTIME_ENV = "LOOKALIKE_RUNTIME"  # the default --runtime of every command that embeds (serve's too)


def parent_parsers() -> Parents:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar, errors only")
    common.add_argument("-v", "--verbose", action="store_true", help="log what is going on")

    run = _run_options(inference=False)
    embed = _run_options(inference=True)

    catalog = argparse.ArgumentParser(add_help=False)
    from_env = os.environ.get(CATALOG_ENV) or None
    catalog.add_argument("--catalog", required=from_env is None, default=from_env,
                         help="the catalog: a folder (e.g. shop.lk) or a postgresql://user@host/db URL "
                              f"(default ${CATALOG_ENV}; a password is better kept in ~/.pgpass or PGPASSWORD)")

    query = argparse.ArgumentParser(add_help=False)
    query.add_argument("-k", type=positive_int, default=10, help="how many items to return (default 10)")
    query.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                       help="only items with this label value; repeat to require several (AND)")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.add_argument("--dedupe", action="store_true", help="one item per near-duplicate group (the groups of "
                       "the last `lookalike duplicates` run, else copies of a better result are dropped)")

    engine = argparse.ArgumentParser(add_help=False)
    group = engine.add_argument_group("engine", "where the work runs: this machine, or a Ray cluster")
    group.add_argument("--engine", default="local", choices=["local", "ray"],
                       help="local (default: this machine, the fastest on one box) or ray (a local Ray started for "
                       "the run, or a cluster with --ray-address)")
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="join a running Ray cluster: auto, or HOST:PORT of its head (default: start a local Ray)")
    group.add_argument("--actors", type=positive_int, default=None,
                       help="Ray actors that hold the model (default: one per GPU with --gpus-per-actor, else one "
                       "per CPU left after a decoding task)")
    group.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0, help="GPUs each actor gets (0)")
    group.add_argument("--cpus-per-actor", type=positive_float, default=1.0,
                       help="CPUs each actor reserves, its model's threads (1)")
    group.add_argument("--decode-cpus", type=positive_float, default=1.0,
                       help="CPUs each Ray decoding task reserves (1)")

    return Parents(common=common, run=run, embed=embed, catalog=catalog, query=query, engine=engine)


def _run_options(inference: bool) -> argparse.ArgumentParser:
    """Device, precision, batch size, workers, pixel limit, draft; for inference (index, search, demo,
    evaluate) also the runtime and int8, which training has no use for."""
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    if inference:
        run.add_argument("--runtime", default=os.environ.get(RUNTIME_ENV) or "auto",
                         choices=["auto", "torch", "openvino"],
                         help="what runs a network model: auto (OpenVINO on x86 CPUs, where it was measured faster; "
                              "PyTorch elsewhere), torch, openvino (CPU only); default "
                              f"${RUNTIME_ENV}, else auto")
        run.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                         help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32; on OpenVINO int8 when a "
                              "model quantised on the catalog's photos passes its recall gate. int8 (OpenVINO) "
                              "forces it and reports its recall; fp16 on GPUs")
    else:
        run.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                         help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32")
    run.add_argument("--batch-size", type=positive_int, default=None,
                     help="images per model call (default: 256 on CUDA, 8 on CPU, 64 for pixels/colorhist)")
    run.add_argument("--workers", type=non_negative_int, default=None,
                     help="workers that decode (PyTorch on a CPU in bf16: processes that also embed, one model "
                          "thread each; OpenVINO: threads feeding one stream per core); default: one per core; 0 "
                          "decodes in the main process")
    run.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                     help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})")
    run.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size (slower; for checks)")
    return run


def engine_from_args(args: argparse.Namespace):
    """The Ray engine the options ask for, or None for the local one.

    Raises:
        LookalikeError: Ray options without ``--engine ray``.
    """
    from ..core.errors import LookalikeError

    ray_options = {"--ray-address": args.ray_address is not None, "--actors": args.actors is not None,
                   "--gpus-per-actor": args.gpus_per_actor != 0.0, "--cpus-per-actor": args.cpus_per_actor != 1.0,
                   "--decode-cpus": args.decode_cpus != 1.0}
    if args.engine == "local":
        given = [name for name, set_ in ray_options.items() if set_]
        if given:
            raise LookalikeError(f"{given[0]} is a Ray option; add --engine ray")
        return None
    from ..engines.ray_engine import RayEngine, RayOptions

    return RayEngine(RayOptions(address=args.ray_address, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                                cpus_per_actor=args.cpus_per_actor, decode_cpus=args.decode_cpus))


def shown_catalog(catalog: str) -> str:
    """A catalog location as it may be printed: a database URL loses its password."""
    from ..store.urls import is_database_url, parse_database_url

    return parse_database_url(catalog).display if is_database_url(catalog) else str(catalog)


def encode_options(args: argparse.Namespace) -> EncodeOptions:
    """The embedding options of a command's arguments.

    Raises:
        LookalikeError: ``$LOOKALIKE_RUNTIME`` names no runtime (argparse checks only what is typed).
    """
    runtime = getattr(args, "runtime", "auto")
    if runtime not in ("auto", "torch", "openvino"):
        from ..core.errors import LookalikeError

        raise LookalikeError(f"{RUNTIME_ENV}={runtime!r} is not a runtime; set it to auto, torch or openvino")
    return EncodeOptions(
        device=args.device, precision=args.precision, runtime=runtime,
        batch_size=args.batch_size,
        workers=args.workers,
        max_pixels=args.max_pixels, draft=not args.no_draft, progress=not args.quiet,
    )


def show_matches(matches: list[Match], args: argparse.Namespace, out: Console, title: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps([m.to_dict() for m in matches], indent=2))
        return
    if not matches:
        out.print(f"{title}: no matches" + (" (the filter matches no other item)" if args.where else ""))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("similarity", justify="right")
    table.add_column("distance", justify="right")
    table.add_column("labels", overflow="fold")
    table.add_column("path", overflow="fold")
    ruled = any(m.rules for m in matches)
    if ruled:
        table.add_column("rules", overflow="fold")
    fused = any(len(m.found_by) > 1 or m.found_by == ["keyword"] for m in matches) and any(
        "vector" in m.found_by for m in matches)  # words fused with vectors: say which list found each
    if fused:
        table.add_column("found by")
    for m in matches:
        labels = ", ".join(m.labels.get(k) for k in ("articleType", "baseColour", "gender") if m.labels.get(k))
        if not labels:
            labels = ", ".join(f"{k}={v}" for k, v in list(m.labels.items())[:3])
        path = f"(photo missing) {m.path}" if m.missing else m.path
        if m.photos > 1:
            path = f"{path} (1 of {m.photos} photos)"
        if m.variants:
            labels = f"{labels}; variants {', '.join(m.variants[:5])}" + (" ..." if len(m.variants) > 5 else "")
        row = [str(m.rank), m.id, f"{m.similarity:.3f}", f"{m.distance:.3f}", labels, path]
        table.add_row(*row, *(["; ".join(m.rules)] if ruled else []), *([" + ".join(m.found_by)] if fused else []))
    out.print(table)


def json_float(value):
    return None if isinstance(value, float) else str(value)
