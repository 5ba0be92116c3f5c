"""Embedders without a learned network: a colour histogram and downscaled raw pixels.

They are reference points for evaluation ("what does the CNN add over colour alone?") and cheap catalogs
for tests. They have the same shape as ``TimmEmbedder`` (``pil_transform`` runs in the decoding workers,
``normalize`` and ``model`` on the device), so ``Encoder``, ``encode_files`` and ``Catalog`` use them
unchanged: ``lookalike index photos/ --model colorhist``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from ..config import EmbedderInfo

HANDCRAFTED_WEIGHTS = "none:v1"  # no weights; bump the version when the features change


class _HandcraftedEmbedder:
    """Shared plumbing; subclasses give the PIL transform and the torch module."""

    name = ""
    description = ""

    def __init__(self, pil_transform, model: torch.nn.Module, dim: int, draft_size: int):
        self.pil_transform = pil_transform
        self.model = model.eval()
        self.draft_size = draft_size
        self.info = EmbedderInfo(name=self.name, timm_name="handcrafted", weights=HANDCRAFTED_WEIGHTS, dim=dim,
                                 pool="none")

    @property
    def dim(self) -> int:
        return self.info.dim

    def prepare(self, img: Image.Image) -> np.ndarray:
        out = self.pil_transform(img)
        return np.asarray(out if out.mode == "RGB" else out.convert("RGB"), dtype=np.uint8)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> float N x 3 x H x W holding 0..255.

        Whole numbers up to 256 are exact in bfloat16 too, so the encoder's reduced-precision paths
        cannot move a pixel into another histogram bin.
        """
        return batch.permute(0, 3, 1, 2).float()


class _ColourHistogram(torch.nn.Module):
    def __init__(self, bins: int, background: int):
        super().__init__()
        self.bins = bins
        self.background = background

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().flatten(2)  # N x 3 x P
        q = torch.clamp(torch.floor(x * (self.bins / 256.0)), 0, self.bins - 1).long()
        idx = (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]  # N x P
        product = (x.min(dim=1).values < self.background).float()  # not studio-white
        # A photo that is all background (a white product on white) keeps every pixel instead.
        weight = torch.where(product.sum(dim=1, keepdim=True) > 0, product, torch.ones_like(product))
        hist = torch.zeros(x.shape[0], self.bins ** 3, device=x.device).scatter_add_(1, idx, weight)
        # Square root of the frequencies: unit length, and the cosine is the Bhattacharyya coefficient.
        return torch.sqrt(hist / hist.sum(dim=1, keepdim=True))


class ColourHistogramEmbedder(_HandcraftedEmbedder):
    """Joint RGB histogram (8 x 8 x 8 bins) of the product's pixels, on a 64 x 64 thumbnail.

    Pixels with every channel at 240 or above are taken as the studio background and left out, so two
    products on white compare by their own colours rather than by how much white surrounds them.
    """

    name = "colorhist"
    description = "colour histogram, 8x8x8 RGB bins without the white background, 512-d (reference, no model)"

    def __init__(self, bins: int = 8, size: int = 64, background: int = 240):
        super().__init__(T.Resize((size, size)), _ColourHistogram(bins, background), bins ** 3, size)


class _Pixels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().flatten(1)
        return x - x.mean(dim=1, keepdim=True)  # centred, so cosine compares the pattern, not brightness


class PixelsEmbedder(_HandcraftedEmbedder):
    """The photo shrunk to 16 x 16 RGB, centred: what "looks alike" means with no features at all."""

    name = "pixels"
    description = "raw pixels: the photo shrunk to 16x16 RGB, centred, 768-d (reference, no model)"

    def __init__(self, size: int = 16):
        super().__init__(T.Resize((size, size)), _Pixels(), 3 * size * size, size)


HANDCRAFTED = {cls.name: cls for cls in (ColourHistogramEmbedder, PixelsEmbedder)}
