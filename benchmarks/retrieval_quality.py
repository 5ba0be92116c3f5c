"""Retrieval quality of each embedder that can be loaded here, on the shared fashion-products photos.

For each embedder it builds a catalog of ``../shared/datasets/fashion-products`` (styles.csv + images/),
then runs ``lookalike evaluate``'s leave-one-out (``evaluate_catalogs``) for articleType and baseColour and
prints one Markdown table per label, with the chance row (random ranking of the same catalog):

* ``colorhist``: colour histogram, no model (the reference row of ``lookalike evaluate``);
* ``pixels``: the photo shrunk to 16x16, no model;
* ``mobilenetv2`` and ``mobilenetv2-max``: the built-in real ImageNet MobileNetV2, average and max pooling
  (works offline: the rows that show what a pretrained model gives);
* ``resnet50`` with *seeded random weights*: a control only, labelled as such. Random convolutions still
  respond to colour and layout, so it shows what an untrained architecture gives, not what ResNet-50 does;
* every name passed with ``--model`` (e.g. ``resnet50`` with pretrained weights, when the hub or its cache
  is reachable, or ``--model resnet50 --weights path.safetensors``): skipped with the reason when it cannot
  be loaded.

Run from the repository root::

    python benchmarks/retrieval_quality.py                 # k = 5 and 10, 1000 bootstrap resamples
    python benchmarks/retrieval_quality.py --model resnet50 --model efficientnet_b0   # pretrained, if loadable
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_machine

from lookalike import Catalog, LookalikeError
from lookalike.analysis.evaluate import METRIC_NAMES, evaluate_catalogs, format_estimate
from lookalike.core.config import EncodeOptions

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-products"
SHOWN = ("precision", "recall", "map", "ndcg", "hit_rate", "top1_accuracy", "majority_accuracy", "mean_distance")


def build(folder: Path, name: str, model: str, weights: str | None, dataset: Path) -> tuple[Path, str]:
    path = folder / f"{name}.lk"
    started = time.perf_counter()
    with Catalog.create(path, model, weights) as catalog:
        report = catalog.add(dataset / "styles.csv", images=dataset / "images", options=EncodeOptions(progress=False))
        describe = catalog.config.embedder.describe()
    print(f"  {name}: {report.summary()} ({time.perf_counter() - started:.1f} s with model load) -- {describe}",
          flush=True)
    return path, describe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("-k", type=int, action="append", help="neighbours per query (default: 5 and 10)")
    parser.add_argument("--label", action="append", help="labels (default: articleType and baseColour)")
    parser.add_argument("--model", action="append", default=[], help="more embedders to try (pretrained)")
    parser.add_argument("--weights", default=None, help="local weights file for the --model entries")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--no-control", action="store_true", help="skip the random-weight ResNet-50 control")
    args = parser.parse_args()
    print(describe_machine(), flush=True)
    logging.basicConfig(level=logging.ERROR)
    if not (args.dataset / "styles.csv").is_file():
        print(f"no dataset at {args.dataset}", file=sys.stderr)
        return 2
    ks = args.k or [5, 10]
    labels = args.label or ["articleType", "baseColour"]
    runs = [("mobilenetv2", "mobilenetv2", None), ("mobilenetv2-max", "mobilenetv2-max", None),
            ("colorhist", "colorhist", None), ("pixels", "pixels", None)]
    if not args.no_control:
        runs.append(("resnet50-random (control)", "resnet50", "random"))
    runs += [(m, m, args.weights) for m in args.model]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"building catalogs of {args.dataset} in {folder}")
        paths, names = [], {}
        for name, model, weights in runs:
            try:
                path, describe = build(folder, name.split(" ")[0], model, weights, args.dataset)
            except LookalikeError as exc:
                print(f"  {name}: skipped, cannot be loaded here: {exc}", flush=True)
                continue
            paths.append(path)
            names[str(path)] = name
        for label in labels:
            for k in ks:
                rows = evaluate_catalogs(paths, label, k, references=["chance"], bootstrap=args.bootstrap)
                rows = [r for r in rows if r.name != "chance"] + [r for r in rows if r.name == "chance"]
                first = rows[0]
                print(f"\n### {label}, k = {k}: leave-one-out, {first.retrieval_queries} queries "
                      f"({first.items} photos; not used as queries: "
                      + ", ".join(f"{n} {c}" for n, c in first.excluded.items() if c) + ")\n")
                head = ["embedder", *(METRIC_NAMES[n].replace("@k", f"@{k}") for n in SHOWN), "top-1 macro F1"]
                print("| " + " | ".join(head) + " |")
                print("|" + " --- |" * len(head))
                for row in rows:
                    name = names.get(row.name, f"chance (random ranking; distance in {names[str(paths[0])]} space)")
                    cells = [format_estimate(row.metrics[n]) for n in SHOWN]
                    print(f"| {name} | " + " | ".join(cells) + f" | {row.classification['top1'].macro_f1:.3f} |")
        print("\n± is half the 95 % bootstrap interval over queries. Distances compare only within one embedder. "
              "The resnet50 control has random weights: it is not a measure of ResNet-50.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
