"""What the int8 gate sees against what users see: neighbour agreement and label precision, fp32 vs int8.

Indexes the labelled shared photos (``styles.csv``) twice with a real model (default: the built-in
``mobilenetv2``) on OpenVINO, once in fp32 and once in int8 (calibrated on the catalog's own photos, as
``lookalike index --precision int8`` does), then prints, for the gate's held photos (the sample the gate uses)
and for every photo:

* recall@10 of each photo's 10 nearest neighbours, int8 against fp32 (the gate's figure; 0.98 to pass);
* leave-one-out precision@5 by a label (default ``articleType``): the share of each photo's 5 nearest others
  with its label, in fp32 and in int8, and the paired drop with its standard error over the photos.

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
from lookalike.engines.openvino_runtime import draw_sample, neighbour_recall

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-products"


def label_precision(vectors: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    """Per photo: the share of its k nearest other photos (inner product) that carry its label."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :k]
    arr = np.asarray(labels)
    return (arr[nearest] == arr[:, None]).mean(axis=1)


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


if __name__ == "__main__":
    main()
