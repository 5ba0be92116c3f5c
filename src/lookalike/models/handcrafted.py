"""Embedders without a learned network: a colour histogram and downscaled raw pixels, in NumPy.

They are reference points for evaluation ("what does the CNN add over colour alone?") and cheap catalogs
for tests and scripts. They have the shape of every embedder (``pil_transform`` runs in the decoding
workers), but compute their vectors with NumPy (``embed_arrays``), so a ``--model pixels`` or
``--model colorhist`` catalog is built and searched without importing PyTorch:
``lookalike index photos/ --model colorhist``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..core.config import EmbedderInfo
from .base import prepare_with

HANDCRAFTED_WEIGHTS = "none:v1"  # no weights; bump the version when the features change


class SquareResize:
    """Resize to ``size`` x ``size`` with Pillow's bilinear filter (what torchvision's ``Resize((s, s))``
    does to a PIL image). A class, so decoding workers receive it pickled."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.resize((self.size, self.size), Image.Resampling.BILINEAR)

    def __repr__(self) -> str:
        return f"SquareResize({self.size})"


class _HandcraftedEmbedder:
    """Shared plumbing; subclasses give the size and ``features``."""

    name = ""
    description = ""
    needs_torch = False

    def __init__(self, size: int, dim: int):
        self.pil_transform = SquareResize(size)
        self.draft_size = size
        self.info = EmbedderInfo(name=self.name, timm_name="handcrafted", weights=HANDCRAFTED_WEIGHTS, dim=dim,
                                 pool="none")

    @property
    def dim(self) -> int:
        return self.info.dim

    def prepare(self, img: Image.Image) -> np.ndarray:
        return prepare_with(self.pil_transform, img)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 -> float32 N x D, unit length (a zero vector stays zero)."""
        out = self.features(np.asarray(batch))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def features(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ColourHistogramEmbedder(_HandcraftedEmbedder):
    """Joint RGB histogram (8 x 8 x 8 bins) of the product's pixels, on a 64 x 64 thumbnail.

    Pixels with every channel at 240 or above are taken as the studio background and left out, so two
    products on white compare by their own colours rather than by how much white surrounds them. The
    square root of the frequencies has unit length, and the cosine of two is the Bhattacharyya coefficient.
    """

    name = "colorhist"
    description = "colour histogram, 8x8x8 RGB bins without the white background, 512-d (reference, no model)"

    def __init__(self, bins: int = 8, size: int = 64, background: int = 240):
        super().__init__(size, bins ** 3)
        self.bins = bins
        self.background = background

    def features(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        pixels = batch.reshape(n, -1, 3)
        q = (pixels.astype(np.int64) * self.bins) // 256  # floor(x * bins / 256), 0..bins-1
        idx = (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]  # N x P
        product = pixels.min(axis=2) < self.background  # not studio-white
        # A photo that is all background (a white product on white) keeps every pixel instead.
        weight = np.where(product.any(axis=1, keepdims=True), product, True).astype(np.float64)
        bins = self.bins ** 3
        offsets = (np.arange(n, dtype=np.int64) * bins)[:, None]
        hist = np.bincount((idx + offsets).ravel(), weights=weight.ravel(), minlength=n * bins).reshape(n, bins)
        return np.sqrt(hist / hist.sum(axis=1, keepdims=True))


class PixelsEmbedder(_HandcraftedEmbedder):
    """The photo shrunk to 16 x 16 RGB, centred: what "looks alike" means with no features at all."""

    name = "pixels"
    description = "raw pixels: the photo shrunk to 16x16 RGB, centred, 768-d (reference, no model)"

    def __init__(self, size: int = 16):
        super().__init__(size, 3 * size * size)

    def features(self, batch: np.ndarray) -> np.ndarray:
        # Channel-first order (3 x H x W), as the vectors of earlier versions were laid out.
        x = batch.transpose(0, 3, 1, 2).reshape(batch.shape[0], -1).astype(np.float64)
        return x - x.mean(axis=1, keepdims=True)  # centred, so cosine compares the pattern, not brightness


HANDCRAFTED = {cls.name: cls for cls in (ColourHistogramEmbedder, PixelsEmbedder)}
