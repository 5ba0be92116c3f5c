"""The int8 gate's rule (``engines.int8_gate``): neighbour agreement alone, or, where the catalog has a category
label, agreement and what users see (label precision@5, fp32 vs int8); and which label the gate measures by."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.catalog.int8_labels import category_label, listing_labels
from lookalike.engines.int8_gate import Int8Model, int8_passes, label_figures, label_precision
from lookalike.store.products import ProductRecord


@pytest.mark.parametrize("recall, labelled, drop, passes", [
    (0.98, 0, None, True),  # the recall rule alone, as before
    (0.979, 0, None, False),  # no label: the old rule decides
    (0.93, 329, 0.0, True),  # the measured MobileNetV2 case: recall short, label precision kept
    (0.93, 329, -0.02, True),  # int8 better on labels
    (0.93, 329, 0.0101, False),  # users would see the drop
    (0.93, 49, 0.0, False),  # too few labelled queries to trust the precision
    (0.899, 329, 0.0, False),  # neighbour lists too far apart whatever the labels say
    (0.90, 50, 0.01, True),  # every bound is inclusive
])
def test_int8_passes_on_recall_or_on_recall_and_label_precision(recall, labelled, drop, passes):
    assert int8_passes(recall, 0.98, labelled, drop) is passes


def test_label_precision_counts_a_querys_nearest_others_with_its_label():
    # Four photos on a line: a, a, b, b; each query's nearest other is its neighbour on the line.
    angles = np.array([0.0, 0.1, 1.0, 1.1])
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = ["a", "a", "b", "b"]
    p1 = label_precision(gallery, gallery, labels, labels, 1, [0, 1, 2, 3])
    assert p1.tolist() == [1.0, 1.0, 1.0, 1.0]
    p2 = label_precision(gallery[:1], gallery, labels[:1], labels, 2, [0])
    assert p2.tolist() == [0.5]  # itself left out: its neighbour (a) and the nearest b


def test_label_figures_use_only_labelled_photos_and_compare_the_same_queries():
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(12, 4)).astype(np.float32)
    fp32 /= np.linalg.norm(fp32, axis=1, keepdims=True)
    paths = [f"p{i}" for i in range(12)]
    labels = {p: "ab"[i % 2] for i, p in enumerate(paths) if i != 3}  # p3 has no value
    figures = label_figures({"fp32": fp32, "int8": fp32}, paths, paths[:6], labels, "kind", k=3)
    # every labelled photo of the gallery is a query (p3 has no label); five of them are held photos
    assert figures["label"] == "kind" and figures["labelled"] == 11 and figures["labelled_held"] == 5
    assert figures["precision_fp32"] == figures["precision_int8"]  # the same vectors: no drop
    shuffled = fp32[rng.permutation(12)]
    worse = label_figures({"fp32": fp32, "int8": shuffled}, paths, paths[:6], labels, "kind", k=3)
    assert worse["precision_fp32"] == figures["precision_fp32"]
    assert label_figures({"fp32": fp32, "int8": fp32}, paths, paths[:6], {}, "kind")["labelled"] == 0


def test_the_gate_measures_by_the_category_label_most_photos_carry():
    photos = [{"articleType": "Tshirts" if i % 2 else "Jeans", "baseColour": "Red", "id": str(i)}
              for i in range(10)]
    assert category_label(photos, 10) == "articleType"  # first of the known category labels, before "id"
    shop = [{"kind": "a" if i % 3 else "b", "size": "S" if i < 4 else "M"} for i in range(10)]
    assert category_label(shop, 10) == "kind"  # no known category label: the one most photos carry (tie: name)
    assert category_label([{"kind": "a"}] * 10, 10) is None
    assert category_label([{"articleType": "a"}, {"articleType": "b"}] + [{"colour": "x"}, {"colour": "y"}] * 4,
                          10) == "colour"  # a category label on too few photos gives way


def test_listing_labels_join_the_values_of_every_product_showing_a_photo():
    records = [ProductRecord(id="1", photos=("1",), variants={"1": {"kind": "shirt", "size": "S"},
                                                              "1b": {"kind": "shirt", "size": "M"}})]
    assert listing_labels(records) == {"kind": "shirt", "size": "M | S"}


def test_the_int8_record_holds_both_figures_and_old_records_keep_the_old_rule(tmp_path):
    model = Int8Model(path=tmp_path / "openvino" / "int8-x.xml", recall=0.93, k=10, held=91, calibration=273,
                      overlap=False, label="articleType", labelled=80, precision_fp32=0.7245, precision_int8=0.7251)
    record = model.to_record(tmp_path)
    assert record["label"] == "articleType" and record["precision_int8"] == 0.7251 and record["labelled"] == 80
    again = Int8Model.from_record(record, tmp_path)
    assert again == model and again.passed
    assert again.describe() == (
        "int8 recall@10 vs fp32 0.930 on 91 held photos, P@5 by articleType 0.725 fp32 -> 0.725 int8 on 80 "
        "labelled photos (passes the 0.98 gate or, with >= 50 labelled, >= 0.90 and a drop <= 0.01; calibrated on 273 "
        "of the catalog's photos)")
    old = {key: record[key] for key in ("model", "recall", "k", "held", "calibration", "overlap", "threshold")}
    legacy = Int8Model.from_record(old, tmp_path)
    assert legacy.drop is None and not legacy.passed
    assert legacy.describe().endswith("(fails the 0.98 gate; calibrated on 273 of the catalog's photos)")
    assert Path(record["model"]) == Path("openvino/int8-x.xml")
    assert not Int8Model.outdated(record) and not Int8Model.outdated(old)  # recall-only records stand
    first_rule = {key: value for key, value in record.items() if key not in ("gate_version", "labelled_held")}
    assert Int8Model.outdated(first_rule)  # label figures over held photos only: measured again
