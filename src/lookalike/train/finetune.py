"""Fine-tuning a backbone on the shop's own labels, so its embedding groups items the way the shop does.

A backbone from the registry (pretrained, a local weights file, or random) is followed by a projection
head (the embedding) and one cosine classifier per label column. The loss is cross-entropy per column plus
supervised contrastive loss of the first column on the normalised embedding with in-batch positives (so the
first ``--label`` decides what "alike" means; the others add classifier heads); batches are class-balanced
(P classes x K photos of the first column), since shop labels are very unbalanced and contrastive loss needs
positives in every batch. The backbone is frozen by default; ``unfreeze`` opens its last stages (or all).
Retrieval on a held-out split, stratified by the first column, is measured before and after training.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import TrainingError
from ..models.base import RANDOM_WEIGHTS
from ..models.letterbox import FILL
from ..models.modelfile import ModelFile, save_model
from ..models.networks import FINETUNE_MODES as EMBEDDING_MODES
from ..models.networks import FinetuneEmbedding, FinetuneNet
from .common import (
    Checkpointer,
    EarlyStopping,
    History,
    TrainOptions,
    augment,
    checkpoint_path,
    class_counts,
    close_epoch,
    load_checkpoint,
    normalise,
    set_epoch_lr,
    setup_device,
    split_indices,
    to_float,
)
from .pack import Pack

log = logging.getLogger(__name__)

COLOUR_LABEL = re.compile(r"colou?r", re.IGNORECASE)
_NOT_STAGES = ("fc", "head", "classifier", "global_pool", "head_drop", "pre_logits", "fc_norm", "norm")


@dataclass(frozen=True)
class FinetuneConfig:
    """What to learn and how hard to push the backbone."""

    labels: tuple[str, ...] = ("articleType",)
    dim: int = 128  # embedding size
    hidden: int = 512
    unfreeze: int | str = 0  # last N backbone stages trainable, or "all"
    metric_weight: float = 1.0  # weight of the supervised contrastive loss against cross-entropy
    temperature: float = 0.1
    per_class: int = 4  # K photos per class in a balanced batch
    colour_jitter: bool | None = None  # None: on unless a label column is a colour
    min_count: int = 2  # classes with fewer training photos are merged into no label (too rare to learn)
    backbone_lr: float = 0.1  # unfrozen backbone stages learn at this fraction of the head's rate
    # BatchNorm statistics frozen (eval mode) while the backbone learns: None = when starting from pretrained
    # weights. A shop's small class-balanced batches would overwrite the ImageNet statistics (and a checkpoint
    # with folded BatchNorm, like the built-in model's, has identity statistics that batch statistics replace
    # outright): measured on the shared photos, fine-tuning the built-in model with them trainable dropped
    # held-out precision@5 from 0.727 to 0.533 (benchmarks/train_quality.py --pretrained). The affine weights
    # still learn. As detectron2's FrozenBatchNorm2d and timm's freeze_batch_norm_2d do for fine-tuning.
    freeze_bn: bool | None = None
    # (query, clicked) pairs of pack positions, from shoppers' clicks (``--pairs-from events``): each is a positive
    # pair of a symmetric InfoNCE term (van den Oord et al. 2018; CLIP's loss over one tower) with the batch's
    # other pairs as negatives, added with ``pair_weight`` to the label losses at every step
    pairs: tuple[tuple[int, int], ...] = ()
    pair_weight: float = 1.0


def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) with in-batch positives: each photo is pulled towards the others of its
    class and pushed from the rest. Rows with label -1 or without a positive in the batch are left out."""
    keep = labels >= 0
    z, labels = F.normalize(z[keep].float(), dim=1), labels[keep]
    n = len(z)
    if n < 2:
        return z.sum() * 0.0
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    count = positives.sum(dim=1)
    has = count > 0
    if not has.any():
        return z.sum() * 0.0
    mean_pos = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[has] / count[has]
    return -mean_pos.mean()


