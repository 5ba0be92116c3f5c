"""Ranking rules on the command line: ``--boost/--bury/--pin/--exclude/--diversity/--no-rules`` for ``search`` and
``similar``, and ``lookalike rules set FILE.toml | show | clear`` (a catalog's default rules)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .common import Parents

if TYPE_CHECKING:
    from rich.console import Console

    from ..catalog.ranking import Ranking


def add_ranking_options(p: argparse.ArgumentParser, keywords: bool = False) -> None:
    """The options that steer a result list (see docs/guides/ranking.md)."""
    group = p.add_argument_group("ranking", "rules on top of the catalog's default rules (`lookalike rules show`); "
                                 "they act on 4 k candidates (at least k + 40)")
    group.add_argument("--boost", action="append", default=None, metavar="LABEL=VALUE[:W]",
                       help="add W (default 0.1) to the similarity of items with this label value; repeat for more")
    group.add_argument("--bury", action="append", default=None, metavar="LABEL=VALUE",
                       help="items with this label value go below every other result")
    group.add_argument("--pin", action="append", default=None, metavar="ID",
                       help="this product comes first (repeat: in this order)")
    group.add_argument("--exclude", action="append", default=None, metavar="LABEL=VALUE",
                       help="leave out items with this label value")
    group.add_argument("--diversity", type=float, default=None, metavar="LAMBDA",
                       help="re-rank by maximal marginal relevance: 1 = similarity only, 0 = most varied (e.g. 0.7)")
    group.add_argument("--no-rules", action="store_true", help="leave out the catalog's default rules")
    if keywords:
        group.add_argument("--keyword-weight", type=float, default=None, metavar="W",
                           help="with --text: how much keyword matches count in the fused list (default 1; "
                                "0 = vectors only)")


def ranking_from_args(args: argparse.Namespace) -> Ranking:
    """The request's rules.

    Raises:
        QueryError: a rule not written label=value, or a number out of range.
    """
    from ..catalog.ranking import Ranking

    return Ranking.parse(args.boost, args.bury, args.exclude, args.pin, args.diversity,
                         getattr(args, "keyword_weight", None))


def cmd_rules(args: argparse.Namespace, out: Console) -> int:
    from ..catalog.catalog import Catalog
    from ..catalog.ranking import Ranking

    with Catalog.open(args.catalog) as catalog:
        if args.action == "set":
            catalog.set_rules(Ranking.from_toml(args.file))
            out.print(f"rules set from {args.file}")
        elif args.action == "clear":
            catalog.clear_rules()
            out.print("rules cleared")
        rules = catalog.rules().to_dict()
    if args.action == "show":
        if getattr(args, "json", False):
            print(json.dumps(rules, indent=2))
        elif not rules:
            out.print("no default rules (set them with `lookalike rules set FILE.toml`)")
        else:
            for name, value in rules.items():
                out.print(f"{name} = {json.dumps(value)}")
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add ``rules set|show|clear`` to the ``lookalike`` parser."""
    p = sub.add_parser("rules", help="a catalog's default ranking rules (boost, bury, pin, exclude, diversity)",
                       description="Rules every search, similar, recommend, the REST API and the page apply unless "
                       "told otherwise (--no-rules, rules=false). The file is TOML, e.g. boost = [\"brand=Acme:0.2\"]"
                       "; see docs/guides/ranking.md.")
    actions = p.add_subparsers(dest="action", required=True)
    s = actions.add_parser("set", parents=[parents.common, parents.catalog], help="keep the rules of a TOML file")
    s.add_argument("file", help="the rules file (TOML)")
    s.set_defaults(func=cmd_rules)
    s = actions.add_parser("show", parents=[parents.common, parents.catalog], help="print the catalog's rules")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_rules)
    s = actions.add_parser("clear", parents=[parents.common, parents.catalog], help="forget the catalog's rules")
    s.set_defaults(func=cmd_rules)
