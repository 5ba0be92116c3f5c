"""``search PHOTO --box x0,y0,x1,y1`` (a region of the photo) and ``search PHOTO --detect [WORDS...]`` (shop
the look: every item a detector finds, each searched as a region); the library work is in ``catalog.look``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..core.errors import QueryError
from .common import float_above, int_at_least, show_matches
from .rules import ranking_from_args

if TYPE_CHECKING:
    from rich.console import Console

    from ..catalog.catalog import Catalog


def wants_region(args: argparse.Namespace) -> bool:
    return args.box is not None or args.detect is not None


def check_region_args(args: argparse.Namespace) -> None:
    """Refuse option mixes that have no meaning, before the catalog is opened.

    Raises:
        QueryError: --box and --detect together, either without a photo, or with a photo to avoid.
    """
    if args.box is not None and args.detect is not None:
        raise QueryError("--box searches one region you give, --detect the regions a detector finds: use one")
    what = "--box" if args.box is not None else "--detect"
    if not args.image:
        raise QueryError(f"{what} needs the photo to search part of: lookalike search PHOTO {what} ...")
    if args.not_image:
        raise QueryError(f"{what} searches part of one photo; drop --not-image")


def search_parts(args: argparse.Namespace) -> dict:
    """``Catalog.search``'s arguments besides the photo and k, from the command line."""
    return {"where": args.where, "dedupe": args.dedupe, "text": args.text, "items": args.item or (),
            "not_items": args.not_item or (), "not_text": args.not_text, "weights": args.weight,
            "min_similarity": args.min_similarity, "by": args.by, "ranking": ranking_from_args(args),
            "rules": not args.no_rules}


def cmd_region(catalog: Catalog, args: argparse.Namespace, out: Console) -> int:
    from ..catalog.look import search_region, shop_the_look

    if args.box is not None:
        region, size = search_region(catalog, args.image, args.box, k=args.k, max_pixels=args.max_pixels,
                                     **search_parts(args))
        if args.json:
            print(json.dumps({"image": args.image, "size": list(size), **region.to_dict()}, indent=2))
            return 0
        show_matches(region.matches, args, out, title=f"items most like region {region.box} (pixels of the "
                     f"{size[0]}x{size[1]} photo) of {args.image}")
        return 0
    look = shop_the_look(catalog, args.image, args.detect, k=args.k, label=args.detect_label, detector=args.detector,
                         device=args.device, threshold=args.min_score, max_boxes=args.max_boxes,
                         max_pixels=args.max_pixels, **search_parts(args))
    if args.json:
        print(json.dumps({"image": args.image, **look.to_dict()}, indent=2))
        return 0
    asked = f"{len(look.words)} {look.words_from} values" if look.words_from else ", ".join(look.words)
    if not look.regions:
        out.print(f"no items found in {args.image} scoring above {args.min_score:g} (looked for {asked}); lower "
                  "--min-score or give other words")
        return 0
    out.print(f"{len(look.regions)} items found in {args.image} ({look.size[0]}x{look.size[1]}) by "
              f"{look.detector}, looking for {asked}")
    for n, region in enumerate(look.regions, start=1):
        show_matches(region.matches, args, out, title=f"{n}. {region.label} (score {region.score:.2f}) at "
                     f"{region.box}: items most like it")
    return 0


def add_region_options(p: argparse.ArgumentParser) -> None:
    from ..models.detector import DEFAULT_DETECTOR, DEFAULT_MAX_BOXES, DEFAULT_THRESHOLD, DETECTOR_ENV

    group = p.add_argument_group("part of the photo", "search a region of the photo, or every item found in it")
    group.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                       help="search this region of the photo: fractions of its width and height when all four lie "
                            "in [0, 1] (e.g. 0.1,0.2,0.6,0.9), else pixels of the upright photo")
    group.add_argument("--detect", nargs="*", default=None, metavar="WORDS",
                       help="shop the look: find the items in the photo with an open-vocabulary detector and "
                            "search each; looks for these words (put them after the photo), by default the "
                            "values of the catalog's category label (articleType, category, ...)")
    group.add_argument("--detect-label", default=None, metavar="LABEL",
                       help="with --detect and no words: look for the values of this label")
    group.add_argument("--detector", default=None, metavar="NAME",
                       help=f"a transformers zero-shot detector: hub repo or save_pretrained folder (default "
                            f"${DETECTOR_ENV}, else {DEFAULT_DETECTOR})")
    group.add_argument("--min-score", type=float_above(0.0, inclusive=True), default=DEFAULT_THRESHOLD,
                       metavar="S", help=f"keep found items scoring above this (default {DEFAULT_THRESHOLD:g})")
    group.add_argument("--max-boxes", type=int_at_least(1), default=DEFAULT_MAX_BOXES, metavar="N",
                       help=f"search at most this many found items, best first (default {DEFAULT_MAX_BOXES})")
