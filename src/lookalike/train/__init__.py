"""Training embeddings on the shop's own catalog: packs, an autoencoder, fine-tuning, ``.lkm`` model files.

Names are imported on first use (``from lookalike.train import pack_source``), so that the embedder registry
can read model files without loading the training loops, and without an import cycle through ``embed``.
"""

from importlib import import_module

_WHERE = {
    "Pack": "pack", "pack_source": "pack", "TrainOptions": "common", "train_autoencoder": "autoencoder",
    "train_finetune": "finetune", "FinetuneConfig": "finetune", "classify_images": "classify",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
