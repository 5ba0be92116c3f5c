"""What every embedder offers, and the names for weights that every model kind shares.

An embedder is split where work is cheapest to move: ``pil_transform``/``prepare`` turn a decoded RGB
picture into a uint8 H x W x 3 array (run in decoding workers), and the model turns a batch of those into
vectors. Network models (timm, ``.lkm``) do that with PyTorch (``model`` + ``normalize``); model-free ones
(``colorhist``, ``pixels``) with NumPy (``embed_arrays``), so their catalogs never import PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ..core.config import EmbedderInfo

RANDOM_WEIGHTS = "random"  # ``--weights random``: seeded random weights, for timing runs and offline demos
RANDOM_SEED = 0


class Embedder(Protocol):
    """The shape ``engines.embed.Encoder`` and ``Catalog`` rely on.

    ``needs_torch`` False: ``embed_arrays`` maps N x H x W x 3 uint8 to N x D float32 unit vectors.
    ``needs_torch`` True: ``model`` (a ``torch.nn.Module``) maps ``normalize(batch)`` to N x D features.
    """

    info: EmbedderInfo
    pil_transform: Any
    draft_size: int
    needs_torch: bool

    @property
    def dim(self) -> int: ...

    def prepare(self, img: Image.Image) -> np.ndarray: ...


def prepare_with(pil_transform, img: Image.Image) -> np.ndarray:
    """``pil_transform(img)`` as the uint8 H x W x 3 array the models take. Module-level, so decoding
    workers receive only the (small, picklable) transform, never the model."""
    out = pil_transform(img)
    return np.asarray(out if out.mode == "RGB" else out.convert("RGB"), dtype=np.uint8)
