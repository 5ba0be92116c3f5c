"""Does ``train clip`` teach a model the shop's words? A small random-initialised CLIP (``--base tiny``) trained on
the shared photos' titles, measured before and after on held-out photos, with chance.

On ``../shared/datasets/fashion-products`` (364 photos, packed once at the tiny model's 64 px, letterboxed):
``train_clip`` with ``--text-column productDisplayName`` (``--also articleType`` adds article types as a second
text, drawn at random per photo and epoch), seed 0, 15 % held out. Reported, before and after training:

* text-to-image and image-to-text recall@1/5/10 among the held-out photos, each held-out title a query
  (relevant: the photos carrying that title), with chance (k / photos, k / titles);
* per-type precision@10: each held-out article type's name as the query among the held-out photos, with
  chance (the types' mean share of the held-out photos);
* then a catalog of all 364 photos indexed with the trained ``.lkm``, judged by
  ``evaluate --text-label articleType`` (template ``{}``) and ``--text-from productDisplayName``: the same
  figures ``lookalike evaluate`` prints, with the chance row and 95 % bootstrap intervals.

    python benchmarks/train_clip_quality.py [--epochs 40] [--also articleType] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--also", action="append", default=[], help="more text columns (e.g. articleType)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines

    from lookalike import Catalog
    from lookalike.analysis.words import TEXT_FROM, TEXT_LABEL, evaluate_words
    from lookalike.core.config import EncodeOptions
    from lookalike.train.clip import ClipTrainConfig, train_clip
    from lookalike.train.common import TrainOptions
    from lookalike.train.pack import pack_source

    columns = ("productDisplayName", *args.also)
    out: dict = {"texts": list(columns), "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        pack_source(args.data / "styles.csv", tmp / "shop.pack", size=64, images=args.data / "images", workers=2)
        started = time.perf_counter()
        result = train_clip(tmp / "shop.pack", tmp / "shop-clip.lkm", base="tiny",
                            config=ClipTrainConfig(text_columns=columns, type_label="articleType"),
                            options=TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                                 patience=0, seed=0))
        out["train_seconds"] = round(time.perf_counter() - started, 1)
        out["epoch_seconds_median"] = round(sorted(result.history.seconds)[len(result.history.seconds) // 2], 2)
        out["held_out"] = {"before": result.metrics["before"], "after": result.metrics["after"]}
        with Catalog.create(tmp / "shop.lk", str(tmp / "shop-clip.lkm")) as catalog:
            catalog.add(args.data / "styles.csv", images=args.data / "images",
                        options=EncodeOptions(progress=False))
            rows = {}
            for kind, column, template in ((TEXT_LABEL, "articleType", "{}"), (TEXT_FROM, "productDisplayName", None)):
                ours, chance = evaluate_words(catalog, kind, column, k=10, template=template, bootstrap=1000)
                rows[f"{kind} {column}"] = {
                    "trained": {m: e.to_dict() for m, e in ours.metrics.items()},
                    "chance": {m: e.to_dict() for m, e in chance.metrics.items()}, "queries": ours.queries}
            out["catalog"] = rows
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
