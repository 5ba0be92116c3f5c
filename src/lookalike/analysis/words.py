"""Evaluation by words: how well a text+image catalog finds items from text.

* ``text_from`` (``evaluate --text-from productDisplayName``): each item's own text is a query, searched
  among all the catalog's photos; relevant are the items carrying exactly that text (the item itself, and any
  other item with the same title, which words cannot tell apart). recall@k (relevant found / relevant, which
  is the hit rate when titles are unique) and MRR@k (1 / rank of the first relevant item, 0 beyond k).
* ``text_label`` (``evaluate --text-label articleType``): each value of a label, put into a prompt template
  (default "a photo of {}"), is a query; relevant are the items with that value. precision@k, recall@k,
  mAP@k and nDCG@k, as the photo metrics define them.

Both rank exactly over the stored vectors (``evaluate.evaluate_vectors``, held-out mode: the queries are words,
not catalog items, so nothing is left out), with 95 % bootstrap intervals over queries and a ``chance`` row
that ranks the same candidates in a seeded random order through the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.config import EncodeOptions
from ..core.errors import QueryError
from .catalog_data import load_catalog_data
from .evaluate import CHANCE, Estimate, bootstrap_mean, evaluate_vectors
from .tag import DEFAULT_TEMPLATE

TEXT_FROM = "text-from"
TEXT_LABEL = "text-label"
WORD_METRICS = {TEXT_FROM: ("recall", "mrr", "hit_rate"), TEXT_LABEL: ("precision", "recall", "map", "ndcg")}
WORD_METRIC_NAMES = {"recall": "recall@k", "mrr": "MRR@k", "hit_rate": "hit rate@k", "precision": "precision@k",
                     "map": "mAP@k", "ndcg": "nDCG@k"}


@dataclass
class WordEvaluation:
    """One row: a catalog (or chance) judged on text queries made from one label column."""

    name: str
    embedder: str
    kind: str  # TEXT_FROM or TEXT_LABEL
    column: str
    k: int
    items: int  # catalog items searched
    queries: int  # text queries used
    metrics: dict[str, Estimate]
    template: str | None = None
    per_value: list[dict] = field(default_factory=list)  # TEXT_LABEL: one row per label value
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "embedder": self.embedder, "kind": self.kind, "column": self.column, "k": self.k,
                "items": self.items, "queries": self.queries, "template": self.template,
                "metrics": {n: e.to_dict() for n, e in self.metrics.items()}, "per_value": self.per_value,
                "notes": self.notes}


def evaluate_words(catalog, kind: str, column: str, k: int = 10, *, template: str | None = None,
                   bootstrap: int = 1000, seed: int = 0, options: EncodeOptions | None = None,
                   chance: bool = True) -> list[WordEvaluation]:
    """The catalog's row, then (``chance``) the random-ranking row, for text queries of ``kind`` from ``column``.

    Raises:
        NoTextModelError: the catalog's model has no text tower.
        QueryError: unknown kind or column, a template without ``{}``, no item with the column.
    """
    if kind not in WORD_METRICS:
        raise QueryError(f"unknown text evaluation {kind!r}; use {TEXT_FROM} or {TEXT_LABEL}")
    data = load_catalog_data(catalog)
    if len(data) == 0:
        raise QueryError(f"{catalog.path} has no embedded items; index a source first")
    if column not in data.label_names:
        listing = ", ".join(data.label_names) or "none (index from a CSV manifest to add labels)"
        raise QueryError(f"unknown label {column!r}; labels in this catalog: {listing}")
    values = data.values(column)
    base_labels = [v if v is not None and v.strip() else None for v in values]
    if kind == TEXT_FROM:
        texts = [v for v in base_labels if v is not None]
        query_labels, prompts, template = texts, texts, None
    else:
        template = template or DEFAULT_TEMPLATE
        if "{}" not in template:
            raise QueryError(f"template {template!r} has no {{}} where the label value goes, e.g. 'a photo of {{}}'")
        query_labels = sorted({v for v in base_labels if v is not None})
        prompts = [template.replace("{}", v) for v in query_labels]
    if not query_labels:
        raise QueryError(f"no item has a value of {column!r} to make text queries from")
    catalog.check_text(prompts[:1])
    unique = list(dict.fromkeys(prompts))
    vectors = catalog.encode_text(unique, options or EncodeOptions(progress=False))
    position = {p: i for i, p in enumerate(unique)}
    queries = vectors[[position[p] for p in prompts]]
    rows = []
    for ranking, name, embedder in (("cosine", str(catalog.path), catalog.config.embedder.name),
                                    ("random", CHANCE, "random ranking")):
        if ranking == "random" and not chance:
            continue
        ev = evaluate_vectors(data.vectors, base_labels, k, queries=queries, query_labels=query_labels,
                              base_ids=data.ids, query_ids=[f"q{i}" for i in range(len(prompts))], ranking=ranking,
                              bootstrap=bootstrap, seed=seed, name=name, embedder=embedder, label=column)
        metrics = {m: ev.metrics[m] for m in WORD_METRICS[kind] if m in ev.metrics}
        if kind == TEXT_FROM:
            metrics["mrr"] = _mrr(ev.per_query.relevant, bootstrap, seed)
            metrics = {m: metrics[m] for m in WORD_METRICS[kind]}
        row = WordEvaluation(name=name, embedder=embedder, kind=kind, column=column, k=k, items=len(data),
                             queries=ev.retrieval_queries, metrics=metrics, template=template, notes=list(ev.notes))
        if kind == TEXT_LABEL:
            row.per_value = [{"value": c.label, "items": c.items, "precision": c.precision, "recall": c.recall,
                              "map": c.map} for c in ev.per_class]
        rows.append(row)
    return rows


def _mrr(relevant: np.ndarray, bootstrap: int, seed: int) -> Estimate:
    """Mean reciprocal rank of the first relevant result within k (0 when none), with its bootstrap interval."""
    first = np.argmax(relevant, axis=1)
    rr = np.where(relevant.any(axis=1), 1.0 / (first + 1), 0.0)
    return bootstrap_mean(rr, bootstrap, seed + 2)


def word_metric_names(kind: str, k: int) -> Sequence[tuple[str, str]]:
    return [(m, WORD_METRIC_NAMES[m].replace("@k", f"@{k}")) for m in WORD_METRICS[kind]]
