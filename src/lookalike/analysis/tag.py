"""Zero-shot labels: every item scored against prompts made from class names by a text+image model.

``lookalike tag --column style --classes casual,formal`` embeds one prompt per class (``--template``, default
"a photo of {}"; several templates are averaged, as CLIP's zero-shot classifiers do), compares every stored
photo vector with them, and keeps the best class and its probability under the model's own logits (softmax
over the classes for CLIP, the sigmoid of that class's logit for SigLIP models, which were trained with one).

The predictions are stored apart from the manifest's labels (as clusters are): re-indexing a manifest never
erases them and a manifest column can never be overwritten by them. They are read like labels (``--where``,
facets, results) and marked as predicted, with their score, in the API and on the page.

``evaluate`` compares predictions with an existing label column: accuracy, macro F1 over the truth's classes,
the most frequent confusions, and chance (the majority class, and a uniform guess among the classes).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.errors import QueryError
from .catalog_data import product_vector_blocks

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of {}"
BLOCK = 8192  # stored vectors scored at once


@dataclass(frozen=True)
class TagEvaluation:
    """Predicted against true values of one label column, over the items that have both."""

    against: str
    items: int  # items with a true value
    accuracy: float
    macro_f1: float  # over the true classes
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support
    confusions: list[tuple[str, str, int]]  # (true, predicted, count), most frequent first
    chance_majority: float  # accuracy of always answering the most frequent true class
    chance_uniform: float  # expected accuracy of a uniform guess among the classes
    unreachable: int  # items whose true value is not among the classes (always wrong)

    def to_dict(self) -> dict:
        return {**asdict(self), "confusions": [{"true": t, "predicted": p, "count": n} for t, p, n in self.confusions]}


@dataclass
class TagReport:
    column: str
    classes: list[str]
    templates: list[str]
    items: int
    counts: dict[str, int]  # class -> items predicted
    mean_score: float
    seconds: float
    model: str
    rule: str = "softmax"  # how a score is made: softmax over the classes (CLIP) or a sigmoid (SigLIP)
    evaluation: TagEvaluation | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "evaluation"}
        out["evaluation"] = self.evaluation.to_dict() if self.evaluation else None
        return out


def prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class, class-major.

    Raises:
        QueryError: a template without ``{}``.
    """
    for t in templates:
        if "{}" not in t:
            raise QueryError(f"prompt template {t!r} has no {{}} where the class name goes, e.g. 'a photo of {{}}'")
    return [t.replace("{}", c) for c in classes for t in templates]


