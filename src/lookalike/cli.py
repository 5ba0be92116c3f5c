"""The ``lookalike`` command: a thin map from subcommands to library calls; it owns the terminal.

Expected failures print one line and exit with code 2; Ctrl-C during indexing keeps finished batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from . import __version__
from .catalog import Catalog
from .config import DEFAULT_MAX_PIXELS, EncodeOptions
from .duplicates import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD
from .embedders.registry import DEFAULT_MODEL, list_models
from .errors import LookalikeError
from .index import IndexOptions, SearchSettings
from .neighbours import DEFAULT_BLOCK, DEFAULT_THREADS
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
    IndexOptions().changed(kind=args.index, memory=args.memory, recall=args.recall)  # refuse before creating
    catalog = Catalog.open_or_create(args.catalog, args.model, args.weights)
    with catalog:
        if args.index is not None or args.memory is not None or args.recall is not None:
            catalog.configure_index(kind=args.index, memory=args.memory, recall=args.recall)
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
        matches = catalog.search(args.image, k=args.k, where=args.where, dedupe=args.dedupe)
        _show(matches, args, out, title=f"items most like {args.image}")
    return 0


def cmd_similar(args: argparse.Namespace, out: Console) -> int:
    with Catalog.open(args.catalog) as catalog:
        matches = catalog.similar(args.item_id, k=args.k, where=args.where, same_cluster=args.same_cluster,
                                  dedupe=args.dedupe)
        _show(matches, args, out, title=f"items most like catalog item {args.item_id}")
    return 0


def cmd_tune(args: argparse.Namespace, out: Console) -> int:
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
            out.print(f"[yellow]recall {quality.recall:.3f} is below the target {quality.target}; "
                      "raise --memory or use --index flat[/]")
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
    detail = status.index_detail
    if detail:
        out.print(f"         chosen: {detail['reason']}; {detail['disk_bytes_per_item']:,.0f} bytes/item on disk")
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


# -- analysis: evaluate, plot, cluster, report ---------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace, out: Console) -> int:
    from .evaluate import REFERENCES, evaluate_catalogs

    references = [] if args.no_reference else list(REFERENCES)
    results = []
    for label in args.label:
        rows = evaluate_catalogs(args.catalog, label, args.k, queries=args.queries, query_images=args.query_images,
                                 references=references, bootstrap=args.bootstrap, seed=args.seed,
                                 options=_options(args))
        results.append(rows)
    if args.json:
        print(json.dumps([row.to_dict(per_class=args.per_class) for rows in results for row in rows], indent=2,
                         default=_json_float))
        return 0
    for rows in results:
        _metrics_table(rows, out)
        if args.per_class:
            for row in rows:
                if row.embedder not in ("random ranking", "colour histogram"):
                    _per_class_table(row, out)
    return 0


def _json_float(value):
    return None if isinstance(value, float) else str(value)


def _metrics_table(rows, out: Console) -> None:
    from .evaluate import METRIC_NAMES, format_estimate

    first = rows[0]
    table = Table(title=f"{first.label}, k={first.k}, {first.mode}: {first.retrieval_queries} queries "
                  f"(± half the 95% bootstrap interval)", title_justify="left")
    table.add_column("run", no_wrap=True)
    table.add_column("embedder", no_wrap=True)
    for name in METRIC_NAMES:
        table.add_column(_SHORT.get(name, METRIC_NAMES[name]).replace("@k", f"@{first.k}"), justify="right")
    table.add_column("top-1 macro F1", justify="right")
    for row in rows:
        f1 = row.classification["top1"].macro_f1
        table.add_row(row.name, row.embedder,
                      *(format_estimate(row.metrics[n]).replace(" ±0.", "±.") for n in METRIC_NAMES), f"{f1:.3f}")
    out.print(table)
    excluded = ", ".join(f"{name} {n}" for name, n in first.excluded.items() if n)
    out.print(f"items searched {first.items}; queries with the label {first.queries}; not used as queries: "
              f"{excluded or 'none'}", highlight=False)
    for note in dict.fromkeys(note for row in rows for note in row.notes):
        out.print(f"note: {note}", highlight=False)


_SHORT = {"precision": "P@k", "recall": "R@k", "hit_rate": "hit@k", "top1_accuracy": "top-1 acc",
          "majority_accuracy": "maj-of-k acc", "mean_distance": "mean dist", "median_distance": "median dist"}


def _per_class_table(row, out: Console) -> None:
    table = Table(title=f"per class: {row.name} ({row.label})", title_justify="left")
    for col in ("class", "items", "queries", "precision", "recall", "AP", "hit rate", "top-1 P", "top-1 R",
                "top-1 F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in row.per_class:
        table.add_row(c.label, str(c.items), str(c.queries), *(_fmt(v) for v in (
            c.precision, c.recall, c.map, c.hit_rate, c.top1.precision, c.top1.recall, c.top1.f1)),
            str(c.top1.support))
    out.print(table)


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def cmd_plot_grid(args: argparse.Namespace, out: Console) -> int:
    from .plots import default_label, grid_for_catalog, save

    ids = [i.strip() for chunk in args.items for i in chunk.split(",") if i.strip()]
    with Catalog.open(args.catalog) as catalog:
        label = args.label or default_label(catalog)
        fig = grid_for_catalog(catalog, ids, k=args.k, label=label, where=args.where, same_cluster=args.same_cluster)
    print(f"{save(fig, args.out)}: {len(ids)} queries x {args.k} recommendations"
          + (f", wrong {label} marked red" if label else ""))
    return 0


def cmd_plot_map(args: argparse.Namespace, out: Console) -> int:
    from .plots import default_label, map_for_catalog, save

    with Catalog.open(args.catalog) as catalog:
        colour_by = args.color_by or default_label(catalog)
        fig = map_for_catalog(catalog, args.method, colour_by, links=args.links, k=args.k, seed=args.seed)
        count = len(catalog)
    print(f"{save(fig, args.out)}: {args.method} map of {count} items, coloured by {colour_by or 'nothing'}")
    return 0


def cmd_plot_sizes(args: argparse.Namespace, out: Console) -> int:
    from .images import image_sizes
    from .plots import save, sizes_figure
    from .sources import read_source

    listing = read_source(args.source, args.images)
    sizes, failed = image_sizes([item.path for item in listing.items])
    for _path, reason in failed[:10]:
        print(f"warning: {reason}", file=sys.stderr)
    fig = sizes_figure(sizes, title=f"{args.source}: {len(sizes)} images")
    path = save(fig, args.out)
    if len(sizes):
        w, h = sizes[:, 0], sizes[:, 1]
        print(f"{path}: {len(sizes)} images, width median {int(np.median(w))} ({w.min()}-{w.max()}), "
              f"height median {int(np.median(h))} ({h.min()}-{h.max()}); {len(failed)} unreadable")
    return 0


def cmd_plot_clusters(args: argparse.Namespace, out: Console) -> int:
    from .plots import clusters_for_catalog, default_label, save

    with Catalog.open(args.catalog) as catalog:
        fig = clusters_for_catalog(catalog, label=args.label or default_label(catalog), samples=args.samples)
    print(f"{save(fig, args.out)}: one row per cluster")
    return 0


def cmd_cluster(args: argparse.Namespace, out: Console) -> int:
    from .cluster import cluster_catalog

    with Catalog.open(args.catalog) as catalog:
        result = cluster_catalog(catalog, args.n, auto=args.range if args.auto else None, label=args.label,
                                 seed=args.seed)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=_json_float))
        return 0
    if result.scores:
        out.print("silhouette by n: " + ", ".join(f"{n}: {s:.3f}" for n, s in result.scores.items()),
                  highlight=False)
    table = Table(title=f"{result.n} clusters of {result.items} items (stored in {args.catalog})",
                  title_justify="left")
    for col in ("cluster", "items", f"most common {args.label}" if args.label else "", "nearest the centre"):
        if col:
            table.add_column(col, justify="right" if col in ("cluster", "items") else "left", overflow="fold")
    for c in result.clusters:
        top = [f"{c.top_label} ({c.top_share:.0%})" if c.top_label else "-"] if args.label else []
        table.add_row(str(c.cluster), str(c.size), *top, ", ".join(c.samples))
    out.print(table)
    purity = f"; purity against {args.label} {result.purity:.3f}" if result.purity is not None else ""
    out.print(f"silhouette {result.silhouette:.3f}{purity}", highlight=False)
    out.print(f"next: lookalike similar ID --catalog {args.catalog} --same-cluster", highlight=False)
    return 0


def cmd_report(args: argparse.Namespace, out: Console) -> int:
    from .report import build_report

    with Catalog.open(args.catalog) as catalog:
        path = build_report(catalog, args.out, label=args.label, k=args.k, method=args.method, links=args.links,
                            clusters=args.clusters, bootstrap=args.bootstrap, seed=args.seed)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, self-contained; open it in a browser")
    return 0


def _analysis_parsers(sub, common: argparse.ArgumentParser, run: argparse.ArgumentParser,
                      catalog_arg: argparse.ArgumentParser) -> None:
    seed = argparse.ArgumentParser(add_help=False)
    seed.add_argument("--seed", type=_non_negative_int, default=0, help="seed for sampling and resampling (0)")

    p = sub.add_parser("evaluate", parents=[common, run, seed], help="retrieval metrics and kNN classification",
                       description="How good are the recommendations? Leave-one-out over the catalog (or held-out "
                       "--queries): precision/recall/mAP/nDCG/hit rate@k, mean and median neighbour distance, "
                       "kNN classification, with reference rows: chance and a colour histogram of the same photos.")
    p.add_argument("--catalog", action="append", required=True,
                   help="a catalog; repeat to compare several (e.g. one per embedder) side by side")
    p.add_argument("--label", action="append", required=True,
                   help="items with equal values of this label are relevant (e.g. articleType); repeatable; "
                   "'cluster' uses the stored clusters")
    p.add_argument("-k", type=_positive_int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--queries", help="held-out queries: a CSV manifest (id or path column + label columns)")
    p.add_argument("--query-images", help="image folder of the --queries manifest (default: images/ beside it)")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000,
                   help="resamples for the 95%% intervals (default 1000; 0: none)")
    p.add_argument("--no-reference", action="store_true", help="leave out the chance and colour-histogram rows")
    p.add_argument("--per-class", action="store_true", help="also print (and put in --json) the per-class table")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="figures: grid, map, sizes, clusters (PNG or SVG by extension)",
                       description="Draw a figure to --out (.png or .svg).")
    plots = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    out_arg = argparse.ArgumentParser(add_help=False)
    out_arg.add_argument("--out", required=True, type=_figure_path, help="file to write: .png or .svg")

    q = plots.add_parser("grid", parents=[common, catalog_arg, out_arg], help="query photos and their look-alikes",
                         description="One row per item: the item, then its k recommendations with similarity and "
                         "label; recommendations whose --label differs from the item's are framed red.")
    q.add_argument("--items", action="append", required=True, help="item ids, comma-separated (or repeat)")
    q.add_argument("-k", type=_positive_int, default=5, help="recommendations per item (default 5)")
    q.add_argument("--label", help="label that decides right/wrong (default articleType, or the first label)")
    q.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE", help="filter, as in similar")
    q.add_argument("--same-cluster", action="store_true", help="recommend within the item's cluster")
    q.set_defaults(func=cmd_plot_grid)

    q = plots.add_parser("map", parents=[common, catalog_arg, out_arg, seed], help="the catalog in 2D",
                         description="The catalog's vectors projected to 2D (PCA, t-SNE, or UMAP where umap-learn "
                         "is installed), coloured by a label or cluster, with dotted lines from sampled queries "
                         "to their recommendations.")
    q.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"], help="projection (default pca)")
    q.add_argument("--color-by", help="a label, or 'cluster' (default articleType, or the first label)")
    q.add_argument("--links", type=_non_negative_int, default=20, help="sampled queries to link (default 20)")
    q.add_argument("-k", type=_positive_int, default=5, help="recommendations linked per query (default 5)")
    q.set_defaults(func=cmd_plot_map)

    q = plots.add_parser("sizes", parents=[common, out_arg], help="width/height histograms of a source",
                         description="Histograms of image widths and heights of a folder or manifest, read from "
                         "the file headers (fast), to choose a resize knowingly.")
    q.add_argument("source", help="a folder of images, or a CSV manifest")
    q.add_argument("--images", help="image folder for a manifest")
    q.set_defaults(func=cmd_plot_sizes)

    q = plots.add_parser("clusters", parents=[common, catalog_arg, out_arg], help="a row of photos per cluster",
                         description="The clusters stored by `lookalike cluster`: per cluster its size, most "
                         "common label, and the photos nearest its centre.")
    q.add_argument("--label", help="label whose most common value heads each row")
    q.add_argument("--samples", type=_positive_int, default=6, help="photos per cluster (default 6)")
    q.set_defaults(func=cmd_plot_clusters)

    p = sub.add_parser("cluster", parents=[common, catalog_arg, seed], help="k-means clusters, stored per item",
                       description="k-means on the catalog's vectors, stored per item (for `similar "
                       "--same-cluster`, `--label cluster`, `plot map --color-by cluster`). Replaces earlier "
                       "clusters.")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("-n", type=_int_at_least(2), help="number of clusters")
    how.add_argument("--auto", action="store_true", help="choose n by silhouette over --range")
    p.add_argument("--range", type=_range, default=(2, 12), metavar="LOW:HIGH", help="n tried by --auto (2:12)")
    p.add_argument("--label", help="report each cluster's most common value and the purity against this label")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("report", parents=[common, catalog_arg, seed], help="one self-contained HTML report",
                       description="Catalog summary, metrics with reference rows, per-class table, map with "
                       "hover thumbnails, best/typical/worst example grids and clusters, in one HTML file "
                       "that opens offline.")
    p.add_argument("--label", help="label for the metrics and examples (without it they are left out)")
    p.add_argument("--out", required=True, help="the .html file to write")
    p.add_argument("-k", type=_positive_int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"], help="map projection (default pca)")
    p.add_argument("--links", type=_non_negative_int, default=20, help="sampled queries linked on the map (20)")
    p.add_argument("--clusters", type=_int_at_least(2), default=6,
                   help="clusters to show when none are stored (default 6; not stored)")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000, help="resamples for the intervals (1000)")
    p.set_defaults(func=cmd_report)


def _catalog_pass_parsers(sub, common, catalog_arg) -> None:
    """duplicates and recommend: passes over every item of a catalog."""
    passes = argparse.ArgumentParser(add_help=False)
    passes.add_argument("--threads", type=_positive_int, default=DEFAULT_THREADS,
                        help=f"search threads (default {DEFAULT_THREADS})")
    passes.add_argument("--block-size", type=_positive_int, default=DEFAULT_BLOCK,
                        help=f"queries per index search (default {DEFAULT_BLOCK})")
    passes.add_argument("--threshold", type=_similarity, default=DEFAULT_THRESHOLD,
                        help=f"cosine similarity at which two items are near duplicates (default {DEFAULT_THRESHOLD})")

    p = sub.add_parser("duplicates", parents=[common, catalog_arg, passes], help="exact and near-duplicate groups",
                       description="Group items that are the same file (content hash) or look the same "
                       "(similarity >= --threshold, joined into connected components). A whole-catalog run is "
                       "saved for `search/similar/recommend --dedupe`.")
    p.add_argument("--neighbours", type=_positive_int, default=DEFAULT_NEIGHBOURS,
                   help=f"neighbours searched per item (default {DEFAULT_NEIGHBOURS}; more are fetched for items "
                   "whose last neighbour is still above the threshold)")
    p.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                   help="only items with this label value (not saved for --dedupe)")
    p.add_argument("--csv", help="also write one row per group member to this CSV file")
    p.add_argument("--limit", type=_non_negative_int, default=20, help="groups to print (default 20; all in --json)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("recommend", parents=[common, catalog_arg, passes],
                       help="every item's k look-alikes, to parquet/csv/jsonl",
                       description="Write, for every item, its k most similar items (item_id, rank, similar_id, "
                       "similarity) to --out, never the item itself or its exact copies. An interrupted run "
                       "resumes when started again with the same options.")
    p.add_argument("-k", type=_positive_int, default=10, help="recommendations per item (default 10)")
    p.add_argument("--out", required=True, help="file to write: .parquet, .csv or .jsonl")
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], help="instead of the extension")
    p.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                   help="only recommend items with this label value (every item still gets recommendations)")
    p.add_argument("--queries-where", action="append", default=None, metavar="LABEL=VALUE",
                   help="only write recommendations for items with this label value")
    p.add_argument("--dedupe", action="store_true", help="one item per near-duplicate group, none of the "
                   "item's own group (finds the groups first unless saved at this --threshold)")
    p.add_argument("--group-by", metavar="LABEL", help="one recommendation per value of this label, e.g. "
                   "productDisplayName; the value is written as an extra column")
    p.add_argument("--restart", action="store_true", help="ignore an interrupted run and start over")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_recommend)


def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a cosine similarity above 0 and at most 1, e.g. 0.95")
    return value


def _figure_path(text: str) -> str:
    """Refuse a wrong extension before any work is done."""
    from .plots import FORMATS

    if Path(text).suffix.lower() not in FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: write the figure as .png or .svg")
    return text


def _range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write LOW:HIGH, e.g. 2:12") from None
    if not sep or lo < 2 or hi < lo:
        raise argparse.ArgumentTypeError(f"{text!r}: need 2 <= LOW <= HIGH, e.g. 2:12")
    return lo, hi


# -- duplicates and recommend -------------------------------------------------------------------------


def cmd_duplicates(args: argparse.Namespace, out: Console) -> int:
    with Catalog.open(args.catalog) as catalog:
        report = catalog.duplicates(args.threshold, neighbours=args.neighbours, where=args.where,
                                    block=args.block_size, threads=args.threads,
                                    progress=False if args.quiet else None)
    if args.csv:
        report.write_csv(args.csv)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    if report.groups:
        shown = report.groups[:args.limit]
        table = Table(title=f"duplicate groups in {args.catalog}", title_justify="left")
        for col in ("group", "kind", "size", "similarity", "representative", "members"):
            table.add_column(col, justify="right" if col in ("group", "size") else "left", overflow="fold")
        for g in shown:
            others = [i for i in g.ids if i != g.representative]
            more = f" ... +{len(others) - 8}" if len(others) > 8 else ""
            table.add_row(str(g.group), g.kind, str(len(g.members)), f"{g.min_similarity:.3f}-{g.max_similarity:.3f}",
                          g.representative, ", ".join(others[:8]) + more)
        out.print(table)
        if len(report.groups) > len(shown):
            out.print(f"... and {len(report.groups) - len(shown)} more groups (--limit N, --json or --csv)")
    print(f"{args.catalog}: {report.summary()}" + (f"; groups written to {args.csv}" if args.csv else ""))
    return 0


def cmd_recommend(args: argparse.Namespace, out: Console) -> int:
    from .recommend import recommend

    with Catalog.open(args.catalog) as catalog:
        report = recommend(catalog, args.k, args.out, fmt=args.format, where=args.where,
                           queries_where=args.queries_where, dedupe=args.dedupe, threshold=args.threshold,
                           group_by=args.group_by, block=args.block_size, threads=args.threads,
                           resume=not args.restart, progress=False if args.quiet else None)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
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
                     help="worker processes that decode (on a CPU in bf16 they also embed, one model thread each); "
                          "default: one per core; 0 decodes in the main process")
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
    query.add_argument("--dedupe", action="store_true", help="one item per near-duplicate group (the groups of "
                       "the last `lookalike duplicates` run, else copies of a better result are dropped)")

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

    p = sub.add_parser("search", parents=[common, run, catalog_arg, query], help="items most like a photo",
                       description="The k catalog items most like a photo.")
    p.add_argument("image", help="the query photo")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", parents=[common, catalog_arg, query], help="more like a catalog item",
                       description="The k items most like a catalog item, without itself or its exact copies.")
    p.add_argument("item_id", help="a catalog item id (for a folder, its path without the extension)")
    p.add_argument("--same-cluster", action="store_true",
                   help="only items of the same k-means cluster (run `lookalike cluster` first)")
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
    _analysis_parsers(sub, common, run, catalog_arg)
    _catalog_pass_parsers(sub, common, catalog_arg)
    from .cli_train import add_parsers as add_train_parsers

    add_train_parsers(sub, common, run)
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
