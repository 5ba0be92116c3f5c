"""Predict a fine-tuned model's labels for new photos (the fine-tuning seed's classifier use)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.config import EncodeOptions
from ..core.errors import ModelFileError
from ..core.images import ImageInput, load_image
from ..engines.torch_runtime import resolve_device


@dataclass
class Prediction:
    """The top labels of one photo, per label column, most probable first."""

    image: str
    labels: dict[str, list[tuple[str, float]]]

    def to_dict(self) -> dict:
        return {"image": self.image, "labels": {col: [{"label": name, "probability": round(p, 6)}
                                                      for name, p in top] for col, top in self.labels.items()}}


def classify_images(images: Sequence[ImageInput], model: str, top: int = 3,
                    options: EncodeOptions | None = None) -> list[Prediction]:
    """Top-``top`` labels with probabilities for each photo, from a ``.lkm`` made by ``train finetune``.

    Raises:
        ModelFileError: not a model file, or a model without classifier heads (an autoencoder).
        ImageError: a photo cannot be read (the message names it).
    """
    from ..models.registry import create_embedder

    options = options or EncodeOptions()
    embedder = create_embedder(model)
    if not getattr(embedder, "classes", None):
        raise ModelFileError(f"{model} has no classifier heads; classify needs a model from "
                             "`lookalike train finetune`")
    device = resolve_device(options.device)
    embedder.net.to(device)
    batch_size = options.batch_size or 32
    out: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        arrays = [embedder.prepare(load_image(im, draft_size=embedder.draft_size, max_pixels=options.max_pixels))
                  for im in chunk]
        probs = embedder.classify(torch.from_numpy(np.stack(arrays)))
        for i, image in enumerate(chunk):
            labels = {}
            for col, p in probs.items():
                order = np.argsort(-p[i], kind="stable")[:top]
                labels[col] = [(embedder.classes[col][j], float(p[i, j])) for j in order]
            out.append(Prediction(image=str(image) if not isinstance(image, bytes) else "<bytes>", labels=labels))
    return out
