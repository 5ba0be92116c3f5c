"""A region of a photo: a box given by a shopper (``--box x0,y0,x1,y1``, the API's ``box`` field, a rectangle
dragged on the page) or found by a detector, and the crop of the upright photo that is searched in its place.

Coordinates: fractions of the width and height when all four numbers lie in [0, 1], else pixels of the upright
photo (after EXIF orientation, as every viewer shows it). ``x0,y0`` is the top left corner, ``x1,y1`` the
bottom right; pixel edges are exclusive at the right and bottom, as in Pillow's ``Image.crop``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from .errors import QueryError

MIN_REGION_SIDE = 16  # pixels of the upright photo: a narrower box holds too little to say what it shows
BOX_EXAMPLE = "x0,y0,x1,y1, e.g. 0.1,0.2,0.6,0.9 (fractions of width and height) or 40,80,300,560 (pixels)"


@dataclass(frozen=True)
class Box:
    """A rectangle in whole pixels of the upright photo: ``x0 <= x < x1``, ``y0 <= y < y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def __str__(self) -> str:
        return f"{self.x0},{self.y0},{self.x1},{self.y1}"


@dataclass(frozen=True)
class BoxSpec:
    """A box as a user wrote it, before the photo's size is known: four numbers, fractions or pixels."""

    values: tuple[float, float, float, float]

    @property
    def fractional(self) -> bool:
        """All four numbers in [0, 1]: fractions of the width and height."""
        return all(0.0 <= v <= 1.0 for v in self.values)

    def resolve(self, size: tuple[int, int]) -> Box:
        """The box in whole pixels of an upright photo of ``size`` = (width, height). Fractions are rounded
        to the nearest pixel edge.

        Raises:
            QueryError: the box reaches outside the photo, or is narrower than ``MIN_REGION_SIDE`` pixels.
        """
        width, height = size
        x0, y0, x1, y1 = self.values
        if self.fractional:
            x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
        elif x1 > width or y1 > height:
            raise QueryError(f"box {self} reaches outside the {width}x{height} photo (pixels of the upright "
                             f"photo); keep x1 <= {width} and y1 <= {height}, or give fractions in [0, 1]")
        box = Box(round(x0), round(y0), round(x1), round(y1))
        if box.width < MIN_REGION_SIDE or box.height < MIN_REGION_SIDE:
            read = "" if self.fractional else " (read as pixels: not all four numbers lie in [0, 1])"
            raise QueryError(f"box {self} is {box.width}x{box.height} pixels of the {width}x{height} photo{read}; "
                             f"a region needs at least {MIN_REGION_SIDE} pixels each way: draw a larger box")
        return box

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in self.values)


def parse_box(box: str | Sequence[float] | BoxSpec) -> BoxSpec:
    """``"x0,y0,x1,y1"`` or four numbers -> a ``BoxSpec`` (resolved against the photo's size by ``resolve``).

    Raises:
        QueryError: not four numbers, a number that is negative or not finite, or an empty box
            (``x1 <= x0`` or ``y1 <= y0``); the message names the box and shows the form.
    """
    if isinstance(box, BoxSpec):
        return box
    text = box if isinstance(box, str) else ",".join(str(v) for v in box)
    shown = text if len(text) <= 60 else text[:57] + "..."
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    if len(parts) != 4:
        raise QueryError(f"box {shown!r} is not four numbers; write it as {BOX_EXAMPLE}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise QueryError(f"box {shown!r} is not four numbers; write it as {BOX_EXAMPLE}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise QueryError(f"box {shown!r} has a negative or infinite number; write it as {BOX_EXAMPLE}")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise QueryError(f"box {shown!r} is empty: x1 must be right of x0 and y1 below y0 ({BOX_EXAMPLE})")
    return BoxSpec(values)  # type: ignore[arg-type]


def crop(image: Image.Image, box: Box) -> Image.Image:
    """The region ``box`` of an upright, decoded RGB photo (``core.images.load_image``), as a new picture that
    carries none of the photo's metadata (its EXIF, colour profile and size notes describe the whole photo,
    and the pixels are already upright sRGB).

    Raises:
        QueryError: the box reaches outside the picture.
    """
    if box.x0 < 0 or box.y0 < 0 or box.x1 > image.width or box.y1 > image.height:
        raise QueryError(f"box {box} reaches outside the {image.width}x{image.height} photo")
    region = image.crop((box.x0, box.y0, box.x1, box.y1))
    region.info = {}
    return region


def crop_region(image: Image.Image, box: str | Sequence[float] | BoxSpec) -> tuple[Image.Image, Box]:
    """Parse ``box``, resolve it against the decoded photo's size and crop: (region, box in pixels).

    Raises:
        QueryError: a malformed, empty, outside or too small box (one line naming it).
    """
    resolved = parse_box(box).resolve(image.size)
    return crop(image, resolved), resolved
