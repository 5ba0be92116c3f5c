"""Contrastive fine-tuning of a text+image model on the shop's own (photo, text) pairs: ``train clip``.

Each packed photo is paired with the texts of one or more label columns (titles, article types, colours); an
epoch draws one of an item's texts at random for each of its photos. The loss is the model's own: CLIP's
symmetric cross-entropy over the batch's image-text similarities (times the learned temperature), or SigLIP's
pairwise sigmoid loss (with its learned bias) for SigLIP models. Items that share a text are all positives of
that text (a batch of article types holds many "Tshirts"), so equal captions are never pushed apart.

A held-out split (stratified by ``stratify`` when given) decides early stopping and gives the figures printed
before and after: text-to-image and image-to-text recall@1/5/10 on the held-out photos and their first-column
texts, and with ``type_label`` the precision@10 of each type's name as a query among the held-out photos,
each with its chance level. The result is a ``.lkm`` holding every weight and the open_clip config, tokenizer
and preprocessing (photos letterboxed, as in the pack): a text+image embedder for index, search --text, tag
and serve. ``base`` is a registry text+image model, or ``tiny`` (``models.openclip.TINY_CONFIG``, random).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import TrainingError
from ..models.letterbox import FILL
from ..models.modelfile import ModelFile, save_model
from ..models.openclip import OpenClipEmbedder
from .common import (
    Checkpointer,
    EarlyStopping,
    History,
    TrainOptions,
    augment,
    checkpoint_path,
    close_epoch,
    load_checkpoint,
    normalise,
    set_epoch_lr,
    setup_device,
    text_split,
    to_float,
)
from .pack import Pack

log = logging.getLogger(__name__)

TINY = "tiny"
RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class ClipTrainConfig:
    """What the model learns from."""

    text_columns: tuple[str, ...] = ("productDisplayName",)
    stratify: str | None = None  # label column the held-out split keeps in proportion
    type_label: str | None = None  # label whose values, as words, are scored as queries before and after
    type_template: str = "{}"
    lock_image: bool = False  # train the text tower (and temperature) only, as LiT does
    colour_jitter: bool = False  # titles name colours: jitter would teach the model to ignore them


def base_model(base: str, weights: str | None = None) -> OpenClipEmbedder:
    """The model to start from: ``tiny`` (seeded random ``TINY_CONFIG``) or a registry text+image model.

    Raises:
        TrainingError: the model has no text tower.
        UnknownModelError, ModelUnavailableError: see ``create_embedder``.
    """
    from ..models.openclip import build_clip, embedder_from, tiny_recipe

    if base == TINY:
        recipe = tiny_recipe()
        torch.manual_seed(0)
        return embedder_from(build_clip(recipe.model_cfg), TINY, f"open_clip:{TINY}", "random:0", recipe)
    from ..models.registry import create_embedder, text_models

    embedder = create_embedder(base, weights)
    if not getattr(embedder, "has_text", False):
        raise TrainingError(f"--base {base} embeds photos only; train clip needs a text+image model: "
                            f"{', '.join(text_models())}, or tiny (small, random, no download)")
    return embedder


def image_size(embedder: OpenClipEmbedder) -> int:
    """The square side the model's image tower takes: what the training pack should hold."""
    return int(embedder.data_config["input_size"][-1])


def captions_of(pack: Pack, columns: Sequence[str]) -> list[list[str]]:
    """Each packed photo's non-empty texts from ``columns``.

    Raises:
        TrainingError: a column the pack does not have.
    """
    for column in columns:
        if column not in pack.labels:
            have = ", ".join(pack.labels) or "none"
            raise TrainingError(f"{pack.path}: no text column {column!r} (columns: {have}); pack from a manifest "
                                "that has it")
    return [[str(pack.labels[c][i]).strip() for c in columns
             if pack.labels[c][i] is not None and str(pack.labels[c][i]).strip()] for i in range(len(pack))]


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, same: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """The model's own loss on unit vectors; ``same[i, j]``: photo i and text j carry the same caption.

    CLIP: cross-entropy both ways with targets spread over the equal captions. SigLIP: the sigmoid loss with
    +1 for equal captions and -1 otherwise, averaged per photo as the SigLIP paper does.
    """
    logits = scale * img @ txt.T
    if bias is not None:
        signs = same.float() * 2 - 1
        return -F.logsigmoid(signs * (logits + bias)).sum() / len(img)
    targets = same.float() / same.float().sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T / targets.T.sum(
        dim=1, keepdim=True)))


