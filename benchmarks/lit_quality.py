"""Search by words on photos never trained on: a LiT text tower on the built-in mobilenetv2's locked vectors against
today's from-scratch tiny CLIP (``train clip --base tiny``), in the same run, on the same split.

On ``../shared/datasets/fashion-products``: the labelled photos (a styles.csv row with an articleType) are split by
product, once per seed of ``--seeds``: 80 % to train on, 20 % held out and never seen by either model (each
trainer holds out 15 % of its 80 %: the text tower stops early on it, tiny CLIP runs every epoch). Both learn
``productDisplayName`` and ``articleType`` texts.

* LiT: a catalog of the photos indexed with ``mobilenetv2`` (what ``lookalike index`` stores); the text tower
  (``train.lit.train_text_tower``, defaults of ``train clip --image-model mobilenetv2 --lock-image``) trains on the
  training products' stored vectors; the held-out products' stored vectors are ranked by its words.
* tiny: ``train_clip`` with ``base="tiny"`` on a pack of the training products (64 px, letterboxed),
  all ``--epochs`` epochs (as ``train_clip_quality.py``); a catalog of the held-out photos is indexed with the
  ``.lkm`` it wrote.

Figures, among the held-out photos only, each with chance:

* type-name precision@10: each articleType name (template ``{}``) as a query; macro mean over the types present.
  Most types have fewer than 10 held-out photos, so the best possible score is printed beside it ("at most"), and
  ``reachable``: a type's right answers in the first 10 over the most it could have there, min(10, its photos)
  (1.0 for a perfect ranking; chance 10 x share / min(10, photos)); the JSON also has ``type_r_precision@10``,
  stricter (right answers among a type's first min(10, photos) places: a one-photo type must come first);
* own-title recall@10: each held-out title as a query, the share of its photos in the first 10.

    python benchmarks/lit_quality.py [--seeds 0 1 2] [--epochs 40] [--catalog shop.lk] [--json out.json]

``--catalog`` reuses a catalog of the shared photos already indexed with mobilenetv2 (saves embedding them again).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"
COLUMNS = ("productDisplayName", "articleType")


def write_manifest(items, path: Path) -> Path:
    """A plain CSV manifest (path + labels, quoted) of some items of the shared styles.csv."""
    names = sorted({n for item in items for n in item.labels})
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", *names])
        for item in items:
            writer.writerow([item.id, str(item.path), *[item.labels.get(n, "") for n in names]])
    return path


def figures(m: dict) -> dict:
    keys = ("type_precision@10", "max_type_precision@10", "type_reachable_precision@10", "type_r_precision@10",
            "chance_type_precision@10", "chance_type_reachable_precision@10", "t2i_recall@10", "chance_t2i_recall@10",
            "types", "photos", "queries")
    return {k: m[k] for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="splits to run (default 0 1 2)")
    parser.add_argument("--epochs", type=int, default=40, help="tiny CLIP's epochs, all run (default 40)")
    parser.add_argument("--catalog", type=Path, default=None, help="the shared photos indexed with mobilenetv2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines

    from lookalike import Catalog
    from lookalike.core.config import EncodeOptions
    from lookalike.core.sources import read_source
    from lookalike.models.texttower import load_text_tower
    from lookalike.train.clip import ClipTrainConfig, train_clip
    from lookalike.train.common import TrainOptions
    from lookalike.train.lit import LitConfig, LitData, catalog_data, held_out_metrics, train_text_tower
    from lookalike.train.pack import pack_source

    listing = read_source(args.data / "styles.csv", args.data / "images")
    items = [i for i in listing.items if (i.labels.get("articleType") or "").strip()]
    options = EncodeOptions(progress=False)
    out: dict = {"products": len(items), "texts": list(COLUMNS), "tiny_epochs": args.epochs, "runs": []}
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        started = time.perf_counter()
        if args.catalog is not None:
            catalog = Catalog.open(args.catalog)
        else:
            catalog = Catalog.create(tmp / "shop.lk", "mobilenetv2")
            catalog.add(args.data / "styles.csv", images=args.data / "images", options=options)
        with catalog:
            data = catalog_data(catalog)
        out["embed_seconds"] = round(time.perf_counter() - started, 1)
        row = {item_id: i for i, item_id in enumerate(data.ids)}

        def part(wanted) -> LitData:
            idx = np.array([row[i.id] for i in wanted])
            return LitData(data.image, [data.ids[i] for i in idx], data.vectors[idx],
                           {k: [v[i] for i in idx] for k, v in data.labels.items()}, data.source)

        for seed in args.seeds:
            order = np.random.default_rng(seed).permutation(len(items))
            test_ids = {items[i].id for i in order[:int(round(len(items) * 0.2))]}
            train_items = [i for i in items if i.id not in test_ids]
            test_items = [i for i in items if i.id in test_ids]
            run: dict = {"seed": seed, "train": len(train_items), "held_out": len(test_items)}
            # LiT: a text tower on mobilenetv2's stored vectors of the training products
            test = part(test_items)
            started = time.perf_counter()
            result = train_text_tower(part(train_items), tmp / "tower.lkm",
                                      config=LitConfig(text_columns=COLUMNS, type_label="articleType"),
                                      options=TrainOptions(epochs=400, lr=2e-3, batch_size=128, patience=30, seed=seed))
            run["lit_train_seconds"] = round(time.perf_counter() - started, 1)
            run["lit_epochs"] = len(result.history.train_loss)
            tower = load_text_tower(tmp / "tower.lkm")
            run["lit"] = figures(held_out_metrics(tower.encode, test.vectors, test.labels["productDisplayName"],
                                                  test.labels["articleType"]))
            # tiny CLIP from scratch on the same training products, every epoch run (as train_clip_quality.py)
            started = time.perf_counter()
            pack = tmp / f"train-{seed}.pack"
            pack_source(write_manifest(train_items, tmp / f"train-{seed}.csv"), pack, size=64, workers=2)
            train_clip(pack, tmp / f"tiny-{seed}.lkm", base="tiny",
                       config=ClipTrainConfig(text_columns=COLUMNS, type_label="articleType"),
                       options=TrainOptions(epochs=args.epochs, batch_size=32, lr=1e-3, patience=0, seed=seed))
            run["tiny_train_seconds"] = round(time.perf_counter() - started, 1)
            with Catalog.create(tmp / f"tiny-{seed}.lk", str(tmp / f"tiny-{seed}.lkm")) as held:
                held.add(write_manifest(test_items, tmp / f"test-{seed}.csv"), options=options)
                tiny = catalog_data(held)
                run["tiny"] = figures(held_out_metrics(held.encode_text, tiny.vectors,
                                                       tiny.labels["productDisplayName"], tiny.labels["articleType"]))
            out["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")

    def cell(model: str, key: str) -> str:
        values = [r[model][key] for r in out["runs"]]
        spread = f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
        return f"{np.mean(values):.3f}{spread}"

    runs = out["runs"]
    seconds = {m: np.mean([r[f"{m}_train_seconds"] for r in runs]) for m in ("lit", "tiny")}
    print(f"`python benchmarks/lit_quality.py --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs}`: "
          f"{out['products']} labelled products; per split {runs[0]['train']} to train on, {runs[0]['held_out']} held "
          f"out ({', '.join(str(r['lit']['types']) for r in runs)} article types); mean (min-max) of "
          f"{len(runs)} split(s)\n")
    print("| model | type-name P@10 | at most | type-name P@10 of reachable | own-title recall@10 | training |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model, title in (("lit", "LiT text tower on mobilenetv2 (locked)"),
                         ("tiny", "tiny CLIP from scratch (--base tiny)")):
        print(f"| {title} | {cell(model, 'type_precision@10')} | {cell(model, 'max_type_precision@10')} | "
              f"{cell(model, 'type_reachable_precision@10')} | {cell(model, 't2i_recall@10')} | "
              f"{seconds[model]:.0f} s |")
    print(f"| chance | {cell('lit', 'chance_type_precision@10')} | | "
          f"{cell('lit', 'chance_type_reachable_precision@10')} | {cell('lit', 'chance_t2i_recall@10')} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
