"""Train layer: packs, the autoencoder and fine-tuning loops, and classification with a fine-tuned model.

Names are imported on first use (``from lookalike.train import pack_source``); the networks a trained model
needs at inference live in ``models.networks``, so loading a ``.lkm`` never imports a training loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

if TYPE_CHECKING:
    from .autoencoder import train_autoencoder
    from .classify import classify_images
    from .common import TrainOptions
    from .finetune import FinetuneConfig, train_finetune
    from .pack import Pack, pack_source

_EXPORTS = {
    "Pack": "pack", "pack_source": "pack", "TrainOptions": "common", "train_autoencoder": "autoencoder",
    "train_finetune": "finetune", "FinetuneConfig": "finetune", "classify_images": "classify",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["FinetuneConfig", "Pack", "TrainOptions", "classify_images", "pack_source", "train_autoencoder",
           "train_finetune"]
