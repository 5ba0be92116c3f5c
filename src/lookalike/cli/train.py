"""Training commands: ``pack``, ``train autoencoder|finetune|clip`` and ``classify`` (PyTorch is imported
when they run)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import LookalikeError
from .common import (
    CATALOG_ENV,
    Parents,
    encode_options,
    int_at_least,
    non_negative_int,
    positive_int,
    shown_catalog,
)

if TYPE_CHECKING:
    from rich.console import Console


def cmd_pack(args: argparse.Namespace, out: Console) -> int:
    source, images = _source(args)
    report = _pack_with_progress(source, args.out, args.size, images, args)
    if args.json:
        print(json.dumps({"path": str(report.path), "total": report.total, "packed": report.packed,
                          "failed": report.failed, "already": report.already}, indent=2))
        return 0
    print(f"{report.path}: {report.summary()}")
    if report.failed:
        from ..train.pack import Pack

        for item_id, path, reason in Pack.open(report.path).failures[:10]:
            print(f"  skipped {item_id} ({path}): {reason}", file=sys.stderr)
    return 0


def cmd_train_autoencoder(args: argparse.Namespace, out: Console) -> int:
    from ..train.autoencoder import train_autoencoder

    options = _train_options(args, default_batch=64, default_epochs=30, default_lr=1e-3)
    figures = args.figures or str(Path(args.out).with_suffix("")) + "-figures"
    with _training_pack(args, default_size=128) as pack:
        result = train_autoencoder(pack, args.out, latent=args.latent, width=args.width, embedding=args.embedding,
                                   options=options, figures=figures, colour_by=args.color_by,
                                   on_epoch=_epoch_printer(args, options.epochs))
    _summary(result, out)
    return 0


def _click_pairs(args: argparse.Namespace, pack, out: Console) -> tuple[tuple[int, int], ...]:
    """(query, clicked) pairs of the --catalog's logged clicks, as positions of the pack's photos."""
    from ..analysis.clicks import click_pairs
    from ..catalog.catalog import Catalog
    from ..core.errors import TrainingError

    location = args.catalog or os.environ.get(CATALOG_ENV)
    if not location:
        raise TrainingError("--pairs-from events reads the clicks a catalog logged: name it with --catalog "
                            f"(or ${CATALOG_ENV})")
    with Catalog.open(location) as catalog:
        pairs = click_pairs(catalog.store)
    position = {pid: n for n, pid in enumerate(pack.ids)}
    found = tuple((position[a], position[b]) for a, b in pairs if a in position and b in position)
    if len(found) < 2:
        raise TrainingError(f"{shown_catalog(str(location))}: {len(found)} (query, clicked) pairs among the "
                            f"photos being trained on ({len(pairs)} logged); fine-tuning on clicks needs two or "
                            "more: serve the catalog and let shoppers' clicks come in (POST /api/events)")
    out.print(f"click pairs: {len(found)} of {len(pairs)} logged (query, clicked) pairs are among the photos",
              highlight=False)
    return found


def cmd_train_finetune(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..train.finetune import FinetuneConfig, train_finetune

    options = _train_options(args, default_batch=32, default_epochs=15, default_lr=1e-3)
    unfreeze = args.unfreeze
    config = FinetuneConfig(labels=tuple(args.label), dim=args.dim, unfreeze=unfreeze, per_class=args.per_class,
                            colour_jitter=args.color_jitter, metric_weight=args.metric_weight,
                            freeze_bn=args.freeze_bn)
    figures = args.figures or str(Path(args.out).with_suffix("")) + "-figures"
    with _training_pack(args, default_size=224) as pack:
        if args.pairs_from == "events":
            config = dataclasses.replace(config, pairs=_click_pairs(args, pack, out), pair_weight=args.pair_weight)
        result = train_finetune(pack, args.out, backbone=args.backbone, weights=args.weights, config=config,
                                options=options, embedding=args.embedding, figures=figures, k=args.k,
                                on_epoch=_epoch_printer(args, options.epochs))
    _summary(result, out)
    m = result.metrics
    if m.get("before"):
        table = Table(title=f"held-out retrieval on {m['label']} ({m['before']['queries']} queries among the "
                      "training photos)", title_justify="left")
        for col in ("model", f"precision@{m['k']}", f"mAP@{m['k']}"):
            table.add_column(col, justify="left" if col == "model" else "right")
        table.add_row(f"{args.backbone} before (pooled features)", f"{m['before']['precision']:.3f}",
                      f"{m['before']['map']:.3f}")
        table.add_row("fine-tuned", f"{m['after']['precision']:.3f}", f"{m['after']['map']:.3f}")
        out.print(table)
        acc = ", ".join(f"{col} {a:.3f}" for col, a in m.get("val_accuracy", {}).items())
        if acc:
            out.print(f"held-out classification accuracy: {acc}", highlight=False)
    return 0


def cmd_train_clip(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..train.clip import RECALL_KS, TINY, ClipTrainConfig, base_model, image_size, train_clip

    if args.image_model is not None or (args.lock_image and _is_catalog(args.source)):
        return _train_text_tower(args, out)
    tiny = args.base == TINY
    options = _train_options(args, default_batch=64, default_epochs=10, default_lr=5e-4 if tiny else 1e-5)
    config = ClipTrainConfig(text_columns=tuple(args.text_column), stratify=args.stratify, type_label=args.type_label,
                             type_template=args.type_template, lock_image=args.lock_image,
                             colour_jitter=args.color_jitter)
    base = base_model(args.base, args.weights)  # before packing: a model that cannot be had fails first
    figures = args.figures or str(Path(args.out).with_suffix("")) + "-figures"
    with _training_pack(args, default_size=image_size(base)) as pack:
        result = train_clip(pack, args.out, base=base, config=config, options=options, figures=figures,
                            on_epoch=_epoch_printer(args, options.epochs))
    _summary(result, out)
    m = result.metrics
    if m.get("before"):
        b, a = m["before"], m["after"]
        table = Table(title=f"held-out: {b['photos']} photos, {b['queries']} texts of {args.text_column[0]}",
                      title_justify="left")
        table.add_column("metric")
        for col in (f"{args.base} before", "after", "chance"):
            table.add_column(col, justify="right")
        rows = [(f"text->image recall@{k}", f"t2i_recall@{k}") for k in RECALL_KS]
        rows += [(f"image->text recall@{k}", f"i2t_recall@{k}") for k in RECALL_KS]
        if "type_precision@10" in b:
            rows.append((f"{args.type_label} name as query, precision@10 ({b['types']} types)", "type_precision@10"))
        for title, key in rows:
            table.add_row(title, f"{b[key]:.3f}", f"{a[key]:.3f}", f"{b['chance_' + key]:.3f}")
        out.print(table)
    return 0


def _is_catalog(source: str) -> bool:
    from ..catalog.catalog import Catalog

    return not source.endswith((".pack", ".csv")) and Catalog.exists(source)


def _train_text_tower(args: argparse.Namespace, out: Console) -> int:
    """``train clip --image-model NAME --lock-image`` (or a catalog as SOURCE): LiT, a text tower only."""
    from rich.table import Table

    from ..catalog.catalog import Catalog
    from ..models.registry import canonical_name
    from ..train.clip import RECALL_KS
    from ..train.lit import LitConfig, catalog_data, source_data, train_text_tower

    if not args.lock_image:
        raise LookalikeError(f"--image-model {args.image_model} trains a text tower against a locked image model; "
                             "add --lock-image")
    if args.base != "tiny":
        raise LookalikeError(f"--base {args.base} and --image-model are two ways to train: drop --base for a text "
                             "tower (LiT), or --image-model to fine-tune a text+image model")
    if args.source.endswith(".pack"):
        raise LookalikeError(f"{args.source}: a pack holds letterboxed photos, not the vectors a catalog stores; "
                             "give the manifest (or folder) or a catalog built with the image model as SOURCE")
    options = _train_options(args, default_batch=128, default_epochs=400, default_lr=2e-3, default_patience=30)
    config = LitConfig(text_columns=tuple(args.text_column), stratify=args.stratify, type_label=args.type_label,
                       type_template=args.type_template)
    if _is_catalog(args.source):
        if args.weights is not None:
            raise LookalikeError(f"{args.source} is a catalog: its stored vectors are used as they are; drop "
                                 f"--weights {args.weights}")
        with Catalog.open(args.source) as catalog:
            if args.image_model is not None and canonical_name(args.image_model) != catalog.config.embedder.name:
                raise LookalikeError(f"{args.source} holds {catalog.config.embedder.name} vectors, not "
                                     f"{args.image_model}; drop --image-model to train against its vectors")
            data = catalog_data(catalog)
    else:
        source, images = _source(args)
        data = source_data(source, images, args.image_model, args.weights, encode_options(args))
    result = train_text_tower(data, args.out, config=config, options=options,
                              on_epoch=_epoch_printer(args, options.epochs))
    h = result.history
    stop = " (stopped early)" if h.stopped_early else ""
    out.print(f"{result.model_path}: text tower for {data.image.name} ({data.image.dim}-d) from "
              f"{result.metrics['with_text']} of {len(data.ids)} photos (those with a text); kept epoch "
              f"{h.best_epoch + 1}{stop}", highlight=False)
    a = result.metrics.get("after")
    if a:
        table = Table(title=f"held-out: {a['photos']} photos, {a['queries']} texts of {args.text_column[0]}",
                      title_justify="left")
        for col in ("metric", "text tower", "chance"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        rows = [(f"text->image recall@{k}", f"t2i_recall@{k}") for k in RECALL_KS]
        rows += [(f"image->text recall@{k}", f"i2t_recall@{k}") for k in RECALL_KS]
        if "type_precision@10" in a:
            rows.append((f"{args.type_label} name as query, precision@10 ({a['types']} types; at most "
                         f"{a['max_type_precision@10']:.3f})", "type_precision@10"))
            rows.append((f"{args.type_label} name as query, precision@10 of what is reachable (at most 1)",
                         "type_reachable_precision@10"))
        for title, key in rows:
            table.add_row(title, f"{a[key]:.3f}", f"{a['chance_' + key]:.3f}")
        out.print(table)
    out.print(f"next: lookalike text add {result.model_path} --catalog CATALOG (a catalog indexed with --model "
              f"{data.image.name})", highlight=False)
    return 0


def cmd_classify(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..train.classify import classify_images

    predictions = classify_images(args.images, args.model, top=args.top, options=encode_options(args))
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return 0
    for p in predictions:
        table = Table(title=p.image, title_justify="left")
        table.add_column("label")
        table.add_column("prediction")
        table.add_column("probability", justify="right")
        for col, top in p.labels.items():
            for rank, (name, prob) in enumerate(top):
                table.add_row(col if rank == 0 else "", name, f"{prob:.3f}")
        out.print(table)
    return 0


# -- helpers ----------------------------------------------------------------------------------------------


def _source(args: argparse.Namespace) -> tuple[str, str | None]:
    """``SOURCE --labels styles.csv``: the manifest is the source and SOURCE its image folder."""
    if getattr(args, "labels", None):
        return args.labels, args.source if args.images is None else args.images
    return args.source, args.images


def _pack_with_progress(source, out_path, size, images, args):
    from ..train.pack import pack_source

    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="packing", unit="img", file=sys.stderr)
    try:
        return pack_source(source, out_path, size=size, images=images, workers=args.workers or 0,
                           max_pixels=args.max_pixels, on_progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()


@contextmanager
def _training_pack(args: argparse.Namespace, default_size: int):
    """The pack to train on: SOURCE itself when it is a ``.pack``, else a temporary pack of SOURCE."""
    from ..train.pack import Pack

    if args.source.endswith(".pack") and not getattr(args, "labels", None):
        if args.size is not None:
            raise LookalikeError(f"--size applies when packing; {args.source} is already packed")
        yield Pack.open(args.source)
        return
    source, images = _source(args)
    with tempfile.TemporaryDirectory(prefix="lookalike-pack-") as tmp:
        report = _pack_with_progress(source, Path(tmp) / "train.pack", args.size or default_size, images, args)
        if not args.quiet:
            print(f"packed {report.summary()} (keep a pack with `lookalike pack` to reuse it)", file=sys.stderr)
        yield Pack.open(Path(tmp) / "train.pack")


def _train_options(args: argparse.Namespace, default_batch: int, default_epochs: int, default_lr: float,
                   default_patience: int = 5):
    from ..train.common import TrainOptions

    return TrainOptions(
        epochs=args.epochs or default_epochs, batch_size=args.batch_size or default_batch, lr=args.lr or default_lr,
        val_fraction=args.val, patience=default_patience if args.patience is None else args.patience,
        device=args.device, precision=args.precision,
        seed=args.seed, resume=args.resume,
    )


def _epoch_printer(args: argparse.Namespace, epochs: int):
    def show(epoch, history) -> None:
        if args.quiet:
            return
        val = f"  val {history.val_loss[-1]:.4f}" if history.val_loss else ""
        best = "  *" if history.best_epoch == epoch else ""
        print(f"epoch {epoch + 1}/{epochs}  train {history.train_loss[-1]:.4f}{val}  lr {history.lr[-1]:.2e}  "
              f"{history.seconds[-1]:.2f} s{best}", file=sys.stderr, flush=True)

    return show


def _summary(result, out: Console) -> None:
    from ..train.common import describe_times

    h = result.history
    stop = " (stopped early)" if h.stopped_early else ""
    out.print(f"{result.model_path}: kept epoch {h.best_epoch + 1}{stop}; {describe_times(h.seconds)} on "
              f"{result.device} ({result.precision})", highlight=False)
    for fig in result.figures:
        out.print(f"  figure {fig}", highlight=False)
    out.print(f"next: lookalike index SOURCE --catalog shop.lk --model {result.model_path}", highlight=False)


def _unfreeze(text: str) -> int | str:
    if text == "all":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of stages (0 = frozen) or 'all'")
    return int(text)


def add_parsers(sub, parents: Parents) -> None:
    """Add ``pack``, ``train`` and ``classify`` to the ``lookalike`` command."""
    common, run = parents.common, parents.run

    source_args = argparse.ArgumentParser(add_help=False)
    source_args.add_argument("--labels", help="a CSV manifest (e.g. styles.csv) whose images are in SOURCE")
    source_args.add_argument("--images", help="image folder for a manifest SOURCE (default: images/ beside it)")

    p = sub.add_parser("pack", parents=[common, run, source_args], help="decode a catalog once into a .pack",
                       description="Decode, letterbox to SIZE x SIZE (aspect kept, white bars) and store every "
                       "image as uint8 in one memory-mapped file with its id and labels, for fast training. "
                       "Unreadable files are recorded with their reason; an interrupted run resumes.")
    p.add_argument("source", help="a folder of images, or a CSV manifest")
    p.add_argument("--size", type=int_at_least(8), default=128, help="square side in pixels (default 128)")
    p.add_argument("--out", required=True, help="the .pack file to write")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_pack)

    train = argparse.ArgumentParser(add_help=False)
    train.add_argument("--out", required=True, help="the model file to write (.lkm)")
    train.add_argument("--epochs", type=positive_int, default=None, help="most epochs to run")
    train.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    train.add_argument("--val", type=float, default=0.15, help="share held out for validation (default 0.15)")
    train.add_argument("--patience", type=non_negative_int, default=None,
                       help="stop after this many epochs without a better validation loss (0: never; default 5, "
                       "30 for a text tower)")
    train.add_argument("--seed", type=non_negative_int, default=0,
                       help="seed: same seed and device, same model (default 0)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    train.add_argument("--size", type=int_at_least(8), default=None,
                       help="square side when SOURCE must be packed first")
    train.add_argument("--figures", help="folder for loss curves and other figures (default OUT-figures)")

    p = sub.add_parser("train", help="train an embedder on your own catalog (autoencoder, finetune, clip)",
                       description="Learn embeddings from your catalog; the .lkm written is an embedder for "
                       "`lookalike index --model FILE.lkm`.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    q = kinds.add_parser("autoencoder", parents=[common, run, train, source_args], help="no labels needed",
                         description="A convolutional autoencoder (skip-free bottleneck) whose latent vector "
                         "describes each photo. Writes loss curves, a reconstruction grid per epoch, their GIF, and "
                         "for --latent 2 or 3 a scatter of the latent space.")
    q.add_argument("source", help="a .pack from `lookalike pack` (fastest), or a folder/manifest to pack first")
    q.add_argument("--latent", type=positive_int, default=32, help="latent size (default 32)")
    q.add_argument("--width", type=positive_int, default=32, help="channels of the first level (default 32)")
    q.add_argument("--embedding", default="latent", choices=["latent", "pooled"],
                   help="what the embedder gives: the latent, or pooled encoder features (default latent)")
    q.add_argument("--color-by", help="label column colouring the latent scatter")
    q.set_defaults(func=cmd_train_autoencoder)

    q = kinds.add_parser("finetune", parents=[common, run, train, source_args], help="learn your labels",
                         description="Fine-tune a backbone with a projection head on label columns: cross-entropy "
                         "plus supervised contrastive loss, class-balanced batches, product-photo augmentations. "
                         "Prints held-out retrieval before and after; the model also classifies "
                         "(`lookalike classify`).")
    q.add_argument("source", help="a folder (with --labels CSV), a manifest, or a .pack with labels")
    q.add_argument("--label", action="append", required=True, help="label column to learn; repeatable")
    q.add_argument("--backbone", default="resnet50", help="registry name: resnet50, timm:<name>, ... (default "
                   "resnet50)")
    q.add_argument("--weights", default=None, help="backbone weights: a local file, or 'random' (default: hub)")
    q.add_argument("--unfreeze", default=0, type=_unfreeze,
                   help="backbone stages to train, from the last (default 0: frozen), or 'all'")
    q.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the backbone's BatchNorm statistics while it learns (default: on from pretrained "
                   "weights, off from --weights random)")
    q.add_argument("--dim", type=positive_int, default=128, help="embedding size (default 128)")
    q.add_argument("--per-class", type=int_at_least(2), default=4,
                   help="photos per class in a balanced batch (default 4)")
    q.add_argument("--metric-weight", type=float, default=1.0, help="weight of the contrastive loss (default 1)")
    q.add_argument("--color-jitter", action=argparse.BooleanOptionalAction, default=None,
                   help="colour jitter (default: on unless a --label is a colour)")
    q.add_argument("--embedding", default="head", choices=["head", "backbone"],
                   help="what the embedder gives: the trained projection, or the backbone's features")
    q.add_argument("-k", type=positive_int, default=5, help="k of the before/after precision@k and mAP@k (default 5)")
    q.add_argument("--pairs-from", choices=["events"], default=None,
                   help="events: (item searched from, item clicked or added to the cart) pairs of the --catalog's "
                   "logged searches are positives of a contrastive term beside the label losses")
    q.add_argument("--catalog", default=None, help="with --pairs-from events: the served catalog whose clicks to "
                   f"use (default ${CATALOG_ENV})")
    q.add_argument("--pair-weight", type=float, default=1.0, help="weight of the click-pair term (default 1)")
    q.set_defaults(func=cmd_train_finetune)

    q = kinds.add_parser("clip", parents=[common, run, train, source_args], help="learn your titles (text+image)",
                         description="Contrastive fine-tuning of a text+image model on (photo, text) pairs from one "
                         "or more text columns (titles, article types, colours), with a held-out split; prints "
                         "text-to-image and image-to-text recall@1/5/10 on the held-out photos before and after. The "
                         ".lkm written is a text+image embedder: index, search --text, tag, serve.")
    q.add_argument("source", help="a manifest (e.g. styles.csv with --images), a folder with --labels, or a .pack; "
                   "with --lock-image also a catalog (its stored vectors and labels)")
    q.add_argument("--text-column", action="append", required=True, metavar="COLUMN",
                   help="a text column to learn (e.g. productDisplayName); repeat to add more (articleType, "
                   "baseColour): each epoch draws one of an item's texts")
    q.add_argument("--base", default="tiny", help="the model to start from: a text+image model of the registry "
                   "(fashion-siglip, clip-vit-b32, ...) or tiny (small, random, no download; default)")
    q.add_argument("--weights", default=None, help="base weights: a local file, or 'random' (default: hub)")
    q.add_argument("--stratify", default=None, metavar="LABEL", help="keep this label in proportion in the "
                   "held-out split (e.g. articleType)")
    q.add_argument("--type-label", default=None, metavar="LABEL", help="also score each value of this label, as "
                   "words, as a query among the held-out photos (precision@10 before and after)")
    q.add_argument("--type-template", default="{}", help="prompt for --type-label values (default '{}')")
    q.add_argument("--lock-image", action="store_true", help="train the text tower only (image tower frozen); with "
                   "--image-model, or a catalog as SOURCE: LiT, a text tower for that image model's catalogs")
    q.add_argument("--image-model", default=None, metavar="NAME", help="train a text tower (LiT: bag of n-grams, "
                   "CLIP's loss) against this locked image model of the registry (mobilenetv2, resnet50, timm:...), "
                   "on the vectors `index` stores; --weights are its weights; add it with `lookalike text add`")
    q.add_argument("--color-jitter", action=argparse.BooleanOptionalAction, default=False,
                   help="colour jitter of the photos (default off: texts name colours)")
    q.set_defaults(func=cmd_train_clip)

    p = sub.add_parser("classify", parents=[common, run], help="predict labels with a fine-tuned model",
                       description="The most probable labels of photos, from a model of `lookalike train finetune`.")
    p.add_argument("images", nargs="+", help="photos to classify")
    p.add_argument("--model", required=True, help="the .lkm file")
    p.add_argument("--top", type=positive_int, default=3, help="labels to show per column (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_classify)
