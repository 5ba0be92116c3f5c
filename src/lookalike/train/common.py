"""What both training loops share: device and mixed precision, seeding, splits, schedule, early stopping,
checkpoints, and the batch transforms (normalisation, augmentation) applied on the training device."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import TrainingError
from ..engines.torch_runtime import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """How to train, whatever the model: where, how long, how fast, how reproducibly."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    patience: int = 5  # epochs without a better validation loss before stopping; 0 = never stop early
    warmup: int = 1  # epochs of linear learning-rate warm-up before the cosine decay
    device: str = "auto"
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 elsewhere) | fp32 | bf16 | fp16
    seed: int = 0
    progress: bool = False
    resume: bool = False  # continue from the checkpoint beside --out
    checkpoint_seconds: float = 60.0  # write a checkpoint when this long has passed since the last (0: every epoch)


@dataclass
class History:
    """Per-epoch figures, saved in checkpoints and in the model file."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, "lr": self.lr, "seconds": self.seconds,
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early}


def seed_everything(seed: int, device: torch.device) -> None:
    """Same seed, same device, same result: seeds every generator and asks for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":  # CPU kernels used here are deterministic already; cuDNN/cuBLAS need asking
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


class Precision:
    """Autocast dtype for the device plus a gradient scaler where fp16 needs one.

    ``auto`` is bf16 on CUDA GPUs that have it (fp16 with loss scaling on older ones) and fp32 on CPU and
    MPS: CPU bf16 training is emulated on most machines and slower than fp32.
    """

    def __init__(self, precision: str, device: torch.device):
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise TrainingError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
        if precision == "auto":
            if device.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "fp32"
        if precision == "fp16" and device.type == "cpu":
            raise TrainingError("--precision fp16 is not supported on the CPU; use fp32 or bf16")
        self.name = precision
        self.device = device
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()


def setup_device(options: TrainOptions) -> tuple[torch.device, Precision]:
    """Resolve ``--device`` and ``--precision``, and seed.

    Raises:
        LookalikeError: the device is not present, or the precision does not suit it.
    """
    device = resolve_device(options.device)
    precision = Precision(options.precision, device)
    seed_everything(options.seed, device)
    log.info("training on %s in %s", device, precision.name)
    return device, precision


