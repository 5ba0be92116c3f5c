"""LiT: a text tower trained against a locked image model, on a catalog's own vectors (``train clip --lock-image
--image-model NAME``).

Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning": the image model stays frozen and only
the text tower (with its projection and the temperature) learns, so the image vectors never change. Here they are
exactly the vectors a catalog stores (L2-normalised outputs of the catalog's image model, decoded and resized as
``index`` does): read from an existing catalog, or embedded once through a temporary catalog of the source.
Training then runs on (vector, text) pairs alone, fast on a CPU. The loss is CLIP's symmetric contrastive loss
(``train.clip.contrastive_loss``) with equal captions as shared positives. A held-out split (by item, i.e. by
product; stratified by ``stratify`` when given) decides early stopping and gives the figures: text-to-image and
image-to-text recall@1/5/10 on the held-out photos and their first-column texts, and with ``type_label`` the
precision@10 of each type's name as a query among the held-out photos, each with its chance level.

The tower is ``models.texttower``'s bag of n-grams (words, word pairs, character 3/4-grams): trained here in
PyTorch, run at search time in NumPy. The ``.lkm`` written (kind ``text-tower``) records the image model it was
trained against; ``lookalike text add`` attaches it to a catalog of that model.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..catalog.catalog import Catalog
from ..core.config import EmbedderInfo, EncodeOptions
from ..core.errors import TrainingError
from ..models.modelfile import ModelFile, save_model
from ..models.texttower import KIND, NgramTokenizer, TextTower, Vocabulary
from .clip import RECALL_KS, contrastive_loss
from .common import EarlyStopping, History, TrainOptions, close_epoch, set_epoch_lr, text_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LitConfig:
    """What the text tower learns from, and its size."""

    text_columns: tuple[str, ...] = ("productDisplayName",)
    stratify: str | None = None  # label column the held-out split keeps in proportion
    type_label: str | None = None  # label whose values, as words, are scored as queries on the held-out photos
    type_template: str = "{}"
    width: int = 256  # n-gram embedding size
    hidden: int = 512  # GELU layer before the projection (0: none, a linear projection)
    char_ngrams: tuple[int, ...] = (3, 4)
    word_pairs: bool = True
    min_count: int = 1  # n-grams seen fewer times in the training texts are left out of the vocabulary


@dataclass
class LitData:
    """The locked image tower's outputs and the texts to learn: ``vectors`` N x D float32 (unit rows, the
    catalog's own), ``captions`` each item's non-empty texts, ``labels`` every label column's values."""

    image: EmbedderInfo
    ids: list[str]
    vectors: np.ndarray
    labels: dict[str, list[str | None]]
    source: str

    def captions(self, columns: Sequence[str]) -> list[list[str]]:
        """Each item's non-empty texts from ``columns``, in column order.

        Raises:
            TrainingError: a column no item has.
        """
        for column in columns:
            if column not in self.labels:
                have = ", ".join(sorted(self.labels)) or "none"
                raise TrainingError(f"{self.source}: no text column {column!r} (columns: {have}); train from a "
                                    "manifest that has it")
        return [[str(self.labels[c][i]).strip() for c in columns
                 if self.labels[c][i] is not None and str(self.labels[c][i]).strip()] for i in range(len(self.ids))]


def catalog_data(catalog: Catalog) -> LitData:
    """A catalog's stored photo vectors, each with its product's labels, exactly as search compares words with
    them (the index holds photos; nothing re-embedded). A photo is one row however many products show it, with
    the labels of the first of them (lowest key); a photo of no product has none. Ids are photo ids."""
    keys, vectors = catalog.store.vectors(catalog.config.embedder.dim)
    id_of = {key: item_id for key, item_id, _, _ in catalog.store.ok_items()}
    owners = catalog.products.products_of
    owner = {int(k): owners[int(k)][0] for k in keys.tolist() if owners.get(int(k))}
    by_product = catalog.store.labels_for(sorted(set(owner.values())))  # keyed by product key
    by_key = {k: by_product.get(product, {}) for k, product in owner.items()}
    names = sorted({n for labels in by_key.values() for n in labels})
    labels = {n: [by_key.get(int(k), {}).get(n) for k in keys] for n in names}
    return LitData(image=catalog.config.embedder, ids=[id_of[int(k)] for k in keys], vectors=vectors.astype(np.float32),
                   labels=labels, source=str(catalog.name))


def source_data(source: str | Path, images: str | Path | None, model: str, weights: str | None = None,
                options: EncodeOptions | None = None) -> LitData:
    """Embed a folder or manifest once with ``model`` through a temporary catalog, so the vectors are those
    ``lookalike index`` would store (same decoding, resizing, runtime and precision rules).

    Raises:
        SourceError: the source cannot be read. UnknownModelError, ModelUnavailableError: see ``create_embedder``.
        TrainingError: no photo could be embedded.
    """
    with tempfile.TemporaryDirectory(prefix="lookalike-lit-") as tmp:
        catalog = Catalog.create(Path(tmp) / "lit.lk", model, weights)
        try:
            report = catalog.add(source, images, options=options)
            log.info("embedded the photos once: %s", report.summary())
            data = catalog_data(catalog)
        finally:
            catalog.close()
    if len(data.ids) == 0:
        raise TrainingError(f"{source}: no photo could be embedded; check the source with `lookalike index`")
    data.source = str(source)
    return data


