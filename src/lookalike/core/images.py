"""Turn image bytes into an RGB picture the model can read, or a one-line reason why not.

JPEGs are decoded with DCT scaling (Pillow ``draft``) straight to about the size the model needs, so a
2-4 MP product photo costs a fraction of a full decode. EXIF orientation is applied, every mode becomes
RGB (transparent areas over white, as a shop shows them), and oversized images are refused from their
header before any pixel is decoded.

Colours are converted to sRGB from the file's embedded ICC profile (a phone's Display P3, a camera's Adobe
RGB, a print shop's CMYK), so the same red is the same numbers for every embedder, thumbnail and page; a
profile that cannot be read leaves the pixels as stored. Warnings raised while decoding (Pillow's "corrupt
EXIF data", an unreadable profile) go to the log, one line per file naming it, never to stderr.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_PIXELS
from .errors import ImageError, NotAnImageError

# AVIF is read by Pillow itself (recent wheels); HEIC/HEIF, iPhones' default, by pillow-heif once installed
# (the ``heic`` extra: its wheels carry libheif and the GPL x265 encoder, 26 MB, so they are not forced on all).
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
                             | HEIF_EXTENSIONS)
HEIC_HINT = 'reading HEIC needs pillow-heif: pip install "lookalike[heic]"'
AVIF_HINT = "reading AVIF needs a Pillow built with AVIF support: pip install -U pillow"
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})

# We do our own pixel-limit check with a clearer message; Pillow's own would fire at a fixed limit.
Image.MAX_IMAGE_PIXELS = None

log = logging.getLogger(__name__)

ImageInput = str | Path | bytes | Image.Image


SOURCE_SIZE = "lookalike_source_size"  # key in ``Image.info``: the file's own size, upright


def content_hash(data: bytes) -> str:
    """Identity of a file's content: equal hashes are exact duplicates, whatever their names."""
    return hashlib.sha256(data).hexdigest()


_heif_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def heif_available() -> bool:
    """Whether HEIC/HEIF files can be read: pillow-heif is installed (its opener is registered with Pillow on
    the first call; importing it costs about 60 ms, so only a HEIC file pays it)."""
    with _heif_lock:
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
        return True


@functools.lru_cache(maxsize=1)
def avif_available() -> bool:
    """Whether this Pillow reads AVIF (its own plugin, in recent wheels built with libavif)."""
    from PIL import features

    try:
        return bool(features.check_module("avif"))
    except ValueError:  # a Pillow that knows no such module
        return False


def missing_decoder(name: str | Path) -> str | None:
    """Why files named like ``name`` cannot be decoded here, with what to install; None when they can."""
    suffix = os.path.splitext(str(name))[1].lower()
    if suffix in HEIF_EXTENSIONS and not heif_available():
        return HEIC_HINT
    if suffix == ".avif" and not avif_available():
        return AVIF_HINT
    return None


def _is_heif(head: bytes) -> bool:
    """ISO base media (``ftyp``) with a HEIF brand: the bytes of a HEIC/HEIF photo."""
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


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
    name: str | None = None,
) -> Image.Image:
    """Decode image bytes to an RGB ``PIL.Image`` in sRGB.

    ``draft_size`` asks JPEG decoding to downscale by a power of two while both sides stay at least that
    many pixels; it is the smallest side the model's transform needs. ``name`` (the file's path) is what
    the log names when decoding warns.

    Raises:
        ImageError: empty, not an image, over ``max_pixels``, truncated or corrupt.
    """
    if not data:
        raise NotAnImageError("empty file (0 bytes)")
    if _is_heif(data[:12]) and not heif_available():
        raise NotAnImageError(f"a HEIC photo; {HEIC_HINT}")
    with _decode_warnings.logged(name or "image"):
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise NotAnImageError("not an image lookalike can read (JPEG, PNG, WebP, ...)") from exc
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad headers
            raise ImageError(f"unreadable image header ({_short(exc)})") from exc
        return to_rgb(img, draft_size=draft_size, max_pixels=max_pixels)


