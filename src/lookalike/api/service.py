"""What the server holds for its whole life: the catalog, its model placed on the device, the batcher and
the thumbnail cache. Routes call these methods; nothing here knows about HTTP."""

from __future__ import annotations

import base64
import io
import logging
import threading
from pathlib import Path

import numpy as np

from ..catalog import Catalog
from ..catalog.catalog import CatalogItem
from ..config import EncodeOptions
from ..images import decode
from ..search import Match, Where, check_k
from .batcher import EmbedBatcher
from .settings import ServeSettings
from .thumbnails import ThumbnailCache

log = logging.getLogger(__name__)


class CatalogService:
    """Opened once at startup. Catalog reads and writes are serialised by one lock (each takes about a
    millisecond); decoding and the model run outside it."""

    def __init__(self, settings: ServeSettings):
        """Raises: CatalogError, ModelUnavailableError (the CLI prints them on one line)."""
        self.settings = settings
        self.catalog = Catalog.open(settings.catalog)
        options = EncodeOptions(device=settings.device, max_pixels=settings.max_pixels, progress=False, workers=0)
        self.encoder = self.catalog.encoder(options)
        self.batcher = EmbedBatcher(self.encoder, max_batch=settings.max_batch)
        self.lock = threading.RLock()
        self.thumbnails = ThumbnailCache(settings.thumbnail_cache or settings.catalog / "thumbnails")
        # Warm up so the first user does not pay for lazy initialisation (oneDNN kernels, CUDA context).
        _, height, width = self.encoder.embedder.data_config["input_size"]
        self.batcher.embed(np.full((height, width, 3), 255, dtype=np.uint8))

    def close(self) -> None:
        self.batcher.close()
        self.catalog.close()

    # -- searching ---------------------------------------------------------------------------------

    def embed(self, data: bytes) -> np.ndarray:
        """Decode on the calling thread, embed in a shared batch.

        Raises:
            ImageError: not an image, corrupt, or over the pixel limit.
        """
        return self.batcher.embed(self.encoder.prepare(data))

    def search(self, data: bytes, k: int, where: Where, min_similarity: float | None) -> list[Match]:
        check_k(k)
        with self.lock:
            self.catalog.check_where(where)  # a bad filter fails before the model runs
        vector = self.embed(data)
        with self.lock:
            return _above(self.catalog.search_vector(vector, k, where), min_similarity)

    def similar(self, item_id: str, k: int, where: Where, min_similarity: float | None) -> list[Match]:
        with self.lock:
            return _above(self.catalog.similar(item_id, k, where), min_similarity)

    # -- browsing ----------------------------------------------------------------------------------

    def item(self, item_id: str) -> CatalogItem:
        with self.lock:
            return self.catalog.item(item_id)

    def browse(self, offset: int, limit: int, where: Where) -> tuple[int, list[CatalogItem], dict]:
        with self.lock:
            total, items = self.catalog.browse(offset, limit, where)
            return total, items, self.catalog.facets(where)

    def content_id(self, item_id: str) -> str | None:
        """The item's content hash: it versions image URLs, so browsers may cache them for good."""
        with self.lock:
            return self.catalog.item(item_id).sha256

    def size(self) -> int:
        with self.lock:
            return len(self.catalog)

    def thumbnail(self, item: CatalogItem, size: int) -> Path:
        return self.thumbnails.get(item.path, item.sha256, size)

    # -- writing -----------------------------------------------------------------------------------

    def add(self, data: bytes, item_id: str | None, labels: dict[str, str]) -> CatalogItem:
        vector = self.embed(data)
        with self.lock:
            return self.catalog.add_image(data, item_id, labels, vector=vector)

    def remove(self, item_id: str) -> None:
        with self.lock:
            self.catalog.remove([item_id])

    # -- the seed system's answer ------------------------------------------------------------------

    def predict(self, data: bytes, k: int) -> tuple[list[str], str]:
        """Base64 JPEGs of the k closest images and of the upload, as the seed's /api/predict gave."""
        matches = self.search(data, k, None, None)
        closest = [_jpeg_base64(self.thumbnails.get(m.path, self.item(m.id).sha256, 512)) for m in matches]
        uploaded = decode(data, max_pixels=self.settings.max_pixels)
        uploaded.thumbnail((512, 512))
        buffer = io.BytesIO()
        uploaded.save(buffer, "JPEG", quality=90)
        return closest, base64.b64encode(buffer.getvalue()).decode("ascii")


def _above(matches: list[Match], min_similarity: float | None) -> list[Match]:
    if min_similarity is None:
        return matches
    return [m for m in matches if m.similarity >= min_similarity]


def _jpeg_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")

