"""Searching part of a photo: a region the shopper drew (a box), or every item a detector finds in it ("shop the
look"), each region searched as a photo is (``Catalog.search``), results grouped per region.

A region is a crop of the upright photo handed to the search as a picture, not as the file: the rule that an
item whose file is byte for byte the query photo comes back first does not fire for it (the region is not the
whole photo).

Which words the detector looks for, by default (``detection_words``): the values of the catalog's category
label, the first of ``CATEGORY_LABELS`` the catalog has (``articleType`` for the Kaggle fashion catalog), most
frequent first, at most ``MAX_WORDS``; ``label=`` names another label. A catalog with none of them needs the
words, or the label, to be given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from ..core.errors import QueryError
from ..core.images import ImageInput, load_image
from ..core.regions import Box, BoxSpec, crop, crop_region
from ..models.detector import (
    DEFAULT_MAX_BOXES,
    DEFAULT_NMS_IOU,
    DEFAULT_THRESHOLD,
    MAX_WORDS,
    Detection,
    check_words,
    detector_name,
    load_detector,
    locate,
)
from .query import Match, check_k

if TYPE_CHECKING:
    from .catalog import Catalog

# Labels that name the kind of item, in the order they are tried: Kaggle fashion's, then common shop exports'.
CATEGORY_LABELS = ("articleType", "category", "product_type", "productType", "type", "subCategory",
                   "masterCategory")


@dataclass(frozen=True)
class Region:
    """A searched region: its box in pixels of the upright photo, what found it (``label`` and ``score`` of
    the detector; None for a box the user gave) and its results."""

    box: Box
    matches: list[Match]
    label: str | None = None
    score: float | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "score": None if self.score is None else round(self.score, 4),
                "box": self.box.as_list(), "results": [m.to_dict() for m in self.matches]}


@dataclass(frozen=True)
class Look:
    """What ``shop_the_look`` found: the photo's upright size (width, height), the detector and the words it
    was asked with (and the catalog label they came from, if any), and one ``Region`` per item found."""

    size: tuple[int, int]
    detector: str
    words: list[str]
    regions: list[Region] = field(default_factory=list)
    words_from: str | None = None

    def to_dict(self) -> dict:
        return {"size": list(self.size), "detector": self.detector, "words": self.words,
                "words_from": self.words_from, "groups": [r.to_dict() for r in self.regions]}


def search_region(catalog: Catalog, image: ImageInput, box: str | Sequence[float] | BoxSpec, k: int = 10,
                  max_pixels: int | None = None, **search: object) -> tuple[Region, tuple[int, int]]:
    """The k items most like a region of a photo: (the region with its results, the photo's upright size).
    ``search`` takes ``Catalog.search``'s other arguments (where, dedupe, text, min_similarity, ...).

    Raises:
        ImageError: the photo cannot be read. QueryError: a malformed, empty, outside or too small box; see
            ``Catalog.search`` for the rest.
    """
    photo = _upright(image, max_pixels)
    region, resolved = crop_region(photo, box)
    return Region(resolved, catalog.search(region, k=k, **search)), photo.size


def detection_words(catalog: Catalog, words: Sequence[str] | None = None, label: str | None = None
                    ) -> tuple[list[str], str | None]:
    """(the words to detect, the label they came from): ``words`` when given; else the values of ``label``,
    else of the first of ``CATEGORY_LABELS`` the catalog has, most frequent first, at most ``MAX_WORDS``.

    Raises:
        QueryError: no words given and no such label (the message names the catalog's labels).
    """
    if words:
        return check_words(words), None
    facets = catalog.facets(max_values=MAX_WORDS)
    if label is not None:
        if label not in facets:
            raise QueryError(f"the catalog has no label {label!r} with at most {MAX_WORDS} values to detect; "
                             f"labels: {', '.join(sorted(facets)) or 'none'}")
        return check_words(list(facets[label])), label
    found = next((name for name in CATEGORY_LABELS if facets.get(name)), None)
    if found is None:
        raise QueryError("say what to look for in the photo: words (--detect shirt jeans shoes) or the label whose "
                         f"values name the kinds of item (--detect-label NAME; labels: "
                         f"{', '.join(sorted(facets)) or 'none'})")
    return check_words(list(facets[found])), found


def detect_items(image: Image.Image, words: Sequence[str], detector: str | None = None, device: str = "auto",
                 threshold: float = DEFAULT_THRESHOLD, nms_iou: float = DEFAULT_NMS_IOU,
                 max_boxes: int = DEFAULT_MAX_BOXES) -> list[Detection]:
    """The items of ``words`` found in an upright photo by the detector (``models.detector``), best first.

    Raises:
        ModelUnavailableError: the detector's weights are not here (one line naming it and the fix).
        QueryError: bad words or options.
    """
    words = check_words(words)
    locate(detector)  # a missing detector is told before PyTorch is imported
    return load_detector(detector, device).detect(image, words, threshold=threshold, nms_iou=nms_iou,
                                                  max_boxes=max_boxes)


def shop_the_look(catalog: Catalog, image: ImageInput, words: Sequence[str] | None = None, *, k: int = 10,
                  label: str | None = None, detector: str | None = None, device: str = "auto",
                  threshold: float = DEFAULT_THRESHOLD, nms_iou: float = DEFAULT_NMS_IOU,
                  max_boxes: int = DEFAULT_MAX_BOXES, max_pixels: int | None = None, **search: object) -> Look:
    """Every item the detector finds in a shopper's photo, each searched as a region: boxes scoring above
    ``threshold`` after class-agnostic NMS (see ``models.detector``), best first, each with its k results.
    ``words`` default to the catalog's category values (``detection_words``). ``search`` takes
    ``Catalog.search``'s other arguments.

    Raises:
        ImageError: the photo cannot be read. ModelUnavailableError: the detector is not here.
        QueryError: no words and no category label; bad options.
    """
    check_k(k)
    wanted, source = detection_words(catalog, words, label)
    photo = _upright(image, max_pixels)
    found = detect_items(photo, wanted, detector, device, threshold, nms_iou, max_boxes)
    regions = [Region(d.box, catalog.search(crop(photo, d.box), k=k, **search), d.label, d.score) for d in found]
    return Look(photo.size, detector_name(detector), wanted, regions, source)


def _upright(image: ImageInput, max_pixels: int | None) -> Image.Image:
    """The whole photo, decoded at full size and turned upright (box coordinates refer to it)."""
    return load_image(image) if max_pixels is None else load_image(image, max_pixels=max_pixels)
