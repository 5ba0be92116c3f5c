"""The networks that trained models (``.lkm`` files) need at inference, with their embedding heads.

Training loops (``train/``) build and fit them; the models layer rebuilds them from a file's recorded
architecture without importing any training code.

* ``ConvAutoencoder``: stride-2 blocks down to 4 x 4, a linear latent, a mirrored decoder, no skips (the seed
  system's U-Net without its skip connections, so the latent must carry the picture).
* ``FinetuneNet``: a timm backbone, a projection head and one cosine classifier per label column.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import TrainingError

AUTOENCODER_MODES = ("latent", "pooled")
FINETUNE_MODES = ("head", "backbone")


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1, inplace=True),
    )


class ConvAutoencoder(nn.Module):
    """Encoder (stride-2 blocks down to 4 x 4, then a linear latent) and a mirrored decoder.

    ``size`` must be a power of two from 16 up; channels double per level from ``width`` up to 8 x width.
    """

    def __init__(self, size: int = 64, latent: int = 32, width: int = 32):
        super().__init__()
        if size < 16 or size & (size - 1):
            raise TrainingError(f"autoencoder input size {size} must be a power of two of at least 16 "
                                "(32, 64, 128, ...); pack with --size accordingly")
        if latent < 1:
            raise TrainingError(f"--latent {latent}: must be at least 1")
        levels = int(math.log2(size)) - 2
        chans = [width * 2 ** min(i, 3) for i in range(levels)]
        self.size, self.latent_dim, self.width = size, latent, width
        self.feature_dim = chans[-1]
        encoder, c_in = [], 3
        for c in chans:
            encoder.append(_block(c_in, c, 2))
            c_in = c
        self.encoder = nn.Sequential(*encoder)
        self.to_latent = nn.Linear(chans[-1] * 16, latent)
        self.from_latent = nn.Sequential(nn.Linear(latent, chans[-1] * 16), nn.LeakyReLU(0.1, inplace=True))
        decoder = []
        for c_out in list(reversed(chans[:-1])) + [width]:
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), _block(c_in, c_out, 1)]
            c_in = c_out
        self.decoder = nn.Sequential(*decoder, nn.Conv2d(width, 3, 3, padding=1))
        # Per-dimension statistics of the training set's codes, set after training: embeddings are
        # standardised with them, so a direction every photo shares does not make all cosines near 1.
        for mode, n in (("latent", latent), ("pooled", self.feature_dim)):
            self.register_buffer(f"{mode}_mean", torch.zeros(n))
            self.register_buffer(f"{mode}_std", torch.ones(n))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(z.shape[0], self.feature_dim, 4, 4)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def arch(self) -> dict:
        return {"size": self.size, "latent": self.latent_dim, "width": self.width}


class AutoencoderEmbedding(nn.Module):
    """The encoder alone, as an embedder's model: the latent, or the last feature map's spatial mean."""

    def __init__(self, autoencoder: ConvAutoencoder, mode: str = "latent"):
        super().__init__()
        if mode not in AUTOENCODER_MODES:
            raise TrainingError(f"unknown autoencoder embedding {mode!r}; choose {' or '.join(AUTOENCODER_MODES)}")
        self.encoder = autoencoder.encoder
        self.to_latent = autoencoder.to_latent
        self.pooled = mode == "pooled"
        self.register_buffer("mean", getattr(autoencoder, f"{mode}_mean").detach().clone())
        self.register_buffer("std", getattr(autoencoder, f"{mode}_std").detach().clone())

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return h.mean(dim=(2, 3)) if self.pooled else self.to_latent(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.mean) / self.std


def build_autoencoder(arch: dict) -> ConvAutoencoder:
    """The architecture a model file records, with fresh weights (the registry then loads the file's)."""
    return ConvAutoencoder(size=int(arch["size"]), latent=int(arch["latent"]), width=int(arch["width"]))


class CosineClassifier(nn.Module):
    """Logits as scaled cosines between the embedding and one weight vector per class: the classes become
    directions in the embedding space, which is what nearest-neighbour search measures."""

    def __init__(self, dim: int, classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).T


class FinetuneNet(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int, hidden: int, n_classes: list[int]):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, dim))
        self.classifiers = nn.ModuleList([CosineClassifier(dim, n) for n in n_classes])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).flatten(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.embed(x)
        return z, [clf(z) for clf in self.classifiers]


class FinetuneEmbedding(nn.Module):
    """The embedder's model: the projection (``head``) or the backbone's pooled features (``backbone``)."""

    def __init__(self, net: FinetuneNet, mode: str = "head"):
        super().__init__()
        if mode not in FINETUNE_MODES:
            raise TrainingError(f"unknown fine-tune embedding {mode!r}; choose {' or '.join(FINETUNE_MODES)}")
        self.backbone = net.backbone
        self.head = net.head if mode == "head" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x).flatten(1)
        return self.head(h) if self.head is not None else h


def build_finetune(arch: dict) -> FinetuneNet:
    """The architecture a model file records, with random weights (the file's are loaded after)."""
    import timm

    kwargs: dict = {"num_classes": 0}
    if arch.get("pool") not in (None, "", "default"):
        kwargs["global_pool"] = arch["pool"]
    # The base's architecture without its tag (the weights come from the file; a model folder's tag, e.g.
    # coral_in1k, is not in timm's registry), with the constructor arguments its weights need (model_args, e.g.
    # pad_type "same", recorded since fine-tunes of model folders exist).
    name = arch["timm_name"].split(".")[0]
    backbone = timm.create_model(name, pretrained=False, **arch.get("model_args", {}), **kwargs)
    return FinetuneNet(backbone, int(arch["feature_dim"]), int(arch["dim"]), int(arch["hidden"]),
                       [int(n) for n in arch["n_classes"]])
