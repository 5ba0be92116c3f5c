"""Search commands: ``search`` (by photo, words, items, or a mix) and ``similar`` (by catalog item)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .common import Parents, encode_options, int_at_least, show_matches, similarity
from .look import add_region_options, check_region_args, cmd_region, wants_region
from .rules import add_ranking_options, ranking_from_args

if TYPE_CHECKING:
    from rich.console import Console


def cmd_search(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog

    if wants_region(args):
        check_region_args(args)
    with Catalog.open(args.catalog) as catalog:
        catalog.check_values(args.where)  # a value no item has is told, with the values that exist
        if wants_region(args):
            catalog.encoder(encode_options(args))
            return cmd_region(catalog, args, out)
        if args.image or args.not_image or ((args.text or args.not_text) and catalog.has_text
                                            and catalog.config.extra.get("text_tower") is None):
            catalog.encoder(encode_options(args))  # an added text tower needs no image model for words
        matches = catalog.search(args.image, k=args.k, where=args.where, dedupe=args.dedupe, text=args.text,
                                 items=args.item or (), not_items=args.not_item or (), not_text=args.not_text,
                                 not_images=args.not_image, weights=args.weight, min_similarity=args.min_similarity,
                                 by=args.by, ranking=ranking_from_args(args), rules=not args.no_rules)
        title = f"{args.by}s most like {_describe(args)}"
        if args.text and not catalog.has_text:
            title += (" (words as keywords: the model has no text tower)" if args.image or args.item else
                      " (keyword search of titles and labels: the model has no text tower)")
        elif args.text and getattr(args, "keyword_weight", None) != 0:
            title += " (vector and keyword results fused)"
        show_matches(matches, args, out, title=title)
    return 0


def _describe(args: argparse.Namespace) -> str:
    wanted = ([args.image] if args.image else []) + [f'"{t}"' for t in args.text or []] + [
        f"item {i}" for i in args.item or []]
    avoided = (args.not_image or []) + [f'"{t}"' for t in args.not_text or []] + [
        f"item {i}" for i in args.not_item or []]
    return " + ".join(wanted) + (f", less like {' + '.join(avoided)}" if avoided else "")


def cmd_similar(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        catalog.check_values(args.where)
        if args.text or args.not_text:
            catalog.encoder(encode_options(args))
        matches = catalog.similar(args.item_id, k=args.k, where=args.where, same_cluster=args.same_cluster,
                                  dedupe=args.dedupe, text=args.text, not_text=args.not_text, weights=args.weight,
                                  min_similarity=args.min_similarity, by=args.by, ranking=ranking_from_args(args),
                                  rules=not args.no_rules)
        but = "".join(f', but "{t}"' for t in args.text or []) + "".join(f', not "{t}"' for t in args.not_text or [])
        show_matches(matches, args, out, title=f"{args.by}s most like catalog item {args.item_id}{but}")
    return 0


WEIGHT_HELP = ("how much each kind of query part counts, e.g. --weight text=2 --weight negative=0.3 (kinds: image, "
               "text, item, negative; defaults 1, 1, 1, 0.5). The query is the weighted sum of the parts' unit "
               "vectors (each kind averaged first, what to avoid subtracted), renormalised")


def _query_parts(p: argparse.ArgumentParser, items: bool) -> None:
    p.add_argument("--text", action="append", default=None, metavar="WORDS",
                   help="words to look for (a catalog built with a text+image model, see `lookalike models`); "
                        "with a photo or item: this, but ...")
    p.add_argument("--not-text", action="append", default=None, metavar="WORDS", help="words to move away from")
    if items:
        p.add_argument("--item", action="append", default=None, metavar="ID",
                       help="more like this catalog item; repeat for several")
        p.add_argument("--not-item", action="append", default=None, metavar="ID",
                       help="less like this catalog item; repeat for several")
        p.add_argument("--not-image", action="append", default=None, metavar="PHOTO", help="less like this photo")
    p.add_argument("--weight", action="append", default=None, metavar="KIND=W", help=WEIGHT_HELP)
    p.add_argument("--by", choices=["product", "photo"], default="product",
                   help="product (default): one result per product, at its best-matching photo; photo: every "
                        "photo on its own, as catalogs of one photo per item always were")
    p.add_argument("--min-similarity", type=similarity, default=None, metavar="S",
                   help="leave out results less similar to the query (cosine, e.g. 0.25 for words)")


def cmd_items(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        catalog.check_values(args.where)
        total, items = catalog.browse(args.offset, args.limit, args.where)
    if args.json:
        print(json.dumps({"total": total, "offset": args.offset, "limit": args.limit,
                          "items": [item.to_dict() for item in items]}, indent=2))
        return 0
    if not items:
        out.print(f"{total} items" + (" match the filter" if args.where else "") +
                  (f"; none from --offset {args.offset}" if total else ""))
        return 0
    from rich.table import Table

    shown = f"{args.offset + 1}-{args.offset + len(items)} of {total}"
    table = Table(title=f"items {shown}" + (" matching the filter" if args.where else ""), title_justify="left")
    table.add_column("id")
    table.add_column("labels", overflow="fold")
    table.add_column("path", overflow="fold")
    for item in items:
        labels = ", ".join(f"{k}={v}" for k, v in item.labels.items())
        table.add_row(item.id, labels, item.path)
    out.print(table)
    if args.offset + len(items) < total:
        out.print(f"more: --offset {args.offset + len(items)}")
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add ``search``, ``similar`` and ``items`` to the ``lookalike`` parser."""
    common, run, catalog_arg, query = parents.common, parents.embed, parents.catalog, parents.query
    p = sub.add_parser("search", parents=[common, run, catalog_arg, query],
                       help="items most like a photo, words, items, or a mix",
                       description="The k catalog items most like a photo, words (--text), catalog items (--item), "
                       "or any mix of them, each also as something to avoid (--not-image, --not-text, --not-item).")
    p.add_argument("image", nargs="?", default=None, help="the query photo (optional with --text or --item)")
    _query_parts(p, items=True)
    add_ranking_options(p, keywords=True)
    add_region_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", parents=[common, run, catalog_arg, query], help="more like a catalog item",
                       description="The k items most like a catalog item, without itself or its exact copies; "
                       "with --text, more like it but with those words.")
    p.add_argument("item_id", help="a catalog item id (for a folder, its path without the extension)")
    p.add_argument("--same-cluster", action="store_true",
                   help="only items of the same k-means cluster (run `lookalike cluster` first)")
    _query_parts(p, items=False)
    add_ranking_options(p, keywords=True)
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("items", parents=[common, catalog_arg], help="list a catalog's items (ids, labels, paths)",
                       description="The catalog's items in the order they were added, as GET /api/items lists "
                       "them: filter with --where, page with --offset and --limit.")
    p.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                   help="only items with this label value; repeat for more (all must hold)")
    p.add_argument("--offset", type=int_at_least(0), default=0, help="skip this many items first (default 0)")
    p.add_argument("--limit", type=int_at_least(0), default=50, help="list at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON: total, offset, limit, items")
    p.set_defaults(func=cmd_items)
