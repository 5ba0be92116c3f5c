"""Search by words on photos never trained on: a LiT text tower on the built-in mobilenetv2's locked vectors against
today's from-scratch tiny CLIP (``train clip --base tiny``), in the same run, on the same split.

On ``../shared/datasets/fashion-products``: the labelled photos (a styles.csv row with an articleType) are split by
product, seed ``--seed``: 80 % to train on, 20 % held out and never seen by either model (each trainer holds out
15 % of its 80 % for early stopping). Both learn ``productDisplayName`` and ``articleType`` texts.

* LiT: a catalog of the photos indexed with ``mobilenetv2`` (what ``lookalike index`` stores); the text tower
  (``train.lit.train_text_tower``, defaults of ``train clip --image-model mobilenetv2 --lock-image``) trains on the
  training products' stored vectors; the held-out products' stored vectors are ranked by its words.
* tiny: ``train_clip`` with ``base="tiny"`` on a pack of the training products (64 px, letterboxed),
  ``--epochs`` epochs, patience 8; a catalog of the held-out photos is indexed with the ``.lkm`` it wrote.

Figures, among the held-out photos only, each with chance:

* type-name precision@10: each articleType name (template ``{}``) as a query; macro mean over the types present.
  Most types have fewer than 10 held-out photos, so the best possible score is printed beside it ("at most"), and
  ``reachable``: a type's right answers in the first 10 over the most it could have there, min(10, its photos)
  (1.0 for a perfect ranking; chance 10 x share / min(10, photos)); the JSON also has ``type_r_precision@10``,
  stricter (right answers among a type's first min(10, photos) places: a one-photo type must come first);
* own-title recall@10: each held-out title as a query, the share of its photos in the first 10.

    python benchmarks/lit_quality.py [--seed 0] [--epochs 40] [--catalog shop.lk] [--json out.json]

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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40, help="tiny CLIP's epochs (default 40)")
    parser.add_argument("--catalog", type=Path, default=None, help="the shared photos indexed with mobilenetv2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from lookalike import Catalog
    from lookalike.core.config import EncodeOptions
    from lookalike.core.sources import read_source
    from lookalike.train.clip import ClipTrainConfig, train_clip
    from lookalike.train.common import TrainOptions
    from lookalike.train.lit import LitConfig, LitData, catalog_data, held_out_metrics, train_text_tower
    from lookalike.train.pack import pack_source

    listing = read_source(args.data / "styles.csv", args.data / "images")
    items = [i for i in listing.items if (i.labels.get("articleType") or "").strip()]
    order = np.random.default_rng(args.seed).permutation(len(items))
    n_test = int(round(len(items) * 0.2))
    test_ids = {items[i].id for i in order[:n_test]}
    train_items = [i for i in items if i.id not in test_ids]
    test_items = [i for i in items if i.id in test_ids]
    out: dict = {"seed": args.seed, "products": len(items), "train": len(train_items), "held_out": len(test_items),
                 "texts": list(COLUMNS)}
    options = EncodeOptions(progress=False)
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        # LiT on mobilenetv2's stored vectors
        started = time.perf_counter()
        if args.catalog is not None:
            catalog = Catalog.open(args.catalog)
        else:
            catalog = Catalog.create(tmp / "shop.lk", "mobilenetv2")
            catalog.add(args.data / "styles.csv", images=args.data / "images", options=options)
        with catalog:
            data = catalog_data(catalog)
        out["lit_embed_seconds"] = round(time.perf_counter() - started, 1)
        row = {item_id: i for i, item_id in enumerate(data.ids)}

        def part(wanted) -> LitData:
            idx = np.array([row[i.id] for i in wanted])
            return LitData(data.image, [data.ids[i] for i in idx], data.vectors[idx],
                           {k: [v[i] for i in idx] for k, v in data.labels.items()}, data.source)

        train, test = part(train_items), part(test_items)
        started = time.perf_counter()
        result = train_text_tower(train, tmp / "tower.lkm", config=LitConfig(text_columns=COLUMNS,
                                                                            type_label="articleType"),
                                  options=TrainOptions(epochs=400, lr=2e-3, batch_size=128, patience=30,
                                                       seed=args.seed))
        out["lit_train_seconds"] = round(time.perf_counter() - started, 1)
        out["lit_epochs"] = len(result.history.train_loss)
        from lookalike.models.texttower import load_text_tower

        tower = load_text_tower(tmp / "tower.lkm")
        out["lit"] = figures(held_out_metrics(tower.encode, test.vectors, test.labels["productDisplayName"],
                                              test.labels["articleType"]))
        # tiny CLIP from scratch on the same training products
        started = time.perf_counter()
        pack_source(write_manifest(train_items, tmp / "train.csv"), tmp / "train.pack", size=64, workers=2)
        tiny = train_clip(tmp / "train.pack", tmp / "tiny.lkm", base="tiny",
                          config=ClipTrainConfig(text_columns=COLUMNS, type_label="articleType"),
                          options=TrainOptions(epochs=args.epochs, batch_size=32, lr=1e-3, patience=8,
                                               seed=args.seed))
        out["tiny_train_seconds"] = round(time.perf_counter() - started, 1)
        out["tiny_epochs"] = len(tiny.history.train_loss)
        with Catalog.create(tmp / "tiny.lk", str(tmp / "tiny.lkm")) as held:
            held.add(write_manifest(test_items, tmp / "test.csv"), options=options)
            tiny_data = catalog_data(held)
            out["tiny"] = figures(held_out_metrics(held.encode_text, tiny_data.vectors,
                                                   tiny_data.labels["productDisplayName"],
                                                   tiny_data.labels["articleType"]))
    print(json.dumps(out, indent=2))
    lit, small = out["lit"], out["tiny"]
    print(f"\n`python benchmarks/lit_quality.py --seed {args.seed} --epochs {args.epochs}`: {out['products']} labelled "
          f"products, {out['train']} to train on, {out['held_out']} held out ({lit['types']} article types)\n")
    print("| model | type-name P@10 (at most) | type-name P@10 of reachable | own-title recall@10 |")
    print("| --- | --- | --- | --- |")
    print(f"| LiT text tower on mobilenetv2 (locked), {out['lit_train_seconds']} s | {lit['type_precision@10']:.3f} "
          f"({lit['max_type_precision@10']:.3f}) | {lit['type_reachable_precision@10']:.3f} | "
          f"{lit['t2i_recall@10']:.3f} |")
    print(f"| tiny CLIP from scratch (--base tiny), {out['tiny_train_seconds']} s | {small['type_precision@10']:.3f} "
          f"({small['max_type_precision@10']:.3f}) | {small['type_reachable_precision@10']:.3f} | "
          f"{small['t2i_recall@10']:.3f} |")
    print(f"| chance | {lit['chance_type_precision@10']:.3f} | {lit['chance_type_reachable_precision@10']:.3f} | "
          f"{lit['chance_t2i_recall@10']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
