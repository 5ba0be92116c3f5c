"""Models trained by ``lookalike train`` (``.lkm`` files) as embedders, with ``TimmEmbedder``'s shape.

``--model ae.lkm`` (or ``ae.lkm#pooled`` to choose another embedding the file offers) loads the file alone:
the architecture, preprocessing and class names are in its header. The PIL part is the letterbox the
training pack was made with, so catalog photos reach the model exactly as the training photos did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.config import EmbedderInfo
from ..core.errors import ModelFileError
from .letterbox import Letterbox
from .modelfile import (
    MODE_SEPARATOR,
    ModelFile,
    canonical_name,
    file_digest,
    load_model_file,
    load_weights,
)
from .networks import AutoencoderEmbedding, FinetuneEmbedding, build_autoencoder, build_finetune


class TrainedEmbedder:
    """A ``.lkm`` model (PyTorch): ``model`` maps a normalised batch to vectors; ``classify`` gives label probabilities
    for fine-tuned models that carry classifier heads."""

    def __init__(self, name: str, meta: ModelFile, net: torch.nn.Module, model: torch.nn.Module, mode: str,
                 digest: str):
        pre = meta.preprocess
        self.meta = meta
        self.needs_torch = True
        self.net = net.eval()
        self.model = model.eval()
        self.pil_transform = Letterbox(int(pre["size"]), int(pre.get("fill", 255)))
        self.draft_size = int(pre["size"])
        self.mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.data_config = {"mean": tuple(pre["mean"]), "std": tuple(pre["std"]),
                            "input_size": (3, self.draft_size, self.draft_size)}
        arch = meta.arch
        what = (f"lkm:autoencoder-latent{arch['latent']}-{arch['size']}px" if meta.kind == "autoencoder"
                else f"lkm:finetune-{arch['timm_name']}-{arch['dim']}d")
        self.info = EmbedderInfo(name=name, timm_name=what, weights=f"file:{digest}",
                                 dim=int(meta.embedding["modes"][mode]), pool=mode)

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class names per label column, in the order of the classifier heads (the header's JSON is sorted)."""
        return {col: self.meta.classes[col] for col in self.meta.arch.get("columns", [])}

    def prepare(self, img: Image.Image) -> np.ndarray:
        out = self.pil_transform(img)
        return np.asarray(out, dtype=np.uint8)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float().div_(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))

    @torch.inference_mode()
    def classify(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 N x H x W x 3 -> column -> N x classes probabilities (on the CPU).

        Raises:
            ModelFileError: the model has no classifier (an autoencoder).
        """
        if not self.meta.classes:
            raise ModelFileError(f"{self.info.name} is an {self.meta.kind} model without classifier heads; "
                                 "classify needs a model from `lookalike train finetune`")
        device = next(self.net.parameters()).device
        _, logits = self.net(self.normalize(batch.to(device)))
        return {col: torch.softmax(lg.float(), dim=1).cpu().numpy()
                for col, lg in zip(self.classes, logits, strict=True)}


def load_trained(name: str):
    """Load ``path.lkm`` or ``path.lkm#mode`` as an embedder (a ``TrainedEmbedder``, or for ``train clip``
    models an ``OpenClipEmbedder`` with both towers).

    Raises:
        ModelFileError: missing, corrupt, not a lookalike model, newer version, or an unknown mode.
    """
    path_text, _, mode = name.partition(MODE_SEPARATOR)
    path = Path(path_text).expanduser()
    meta, state = load_model_file(path)
    if meta.kind == "text-tower":
        image = meta.arch.get("image_model", {}).get("name", "?")
        raise ModelFileError(f"{path} is a text tower trained against {image}, not an image model; add it to a "
                             f"catalog built with {image}: lookalike text add {path} --catalog CATALOG")
    if meta.kind == "clip":
        from .openclip import load_clip_file

        if mode and mode not in meta.embedding.get("modes", {}):
            raise ModelFileError(f"{path}: no embedding {mode!r}; this model offers "
                                 f"{', '.join(meta.embedding.get('modes', {}))}")
        return load_clip_file(canonical_name(name), meta, state, file_digest(path))
    mode = mode or meta.embedding.get("mode", "")
    if mode not in meta.embedding.get("modes", {}):
        raise ModelFileError(f"{path}: no embedding {mode!r}; this model offers "
                             f"{', '.join(meta.embedding.get('modes', {}))} (write {path}#MODE)")
    try:
        if meta.kind == "autoencoder":
            net = build_autoencoder(meta.arch)
            load_weights(net, state, path)
            model = AutoencoderEmbedding(net, mode)
        else:
            net = build_finetune(meta.arch)
            load_weights(net, state, path)
            model = FinetuneEmbedding(net, mode)
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - an edited architecture record fails in many ways
        raise ModelFileError(f"{path}: cannot rebuild the recorded architecture ({exc}); train the model again") \
            from exc
    return TrainedEmbedder(canonical_name(name), meta, net, model, mode, file_digest(path))