def class_vectors(encoder, classes: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One unit vector per class: its prompts' text vectors averaged, renormalised."""
    vectors = encoder.encode_text(prompts(classes, templates)).reshape(len(classes), len(templates), -1).mean(axis=1)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def scores(sims: np.ndarray, scale: float, bias: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Best class index and its probability per row of cosine similarities (N x C): softmax over the classes
    of ``scale * sims`` (CLIP), or the sigmoid of the best class's ``scale * sim + bias`` (SigLIP)."""
    best = np.argmax(sims, axis=1)
    logits = sims.astype(np.float64) * scale
    if bias is None:
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        score = probs[np.arange(len(best)), best]
    else:
        score = 1.0 / (1.0 + np.exp(-(logits[np.arange(len(best)), best] + bias)))
    return best, score


def tag_catalog(catalog, column: str, classes: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,),
                *, against: str | None = None, options=None) -> TagReport:
    """Predict ``column`` for every product of ``catalog`` (from its vector: the centroid of its photos') and
    store it per product, where filters and facets read it; with ``against``, evaluate it.

    Raises:
        NoTextModelError: the catalog's model has no text tower.
        QueryError: no classes, repeated classes, a template without ``{}``, ``column`` names a manifest label,
            or ``against`` names no label.
    """
    started = time.perf_counter()
    classes = [str(c).strip() for c in classes if str(c).strip()]
    templates = list(templates) or [DEFAULT_TEMPLATE]
    if len(classes) < 2:
        raise QueryError("give at least two classes, e.g. --classes casual,formal,sports")
    repeated = [c for c, n in Counter(classes).items() if n > 1]
    if repeated:
        raise QueryError(f"class {repeated[0]!r} is given twice")
    column = column.strip()
    if not column:
        raise QueryError("--column needs a name for the predicted label, e.g. style")
    store = catalog.store
    if column in store.manifest_label_names():
        raise QueryError(f"{column!r} is a label of the catalog's manifest; predictions are kept apart from it: "
                         f"choose another --column, e.g. {column}_predicted (and --evaluate against {column})")
    if against is not None and against not in store.label_names() and against != column:
        listing = ", ".join(store.label_names()) or "none"
        raise QueryError(f"unknown label {against!r} to evaluate against; labels in this catalog: {listing}")
    catalog.check_text(prompts(classes, templates))
    encoder = catalog.encoder(options)
    embedder = encoder.embedder
    targets = class_vectors(encoder, classes, templates)
    tower = encoder.text_tower  # a LiT tower: its own learned temperature, CLIP's softmax
    scale, bias = (tower.logit_scale, None) if tower is not None else (embedder.logit_scale, embedder.logit_bias)
    keys_out, best_out, score_out = [], [], []
    for keys, vectors in product_vector_blocks(catalog, BLOCK):  # per product: its photos' centroid
        best, score = scores(vectors.astype(np.float32) @ targets.T, scale, bias)
        keys_out.append(keys)
        best_out.append(best)
        score_out.append(score)
    keys = np.concatenate(keys_out) if keys_out else np.zeros(0, dtype=np.int64)
    best = np.concatenate(best_out) if best_out else np.zeros(0, dtype=np.int64)
    score = np.concatenate(score_out) if score_out else np.zeros(0)
    values = [classes[i] for i in best.tolist()]
    info = {"classes": classes, "templates": templates, "model": catalog.config.embedder.name,
            "weights": catalog.config.embedder.weights, "generation": store.generation(),
            "at": dt.datetime.now(dt.timezone.utc).isoformat(), "rule": "sigmoid" if bias is not None else "softmax"}
    store.set_predicted(column, keys, values, score, info)
    catalog.forget_labels()
    counts = Counter(values)
    report = TagReport(column=column, classes=classes, templates=templates, items=len(values),
                       counts={c: counts.get(c, 0) for c in classes}, mean_score=float(score.mean()) if len(score)
                       else float("nan"), seconds=0.0, model=catalog.config.embedder.name, rule=str(info["rule"]))
    if against is not None:
        truth = dict(store.label_values(against))
        report.evaluation = evaluate_predictions(
            [truth.get(k) for k in keys.tolist()], values, classes, against)
    report.seconds = time.perf_counter() - started
    return report


def evaluate_predictions(truth: Sequence[str | None], predicted: Sequence[str], classes: Sequence[str],
                         against: str) -> TagEvaluation:
    """Accuracy, macro F1 (over the true classes), per-class scores and the top confusions.

    Raises:
        QueryError: no item has a true value.
    """
    pairs = [(t, p) for t, p in zip(truth, predicted, strict=True) if t is not None]
    if not pairs:
        raise QueryError(f"no tagged item has a value of {against!r} to compare with")
    t = np.array([a for a, _ in pairs], dtype=object)
    p = np.array([b for _, b in pairs], dtype=object)
    true_classes = sorted(set(t.tolist()))
    per_class = {}
    for c in true_classes:
        tp = int(((t == c) & (p == c)).sum())
        support = int((t == c).sum())
        predicted_c = int((p == c).sum())
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    confusions = Counter((a, b) for a, b in pairs if a != b).most_common(10)
    frequency = Counter(t.tolist())
    return TagEvaluation(
        against=against, items=len(pairs), accuracy=float((t == p).mean()),
        macro_f1=float(np.mean([s["f1"] for s in per_class.values()])), per_class=per_class,
        confusions=[(a, b, n) for (a, b), n in confusions],
        chance_majority=frequency.most_common(1)[0][1] / len(pairs),
        chance_uniform=float(np.mean([1.0 / len(classes) if a in set(classes) else 0.0 for a in t.tolist()])),
        unreachable=int(sum(1 for a in t.tolist() if a not in set(classes))),
    )
