"""The int8 gate: whether a model quantised on a catalog's photos is good enough for ``auto`` to use.

Two figures, int8 against fp32, from the photos the gate embedded (``openvino_runtime.draw_sample``):

* neighbour agreement: recall@10 of each held photo's 10 nearest held photos (the fp32 lists as truth);
* where the catalog has a category label, what users see: label precision@5 of every labelled photo the gate
  embedded (held and calibration ones, up to 400) as a query against the others (the share of a query's 5
  nearest others that carry its label), in fp32 and in int8, and the mean paired drop over the same queries.
  Every embedded photo is a query, not the held ones alone: the figures come free (both models embed them
  anyway), and a drop measured over 83 held queries on the shared photos had a standard error of 0.008, most
  of the 0.01 tolerance, so the rule flipped on noise; over 329 its standard error is 0.004.

int8 passes when recall@10 >= ``GATE_RECALL``, or when at least ``LABEL_MIN_QUERIES`` photos are labelled,
recall@10 >= ``LABEL_RECALL`` and the precision drop is at most ``LABEL_DROP`` (``int8_passes``). On the real
MobileNetV2 int8 keeps recall@10 about 0.93 against fp32 while P@5 by articleType does not move
(docs/benchmarks-speed.md, ``benchmarks/int8_gate.py``): neighbour lists reorder among photos of the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GATE_RECALL = 0.98  # recall@10 of neighbour lists, int8 against fp32, that passes on its own
LABEL_RECALL = 0.90  # recall@10 below which the label rule cannot pass either
LABEL_DROP = 0.01  # the largest mean drop of label precision@5 (fp32 - int8) the label rule accepts
LABEL_MIN_QUERIES = 50  # labelled photos (the precision's queries) the label rule needs: fewer say too little
LABEL_K = 5
GATE_K = 10
GATE_VERSION = 2  # 2: label precision over every embedded photo (1: over the held ones only)


def neighbour_recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """recall@k of each row's k nearest rows (itself left out) in ``found`` against those in ``truth``.

    ``found`` and ``truth``: (n, d) float unit rows, the same items in the same order; inner product ranks."""

    def nearest(m: np.ndarray) -> np.ndarray:
        sims = m @ m.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k - 1, axis=1)[:, :k]

    a, b = nearest(found), nearest(truth)
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b, strict=True)]) / k)


def label_precision(queries: np.ndarray, gallery: np.ndarray, query_labels: Sequence[str],
                    gallery_labels: Sequence[str], k: int, query_rows: Sequence[int]) -> np.ndarray:
    """Per query: the share of its ``k`` nearest gallery rows (inner product), itself left out, that carry its
    label (precision@k by label, as ``benchmarks/int8_gate.py`` and the evaluation's P@k by label count it).

    Args:
        queries: (q, d) float32 unit rows.
        gallery: (g, d) float32 unit rows, g > k.
        query_labels, gallery_labels: one value per row.
        k: neighbours per query.
        query_rows: each query's own row in the gallery (left out of its neighbours).

    Returns:
        (q,) float64 precisions in [0, 1].
    """
    sims = queries @ gallery.T
    sims[np.arange(len(queries)), np.asarray(query_rows, dtype=np.int64)] = -np.inf
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    found = np.asarray(gallery_labels, dtype=object)[nearest]
    return (found == np.asarray(query_labels, dtype=object)[:, None]).mean(axis=1).astype(np.float64)


def label_figures(vectors: Mapping[str, np.ndarray], gallery_paths: Sequence[str], held_paths: Sequence[str],
                  labels: Mapping[str, str], label: str, k: int = LABEL_K) -> dict:
    """The label half of the gate as ``Int8Model`` fields: label precision@k of every labelled gallery photo
    (the held and calibration ones) as a query against the others, in fp32 and in int8 (``labelled``: how
    many queries; ``labelled_held``: how many of them are held photos).

    Args:
        vectors: ``"fp32"`` and ``"int8"`` -> (g, d) float32 unit rows of the gallery photos.
        gallery_paths, held_paths: the photos' paths; every held photo is in the gallery.
        labels: path -> value of ``label`` (photos without one are left out of queries and gallery).
    """
    rows = [i for i, path in enumerate(gallery_paths) if labels.get(path)]
    own = list(range(len(rows)))
    held = {str(p) for p in held_paths}
    if not own or len(rows) <= k:
        return {"label": label, "labelled": 0}
    names = [labels[gallery_paths[row]] for row in rows]
    means = {}
    for name in ("fp32", "int8"):
        gallery = np.asarray(vectors[name])[rows]
        means[name] = float(label_precision(gallery[own], gallery, [names[j] for j in own], names, k, own).mean())
    return {"label": label, "labelled": len(own), "precision_fp32": means["fp32"], "precision_int8": means["int8"],
            "label_k": k, "labelled_held": sum(1 for row in rows if gallery_paths[row] in held)}


def int8_passes(recall: float, threshold: float = GATE_RECALL, labelled: int = 0, drop: float | None = None, *,
                min_queries: int = LABEL_MIN_QUERIES, label_recall: float = LABEL_RECALL,
                max_drop: float = LABEL_DROP) -> bool:
    """The gate's rule: ``recall`` (recall@10 vs fp32) >= ``threshold``; or, with ``labelled`` >= ``min_queries``
    labelled queries and their mean label-precision ``drop`` (fp32 - int8; None: no label), ``recall`` >=
    ``label_recall`` and ``drop`` <= ``max_drop``."""
    if recall >= threshold:
        return True
    return drop is not None and labelled >= min_queries and recall >= label_recall and drop <= max_drop


@dataclass(frozen=True)
class Int8Model:
    """A model quantised on a catalog's photos and what its gate measured (``int8_passes``)."""

    path: Path
    recall: float  # recall@k of neighbour lists on the held photos, int8 against fp32
    k: int
    held: int
    calibration: int
    overlap: bool  # the held photos were among the calibration ones (a small catalog)
    threshold: float = GATE_RECALL
    label: str | None = None  # the category label the precision is measured by (None: the catalog has none)
    labelled: int = 0  # labelled photos the gate embedded, the precision's queries
    precision_fp32: float | None = None  # mean label precision@label_k of those queries, fp32 vectors
    precision_int8: float | None = None  # the same queries, int8 vectors
    label_k: int = LABEL_K
    min_queries: int = LABEL_MIN_QUERIES
    label_recall: float = LABEL_RECALL
    max_drop: float = LABEL_DROP
    labelled_held: int = 0  # of the labelled queries, how many are held photos (the rest calibrated the model)

    @property
    def drop(self) -> float | None:
        """Mean label precision lost by int8 (fp32 - int8) on the same queries; None without a label."""
        if self.precision_fp32 is None or self.precision_int8 is None:
            return None
        return self.precision_fp32 - self.precision_int8

    @property
    def passed(self) -> bool:
        return int8_passes(self.recall, self.threshold, self.labelled, self.drop, min_queries=self.min_queries,
                           label_recall=self.label_recall, max_drop=self.max_drop)

    def describe(self) -> str:
        held = f"{self.held} {'calibration' if self.overlap else 'held'} photos"
        line = f"int8 recall@{self.k} vs fp32 {self.recall:.3f} on {held}"
        if self.drop is None:
            verdict = "passes" if self.passed else "fails"
            return f"{line} ({verdict} the {self.threshold:.2f} gate; calibrated on {self.calibration} of the " \
                   "catalog's photos)"
        if self.recall >= self.threshold:
            verdict = f"passes the {self.threshold:.2f} gate"
        else:
            verdict = (f"{'passes' if self.passed else 'fails'} the {self.threshold:.2f} gate or, with "
                       f">= {self.min_queries} labelled, >= {self.label_recall:.2f} and a drop <= {self.max_drop:.2f}")
        return (f"{line}, P@{self.label_k} by {self.label} {self.precision_fp32:.3f} fp32 -> "
                f"{self.precision_int8:.3f} int8 on {self.labelled} labelled photos ({verdict}; calibrated on "
                f"{self.calibration} of the catalog's photos)")

    def to_record(self, folder: Path) -> dict:
        """The catalog's int8 record (JSON): the model's path relative to ``folder`` and the gate's figures."""
        out = {"model": self.path.relative_to(folder).as_posix(), "recall": round(self.recall, 4), "k": self.k,
               "held": self.held, "calibration": self.calibration, "overlap": self.overlap,
               "threshold": self.threshold, "gate_version": GATE_VERSION}
        if self.drop is not None:
            out.update(label=self.label, labelled=self.labelled, precision_fp32=round(self.precision_fp32, 4),
                       precision_int8=round(self.precision_int8, 4), label_k=self.label_k,
                       min_queries=self.min_queries, label_recall=self.label_recall, max_drop=self.max_drop,
                       labelled_held=self.labelled_held)
        return out

    @staticmethod
    def outdated(record: dict) -> bool:
        """Was the record's label precision measured by an earlier rule (``GATE_VERSION``)? Then it is measured
        again (the recall-only records of catalogs without labels stay as they are)."""
        return record.get("precision_fp32") is not None and int(record.get("gate_version", 1)) < GATE_VERSION

    @classmethod
    def from_record(cls, record: dict, folder: Path) -> Int8Model:
        """``to_record`` read back; a record made before the label rule has no label (the recall rule alone)."""
        label = {} if record.get("precision_fp32") is None else {
            "label": record["label"], "labelled": int(record["labelled"]),
            "precision_fp32": float(record["precision_fp32"]), "precision_int8": float(record["precision_int8"]),
            "label_k": int(record["label_k"]), "min_queries": int(record["min_queries"]),
            "label_recall": float(record["label_recall"]), "max_drop": float(record["max_drop"]),
            "labelled_held": int(record.get("labelled_held", record["labelled"]))}
        return cls(path=folder / record["model"], recall=float(record["recall"]), k=int(record["k"]),
                   held=int(record["held"]), calibration=int(record["calibration"]),
                   overlap=bool(record["overlap"]), threshold=float(record["threshold"]), **label)