def train_clip(
    pack: Pack | str | Path,
    out: str | Path,
    *,
    base: str | OpenClipEmbedder = TINY,
    weights: str | None = None,
    config: ClipTrainConfig | None = None,
    options: TrainOptions | None = None,
    figures: str | Path | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
):
    """Fine-tune ``base`` on the pack's photos and texts and write ``out`` (.lkm, a text+image embedder).

    Raises:
        TrainingError: a text column is missing, too few photos with text, or a bad option.
        UnknownModelError, ModelUnavailableError: the base model or its weights cannot be had.
    """
    from .autoencoder import TrainResult

    config = config or ClipTrainConfig()
    options = options or TrainOptions(epochs=10, lr=5e-4, batch_size=64)
    out = Path(out)
    pack = pack if isinstance(pack, Pack) else Pack.open(pack)
    captions = captions_of(pack, config.text_columns) if config.text_columns else []
    train_idx, val_idx = text_split(pack.path, captions, pack.labels, config.text_columns, config.stratify,
                                    config.type_label, options)

    device, precision = setup_device(options)
    embedder = base if isinstance(base, OpenClipEmbedder) else base_model(base, weights)
    base_name = embedder.info.name
    clip = embedder.clip.to(device)
    size = image_size(embedder)
    mean, std = list(embedder.data_config["mean"]), list(embedder.data_config["std"])
    tokenize = embedder.tokenize
    has_bias = getattr(clip, "logit_bias", None) is not None
    for p in clip.visual.parameters():
        p.requires_grad_(not config.lock_image)

    def images(idx: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float(pack.batch(idx), device)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if generator is not None:
            x = augment(x, generator, flip=True, crop=0.9, colour=0.2 if config.colour_jitter else 0.0)
        return normalise(x, mean, std)

    first_texts = [c[0] if c else "" for c in captions]  # the held-out figures use the first column
    before = _held_out_metrics(clip, images, tokenize, val_idx, first_texts, pack, config, device)

    params = [p for p in clip.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    history, stopper = History(), EarlyStopping(options.patience)
    checkpoints = Checkpointer(out, options.checkpoint_seconds)
    start = 0
    if options.resume:
        start, _ = load_checkpoint(out, clip, optimizer, history, stopper)
    generator = torch.Generator()
    batch = min(options.batch_size, len(train_idx))
    for epoch in range(start, options.epochs):
        generator.manual_seed(options.seed + epoch + 1)
        rng = np.random.default_rng(options.seed + epoch + 1)
        t0 = time.perf_counter()
        lr = set_epoch_lr(optimizer, options, epoch)
        clip.train()
        if config.lock_image:
            clip.visual.eval()
        order = rng.permutation(train_idx)
        total, steps = 0.0, 0
        for b in range(0, len(order) - batch + 1, batch):  # whole batches: contrastive losses need company
            idx = order[b:b + batch]
            texts = [captions[i][rng.integers(len(captions[i]))] for i in idx]
            loss = _step_loss(clip, images(idx, generator), texts, tokenize, device, precision, has_bias)
            precision.step(loss, optimizer)
            with torch.no_grad():
                clip.logit_scale.clamp_(0, 4.6052)  # at most 100, as CLIP keeps it
            total += loss.item()
            steps += 1
        val_loss = _validation_loss(clip, images, val_idx, first_texts, tokenize, device, precision, has_bias, batch)
        if close_epoch(epoch, history, total / max(1, steps), lr, val_loss, t0, clip, optimizer, stopper, checkpoints,
                       on_epoch):
            break
    if stopper.best_state is not None:
        clip.load_state_dict(stopper.best_state)
    after = _held_out_metrics(clip, images, tokenize, val_idx, first_texts, pack, config, device)
    metrics = {"before": before, "after": after, "held_out": len(val_idx), "texts": list(config.text_columns),
               "type_label": config.type_label}
    recipe = embedder.recipe
    clip_pre = {k: v for k, v in recipe.preprocess.items() if k not in ("mean", "std", "size")}
    meta = ModelFile(
        kind="clip",
        arch={"base": base_name, "model_cfg": recipe.model_cfg, "tokenizer": recipe.tokenizer,
              "clip_preprocess": clip_pre},
        preprocess={"resize": "letterbox", "size": size, "fill": FILL, "mean": mean, "std": std},
        embedding={"mode": "clip", "modes": {"clip": int(recipe.model_cfg["embed_dim"])}},
        training={
            "data": str(pack.path), "images": len(train_idx) + len(val_idx), "train": len(train_idx),
            "validation": len(val_idx),
            "base": base_name, "base_weights": embedder.info.weights, "config": {
                **config.__dict__, "text_columns": list(config.text_columns)},
            "options": options.__dict__, "history": history.to_dict(), "device": str(device),
            "precision": precision.name, "metrics": metrics, "loss": "siglip" if has_bias else "clip",
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    save_model(out, clip.state_dict(), meta)
    checkpoint_path(out).unlink(missing_ok=True)
    written = []
    if figures is not None:
        from ..figures.plots import save
        from ..figures.training import loss_figure

        written.append(save(loss_figure(history.train_loss, history.val_loss, "train clip: contrastive loss",
                                        history.best_epoch), Path(figures) / "loss.png"))
    return TrainResult(model_path=out, history=history, figures=written, metrics=metrics, device=str(device),
                       precision=precision.name)


def _same(texts: Sequence[str], device: torch.device) -> torch.Tensor:
    codes = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    c = torch.tensor([codes[t] for t in texts], device=device)
    return c[:, None] == c[None, :]


def _step_loss(clip, x: torch.Tensor, texts: list[str], tokenize, device, precision, has_bias: bool) -> torch.Tensor:
    tokens = tokenize(texts).to(device)
    with precision.autocast():
        img = clip.encode_image(x, normalize=True)
        txt = clip.encode_text(tokens, normalize=True)
    bias = clip.logit_bias if has_bias else None
    return contrastive_loss(img.float(), txt.float(), _same(texts, device), clip.logit_scale.exp(), bias)


@torch.no_grad()
def _validation_loss(clip, images, idx: np.ndarray, texts: list[str], tokenize, device, precision, has_bias: bool,
                     batch: int) -> float | None:
    """The held-out loss in fixed batches (the first text of each photo), so epochs compare."""
    if len(idx) < 2:
        return None
    clip.eval()
    losses, weights = [], []
    for b in range(0, len(idx), batch):
        part = idx[b:b + batch]
        if len(part) < 2:
            continue
        losses.append(float(_step_loss(clip, images(part), [texts[i] for i in part], tokenize, device, precision,
                                       has_bias)))
        weights.append(len(part))
    return float(np.average(losses, weights=weights)) if losses else None


@torch.no_grad()
def _encode(clip, images, tokenize, idx: np.ndarray, texts: list[str], device) -> tuple[np.ndarray, np.ndarray]:
    clip.eval()
    img = [clip.encode_image(images(idx[b:b + 128]), normalize=True).float().cpu() for b in range(0, len(idx), 128)]
    txt = [clip.encode_text(tokenize(texts[b:b + 256]).to(device), normalize=True).float().cpu()
           for b in range(0, len(texts), 256)]
    return (torch.cat(img).numpy() if img else np.zeros((0, 1), np.float32),
            torch.cat(txt).numpy() if txt else np.zeros((0, 1), np.float32))


def _held_out_metrics(clip, images, tokenize, val_idx: np.ndarray, first_texts: list[str], pack: Pack,
                      config: ClipTrainConfig, device) -> dict:
    """Recall@1/5/10 both ways on the held-out photos and their first texts, and per-type precision@10."""
    if len(val_idx) == 0:
        return {}
    texts = [first_texts[i] for i in val_idx]
    unique = list(dict.fromkeys(texts))
    img, txt = _encode(clip, images, tokenize, val_idx, unique, device)
    of = np.array([unique.index(t) for t in texts])
    sims = txt @ img.T  # unique texts x photos
    out: dict = {"queries": len(unique), "photos": len(val_idx)}
    for k in RECALL_KS:
        top_images = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        hits = [np.isin(np.flatnonzero(of == t), top_images[t]).mean() for t in range(len(unique))]
        top_texts = np.argsort(-sims.T, axis=1, kind="stable")[:, :k]
        out[f"t2i_recall@{k}"] = float(np.mean(hits))
        out[f"i2t_recall@{k}"] = float(np.mean([of[i] in top_texts[i] for i in range(len(val_idx))]))
        out[f"chance_t2i_recall@{k}"] = min(1.0, k / len(val_idx))
        out[f"chance_i2t_recall@{k}"] = min(1.0, k / len(unique))
    if config.type_label:
        types = [pack.labels[config.type_label][i] for i in val_idx]
        names = sorted({t for t in types if t is not None})
        if names:
            _, words = _encode(clip, images, tokenize, val_idx[:0], [config.type_template.replace("{}", n)
                                                                     for n in names], device)
            k = min(10, len(val_idx))
            top = np.argsort(-(words @ img.T), axis=1, kind="stable")[:, :k]
            labels = np.array(types, dtype=object)
            out["type_precision@10"] = float(np.mean([(labels[top[j]] == n).mean() for j, n in enumerate(names)]))
            out["chance_type_precision@10"] = float(np.mean([(labels == n).mean() for n in names]))
            out["types"] = len(names)
    return out
