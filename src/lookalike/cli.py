"""The ``lookalike`` command: a thin map from subcommands to library calls; it owns the terminal.

Expected failures print one line and exit with code 2; Ctrl-C during indexing keeps finished batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import __version__
from .catalog import Catalog
from .config import DEFAULT_MAX_PIXELS, EncodeOptions
from .embedders.registry import DEFAULT_MODEL, list_models
from .errors import LookalikeError
from .search import Match

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    out = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=not sys.stdout.isatty())
    try:
        return int(args.func(args, out) or 0)
    except LookalikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished batches are saved; run the same command again to resume", file=sys.stderr)
        return 130


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if getattr(args, "quiet", False) else logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("lookalike")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# -- commands -----------------------------------------------------------------------------------------


def cmd_index(args: argparse.Namespace, out: Console) -> int:
    catalog = Catalog.open_or_create(args.catalog, args.model, args.weights)
    with catalog:
        report = catalog.add(args.source, images=args.images, prune=args.prune, options=_options(args))
        if args.json:
            print(json.dumps({**report.__dict__, "images_per_second": report.images_per_second}, indent=2))
        else:
            for warning in report.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            print(f"{args.catalog}: {report.summary()}; {len(catalog)} items searchable")
            if report.failed:
                print(f"  {report.failed} files skipped; `lookalike status --catalog {args.catalog}` lists why")
    return 0


def cmd_search(args: argparse.Namespace, out: Console) -> int:
    with Catalog.open(args.catalog) as catalog:
        catalog.encoder(_options(args))
        matches = catalog.search(args.image, k=args.k, where=args.where)
        _show(matches, args, out, title=f"items most like {args.image}")
    return 0


def cmd_similar(args: argparse.Namespace, out: Console) -> int:
    with Catalog.open(args.catalog) as catalog:
        matches = catalog.similar(args.item_id, k=args.k, where=args.where)
        _show(matches, args, out, title=f"items most like catalog item {args.item_id}")
    return 0


def cmd_status(args: argparse.Namespace, out: Console) -> int:
    with Catalog.open(args.catalog) as catalog:
        status = catalog.status(failures=args.failures)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    out.print(f"catalog  {status.path}")
    out.print(f"model    {status.embedder.describe()}")
    out.print(f"items    {status.items} searchable, {status.failed} failed")
    out.print(f"index    {status.index}")
    out.print(f"labels   {', '.join(status.labels) or '(none)'}")
    if status.failures:
        table = Table(title="failed files (retried when the file changes)", title_justify="left")
        for col in ("id", "path", "reason"):
            table.add_column(col, overflow="fold")
        for item_id, path, reason in status.failures:
            table.add_row(item_id, path, reason)
        out.print(table)
        if status.failed > len(status.failures):
            out.print(f"... and {status.failed - len(status.failures)} more (--failures N shows more)")
    return 0


def cmd_models(args: argparse.Namespace, out: Console) -> int:
    for name, spec in list_models().items():
        out.print(f"{name:16} {spec.description}")
    out.print(f"{'timm:<name>':16} any timm model, e.g. timm:convnext_tiny.fb_in22k")
    return 0


def cmd_demo(args: argparse.Namespace, out: Console) -> int:
    from .demo import run_demo

    path = Path(args.catalog)
    result = run_demo(path, model=args.model, options=_options(args), weights=args.weights)
    with result.catalog as catalog:
        if result.fallback:
            out.print(f"note: {result.fallback}; the demo uses {args.model} with seeded random weights instead, "
                      "so neighbours follow colour and shape only", markup=False, highlight=False)
        out.print(f"[bold]Demo catalog[/bold] {path}: {result.report.summary()}")
        out.print(f"model: {catalog.config.embedder.describe()}")
        for item_id, labels, matches in result.examples:
            name = labels.get("productDisplayName", item_id)
            _show(matches, args, out, title=f"more like {item_id}: {name}")
        example = result.examples[0][0] if result.examples else "ID"
        out.print("\nNext:")
        out.print(f"  lookalike similar {example} --catalog {path} -k 5 --where gender=Men")
        photo = result.examples[-1][2][0].path if result.examples and result.examples[-1][2] else "photo.jpg"
        out.print(f"  lookalike search {photo} --catalog {path} -k 5")
        out.print(f"  lookalike status --catalog {path}")
        out.print("  lookalike index ./your-images --catalog shop.lk     # your own catalog")
    return 0


def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    import socket

    import uvicorn
    from pydantic import ValidationError

    from .api import ServeSettings, create_app
    from .api.service import CatalogService

    overrides: dict = {"catalog": args.catalog}
    if args.device is not None:
        overrides["device"] = args.device
    if args.admin_token is not None:
        overrides["admin_token"] = args.admin_token
    if args.max_upload_mb is not None:
        overrides["max_upload_bytes"] = int(args.max_upload_mb * 1024 * 1024)
    if args.max_pixels is not None:
        overrides["max_pixels"] = args.max_pixels
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise LookalikeError(f"bad server setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    with socket.socket() as probe:  # say so now, rather than after loading the model
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise LookalikeError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                                 "choose another --port") from None
    service = CatalogService(settings)
    app = create_app(settings, service=service)
    where = f"http://{args.host}:{args.port}/"
    print(f"serving {settings.catalog} ({service.size()} items, {service.encoder.device}, "
          f"{service.encoder.precision}) at {where}  API docs: {where}docs"
          + ("" if settings.admin_token else "  (read-only: no --admin-token)"), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                access_log=args.verbose)
    return 0


# -- output -------------------------------------------------------------------------------------------


def _show(matches: list[Match], args: argparse.Namespace, out: Console, title: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps([m.to_dict() for m in matches], indent=2))
        return
    if not matches:
        out.print(f"{title}: no matches" + (" (the filter matches no other item)" if args.where else ""))
        return
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("similarity", justify="right")
    table.add_column("distance", justify="right")
    table.add_column("labels", overflow="fold")
    table.add_column("path", overflow="fold")
    for m in matches:
        labels = ", ".join(m.labels.get(k) for k in ("articleType", "baseColour", "gender") if m.labels.get(k))
        if not labels:
            labels = ", ".join(f"{k}={v}" for k, v in list(m.labels.items())[:3])
        table.add_row(str(m.rank), m.id, f"{m.similarity:.3f}", f"{m.distance:.3f}", labels, m.path)
    out.print(table)


def _options(args: argparse.Namespace) -> EncodeOptions:
    return EncodeOptions(
        device=args.device, precision=args.precision, batch_size=args.batch_size, workers=args.workers,
        max_pixels=args.max_pixels, draft=not args.no_draft, progress=not args.quiet,
    )


# -- argument parsing ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike", description="Recommend products that look like a given one.",
        epilog="Run `lookalike demo` for a tour; `lookalike COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"lookalike {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar, errors only")
    common.add_argument("-v", "--verbose", action="store_true", help="log what is going on")

    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    run.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="auto: bf16 on GPUs and on CPUs with native bf16, else fp32")
    run.add_argument("--batch-size", type=_positive_int, default=None,
                     help="images per model call (default: 256 on CUDA, 32 on CPU)")
    run.add_argument("--workers", type=_non_negative_int, default=None,
                     help="decoding processes (default: one per core; 0 decodes in the main process)")
    run.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                     help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})")
    run.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size (slower; for checks)")

    catalog_arg = argparse.ArgumentParser(add_help=False)
    catalog_arg.add_argument("--catalog", required=True, help="the catalog directory, e.g. shop.lk")

    query = argparse.ArgumentParser(add_help=False)
    query.add_argument("-k", type=_positive_int, default=10, help="how many items to return (default 10)")
    query.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                       help="only items with this label value; repeat to require several (AND)")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("index", parents=[common, run, catalog_arg], help="embed a folder or manifest",
                       description="Embed every image of a folder (recursive) or CSV manifest into a catalog. "
                       "Only new or changed files are embedded; an interrupted run resumes.")
    p.add_argument("source", help="a folder of images, or a CSV manifest with an id or path column")
    p.add_argument("--images", help="image folder for a manifest (default: images/ beside it, or its folder)")
    p.add_argument("--model", default=None, help=f"embedder for a new catalog (default {DEFAULT_MODEL}); "
                   "see `lookalike models`")
    p.add_argument("--weights", default=None, help="local .safetensors/.pth weights instead of the hub; "
                   "'random' for timing runs")
    p.add_argument("--prune", action="store_true", help="drop items whose files are gone")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common, run, catalog_arg, query], help="items most like a photo",
                       description="The k catalog items most like a photo.")
    p.add_argument("image", help="the query photo")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", parents=[common, catalog_arg, query], help="more like a catalog item",
                       description="The k items most like a catalog item, without itself or its exact copies.")
    p.add_argument("item_id", help="a catalog item id (for a folder, its path without the extension)")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("status", parents=[common, catalog_arg], help="counts, model and failed files",
                       description="What a catalog holds: counts, model, labels and failed files with reasons.")
    p.add_argument("--failures", type=_non_negative_int, default=50, help="failed files to list (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("models", parents=[common], help="list the embedders by name")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", parents=[common, run], help="a tour on sample photos shipped with lookalike",
                       description="Build a catalog of the sample product photos shipped with lookalike and "
                       "show look-alikes for three of them. Works offline.")
    p.add_argument("--catalog", default="lookalike-demo.lk", help="where to build it (default lookalike-demo.lk)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"embedder (default {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, help="local weights file instead of the hub")
    p.add_argument("--json", action="store_true", help="print the look-alikes as JSON")
    p.set_defaults(func=cmd_demo, where=None)

    p = sub.add_parser("serve", parents=[common, catalog_arg], help="REST API and web page for a catalog",
                       description="Serve a catalog: a web page at / and a REST API under /api (docs at /docs). "
                       "Settings may also come from LOOKALIKE_* environment variables, e.g. "
                       "LOOKALIKE_ADMIN_TOKEN.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_int_at_least(0), default=8000, help="port (default 8000)")
    p.add_argument("--admin-token", default=None, help="allow POST/DELETE /api/items for requests carrying this "
                   "token (prefer LOOKALIKE_ADMIN_TOKEN: a command line is visible to other users)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest accepted upload (default 20)")
    p.add_argument("--max-pixels", type=_positive_int, default=None,
                   help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.set_defaults(func=cmd_serve)
    return parser


def _int_at_least(lowest: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {lowest}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


if __name__ == "__main__":
    sys.exit(main())
