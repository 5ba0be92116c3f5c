"""Turn image bytes into an RGB picture the model can read, or a one-line reason why not.

JPEGs are decoded with DCT scaling (Pillow ``draft``) straight to about the size the model needs, so a
2-4 MP product photo costs a fraction of a full decode. EXIF orientation is applied, every mode becomes
RGB (transparent areas over white, as a shop shows them), and oversized images are refused from their
header before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_PIXELS
from .errors import ImageError, NotAnImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# We do our own pixel-limit check with a clearer message; Pillow's own would fire at a fixed limit.
Image.MAX_IMAGE_PIXELS = None

ImageInput = str | Path | bytes | Image.Image


SOURCE_SIZE = "lookalike_source_size"  # key in ``Image.info``: the file's own size, upright


def content_hash(data: bytes) -> str:
    """Identity of a file's content: equal hashes are exact duplicates, whatever their names."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path) -> bytes:
    """Read a file, turning OS errors into an ImageError that names it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def decode(
    data: bytes,
    *,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode image bytes to an RGB ``PIL.Image``.

    ``draft_size`` asks JPEG decoding to downscale by a power of two while both sides stay at least that
    many pixels; it is the smallest side the model's transform needs.

    Raises:
        ImageError: empty, not an image, over ``max_pixels``, truncated or corrupt.
    """
    if not data:
        raise NotAnImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise NotAnImageError("not an image lookalike can read (JPEG, PNG, WebP, ...)") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad headers
        raise ImageError(f"unreadable image header ({_short(exc)})") from exc
    return to_rgb(img, draft_size=draft_size, max_pixels=max_pixels)


def to_rgb(img: Image.Image, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load a lazily opened image as RGB with orientation applied; see ``decode``."""
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height / 1e6:g} MP, over the {max_pixels / 1e6:g} MP "
            "limit (raise it with --max-pixels if the file is trusted)"
        )
    if width == 0 or height == 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        loaded = img.size
        img = ImageOps.exif_transpose(img) or img
        rgb = _mode_to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated data surfaces as OSError, SyntaxError, ValueError...
        raise ImageError(f"truncated or corrupt image data ({_short(exc)})") from exc
    turned = rgb.size != loaded  # EXIF orientation swapped the sides
    rgb.info[SOURCE_SIZE] = (height, width) if turned else (width, height)
    return rgb


def source_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the picture as stored, upright: draft decoding may have returned fewer pixels."""
    return tuple(img.info.get(SOURCE_SIZE, img.size))


def _mode_to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: Pillow's own convert clips at 255 and would make the picture white.
        arr = np.asarray(img, dtype=np.float64)
        # I;16 files span 0-65535 by definition; plain "I" may hold 8-bit data, so look at its range.
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(image: ImageInput, *, draft_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Accept what a user has at hand (a path, raw bytes or a PIL image) and return RGB.

    Raises:
        ImageError: the file is missing or cannot be decoded; the message names the path.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image, max_pixels=max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode(bytes(image), draft_size=draft_size, max_pixels=max_pixels)
    path = Path(image)
    data = read_bytes(path)
    try:
        return decode(data, draft_size=draft_size, max_pixels=max_pixels)
    except ImageError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def image_media_type(path: str | Path | BinaryIO) -> str:
    """The MIME type of an image file (or open binary stream) from its content (not its name), for serving it.

    Raises:
        OSError: the file cannot be opened.
    """
    try:
        with Image.open(path) as img:
            return Image.MIME.get(img.format or "", "application/octet-stream")
    except (UnidentifiedImageError, ValueError):
        return "application/octet-stream"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, from the file's header alone (no pixel is decoded).

    Raises:
        ImageError: missing file or not an image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                width, height = img.size
                try:
                    orientation = img.getexif().get(0x0112)
                except Exception:  # noqa: BLE001 - a broken EXIF block does not change the header size
                    orientation = None
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path}: not an image Pillow can read ({_short(exc)})") from exc
    return (height, width) if orientation in _ROTATED else (width, height)


def image_sizes(paths: list[Path]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Sizes of many files from their headers: (N x 2 array of readable ones, [(path, reason)] of the rest)."""
    sizes, failed = [], []
    for path in paths:
        try:
            sizes.append(read_size(path))
        except ImageError as exc:
            failed.append((str(path), str(exc)))
    return np.array(sizes, dtype=np.int64).reshape(-1, 2), failed
