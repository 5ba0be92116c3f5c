"""Do trained embeddings help? Held-out retrieval on the shared fashion-products photos, with a fixed split.

The photos (``styles.csv`` + ``images/``) are packed once at ``--size`` px, then split by articleType,
stratified and seeded (``--test`` of each class held out; classes with one photo stay in training). Every
row embeds the *original files* through ``Encoder`` (what ``lookalike index`` does) and searches the held-out
photos among the training photos; relevant = same articleType. Rows:

* ``pixels`` and ``colorhist``: the model-free references, measured in the same run;
* ``autoencoder latent N``: ``lookalike train autoencoder`` on the training photos (no labels), one per
  ``--latent`` (default 3, 10, 32);
* ``<backbone> untrained``: the small CNN with random weights, as an embedder (the fine-tune's starting point);
* ``<backbone> fine-tuned``: ``lookalike train finetune --label articleType --weights random --unfreeze all``
  on the training photos only (its own validation split, for early stopping, is taken from them).

By default the fine-tuned row starts from a randomly initialised small CNN (``--backbone``, default
timm:resnet18). ``--pretrained`` starts from the backbone's real weights instead (the built-in ``mobilenetv2``
works offline): the ``frozen`` row is then the pretrained model as ``lookalike index`` uses it, and the
fine-tuned rows give the trained projection (``head``) and the fine-tuned backbone's own features
(``#backbone``). Default run: about 3-6 minutes on 2 (shared) CPU cores.

    python benchmarks/train_quality.py                          # 64 px, defaults
    python benchmarks/train_quality.py --size 128 --ae-epochs 60 --ft-epochs 80 --device cuda   # bigger
    python benchmarks/train_quality.py --pretrained --backbone mobilenetv2 --size 224 --no-autoencoder \
        --ft-epochs 15 --ft-lr 1e-3 --unfreeze 2                # fine-tuning from real weights
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe_machine

from lookalike.analysis.evaluate import evaluate_vectors
from lookalike.core.config import EncodeOptions
from lookalike.engines.embed import Encoder
from lookalike.models import create_embedder
from lookalike.train.autoencoder import train_autoencoder
from lookalike.train.common import TrainOptions, split_indices
from lookalike.train.finetune import FinetuneConfig, train_finetune
from lookalike.train.pack import Pack, pack_source

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-products"
LABEL = "articleType"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--work", type=Path, default=None, help="keep the pack and models here (default: temporary)")
    parser.add_argument("--size", type=int, default=64, help="pack side in px (default 64)")
    parser.add_argument("--test", type=float, default=0.3, help="held-out share of each class (default 0.3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--latent", type=int, action="append", help="autoencoder latent sizes (default 3 10 32)")
    parser.add_argument("--ae-epochs", type=int, default=30)
    parser.add_argument("--ae-width", type=int, default=16)
    parser.add_argument("--ft-epochs", type=int, default=60)
    parser.add_argument("--ft-lr", type=float, default=3e-3)
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--pretrained", action="store_true", help="fine-tune from the backbone's real weights")
    parser.add_argument("--unfreeze", default="all", help="backbone stages to train: N or all (default all)")
    parser.add_argument("--no-autoencoder", action="store_true", help="skip the autoencoder rows")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    print(describe_machine(), flush=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not (args.dataset / "styles.csv").is_file():
        print(f"no dataset at {args.dataset}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lookalike-train-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return run(args, work)


def run(args: argparse.Namespace, work: Path) -> int:
    started = time.perf_counter()
    t0 = time.perf_counter()
    report = pack_source(args.dataset / "styles.csv", work / f"fashion-{args.size}.pack", size=args.size,
                         images=args.dataset / "images", workers=2)
    pack = Pack.open(work / f"fashion-{args.size}.pack")
    print(f"pack: {report.summary()} at {args.size} px in {time.perf_counter() - t0:.1f} s", flush=True)

    labels = pack.labels[LABEL]
    labelled = np.array([i for i, v in enumerate(labels) if v is not None])
    train_pos, test_pos = split_indices(len(labelled), args.test, args.seed, [labels[i] for i in labelled])
    train, test = labelled[train_pos], labelled[test_pos]
    unlabelled = np.array([i for i, v in enumerate(labels) if v is None], dtype=np.int64)
    print(f"split: {len(train)} training and {len(test)} held-out photos with {LABEL} "
          f"({len(set(labels[i] for i in test))} classes among the held-out); {len(unlabelled)} unlabelled photos "
          "(autoencoder training only)", flush=True)
    files = np.array(pack.paths, dtype=object)
    opts = EncodeOptions(device=args.device, workers=0, progress=False)

    rows: list[dict] = []

    def evaluate(name: str, model: str, weights: str | None = None, **extra) -> None:
        embedder = create_embedder(model, weights)
        encoder = Encoder(embedder, opts)
        base, queries = encoder.encode(list(files[train])), encoder.encode(list(files[test]))
        result = evaluate_vectors(base, [labels[i] for i in train], args.k, queries=queries,
                                  query_labels=[labels[i] for i in test], bootstrap=args.bootstrap, seed=args.seed)
        m = result.metrics
        rows.append({"name": name, "dim": embedder.dim, "precision": m["precision"], "map": m["map"],
                     "queries": result.retrieval_queries, **extra})
        print(f"  {name}: precision@{args.k} {m['precision'].value:.3f}, mAP@{args.k} {m['map'].value:.3f}",
              flush=True)

    evaluate("pixels (16x16, no model)", "pixels")
    evaluate("colorhist (no model)", "colorhist")

    for latent in [] if args.no_autoencoder else args.latent or [3, 10, 32]:
        out = work / f"ae-{latent}.lkm"
        t0 = time.perf_counter()
        seen = np.concatenate([train, unlabelled])
        result = train_autoencoder(pack, out, latent=latent, width=args.ae_width, subset=seen,
                                   options=TrainOptions(epochs=args.ae_epochs, batch_size=32, lr=2e-3, patience=6,
                                                        device=args.device, seed=args.seed),
                                   figures=work / f"ae-{latent}-figures")
        h = result.history
        print(f"autoencoder latent {latent}: {len(h.seconds)} epochs on {result.device} ({result.precision}), "
              f"median {np.median(h.seconds):.2f} s/epoch, best val MSE {min(h.val_loss):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        evaluate(f"autoencoder latent {latent}", str(out), epochs=len(h.seconds), epoch_s=float(np.median(h.seconds)),
                 device=result.device)

    weights = None if args.pretrained else "random"
    evaluate(f"{args.backbone} {'frozen (pretrained)' if args.pretrained else 'untrained (random weights)'}",
             args.backbone, weights)
    out = work / "finetuned.lkm"
    t0 = time.perf_counter()
    unfreeze = args.unfreeze if args.unfreeze == "all" else int(args.unfreeze)
    result = train_finetune(pack, out, backbone=args.backbone, weights=weights, subset=train, k=args.k,
                            config=FinetuneConfig(labels=(LABEL,), unfreeze=unfreeze, dim=128, hidden=512),
                            options=TrainOptions(epochs=args.ft_epochs, batch_size=32, lr=args.ft_lr, val_fraction=0.15,
                                                 patience=30, device=args.device, seed=args.seed),
                            figures=work / "finetuned-figures")
    h = result.history
    print(f"fine-tune: {len(h.seconds)} epochs on {result.device} ({result.precision}), median "
          f"{np.median(h.seconds):.2f} s/epoch, kept epoch {h.best_epoch + 1} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    evaluate(f"{args.backbone} fine-tuned on {LABEL}", str(out), epochs=len(h.seconds),
             epoch_s=float(np.median(h.seconds)), device=result.device)
    if args.pretrained:
        evaluate(f"{args.backbone} fine-tuned on {LABEL}, backbone features", f"{out}#backbone",
                 epochs=len(h.seconds), epoch_s=float(np.median(h.seconds)), device=result.device)

    print(f"\nHeld-out retrieval on {LABEL}: {len(test)} held-out photos searched among {len(train)} training "
          f"photos, {args.size} px pack, seed {args.seed} ({rows[0]['queries']} queries with a relevant item)\n")
    k = args.k
    print(f"| embedder | dim | precision@{k} (95% CI) | mAP@{k} (95% CI) | epochs | s/epoch (median) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        epochs = str(r.get("epochs", "-"))
        secs = f"{r['epoch_s']:.2f} ({r['device']})" if "epoch_s" in r else "-"
        print(f"| {r['name']} | {r['dim']} | {_fmt(r['precision'])} | {_fmt(r['map'])} | {epochs} | {secs} |")
    unsupervised = [r for r in rows if "fine-tuned" not in r["name"] and "untrained" not in r["name"]]
    tuned = max(r["precision"].value for r in rows if "fine-tuned" in r["name"])
    best = max(unsupervised, key=lambda r: r["precision"].value)
    verdict = "beats" if tuned > best["precision"].value else "does NOT beat"
    print(f"\nbest fine-tuned precision@{k} {tuned:.3f} {verdict} the best other row ({best['name']}, "
          f"{best['precision'].value:.3f}); total {time.perf_counter() - started:.0f} s")
    return 0


def _fmt(e) -> str:
    if e.low is None:
        return f"{e.value:.3f}"
    return f"{e.value:.3f} ({e.low:.3f}-{e.high:.3f})"


if __name__ == "__main__":
    sys.exit(main())
