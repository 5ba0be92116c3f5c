"""Catalog commands: ``index``, ``tune``, ``status``, ``copy``, ``models``, ``demo``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .common import Parents, encode_options, engine_from_args, non_negative_int, show_matches

if TYPE_CHECKING:
    from rich.console import Console


def cmd_index(args: argparse.Namespace, out: Console) -> int:
    import contextlib

    from ..catalog.catalog import Catalog
    from ..core.errors import LookalikeError
    from ..index.choice import IndexOptions

    IndexOptions().changed(kind=args.index, memory=args.memory, recall=args.recall)  # refuse before creating
    engine = engine_from_args(args)
    new = not Catalog.exists(args.catalog)
    catalog = Catalog.open_or_create(args.catalog, args.model, args.weights)
    with catalog:
        try:
            if args.index is not None or args.memory is not None or args.recall is not None:
                catalog.configure_index(kind=args.index, memory=args.memory, recall=args.recall)
            report = catalog.add(args.source, images=args.images, prune=args.prune, options=encode_options(args),
                                 engine=engine, product_column=args.product_column,
                                 product_per_folder=args.product_per_folder)
        except BaseException:
            if new:  # a first run that failed before its first batch leaves nothing behind
                with contextlib.suppress(LookalikeError):  # the database may be what failed
                    catalog.discard_if_empty()
            raise
        if args.json:
            print(json.dumps({**report.__dict__, "images_per_second": report.images_per_second}, indent=2,
                             default=str))
        else:
            for note in report.notes:
                print(note)
            print(f"{catalog.name}: {report.summary()}; {len(catalog)} items searchable")
            if report.failed:
                print(f"  {report.failed} files skipped; `lookalike status --catalog {catalog.name}` lists why")
    return 0


def cmd_tune(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..catalog.catalog import Catalog
    from ..index.vector_index import SearchSettings

    with Catalog.open(args.catalog) as catalog:
        quality = catalog.tune(args.recall)
        index = catalog.index
        if args.json:
            print(json.dumps({"index": index.describe(), "settings": index.settings.__dict__,
                              "quality": quality.__dict__}, indent=2))
            return 0
        table = Table(title=f"recall@{quality.k} on {quality.queries} catalog items vs exact search",
                      title_justify="left")
        for col in ("setting", "recall", "latency ms"):
            table.add_column(col, justify="right" if col != "setting" else "left")
        for row in quality.table:
            setting = SearchSettings(**{k: row[k] for k in ("ef_search", "nprobe", "refine")})
            table.add_row(setting.describe(index.kind), f"{row['recall']:.3f}", f"{row['latency_ms']:.2f}")
        if quality.table:
            out.print(table)
        out.print(f"chosen: {index.describe()}")
        if quality.target is not None and quality.recall is not None and quality.recall < quality.target:
            out.print(f"[yellow]recall {quality.recall:.3f} is below the target {quality.target}, so searches "
                      "scan exactly until it is reached: raise --memory, lower --recall or use --index flat[/]")
    return 0


def cmd_status(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        status = catalog.status(failures=args.failures)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0
    out.print(f"catalog  {status.path}")
    out.print(f"model    {status.embedder.describe()}")
    gone = (f", {status.missing} photo{'s' * (status.missing != 1)} missing (deleted or moved since indexing; "
            "`index SOURCE --prune` drops them)") if status.missing else ""
    photos = f" ({status.photos} photos)" if status.photos != status.products else ""
    out.print(f"items    {status.items} searchable{photos}, {status.failed} failed{gone}")
    for item_id, path in status.missing_examples:
        out.print(f"         missing: {item_id}  {path}")
    if status.missing > len(status.missing_examples):
        out.print(f"         ... and {status.missing - len(status.missing_examples)} more missing")
    out.print(f"index    {status.index}")
    detail = status.index_detail
    if detail:
        on_disk = f"; {detail['disk_bytes_per_item']:,.0f} bytes/item on disk" if status.items else ""
        out.print(f"         chosen: {detail['reason']}{on_disk}")
    for line in runtime_lines(status.runtime):
        out.print(line, highlight=False)
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


def cmd_copy(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.copy import copy_catalog

    report = copy_catalog(args.source, args.destination)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        print(f"{report.destination}: {report.summary()}; index {report.index}")
    return 0


def runtime_lines(runtime: dict) -> list[str]:
    """What embedded the catalog's vectors, the int8 gate's figure and an added text tower, for ``status``."""
    lines = []
    last = runtime.get("runtime")
    if last:
        mixed = f" (vectors so far from {', '.join(last['used'])})" if len(last.get("used", [])) > 1 else ""
        lines.append(f"runtime  {last['runtime']} {last['precision']} on {last['device']} (last index run){mixed}")
    gate = runtime.get("int8")
    if gate:
        where = f"{gate['held']} {'calibration' if gate['overlap'] else 'held'} photos"
        verdict = "passed" if gate["recall"] >= gate["threshold"] else "failed"
        lines.append(f"int8     recall@{gate['k']} vs fp32 {gate['recall']:.3f} on {where}: {verdict} the "
                     f"{gate['threshold']:.2f} gate (calibrated on {gate['calibration']} photos; {gate['model']})")
    tower = runtime.get("text_tower")
    if tower:
        figure = tower.get("metrics", {}).get("t2i_recall@10")
        held = f"; held-out text->image recall@10 {figure:.3f}" if figure is not None else ""
        lines.append(f"words    text tower (LiT) for {tower['image_model']}, file:{tower['digest']} from "
                     f"{tower['source']}{held}")
    return lines


def cmd_models(args: argparse.Namespace, out: Console) -> int:
    from ..models.registry import list_models

    specs = list_models()
    rows = [(name, "text+image" if spec.text else "image", spec.description) for name, spec in specs.items()]
    rows += [("timm:<name>", "image", "any timm model, e.g. timm:convnext_tiny.fb_in22k"),
             ("open_clip:<arch>/<tag>", "text+image", "any open_clip model, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k"),
             ("hf-hub:<repo>", "text+image", "any open_clip model on the Hugging Face hub, e.g. "
                                             "hf-hub:Marqo/marqo-fashionSigLIP"),
             ("path.lkm", "either", "a model from `lookalike train` (train clip: text+image)")]
    if getattr(args, "json", False):
        print(json.dumps([{"name": n, "understands": u, "description": d, "builtin": n in specs and specs[n].builtin}
                          for n, u, d in rows], indent=2))
        return 0
    width = max(len(n) for n, _, _ in rows)
    for name, understands, description in rows:
        out.print(f"{name:{width}}  {understands:10}  {description}", markup=False, highlight=False)
    out.print("text+image models also search by words (search --text), tag items with words (tag) and train "
              "on titles (train clip)", markup=False, highlight=False)
    return 0


def cmd_demo(args: argparse.Namespace, out: Console) -> int:
    from pathlib import Path

    from ..core.errors import LookalikeError
    from ..store.urls import is_database_url

    if is_database_url(args.catalog):
        raise LookalikeError("the demo builds a folder catalog; give --catalog a folder, then `lookalike copy` it "
                             "to a database if you like")
    path = Path(args.catalog)
    # Said before the catalog code and the model are imported (PyTorch alone takes seconds): the tour starts at once.
    out.print(f"Building a demo catalog at {path}: sample shop photos shipped with lookalike, embedded with "
              f"{args.model}...", markup=False, highlight=False)
    from ..catalog.demo import run_demo

    result = run_demo(path, model=args.model, options=encode_options(args), weights=args.weights)
    with result.catalog as catalog:
        if result.fallback:
            from ..catalog.demo import OFFLINE_MODEL, OFFLINE_QUALITY

            out.print(f"note: {result.fallback}; the demo uses {OFFLINE_MODEL} instead, the model built into "
                      f"lookalike ({OFFLINE_QUALITY}). For {args.model}: run once with internet access "
                      "(the weights are then cached), or pass --weights FILE", markup=False, highlight=False)
        out.print(f"[bold]Demo catalog[/bold] {path}: {result.report.summary()}")
        out.print(f"model: {catalog.config.embedder.describe()}")
        for item_id, labels, matches in result.examples:
            name = labels.get("productDisplayName", item_id)
            show_matches(matches, args, out, title=f"more like {item_id}: {name}")
        example = result.examples[0][0] if result.examples else "ID"
        items = ",".join(e[0] for e in result.examples) or example
        photo = result.examples[-1][2][0].path if result.examples and result.examples[-1][2] else "photo.jpg"
        for line in (
            "\nNext:",
            f"  lookalike serve --catalog {path}                  # the web page at http://127.0.0.1:8000",
            f"  lookalike plot grid --catalog {path} --items {items} --out demo-grid.png   # look-alikes drawn",
            f"  lookalike plot map --catalog {path} --out demo-map.png                  # the catalog in 2D",
            f"  lookalike similar {example} --catalog {path} -k 5 --where gender=Men",
            f"  lookalike search {photo} --catalog {path} -k 5",
            f"  lookalike status --catalog {path}",
            "  lookalike index ./your-images --catalog shop.lk --model mobilenetv2    # your own catalog",
        ):
            out.print(line, markup=False, highlight=False)
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add the catalog commands to the ``lookalike`` parser."""
    common, run, catalog_arg = parents.common, parents.embed, parents.catalog
    from ..models.registry import BUILTIN_MODEL, DEFAULT_MODEL

    p = sub.add_parser("index", parents=[common, run, catalog_arg, parents.engine], help="embed a folder or manifest",
                       description="Embed every image of a folder (recursive) or CSV manifest into a catalog. "
                       "Only new or changed files are embedded; an interrupted run resumes.")
    p.add_argument("source", help="a folder of images, or a CSV manifest with an id or path column")
    p.add_argument("--images", help="image folder for a manifest (default: images/ beside it, or its folder)")
    p.add_argument("--model", default=None, help=f"embedder for a new catalog (default {DEFAULT_MODEL}); "
                   "see `lookalike models`")
    p.add_argument("--weights", default=None, help="local .safetensors/.pth weights instead of the hub; "
                   "'random' for timing runs")
    p.add_argument("--prune", action="store_true", help="drop items whose files are gone")
    p.add_argument("--product-column", default=None, metavar="NAME",
                   help="a manifest column whose equal values make one product of several rows (its variants: "
                        "sizes, colours); labels that differ between them become several values. Default: each "
                        "row is a product (rows naming the same photo are one product with several variants)")
    p.add_argument("--product-per-folder", action="store_true",
                   help="a folder source: each leaf folder is one product with its files as photos (id: the "
                        "folder's path)")
    p.add_argument("--index", default=None, choices=["auto", "flat", "hnsw", "ivfpq"],
                   help="index kind (default auto: exact up to 50k items, HNSW up to 2M, then IVF-PQ); kept")
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory budget for the index, e.g. 4G (default auto: half the machine's RAM); kept")
    p.add_argument("--recall", type=float, default=None,
                   help="recall@10 the approximate index is tuned to reach (default 0.95); kept")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("tune", parents=[common, catalog_arg], help="measure recall and re-tune the index",
                       description="Measure recall@10 of the catalog's index against exact search on a sample "
                       "of its items, and pick the fastest search setting that reaches the target.")
    p.add_argument("--recall", type=float, default=None, help="target recall@10 (default: the catalog's, 0.95)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("status", parents=[common, catalog_arg], help="counts, model and failed files",
                       description="What a catalog holds: counts, model, labels and failed files with reasons.")
    p.add_argument("--failures", type=non_negative_int, default=50, help="failed files to list (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("copy", parents=[common], help="copy a catalog between a folder and PostgreSQL",
                       description="Copy a catalog with its items, failures, labels, vectors, clusters and uploaded "
                       "images to another store: a folder (SQLite) or a postgresql:// URL, either way. Verified by "
                       "counts and a sample of vectors before the destination becomes a catalog; an interrupted "
                       "copy leaves none, and running it again starts over.")
    p.add_argument("source", help="the catalog to copy: a folder or a postgresql:// URL")
    p.add_argument("destination", help="where the copy goes: a new folder, or a postgresql://user@host/db URL "
                   "(?schema=NAME, default lookalike) holding no catalog")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("models", parents=[common], help="list the embedders by name (and which understand words)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", parents=[common, run], help="a tour on sample photos shipped with lookalike",
                       description="Build a catalog of the sample product photos shipped with lookalike and "
                       "show look-alikes for three of them. Works offline.")
    p.add_argument("--catalog", default="lookalike-demo.lk", help="where to build it (default lookalike-demo.lk)")
    p.add_argument("--model", default=BUILTIN_MODEL, help=f"embedder (default {BUILTIN_MODEL}, built in: no "
                   "download)")
    p.add_argument("--weights", default=None, help="local weights file instead of the hub")
    p.add_argument("--json", action="store_true", help="print the look-alikes as JSON")
    p.set_defaults(func=cmd_demo, where=None)