def pair_contrastive(za: torch.Tensor, zb: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE over (a_i, b_i) pairs: a_i should be nearer b_i than any other b_j of the batch, and
    b_i nearer a_i (van den Oord et al. 2018, as CLIP's loss with one tower)."""
    za, zb = F.normalize(za.float(), dim=1), F.normalize(zb.float(), dim=1)
    logits = za @ zb.T / temperature
    target = torch.arange(len(za), device=za.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def balanced_batches(labels: np.ndarray, batch_size: int, per_class: int, n_batches: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of P classes x K photos (``per_class``), classes drawn uniformly: a rare class is seen as
    often as a common one, and every photo has positives for the contrastive loss. Positions index ``labels``
    (class codes, -1 for none; those are never drawn)."""
    classes = np.unique(labels[labels >= 0])
    members = {c: np.flatnonzero(labels == c) for c in classes}
    p = max(1, min(len(classes), batch_size // per_class))
    batches = []
    for _ in range(n_batches):
        chosen = rng.choice(classes, size=p, replace=False)
        parts = [rng.choice(members[c], size=per_class, replace=len(members[c]) < per_class) for c in chosen]
        batches.append(np.concatenate(parts))
    return batches


def _stages(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children that hold weights, input to output (the ``--unfreeze`` unit)."""
    return [(name, m) for name, m in backbone.named_children()
            if name not in _NOT_STAGES and any(True for _ in m.parameters())]


def set_trainable(backbone: nn.Module, unfreeze: int | str) -> list[str]:
    """Freeze the backbone except its last ``unfreeze`` stages (``"all"``: nothing frozen); returns the open
    stages' names."""
    stages = _stages(backbone)
    if unfreeze == "all":
        opened = [name for name, _ in stages]
        for p in backbone.parameters():
            p.requires_grad_(True)
        return opened
    n = int(unfreeze)
    if n < 0:
        raise TrainingError(f"--unfreeze {unfreeze}: give a number of stages (0 = frozen) or 'all'")
    for p in backbone.parameters():
        p.requires_grad_(False)
    opened = []
    for name, module in stages[len(stages) - n:] if n else []:
        for p in module.parameters():
            p.requires_grad_(True)
        opened.append(name)
    return opened


def _train_mode(net: FinetuneNet, opened: list[str], all_open: bool, freeze_bn: bool = False) -> None:
    """Training mode for what learns; frozen stages stay in eval mode (their BatchNorm statistics too), and
    with ``freeze_bn`` every BatchNorm of the backbone does."""
    net.train()
    if not all_open:
        net.backbone.eval()
        for name in opened:
            getattr(net.backbone, name).train()
    if freeze_bn:
        for module in net.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_finetune(
    pack: Pack | str | Path,
    out: str | Path,
    *,
    backbone: str = "resnet50",
    weights: str | None = None,
    config: FinetuneConfig | None = None,
    options: TrainOptions | None = None,
    embedding: str = "head",
    subset: np.ndarray | None = None,
    figures: str | Path | None = None,
    k: int = 5,
    on_epoch: Callable[[int, History], None] | None = None,
):
    """Fine-tune ``backbone`` on the pack's label columns and write ``out`` (.lkm, an embedder and a classifier).

    ``subset``: pack positions to use (the rest are not seen at all). Of those, ``options.val_fraction`` is held
    out, stratified by the first label column: it decides early stopping and gives the before/after retrieval
    figures (precision@k, mAP@k of held-out photos searched among the training photos).

    Raises:
        TrainingError: a label column is missing, or too few labelled photos or classes.
        UnknownModelError, ModelUnavailableError: the backbone or its weights cannot be had.
    """
    from ..models.registry import create_embedder
    from .autoencoder import TrainResult

    config = config or FinetuneConfig()
    options = options or TrainOptions(epochs=15, lr=1e-3)
    out = Path(out)
    pack = pack if isinstance(pack, Pack) else Pack.open(pack)
    if embedding not in EMBEDDING_MODES:
        raise TrainingError(f"unknown --embedding {embedding!r}; choose {' or '.join(EMBEDDING_MODES)}")
    if not config.labels:
        raise TrainingError("fine-tuning needs at least one --label column")
    for column in config.labels:
        if column not in pack.labels:
            have = ", ".join(pack.labels) or "none"
            raise TrainingError(f"{pack.path}: no label column {column!r} (columns: {have}); pack from a manifest "
                                "that has it (--labels styles.csv)")
    positions = np.arange(len(pack)) if subset is None else np.asarray(subset, dtype=np.int64)
    first = [pack.labels[config.labels[0]][i] for i in positions]
    positions = positions[[v is not None for v in first]]
    classes, codes = _encode_labels(pack, config, positions)
    if len(classes[0]) < 2:
        raise TrainingError(f"{config.labels[0]}: {len(classes[0])} class with at least {config.min_count} photos; "
                            "fine-tuning needs two or more")
    keep = codes[:, 0] >= 0
    positions, codes = positions[keep], codes[keep]
    strata = [str(c) for c in codes[:, 0]]
    train_pos, val_pos = split_indices(len(positions), options.val_fraction, options.seed, strata)

    device, precision = setup_device(options)
    base = create_embedder(backbone, weights)
    if not hasattr(base, "data_config"):
        raise TrainingError(f"{backbone} has no network to fine-tune; choose a CNN such as resnet50 or timm:<name>")
    mean, std = list(base.data_config["mean"]), list(base.data_config["std"])
    feature_dim = base.info.dim
    net = FinetuneNet(base.model, feature_dim, config.dim, config.hidden, [len(c) for c in classes])
    opened = set_trainable(net.backbone, config.unfreeze)
    freeze_bn = config.freeze_bn if config.freeze_bn is not None else weights != RANDOM_WEIGHTS
    if weights == "random" and config.unfreeze != "all":
        log.warning("a randomly initialised backbone is frozen except %s; pass --unfreeze all to train it",
                    opened or "nothing")
    net = net.to(device)
    colour = config.colour_jitter if config.colour_jitter is not None else not any(
        COLOUR_LABEL.search(c) for c in config.labels)

    train_idx, val_idx = positions[train_pos], positions[val_pos]
    train_codes, val_codes = codes[train_pos], codes[val_pos]
    before = _retrieval(FinetuneEmbedding(net, "backbone"), pack, train_idx, val_idx, train_codes, val_codes,
                        device, mean, std, k)

    head_params = [p for n, p in net.named_parameters() if not n.startswith("backbone.")]
    back_params = [p for p in net.backbone.parameters() if p.requires_grad]
    groups = [{"params": head_params, "scale": 1.0}]
    if back_params:
        groups.append({"params": back_params, "scale": 1.0 if config.unfreeze == "all" else config.backbone_lr})
    optimizer = torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay)
    history, stopper = History(), EarlyStopping(options.patience)
    checkpoints = Checkpointer(out, options.checkpoint_seconds)
    start = 0
    if options.resume:
        start, _ = load_checkpoint(out, net, optimizer, history, stopper)
    pairs = np.asarray(config.pairs, dtype=np.int64).reshape(-1, 2) if config.pairs else None
    if pairs is not None and (pairs.min() < 0 or pairs.max() >= len(pack)):
        raise TrainingError(f"pairs: pack positions must lie in [0, {len(pack)})")
    generator = torch.Generator()
    n_batches = max(1, int(np.ceil(len(train_idx) / options.batch_size)))
    frozen = not back_params
    for epoch in range(start, options.epochs):
        generator.manual_seed(options.seed + epoch + 1)
        rng = np.random.default_rng(options.seed + epoch + 1)
        t0 = time.perf_counter()
        lr = set_epoch_lr(optimizer, options, epoch)
        _train_mode(net, opened, config.unfreeze == "all", freeze_bn)
        total = 0.0
        for batch in balanced_batches(train_codes[:, 0], options.batch_size, config.per_class, n_batches, rng):
            x = augment(to_float(pack.batch(train_idx[batch]), device), generator, flip=True, crop=0.8,
                        colour=0.3 if colour else 0.0)
            x = normalise(x, mean, std)
            y = torch.as_tensor(train_codes[batch], device=device)
            with precision.autocast():
                if frozen:
                    with torch.no_grad():
                        feats = net.backbone(x).flatten(1)
                    z = net.head(feats.float())
                    logits = [clf(z) for clf in net.classifiers]
                else:
                    z, logits = net(x)
            loss = _loss(z, logits, y, config)
            if pairs is not None:
                loss = loss + config.pair_weight * _pair_loss(net, pack, pairs, rng, options.batch_size, frozen,
                                                              device, precision, mean, std, config.temperature)
            precision.step(loss, optimizer)
            total += loss.item()
        val_loss = _validation_loss(net, pack, val_idx, val_codes, device, precision, mean, std, config,
                                    options.batch_size)
        if close_epoch(epoch, history, total / n_batches, lr, val_loss, t0, net, optimizer, stopper, checkpoints,
                       on_epoch):
            break
    if stopper.best_state is not None:
        net.load_state_dict(stopper.best_state)
    after = _retrieval(FinetuneEmbedding(net, embedding), pack, train_idx, val_idx, train_codes, val_codes, device,
                       mean, std, k)
    accuracy = dict(zip(config.labels, _accuracy(net, pack, val_idx, val_codes, device, mean, std,
                                                 options.batch_size), strict=False))
    metrics = {"k": k, "label": config.labels[0], "before": before, "after": after, "val_accuracy": accuracy}
    arch = {"backbone": backbone, "timm_name": base.info.timm_name, "pool": base.info.pool,
            "model_args": dict(getattr(base, "model_args", {})),  # e.g. pad_type of a timm model folder
            "feature_dim": feature_dim, "dim": config.dim, "hidden": config.hidden,
            "n_classes": [len(c) for c in classes], "columns": list(config.labels)}
    meta = ModelFile(
        kind="finetune", arch=arch,
        preprocess={"resize": "letterbox", "size": pack.size, "fill": FILL, "mean": mean, "std": std},
        embedding={"mode": embedding, "modes": {"head": config.dim, "backbone": feature_dim}},
        classes={col: names for col, names in zip(config.labels, classes, strict=True)},
        training={
            "data": str(pack.path), "images": len(positions), "train": len(train_idx), "validation": len(val_idx),
            "backbone_weights": base.info.weights, "unfrozen": opened, "colour_jitter": colour,
            "config": {**config.__dict__, "labels": list(config.labels), "pairs": len(config.pairs)},
            "options": options.__dict__,
            "history": history.to_dict(), "device": str(device), "precision": precision.name, "metrics": metrics,
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    save_model(out, net.state_dict(), meta)
    checkpoint_path(out).unlink(missing_ok=True)
    written = []
    if figures is not None:
        from ..figures.plots import save
        from ..figures.training import loss_figure

        written.append(save(loss_figure(history.train_loss, history.val_loss, "fine-tuning loss (CE + SupCon)",
                                        history.best_epoch), Path(figures) / "loss.png"))
    return TrainResult(model_path=Path(out), history=history, figures=written, metrics=metrics,
                       device=str(device), precision=precision.name)


def _encode_labels(pack: Pack, config: FinetuneConfig, positions: np.ndarray) -> tuple[list[list[str]], np.ndarray]:
    """Class names per column (classes with fewer than ``min_count`` photos dropped) and codes (-1: none)."""
    classes, codes = [], np.full((len(positions), len(config.labels)), -1, dtype=np.int64)
    for j, column in enumerate(config.labels):
        values = [pack.labels[column][i] for i in positions]
        counts = class_counts(values)
        names = sorted(c for c, n in counts.items() if n >= config.min_count)
        dropped = len(counts) - len(names)
        if dropped:
            log.info("%s: %d classes with fewer than %d photos are not learned", column, dropped, config.min_count)
        code_of = {c: i for i, c in enumerate(names)}
        codes[:, j] = [code_of.get(v, -1) if v is not None else -1 for v in values]
        classes.append(names)
    return classes, codes


def _pair_loss(net, pack: Pack, pairs: np.ndarray, rng: np.random.Generator, batch_size: int, frozen: bool,
               device, precision, mean, std, temperature: float) -> torch.Tensor:
    """``pair_contrastive`` on up to ``batch_size // 2`` pairs drawn at random (no augmentation)."""
    chosen = pairs[rng.choice(len(pairs), size=min(len(pairs), max(2, batch_size // 2)), replace=False)]
    x = normalise(to_float(pack.batch(chosen.reshape(-1)), device), mean, std)
    with precision.autocast():
        if frozen:
            with torch.no_grad():
                feats = net.backbone(x).flatten(1)
            z = net.head(feats.float())
        else:
            z, _ = net(x)
    z = z.reshape(len(chosen), 2, -1)
    return pair_contrastive(z[:, 0], z[:, 1], temperature)


def _loss(z: torch.Tensor, logits: list[torch.Tensor], y: torch.Tensor, config: FinetuneConfig) -> torch.Tensor:
    loss = z.float().sum() * 0.0
    for j, lg in enumerate(logits):
        if (y[:, j] >= 0).any():
            loss = loss + F.cross_entropy(lg.float(), y[:, j], ignore_index=-1)
    if config.metric_weight:  # the first column alone shapes the neighbourhoods; the others only get heads
        loss = loss + config.metric_weight * supervised_contrastive(z, y[:, 0], config.temperature)
    return loss


@torch.no_grad()
def _validation_loss(net, pack, idx, codes, device, precision, mean, std, config, batch_size) -> float | None:
    """Held-out loss on whole held-out batches (contrastive positives come from the whole split)."""
    if len(idx) == 0:
        return None
    net.eval()
    zs, logits = [], []
    for b in range(0, len(idx), batch_size):
        x = to_float(pack.batch(idx[b:b + batch_size]), device, mean, std)
        with precision.autocast():
            z, lg = net(x)
        zs.append(z.float())
        logits.append([t.float() for t in lg])
    z = torch.cat(zs)
    lg = [torch.cat([part[j] for part in logits]) for j in range(len(logits[0]))]
    return float(_loss(z, lg, torch.as_tensor(codes, device=device), config))


@torch.no_grad()
def _accuracy(net, pack, idx, codes, device, mean, std, batch_size) -> list[float]:
    """Held-out top-1 accuracy of each classifier head."""
    if len(idx) == 0:
        return []
    net.eval()
    preds = []
    for b in range(0, len(idx), batch_size):
        _, lg = net(to_float(pack.batch(idx[b:b + batch_size]), device, mean, std))
        preds.append(torch.stack([t.argmax(dim=1) for t in lg], dim=1).cpu())
    pred = torch.cat(preds).numpy()
    out = []
    for j in range(codes.shape[1]):
        has = codes[:, j] >= 0
        out.append(float((pred[has, j] == codes[has, j]).mean()) if has.any() else float("nan"))
    return out


def _retrieval(model: nn.Module, pack: Pack, train_idx, val_idx, train_codes, val_codes, device, mean, std,
               k: int) -> dict[str, float]:
    """precision@k and mAP@k of held-out photos searched among the training photos (first label column)."""
    from ..analysis.evaluate import evaluate_vectors
    from .autoencoder import encode_pack

    if len(val_idx) == 0:
        return {}
    base = F.normalize(torch.from_numpy(encode_pack(model, pack, train_idx, device, mean=mean, std=std)), dim=1)
    queries = F.normalize(torch.from_numpy(encode_pack(model, pack, val_idx, device, mean=mean, std=std)), dim=1)
    result = evaluate_vectors(base.numpy(), [str(c) for c in train_codes[:, 0]], k, queries=queries.numpy(),
                              query_labels=[str(c) for c in val_codes[:, 0]], bootstrap=0)
    return {"precision": result.metrics["precision"].value, "map": result.metrics["map"].value,
            "queries": result.retrieval_queries}
