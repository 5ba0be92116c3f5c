"""A convolutional autoencoder trained on a pack, with no labels: its latent vector describes each photo.

The seed system's U-Net style encoder/decoder, without skip connections: with skips the decoder could copy
fine detail around the bottleneck and the latent would not need to carry the picture. Each level halves the
side (stride-2 convolution) down to 4 x 4; a linear layer makes the latent (``--latent`` numbers), and the
decoder mirrors the encoder with nearest-neighbour upsampling. As an embedder it gives the L2-normalised
latent (``latent``) or the encoder's last feature map averaged over space (``pooled``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import TrainingError
from ..models.letterbox import FILL
from ..models.modelfile import ModelFile, save_model
from ..models.networks import AUTOENCODER_MODES as EMBEDDING_MODES
from ..models.networks import AutoencoderEmbedding, ConvAutoencoder
from .common import (
    Checkpointer,
    EarlyStopping,
    History,
    TrainOptions,
    augment,
    checkpoint_path,
    load_checkpoint,
    set_epoch_lr,
    setup_device,
    split_indices,
    to_float,
)
from .pack import Pack

log = logging.getLogger(__name__)

GRID_SAMPLES = 8


@dataclass
class TrainResult:
    """What a training run wrote and measured."""

    model_path: Path
    history: History
    figures: list[Path] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    device: str = ""
    precision: str = ""


def train_autoencoder(
    pack: Pack | str | Path,
    out: str | Path,
    *,
    latent: int = 32,
    width: int = 32,
    embedding: str = "latent",
    options: TrainOptions | None = None,
    figures: str | Path | None = None,
    subset: np.ndarray | None = None,
    colour_by: str | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
) -> TrainResult:
    """Train on a pack's images (or the positions ``subset`` of them) and write ``out`` (.lkm).

    Keeps the epoch with the lowest validation loss; stops after ``patience`` epochs without a gain; writes a
    checkpoint after every epoch (``--resume`` continues from it). ``figures``: folder for the loss curves,
    per-epoch reconstruction grids and their GIF, and a latent scatter when the latent is 2- or 3-d.

    Raises:
        TrainingError: too few images, a pack size the network cannot take, a bad option.
    """
    options = options or TrainOptions()
    pack = pack if isinstance(pack, Pack) else Pack.open(pack)
    if embedding not in EMBEDDING_MODES:
        raise TrainingError(f"unknown --embedding {embedding!r}; choose {' or '.join(EMBEDDING_MODES)}")
    positions = np.arange(len(pack)) if subset is None else np.asarray(subset, dtype=np.int64)
    if len(positions) < 4:
        raise TrainingError(f"{pack.path}: {len(positions)} packed images; an autoencoder needs at least 4")
    out = Path(out)
    device, precision = setup_device(options)
    model = ConvAutoencoder(pack.size, latent, width).to(device)
    train_pos, val_pos = split_indices(len(positions), options.val_fraction, options.seed)
    train_idx, val_idx = positions[train_pos], positions[val_pos]
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    history, stopper = History(), EarlyStopping(options.patience)
    checkpoints = Checkpointer(out, options.checkpoint_seconds)
    start = 0
    if options.resume:
        start, _ = load_checkpoint(out, model, optimizer, history, stopper)
        log.info("resuming at epoch %d", start + 1)
    generator = torch.Generator()  # reseeded every epoch: a resumed run draws what an uninterrupted one would
    fig_dir = Path(figures) if figures is not None else None
    grid_idx = (val_idx if len(val_idx) else train_idx)[:GRID_SAMPLES]
    frames = sorted(fig_dir.glob("recon/epoch_*.png")) if fig_dir is not None and start else []
    stopped = False
    for epoch in range(start, options.epochs):
        generator.manual_seed(options.seed + epoch + 1)
        t0 = time.perf_counter()
        lr = set_epoch_lr(optimizer, options, epoch)
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        total, seen = 0.0, 0
        for b in range(0, len(order), options.batch_size):
            idx = order[b:b + options.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two
            x = to_float(pack.batch(idx), device)
            x = augment(x, generator, flip=True, crop=1.0)
            with precision.autocast():
                recon = model(x)
            loss = F.mse_loss(recon.float(), x)
            precision.step(loss, optimizer)
            total += loss.item() * len(idx)
            seen += len(idx)
        history.train_loss.append(total / max(1, seen))
        history.lr.append(lr)
        val_loss = _evaluate(model, pack, val_idx, device, precision, options.batch_size)
        if val_loss is not None:
            history.val_loss.append(val_loss)
        history.seconds.append(time.perf_counter() - t0)
        if fig_dir is not None:
            frames.append(_save_grid(model, pack, grid_idx, device, fig_dir, epoch, history))
        watched = val_loss if val_loss is not None else history.train_loss[-1]
        stop = stopper.update(watched, epoch, model)
        history.best_epoch = stopper.best_epoch
        checkpoints.maybe(model, optimizer, epoch, history, stopper)
        log.info("epoch %d: train %.5f, val %s, %.2f s", epoch + 1, history.train_loss[-1],
                 f"{val_loss:.5f}" if val_loss is not None else "-", history.seconds[-1])
        if on_epoch:
            on_epoch(epoch, history)
        if stop:
            stopped = True
            break
    history.stopped_early = stopped
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    _set_code_statistics(model, pack, train_idx, device)
    written = []
    if fig_dir is not None:
        written = _final_figures(model, pack, positions, device, fig_dir, frames, history, latent, colour_by)
    meta = ModelFile(
        kind="autoencoder", arch=model.arch(),
        preprocess={"resize": "letterbox", "size": pack.size, "fill": FILL, "mean": [0.0, 0.0, 0.0],
                    "std": [1.0, 1.0, 1.0]},
        embedding={"mode": embedding, "modes": {"latent": latent, "pooled": model.feature_dim}},
        training={
            "data": str(pack.path), "images": len(positions), "train": len(train_idx), "validation": len(val_idx),
            "options": options.__dict__, "history": history.to_dict(), "device": str(device),
            "precision": precision.name, "best_val_loss": stopper.best if np.isfinite(stopper.best) else None,
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    save_model(out, model.state_dict(), meta)
    checkpoint_path(out).unlink(missing_ok=True)
    return TrainResult(model_path=out, history=history, figures=written, device=str(device),
                       precision=precision.name, metrics={"best_val_loss": meta.training["best_val_loss"]})


@torch.no_grad()
def _evaluate(model, pack: Pack, idx: np.ndarray, device, precision, batch_size: int) -> float | None:
    if len(idx) == 0:
        return None
    model.eval()
    total = 0.0
    for b in range(0, len(idx), batch_size):
        x = to_float(pack.batch(idx[b:b + batch_size]), device)
        with precision.autocast():
            recon = model(x)
        total += F.mse_loss(recon.float(), x, reduction="sum").item() / x[0].numel()
    return total / len(idx)


@torch.no_grad()
def reconstruct(model: ConvAutoencoder, images: np.ndarray, device: torch.device) -> np.ndarray:
    """uint8 N x S x S x 3 in, the model's reconstructions out (uint8, same shape)."""
    model.eval()
    recon = model(to_float(images, device)).float().clamp(0, 1)
    return (recon.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def encode_pack(model: nn.Module, pack: Pack, idx: np.ndarray, device: torch.device, batch_size: int = 256,
                mean=None, std=None) -> np.ndarray:
    """Raw (not normalised) outputs of ``model`` for pack positions ``idx``."""
    model.eval()
    outs = []
    for b in range(0, len(idx), batch_size):
        x = to_float(pack.batch(idx[b:b + batch_size]), device, mean, std)
        outs.append(model(x).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def _set_code_statistics(model: ConvAutoencoder, pack: Pack, idx: np.ndarray, device: torch.device) -> None:
    for mode in EMBEDDING_MODES:
        raw = _Raw(AutoencoderEmbedding(model, mode))
        codes = torch.from_numpy(encode_pack(raw, pack, idx, device))
        std = codes.std(dim=0) if len(codes) > 1 else torch.ones(codes.shape[1])
        getattr(model, f"{mode}_mean").copy_(codes.mean(dim=0))
        getattr(model, f"{mode}_std").copy_(std.clamp_min(1e-6))


class _Raw(nn.Module):
    def __init__(self, embedding: AutoencoderEmbedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding.raw(x)


def _save_grid(model, pack, idx, device, fig_dir: Path, epoch: int, history: History) -> Path:
    from ..figures.training import reconstruction_grid

    originals = pack.batch(idx)
    scale = max(1, 64 // pack.size)
    val = f", val {history.val_loss[-1]:.4f}" if history.val_loss else ""
    grid = reconstruction_grid(originals, reconstruct(model, originals, device),
                               caption=f"epoch {epoch + 1}: train {history.train_loss[-1]:.4f}{val}", scale=scale)
    path = fig_dir / "recon" / f"epoch_{epoch + 1:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _final_figures(model, pack: Pack, positions, device, fig_dir: Path, frames: list[Path], history: History,
                   latent: int, colour_by: str | None) -> list[Path]:
    from ..figures.plots import save
    from ..figures.training import latent_figure, loss_figure, save_gif

    written = [save(loss_figure(history.train_loss, history.val_loss, "autoencoder reconstruction loss (MSE)",
                                history.best_epoch), fig_dir / "loss.png")]
    if frames:
        written.append(save_gif(frames, fig_dir / "reconstructions.gif"))
        written.append(frames[-1])
    if latent in (2, 3):
        z = encode_pack(AutoencoderEmbedding(model, "latent"), pack, positions, device)
        column = colour_by or ("articleType" if "articleType" in pack.labels else next(iter(pack.labels), None))
        values = [pack.labels[column][i] for i in positions] if column else None
        written.append(save(latent_figure(z, values, f"{latent}-d latent space", colour_by=column or ""),
                            fig_dir / "latent.png"))
    return written
