"""``text add|remove``: search by words for a catalog of an image-only model, through a text tower trained
against that model (LiT, ``lookalike train clip --image-model NAME --lock-image``); no photo is embedded again."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .common import Parents

if TYPE_CHECKING:
    from rich.console import Console


def cmd_text_add(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        tower = catalog.add_text_tower(args.tower)
        record = catalog.config.extra["text_tower"]
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    out.print(f"{args.catalog}: search by words with the {tower.describe()} (file:{record['digest']}); no vector "
              f"embedded again. Try: lookalike search --text 'blue shirt' --catalog {args.catalog}", highlight=False)
    return 0


def cmd_text_remove(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        removed = catalog.remove_text_tower()
    out.print(f"{args.catalog}: text tower removed" if removed else f"{args.catalog}: has no added text tower",
              highlight=False)
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add ``text add`` and ``text remove`` to the ``lookalike`` command."""
    p = sub.add_parser("text", help="add a text tower (LiT) to a catalog: search by words without re-embedding",
                       description="Give a catalog built with an image-only model (mobilenetv2, resnet50, timm:...) "
                       "search by words: add a text tower trained against that model with `lookalike train clip "
                       "SOURCE --image-model NAME --lock-image --text-column COLUMN --out tower.lkm`. The stored "
                       "vectors stay as they are.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("add", parents=[parents.common, parents.catalog], help="add (or replace) a text tower",
                           description="Check that the tower was trained against the catalog's model and weights, "
                           "copy it into the catalog folder (a database catalog records its path) and record its "
                           "digest; search --text, evaluate --text-label/--text-from, tag and serve then use it.")
    q.add_argument("tower", help="a text tower .lkm from `lookalike train clip --image-model NAME --lock-image`")
    q.add_argument("--json", action="store_true", help="print what the catalog recorded as JSON")
    q.set_defaults(func=cmd_text_add)
    q = actions.add_parser("remove", parents=[parents.common, parents.catalog], help="drop the added text tower")
    q.set_defaults(func=cmd_text_remove)