class BagTower(torch.nn.Module):
    """The PyTorch twin of ``models.texttower.TextTower``: n-gram bags -> unit vectors of ``dim``."""

    def __init__(self, vocabulary: int, width: int, hidden: int, dim: int):
        super().__init__()
        self.embedding = torch.nn.EmbeddingBag(vocabulary, width, mode="mean", padding_idx=0)
        torch.nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.hidden = torch.nn.Linear(width, hidden) if hidden else None
        self.act = torch.nn.GELU(approximate="tanh")
        self.proj = torch.nn.Linear(hidden or width, dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def forward(self, flat: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``flat`` int64 T (every text's n-gram rows), ``offsets`` int64 N (where each text starts) -> N x dim
        float32 unit vectors."""
        x = self.embedding(flat, offsets)
        if self.hidden is not None:
            x = self.act(self.hidden(x))
        return F.normalize(self.proj(x), dim=1)


def train_text_tower(
    data: LitData,
    out: str | Path,
    *,
    config: LitConfig | None = None,
    options: TrainOptions | None = None,
    on_epoch: Callable[[int, History], None] | None = None,
):
    """Train a text tower against ``data``'s locked image vectors and write ``out`` (a ``text-tower`` .lkm).

    Returns a ``TrainResult``; its ``metrics["after"]`` holds the held-out figures with their chance levels.

    Raises:
        TrainingError: a text column is missing, fewer than 4 items with text, or a bad option.
    """
    from .autoencoder import TrainResult

    config = config or LitConfig()
    options = options or TrainOptions(epochs=300, lr=2e-3, batch_size=128, patience=30)
    out = Path(out)
    captions = data.captions(config.text_columns) if config.text_columns else []
    train_idx, val_idx = text_split(data.source, captions, data.labels, config.text_columns, config.stratify,
                                    config.type_label, options)

    torch.manual_seed(options.seed)
    tokenizer = NgramTokenizer(tuple(config.char_ngrams), config.word_pairs)
    vocabulary = Vocabulary.build([t for i in train_idx for t in captions[i]], tokenizer, config.min_count)
    dim = int(data.vectors.shape[1])
    tower = BagTower(len(vocabulary), config.width, config.hidden, dim)
    vectors = torch.from_numpy(np.ascontiguousarray(data.vectors, dtype=np.float32))
    bag_cache: dict[str, list[int]] = {}

    def encode(texts: list[str]) -> torch.Tensor:
        rows = [bag_cache.setdefault(t, vocabulary.ids(t)) for t in texts]
        offsets = torch.tensor(np.cumsum([0] + [len(r) for r in rows[:-1]]), dtype=torch.long)
        return tower(torch.tensor([i for r in rows for i in r], dtype=torch.long), offsets)

    def loss_of(idx: np.ndarray, texts: list[str]) -> torch.Tensor:
        codes = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        c = torch.tensor([codes[t] for t in texts])
        return contrastive_loss(vectors[idx], encode(texts), c[:, None] == c[None, :], tower.logit_scale.exp(), None)

    first_texts = [c[0] if c else "" for c in captions]
    optimizer = torch.optim.AdamW(tower.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    history, stopper = History(), EarlyStopping(options.patience)
    batch = min(options.batch_size, len(train_idx))
    checkpoints = _NoCheckpoints()
    for epoch in range(options.epochs):
        rng = np.random.default_rng(options.seed + epoch + 1)
        t0 = time.perf_counter()
        lr = set_epoch_lr(optimizer, options, epoch)
        tower.train()
        order = rng.permutation(train_idx)
        total, steps = 0.0, 0
        for b in range(0, len(order) - batch + 1, batch):  # whole batches: a contrastive loss needs company
            idx = order[b:b + batch]
            loss = loss_of(idx, [captions[i][rng.integers(len(captions[i]))] for i in idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                tower.logit_scale.clamp_(0, 4.6052)  # at most 100, as CLIP keeps it
            total += loss.item()
            steps += 1
        val_loss = None
        if len(val_idx) >= 2:  # every column's texts of the held-out photos, in fixed batches, so epochs compare
            tower.eval()
            with torch.no_grad():
                parts = [(p, [captions[i][min(c, len(captions[i]) - 1)] for i in p])
                         for c in range(len(config.text_columns)) for p in
                         (val_idx[b:b + batch] for b in range(0, len(val_idx), batch)) if len(p) >= 2]
                val_loss = float(np.average([float(loss_of(p, texts)) for p, texts in parts],
                                            weights=[len(p) for p, _ in parts]))
        if close_epoch(epoch, history, total / max(1, steps), lr, val_loss, t0, tower, optimizer, stopper, checkpoints,
                       on_epoch):
            break
    if stopper.best_state is not None:
        tower.load_state_dict(stopper.best_state)
    tower.eval()
    meta = ModelFile(
        kind=KIND,
        arch={"image_model": data.image.__dict__, "tokenizer": tokenizer.to_dict(), "vocabulary": vocabulary.terms,
              "width": config.width, "hidden": config.hidden, "dim": dim, "method": "LiT (Zhai et al. 2022)"},
        preprocess={},
        embedding={"mode": "text", "modes": {"text": dim}},
        training={
            "data": data.source, "images": len(train_idx) + len(val_idx), "train": len(train_idx),
            "validation": len(val_idx),
            "config": {**config.__dict__, "text_columns": list(config.text_columns)},
            "options": options.__dict__, "history": history.to_dict(), "device": "cpu", "precision": "fp32",
            "loss": "clip",
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    text_tower = TextTower(meta, {k: v.detach().numpy() for k, v in tower.state_dict().items()})
    types = data.labels[config.type_label] if config.type_label else None
    after = held_out_metrics(text_tower.encode, data.vectors[val_idx], [first_texts[i] for i in val_idx],
                             [types[i] for i in val_idx] if types else None, config.type_template)
    metrics = {"after": after, "with_text": len(train_idx) + len(val_idx), "held_out": len(val_idx),
               "texts": list(config.text_columns), "type_label": config.type_label}
    meta.training["metrics"] = metrics
    save_model(out, tower.state_dict(), meta)
    return TrainResult(model_path=out, history=history, metrics=metrics, device="cpu", precision="fp32")


def held_out_metrics(encode_text: Callable[[list[str]], np.ndarray], vectors: np.ndarray, texts: Sequence[str],
                     types: Sequence[str | None] | None = None, template: str = "{}") -> dict:
    """Text-to-image and image-to-text recall@1/5/10 of photos (``vectors`` N x D unit rows) and their texts,
    and with ``types`` the precision@10 of each type's name (through ``template``) as a query among them; each
    with its chance level. The keys are ``train clip``'s, plus ``max_type_precision@10`` (the best any ranking can
    score: a type with 3 photos fills 3 of 10 places), ``type_reachable_precision@10`` (a type's right answers in
    the first 10 over the most it could have there, min(10, its photos): 1.0 for a perfect ranking) and
    ``type_r_precision@10`` (right answers among a type's first min(10, its photos) places: stricter, a type of
    one photo must rank it first)."""
    if len(vectors) == 0:
        return {}
    unique = list(dict.fromkeys(texts))
    of = np.array([unique.index(t) for t in texts])
    sims = encode_text(unique) @ vectors.T  # unique texts x photos
    out: dict = {"queries": len(unique), "photos": len(vectors)}
    for k in RECALL_KS:
        top_images = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top_texts = np.argsort(-sims.T, axis=1, kind="stable")[:, :k]
        out[f"t2i_recall@{k}"] = float(np.mean([np.isin(np.flatnonzero(of == t), top_images[t]).mean()
                                                for t in range(len(unique))]))
        out[f"i2t_recall@{k}"] = float(np.mean([of[i] in top_texts[i] for i in range(len(vectors))]))
        out[f"chance_t2i_recall@{k}"] = min(1.0, k / len(vectors))
        out[f"chance_i2t_recall@{k}"] = min(1.0, k / len(unique))
    if types is not None:
        names = sorted({t for t in types if t is not None})
        if names:
            k = min(10, len(vectors))
            words = encode_text([template.replace("{}", n) for n in names])
            top = np.argsort(-(words @ vectors.T), axis=1, kind="stable")[:, :k]
            labels = np.array(types, dtype=object)
            counts = np.array([(labels == n).sum() for n in names])
            cut = np.minimum(counts, k)  # a type with 3 held-out photos can fill 3 of the 10 places at most
            hits = [(labels[top[j]] == n) for j, n in enumerate(names)]
            out["type_precision@10"] = float(np.mean([h.mean() for h in hits]))
            out["max_type_precision@10"] = float(np.mean(cut / k))
            out["type_reachable_precision@10"] = float(np.mean([h.sum() / c for h, c in zip(hits, cut, strict=True)]))
            out["type_r_precision@10"] = float(np.mean([h[:c].mean() for h, c in zip(hits, cut, strict=True)]))
            out["chance_type_precision@10"] = float(np.mean(counts / len(labels)))
            out["chance_type_reachable_precision@10"] = float(np.mean(k * counts / len(labels) / cut))
            out["chance_type_r_precision@10"] = out["chance_type_precision@10"]
            out["types"] = len(names)
    return out


class _NoCheckpoints:
    """Epochs take milliseconds: a run is cheaper to repeat than to checkpoint."""

    def maybe(self, *args) -> bool:
        return False