def split_indices(n: int, fraction: float, seed: int, strata: list[str | None] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions; stratified by ``strata`` so every class with at least two items has one
    held out in proportion, and singletons (and unlabelled items) stay in training.

    Raises:
        TrainingError: the split leaves either side empty.
    """
    if not 0.0 <= fraction < 1.0:
        raise TrainingError(f"validation fraction {fraction} must be in [0, 1)")
    rng = np.random.default_rng(seed)
    held: list[int] = []
    if strata is None:
        order = rng.permutation(n)
        held = sorted(order[: int(round(n * fraction))].tolist())
    else:
        by_class: dict[str, list[int]] = {}
        for i, value in enumerate(strata):
            if value is not None:
                by_class.setdefault(value, []).append(i)
        for value in sorted(by_class):
            members = by_class[value]
            if len(members) < 2:
                continue
            take = min(len(members) - 1, max(1, int(round(len(members) * fraction)))) if fraction > 0 else 0
            held.extend(rng.choice(members, size=take, replace=False).tolist())
    held_arr = np.array(sorted(held), dtype=np.int64)
    train = np.setdiff1d(np.arange(n), held_arr)
    if fraction > 0 and (len(held_arr) == 0 or len(train) == 0):
        raise TrainingError(f"{n} images are too few to hold out {fraction:.0%} for validation; add images or "
                            "pass --val 0")
    return train, held_arr


def text_split(source: str | Path, captions: list[list[str]], labels: Mapping[str, Sequence[str | None]],
               text_columns: Sequence[str], stratify: str | None, type_label: str | None, options: TrainOptions
               ) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out positions (int64) of the items with at least one text, for the text+image loops
    (``train clip`` and its LiT text tower): held out by ``split_indices``, stratified by ``stratify``.

    Raises:
        TrainingError: no text column, fewer than 4 items with a text, or an unknown label column.
    """
    if not text_columns:
        raise TrainingError("train clip needs at least one --text-column (e.g. productDisplayName)")
    positions = np.array([i for i, c in enumerate(captions) if c], dtype=np.int64)
    if len(positions) < 4:
        raise TrainingError(f"{source}: {len(positions)} photos have a text in {', '.join(text_columns)}; "
                            "train clip needs at least 4")
    for label in (stratify, type_label):
        if label is not None and label not in labels:
            raise TrainingError(f"{source}: no label column {label!r} (columns: {', '.join(sorted(labels))})")
    strata = [labels[stratify][i] for i in positions] if stratify else None
    train_pos, val_pos = split_indices(len(positions), options.val_fraction, options.seed, strata)
    return positions[train_pos], positions[val_pos]


def set_epoch_lr(optimizer: torch.optim.Optimizer, options: TrainOptions, epoch: int) -> float:
    """Set every parameter group's rate for ``epoch`` (``lr_factor`` times the base rate, times the group's own
    ``scale`` where it has one) and return the base rate of the epoch, for the history."""
    lr = options.lr * lr_factor(epoch, options.epochs, options.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)
    return lr


def lr_factor(epoch: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate: the schedule both loops use."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))


class EarlyStopping:
    """Remember the best validation loss and its weights; say stop after ``patience`` epochs without a gain."""

    def __init__(self, patience: int, min_delta: float = 1e-4):
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0

    def update(self, loss: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record an epoch's loss; True when training should stop."""
        if loss < self.best - self.min_delta * max(1.0, abs(self.best) if math.isfinite(self.best) else 1.0):
            self.best, self.best_epoch, self.bad = loss, epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        return self.patience > 0 and self.bad >= self.patience


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


class Checkpointer:
    """Writes a checkpoint when ``every`` seconds have passed since the last one: a ResNet's checkpoint
    (weights, optimizer moments, best weights) is four times the model, too much to write every short epoch."""

    def __init__(self, out: Path, every: float):
        self.out, self.every = out, every
        self.last = time.monotonic()

    def maybe(self, model, optimizer, epoch: int, history: History, stopper: EarlyStopping) -> bool:
        if time.monotonic() - self.last < self.every:
            return False
        save_checkpoint(self.out, model, optimizer, epoch, history, stopper)
        self.last = time.monotonic()
        return True


def save_checkpoint(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    history: History, stopper: EarlyStopping, extra: dict | None = None) -> None:
    """Everything needed to continue after ``epoch``; written atomically beside the model file."""
    path = checkpoint_path(out)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": history.to_dict(), "best": stopper.best, "best_epoch": stopper.best_epoch,
                "best_state": stopper.best_state, "bad": stopper.bad, "torch_rng": torch.get_rng_state(),
                "extra": extra or {}}, tmp)
    tmp.replace(path)


def load_checkpoint(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, history: History,
                    stopper: EarlyStopping) -> tuple[int, dict]:
    """Restore a checkpoint; returns the first epoch still to run and the extra state.

    Raises:
        TrainingError: no checkpoint, or one of another model.
    """
    path = checkpoint_path(out)
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint {path}; run without --resume to start afresh")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except Exception as exc:  # noqa: BLE001 - a checkpoint of other options fails in many ways
        raise TrainingError(f"--resume: {path} does not fit this model or these options ({exc}); run without "
                            "--resume") from exc
    for key, value in ckpt["history"].items():
        setattr(history, key, value)
    stopper.best, stopper.best_epoch, stopper.bad = ckpt["best"], ckpt["best_epoch"], ckpt["bad"]
    stopper.best_state = ckpt["best_state"]
    torch.set_rng_state(ckpt["torch_rng"])
    return int(ckpt["epoch"]) + 1, ckpt.get("extra", {})


# -- batch transforms on the training device ------------------------------------------------------------


def to_float(batch: np.ndarray | torch.Tensor, device: torch.device, mean=None, std=None) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1], or normalised when ``mean``/``std`` are given."""
    x = torch.as_tensor(batch).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    if mean is not None:
        m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=device).view(1, 3, 1, 1)
        x = x.sub_(m).div_(s)
    return x.contiguous()


def augment(x: torch.Tensor, generator: torch.Generator, *, flip: bool = True, crop: float = 0.8,
            colour: float = 0.0) -> torch.Tensor:
    """Product-photo augmentations on a batch in [0, 1]: horizontal flip, random zoom-in crop (scale of the
    side down to ``crop``, shifted), and brightness/contrast/saturation jitter of strength ``colour``.

    Random numbers come from ``generator`` on the CPU, so a seeded run draws the same ones on any device.
    """
    import torch.nn.functional as F

    n = x.shape[0]
    flipped = (torch.rand(n, generator=generator) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    if crop >= 1.0:
        x = torch.where(flipped.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
    else:
        scale = 1.0 - (1.0 - crop) * torch.rand(n, generator=generator)
        shift = (1.0 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator) - 1)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(flipped, -scale, scale)
        theta[:, 1, 1] = scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if colour > 0:
        def factor() -> torch.Tensor:
            return (1.0 + colour * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)).to(x.device, x.dtype)

        x = x * factor()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean  # contrast
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey) * factor() + grey  # saturation
        x = x.clamp(0, 1)
    return x


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def class_counts(values: list[str | None]) -> Counter:
    return Counter(v for v in values if v is not None)


def close_epoch(epoch: int, history: History, train_loss: float, lr: float, val_loss: float | None, started: float,
                model: torch.nn.Module, optimizer: torch.optim.Optimizer, stopper: EarlyStopping,
                checkpoints: Checkpointer, on_epoch=None) -> bool:
    """An epoch's bookkeeping, the same for every loop: record the losses, rate and time, update early stopping
    (on the validation loss, else the training loss), checkpoint, log and report. Returns whether to stop
    (``history.stopped_early`` is then set)."""
    history.train_loss.append(train_loss)
    history.lr.append(lr)
    if val_loss is not None:
        history.val_loss.append(val_loss)
    history.seconds.append(time.perf_counter() - started)
    stop = stopper.update(val_loss if val_loss is not None else train_loss, epoch, model)
    history.best_epoch = stopper.best_epoch
    checkpoints.maybe(model, optimizer, epoch, history, stopper)
    log.info("epoch %d: train %.4f, val %s, %.2f s", epoch + 1, train_loss,
             f"{val_loss:.4f}" if val_loss is not None else "-", history.seconds[-1])
    if on_epoch:
        on_epoch(epoch, history)
    if stop:
        history.stopped_early = True
    return stop


def describe_times(seconds: list[float]) -> str:
    if not seconds:
        return "no epoch run"
    first = seconds[0]
    rest = seconds[1:] or seconds
    return f"{len(seconds)} epochs, first {first:.2f} s, then {float(np.median(rest)):.2f} s median"


def ensure_parent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
