"""Search commands: ``search`` (by photo) and ``similar`` (by catalog item)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .common import Parents, encode_options, show_matches

if TYPE_CHECKING:
    from rich.console import Console


def cmd_search(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        catalog.encoder(encode_options(args))
        matches = catalog.search(args.image, k=args.k, where=args.where, dedupe=args.dedupe)
        show_matches(matches, args, out, title=f"items most like {args.image}")
    return 0


def cmd_similar(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        matches = catalog.similar(args.item_id, k=args.k, where=args.where, same_cluster=args.same_cluster,
                                  dedupe=args.dedupe)
        show_matches(matches, args, out, title=f"items most like catalog item {args.item_id}")
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add ``search`` and ``similar`` to the ``lookalike`` parser."""
    common, run, catalog_arg, query = parents.common, parents.embed, parents.catalog, parents.query
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
