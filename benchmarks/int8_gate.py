"""What the int8 gate sees against what users see: neighbour agreement and label precision, fp32 vs int8.

Indexes the labelled shared photos (``styles.csv``) twice with a real model (default: the built-in
``mobilenetv2``) on OpenVINO, once in fp32 and once in int8 (calibrated on the catalog's own photos, as
``lookalike index --precision int8`` does), then prints, for the gate's held photos (the sample the gate uses)
and for every photo:

* recall@10 of each photo's 10 nearest neighbours, int8 against fp32 (the gate's figure; 0.98 to pass);
* leave-one-out precision@5 by a label (default ``articleType``): the share of each photo's 5 nearest others
  with its label, in fp32 and in int8, and the paired drop with its standard error over the photos;

and the catalog's own gate (``engines.int8_gate``): its recall@10, its label precision@5 of every photo it
embedded (held and calibration ones) against the others, split by held and calibration queries (do the photos
int8 was calibrated on favour it?), and what the recall rule alone and the label rule decide.

    python benchmarks/int8_gate.py                       # mobilenetv2, articleType, the shared photos
    python benchmarks/int8_gate.py --model resnet50 --label masterCategory
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from machine import describe_machine

from lookalike import Catalog, EncodeOptions
from lookalike.engines.int8_gate import GATE_RECALL, int8_passes
from lookalike.engines.int8_gate import label_precision as gate_precision
from lookalike.engines.openvino_runtime import draw_sample, neighbour_recall

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-products"


def label_precision(vectors: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    """Per photo: the share of its k nearest other photos (inner product) that carry its label."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :k]
    arr = np.asarray(labels)
    return (arr[nearest] == arr[:, None]).mean(axis=1)


def label_precision_against(vectors: np.ndarray, labels: list[str], queries: list[int], k: int) -> np.ndarray:
    """Per query row: precision@k by label against every other row (the gate's ``int8_gate.label_precision``)."""
    return gate_precision(vectors[queries], vectors, [labels[q] for q in queries], labels, k, queries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--label", default="articleType")
    ap.add_argument("-k", type=int, default=5, help="precision@k by label (default 5)")
    args = ap.parse_args()
    print(describe_machine())
    manifest, images = args.data / "styles.csv", args.data / "images"
    vectors, labels, paths = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="int8-gate-") as tmp:
        for precision in ("fp32", "int8"):
            options = EncodeOptions(device="cpu", runtime="openvino", precision=precision, progress=False)
            with Catalog.create(Path(tmp) / f"{precision}.lk", args.model) as catalog:
                report = catalog.add(manifest, images, options=options)
                for note in report.notes:
                    print(f"{precision}: {note}")
                if precision == "int8":
                    gate = catalog.int8_model()
                keys, matrix = catalog.store.vectors(catalog.config.embedder.dim)
                row = {int(key): i for i, key in enumerate(keys.tolist())}
                by_key = catalog.store.labels()
                for key, item_id, path, _sha in catalog.store.ok_items():
                    vectors.setdefault(precision, {})[item_id] = matrix[row[key]]
                    paths[item_id] = path
                    if by_key.get(key, {}).get(args.label):
                        labels[item_id] = by_key[key][args.label]
    ids = sorted(i for i in vectors["fp32"] if i in vectors["int8"] and i in labels)
    held = {str(p) for p in draw_sample(sorted(str(paths[i]) for i in vectors["fp32"])).held}
    groups = {"held photos (the gate's sample)": [i for i in ids if str(paths[i]) in held], "every photo": ids}
    print(f"\n{args.model}, {len(ids)} photos with a {args.label} label; int8 against fp32 on OpenVINO")
    print(f"{'photos':34} {'n':>4} {'recall@10':>9} {f'P@{args.k} fp32':>9} {f'P@{args.k} int8':>9} "
          f"{'drop':>7} {'s.e.':>6}")
    for name, chosen in groups.items():
        f32 = np.stack([vectors["fp32"][i] for i in chosen])
        i8 = np.stack([vectors["int8"][i] for i in chosen])
        recall = neighbour_recall(i8, f32, min(10, len(chosen) - 1))
        names = [labels[i] for i in chosen]
        p32, p8 = label_precision(f32, names, args.k), label_precision(i8, names, args.k)
        drop = p32 - p8
        print(f"{name:34} {len(chosen):4d} {recall:9.3f} {p32.mean():9.3f} {p8.mean():9.3f} {drop.mean():7.3f} "
              f"{drop.std(ddof=1) / np.sqrt(len(drop)):6.3f}")
    # The gate's label figure: every labelled photo it embedded (held + calibration) as a query against the
    # others; split by held and calibration queries, to see whether the photos int8 was calibrated on favour it.
    names = [labels[i] for i in ids]
    held_rows = [ids.index(i) for i in groups["held photos (the gate's sample)"]]
    for name, queries in (("held queries vs every photo", held_rows),
                          ("calibration queries vs every photo", [r for r in range(len(ids)) if r not in held_rows]),
                          ("every query vs every photo (gate)", list(range(len(ids))))):
        per = {p: label_precision_against(np.stack([vectors[p][i] for i in ids]), names, queries, args.k)
               for p in ("fp32", "int8")}
        drop = per["fp32"] - per["int8"]
        print(f"{name:34} {len(queries):4d} {'':>9} {per['fp32'].mean():9.3f} {per['int8'].mean():9.3f} "
              f"{drop.mean():7.3f} {drop.std(ddof=1) / np.sqrt(len(drop)):6.3f}")
    print(f"\nthe catalog's gate: recall@{gate.k} {gate.recall:.3f} on {gate.held} held photos; "
          + (f"P@{gate.label_k} by {gate.label} {gate.precision_fp32:.3f} fp32 -> {gate.precision_int8:.3f} int8, "
             f"drop {gate.drop:.4f} on {gate.labelled} labelled queries ({gate.labelled_held} held)"
             if gate.drop is not None else "no label"))
    old = int8_passes(gate.recall, GATE_RECALL)
    print(f"recall rule alone (>= {GATE_RECALL:.2f}): {'int8' if old else 'refused'}; with the label rule "
          f"(>= {gate.min_queries} labelled, recall >= {gate.label_recall:.2f}, drop <= {gate.max_drop:.2f}): "
          f"{'int8' if gate.passed else 'refused'}")


if __name__ == "__main__":
    main()