def to_rgb(img: Image.Image, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load a lazily opened image as sRGB RGB with orientation applied; see ``decode``."""
    with _decode_warnings.logged(getattr(img, "filename", "") or "image"):
        return _to_rgb(img, draft_size, max_pixels)


def _to_rgb(img: Image.Image, draft_size: int | None, max_pixels: int) -> Image.Image:
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
        rgb = _mode_to_rgb(_to_srgb(img))
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


# --- colour profiles ----------------------------------------------------------------------------------------

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_PROFILE_MODES = {"RGB": ("RGB", "RGBA"), "CMYK": ("CMYK",), "GRAY": ("L",)}  # profile colour space -> modes


def _to_srgb(img: Image.Image) -> Image.Image:
    """The picture converted from its embedded ICC profile to sRGB (the profile's own rendering, as a browser
    shows it); untouched when it has none or says sRGB. A profile that cannot be read or does not fit the
    pixels is a warning (logged with the file), and the pixels are used as stored."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "P", "PA", "CMYK", "L"):
        return img
    try:
        space, transforms = _profile(bytes(icc))
    except Exception as exc:  # noqa: BLE001 - LittleCMS refuses a damaged profile with OSError, ValueError...
        _decode_warnings.note(f"colour profile unreadable ({_short(exc)}); colours used as stored")
        return img
    if transforms is None:  # sRGB already
        return img
    if space == "RGB" and img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode not in _PROFILE_MODES.get(space, ()):
        _decode_warnings.note(f"colour profile is for {space or 'unknown'} pixels, not {img.mode}; colours used "
                              "as stored")
        return img
    try:
        converted = ImageCms.applyTransform(img, transforms(img.mode))
    except Exception as exc:  # noqa: BLE001
        _decode_warnings.note(f"colour profile cannot be applied ({_short(exc)}); colours used as stored")
        return img
    converted.info = {k: v for k, v in img.info.items() if k != "icc_profile"}
    return converted


@functools.lru_cache(maxsize=64)
def _profile(icc: bytes):
    """(colour space, mode -> transform to sRGB) of a profile, or (space, None) for sRGB; built once per
    profile (a transform costs milliseconds to build and microseconds to apply). Transforms are made without
    LittleCMS's one-pixel cache, so decoding threads may share them."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    space = profile.profile.xcolor_space.strip()
    if space == "RGB" and (profile.profile.profile_description or "").lower().startswith("srgb"):
        return space, None

    @functools.lru_cache(maxsize=4)
    def transform(mode: str) -> ImageCms.ImageCmsTransform:
        out = "RGBA" if mode == "RGBA" else "RGB"
        return ImageCms.buildTransform(profile, _SRGB, mode, out, flags=ImageCms.Flags.NOCACHE)

    transform(_PROFILE_MODES.get(space, ("RGB",))[0])  # a profile LittleCMS cannot use fails here, once
    return space, transform


# --- warnings while decoding ---------------------------------------------------------------------------------

class _DecodeWarnings:
    """Warnings raised while a file decodes (Pillow's "Corrupt EXIF data", a plugin's, an unreadable colour
    profile) are logged as one line per file naming it, instead of reaching stderr in the middle of a progress
    bar. ``warnings.catch_warnings`` is process-wide state that decoding threads would save and restore over
    one another (leaving warnings off, or captured, for good), so the capture is set up once while any thread
    decodes (counted under a lock) and each thread collects its own file's warnings."""

    MODULES = r"(PIL|pillow_heif)(\.|$)"  # their warnings, every time (not once per line of code): once per file

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._previous = None
        self._local = threading.local()

    @contextmanager
    def logged(self, name: str) -> Iterator[None]:
        if getattr(self._local, "notes", None) is not None:  # decode -> to_rgb: the same file
            yield
            return
        notes: list[str] = []
        self._local.notes = notes
        self._start()
        try:
            yield
        finally:
            self._local.notes = None
            self._stop()
            if notes:
                log.warning("%s: %s", name, "; ".join(dict.fromkeys(notes)))

    def note(self, message: str) -> None:
        """A warning about the file this thread decodes (logged with the others when it is done)."""
        notes = getattr(self._local, "notes", None)
        if notes is None:
            log.warning("%s", message)
        else:
            notes.append(message)

    def _start(self) -> None:
        with self._lock:
            self._active += 1
            if self._active == 1:
                self._previous = warnings.showwarning
                warnings.showwarning = self._show
                warnings.filterwarnings("always", module=self.MODULES)

    def _stop(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                for i, entry in enumerate(warnings.filters):
                    if entry[0] == "always" and getattr(entry[3], "pattern", None) == self.MODULES:
                        del warnings.filters[i]
                        break
                if warnings.showwarning == self._show:
                    warnings.showwarning = self._previous
                self._previous = None

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        notes = getattr(self._local, "notes", None)
        if notes is not None:
            where = Path(filename)
            package = {"PIL": "Pillow"}.get(where.parent.name, where.parent.name)
            notes.append(f"{package} {where.stem} warned: {' '.join(str(message).split())}")
            return
        previous = self._previous or warnings._showwarning_orig  # another thread's warning: as it would have been
        previous(message, category, filename, lineno, file, line)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()


_decode_warnings = _DecodeWarnings()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_decode_warnings._after_fork)


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
        return decode(data, draft_size=draft_size, max_pixels=max_pixels, name=str(path))
    except ImageError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def image_media_type(path: str | Path | BinaryIO) -> str:
    """The MIME type of an image file (or open binary stream) from its content (not its name), for serving it.

    Raises:
        OSError: the file cannot be opened.
    """
    if isinstance(path, (str, Path)):
        if Path(path).suffix.lower() in HEIF_EXTENSIONS:
            heif_available()
    else:
        start = path.tell()
        if _is_heif(path.read(12)):
            heif_available()
        path.seek(start)
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
    if Path(path).suffix.lower() in HEIF_EXTENSIONS:
        heif_available()
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
