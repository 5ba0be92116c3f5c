"""Figure commands: ``plot grid|map|sizes|clusters`` and ``report`` (matplotlib is imported when they run)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .common import Parents, figure_path, int_at_least, non_negative_int, positive_int

if TYPE_CHECKING:
    from rich.console import Console


def cmd_plot_grid(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog
    from ..figures.plots import default_label, grid_for_catalog, save

    ids = [i.strip() for chunk in args.items for i in chunk.split(",") if i.strip()]
    with Catalog.open(args.catalog) as catalog:
        label = args.label or default_label(catalog)
        fig = grid_for_catalog(catalog, ids, k=args.k, label=label, where=args.where, same_cluster=args.same_cluster)
    print(f"{save(fig, args.out)}: {len(ids)} queries x {args.k} recommendations"
          + (f", wrong {label} marked red" if label else ""))
    return 0


def cmd_plot_map(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog
    from ..figures.plots import default_label, map_for_catalog, save

    with Catalog.open(args.catalog) as catalog:
        colour_by = args.color_by or default_label(catalog)
        fig = map_for_catalog(catalog, args.method, colour_by, links=args.links, k=args.k, seed=args.seed)
        count = len(catalog)
    print(f"{save(fig, args.out)}: {args.method} map of {count} items, coloured by {colour_by or 'nothing'}")
    return 0


def cmd_plot_sizes(args: argparse.Namespace, out: Console) -> int:
    import numpy as np

    from ..core.images import image_sizes
    from ..core.sources import read_source
    from ..figures.plots import save, sizes_figure

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
    from ..catalog.catalog import Catalog
    from ..figures.plots import clusters_for_catalog, default_label, save

    with Catalog.open(args.catalog) as catalog:
        fig = clusters_for_catalog(catalog, label=args.label or default_label(catalog), samples=args.samples)
    print(f"{save(fig, args.out)}: one row per cluster")
    return 0


def cmd_report(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog
    from ..figures.report import build_report

    with Catalog.open(args.catalog) as catalog:
        path = build_report(catalog, args.out, label=args.label, k=args.k, method=args.method, links=args.links,
                            clusters=args.clusters, bootstrap=args.bootstrap, seed=args.seed)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, self-contained; open it in a browser")
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add ``plot`` and ``report`` to the ``lookalike`` parser."""
    common, catalog_arg = parents.common, parents.catalog
    from .analysis import seed_parser

    seed = seed_parser()
    p = sub.add_parser("plot", help="figures: grid, map, sizes, clusters (PNG or SVG by extension)",
                       description="Draw a figure to --out (.png or .svg).")
    plots = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    out_arg = argparse.ArgumentParser(add_help=False)
    out_arg.add_argument("--out", required=True, type=figure_path, help="file to write: .png or .svg")

    q = plots.add_parser("grid", parents=[common, catalog_arg, out_arg], help="query photos and their look-alikes",
                         description="One row per item: the item, then its k recommendations with similarity and "
                         "label; recommendations whose --label differs from the item's are framed red.")
    q.add_argument("--items", action="append", required=True, help="item ids, comma-separated (or repeat)")
    q.add_argument("-k", type=positive_int, default=5, help="recommendations per item (default 5)")
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
    q.add_argument("--links", type=non_negative_int, default=20, help="sampled queries to link (default 20)")
    q.add_argument("-k", type=positive_int, default=5, help="recommendations linked per query (default 5)")
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
    q.add_argument("--samples", type=positive_int, default=6, help="photos per cluster (default 6)")
    q.set_defaults(func=cmd_plot_clusters)

    p = sub.add_parser("report", parents=[common, catalog_arg, seed], help="one self-contained HTML report",
                       description="Catalog summary, metrics with reference rows, per-class table, map with "
                       "hover thumbnails, best/typical/worst example grids and clusters, in one HTML file "
                       "that opens offline.")
    p.add_argument("--label", help="label for the metrics and examples (without it they are left out)")
    p.add_argument("--out", required=True, help="the .html file to write")
    p.add_argument("-k", type=positive_int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--method", default="pca", choices=["pca", "tsne", "umap"], help="map projection (default pca)")
    p.add_argument("--links", type=non_negative_int, default=20, help="sampled queries linked on the map (20)")
    p.add_argument("--clusters", type=int_at_least(2), default=6,
                   help="clusters to show when none are stored (default 6; not stored)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, help="resamples for the intervals (1000)")
    p.set_defaults(func=cmd_report)


