"""Thumbnails made once per item content and size, kept on disk: a results grid of 50 items costs 50
small file reads instead of 50 full decodes of 1-3 MB product photos."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from PIL import Image

from ..core import storage
from ..core.errors import ImageError
from ..core.images import load_image

log = logging.getLogger(__name__)

# Requested sizes snap up to one of these, so the cache holds a bounded number of files per item.
SIZES = (64, 128, 192, 256, 384, 512, 768, 1024)
DEFAULT_SIZE = 256
# In each thumbnail's name: thumbnails are sRGB since decoding honours colour profiles (issue 24), and those
# made before, with a Display-P3 photo's numbers shown as sRGB, are not served again.
GENERATION = "srgb"


def snap_size(size: int) -> int:
    return next((s for s in SIZES if s >= size), SIZES[-1])


class ThumbnailCache:
    def __init__(self, folder: Path):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=folder, delete=True)
            probe.close()
        except OSError as exc:
            fallback = Path(tempfile.mkdtemp(prefix="lookalike-thumbnails-"))
            log.warning("thumbnail cache %s is not writable (%s); using %s", folder, exc.strerror, fallback)
            folder = fallback
        self.folder = folder

    def get(self, image_path: str | Path, content_id: str | None, size: int) -> Path:
        """The thumbnail file of an image at ``size`` (longest side), made on first request.

        Raises:
            ImageError: the original cannot be read any more (moved, changed, corrupt).
        """
        size = snap_size(size)
        name = content_id or hashlib.sha256(str(image_path).encode()).hexdigest()
        target = self.folder / str(size) / name[:2] / f"{name}.{GENERATION}.jpg"
        if target.exists():
            return target
        if storage.is_url(image_path):
            try:
                source: bytes | Path = storage.read_bytes(image_path)
            except OSError as exc:
                raise ImageError(f"{image_path}: cannot read ({exc})") from exc
        else:
            source = Path(image_path)
        image = load_image(source, draft_size=size)
        image.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, "JPEG", quality=85, optimize=True)
        os.replace(tmp, target)  # atomic: concurrent requests for one thumbnail never see half a file
        return target
