"""Analysis commands: ``evaluate``, ``cluster``, ``tag``, ``duplicates``, ``recommend`` (passes over a whole
catalog)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    CATALOG_ENV,
    Parents,
    encode_options,
    engine_from_args,
    int_at_least,
    int_range,
    json_float,
    non_negative_int,
    positive_int,
    shown_catalog,
    similarity,
)
from .rules import add_ranking_options, ranking_from_args

if TYPE_CHECKING:
    from rich.console import Console


def cmd_evaluate(args: argparse.Namespace, out: Console) -> int:
    from ..analysis.evaluate import REFERENCES, evaluate_catalogs
    from ..core.errors import QueryError

    if args.events:
        return _evaluate_events(args, out)
    if args.against or args.against_no_rules or args.against_rules:
        raise QueryError("--against, --against-no-rules and --against-rules compare settings on logged clicks: use "
                         "them with --events")
    if not (args.label or args.text_from or args.text_label):
        raise QueryError("say what to judge by: --label LABEL (photos), --text-from COLUMN or --text-label LABEL "
                         "(words)")
    if args.text_from or args.text_label:
        words = _evaluate_words(args)
        if not args.label:
            _print_words(words, args, out)
            return 0
    references = [] if args.no_reference else list(REFERENCES)
    args.catalog = args.catalog or [os.environ[CATALOG_ENV]]
    results = []
    for label in args.label or []:
        rows = evaluate_catalogs(args.catalog, label, args.k, queries=args.queries, query_images=args.query_images,
                                 references=references, bootstrap=args.bootstrap, seed=args.seed,
                                 options=encode_options(args))
        results.append(rows)
    if args.json:
        extra = [row.to_dict() for rows in words for row in rows] if args.text_from or args.text_label else []
        print(json.dumps([row.to_dict(per_class=args.per_class) for rows in results for row in rows] + extra,
                         indent=2, default=json_float))
        return 0
    if args.text_from or args.text_label:
        _print_words(words, args, out)
    for rows in results:
        _metrics_table(rows, out)
        if args.per_class:
            for row in rows:
                if row.embedder not in ("random ranking", "colour histogram"):
                    _per_class_table(row, out)
    return 0


def _evaluate_events(args: argparse.Namespace, out: Console) -> int:
    """``evaluate --events``: the first --catalog's logged searches and clicks, replayed against it and against
    every --against catalog (``analysis.clicks``)."""
    from contextlib import ExitStack

    from rich.table import Table

    from ..analysis.clicks import Setting, evaluate_clicks
    from ..catalog.catalog import Catalog
    from ..catalog.ranking import Ranking

    locations = args.catalog or [os.environ[CATALOG_ENV]]
    with ExitStack() as stack:
        catalogs = [stack.enter_context(Catalog.open(path)) for path in [*locations, *(args.against or [])]]
        settings = [Setting("this catalog" if n == 0 else f"against {shown_catalog(str(path))}", catalog)
                    for n, (path, catalog) in enumerate(zip([*locations, *(args.against or [])], catalogs,
                                                                strict=True))]
        if args.against_no_rules:
            settings.append(Setting("this catalog, no rules", catalogs[0], rules=False))
        for path in args.against_rules or []:
            ranking = Ranking.from_toml(path)
            catalogs[0].check_ranking(ranking)  # a pin or label the catalog lacks is told before any replay
            settings.append(Setting(f"this catalog, rules of {Path(path).name}", catalogs[0], rules=False,
                                    ranking=ranking))
        report = evaluate_clicks(catalogs[0].store, settings, args.k)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=json_float))
        return 0
    k = report.k
    table = Table(title=f"logged clicks: {report.replayed} of {report.judged} clicked searches replayed, k={k}",
                  title_justify="left")
    for col in ("setting", "model", "ranking", "queries", "click MRR", f"recall@{k}", f"CTR@{k}",
                "p (MRR vs first)"):
        table.add_column(col, justify="left" if col in ("setting", "model", "ranking") else "right",
                         no_wrap=col == "setting")
    for row in report.rows:
        table.add_row(row.name, row.model, row.ranking, str(row.queries), f"{row.mrr:.3f}", f"{row.recall:.3f}",
                      f"{row.ctr:.3f}", "" if row.p_value is None else f"{row.p_value:.3g}")
    out.print(table)
    if report.observed_ctr is not None:
        out.print(f"observed CTR@{k}: {report.clicked_impressions} of {report.impressions} impressions clicked "
                  f"({report.observed_ctr:.3f})", highlight=False)
    for why, n in sorted(report.skipped.items()):
        out.print(f"note: {n} clicked searches not replayed: {why}", highlight=False)
    return 0


def _evaluate_words(args: argparse.Namespace) -> list:
    """Rows per (catalog, column) for --text-from and --text-label; chance from the first catalog only."""
    from ..analysis.words import TEXT_FROM, TEXT_LABEL, evaluate_words
    from ..catalog.catalog import Catalog

    asked = [(TEXT_FROM, c) for c in args.text_from or []] + [(TEXT_LABEL, c) for c in args.text_label or []]
    out = []
    for kind, column in asked:
        rows = []
        for n, path in enumerate(args.catalog):
            with Catalog.open(path) as catalog:
                rows += evaluate_words(catalog, kind, column, args.k, template=args.text_template,
                                       bootstrap=args.bootstrap, seed=args.seed, options=encode_options(args),
                                       chance=n == 0 and not args.no_reference)
        out.append(rows)
    return out


def _print_words(results: list, args: argparse.Namespace, out: Console) -> None:
    from rich.table import Table

    from ..analysis.evaluate import format_estimate
    from ..analysis.words import TEXT_FROM, word_metric_names

    if args.json:
        print(json.dumps([row.to_dict() for rows in results for row in rows], indent=2, default=json_float))
        return
    for rows in results:
        first = rows[0]
        what = (f"each item's own {first.column} as the query" if first.kind == TEXT_FROM else
                f"each {first.column} value as the query ({first.template!r})")
        table = Table(title=f"words: {what}, k={first.k}, {first.queries} queries (± half the 95% bootstrap "
                      "interval)", title_justify="left")
        table.add_column("run", no_wrap=True)
        table.add_column("embedder", no_wrap=True)
        names = word_metric_names(first.kind, first.k)
        for _, title in names:
            table.add_column(title, justify="right")
        for row in rows:
            table.add_row(row.name, row.embedder, *(format_estimate(row.metrics[m]).replace(" ±0.", "±.")
                                                    for m, _ in names))
        out.print(table)
        if args.per_class and first.per_value:
            per = Table(title=f"per {first.column} value: {first.name}", title_justify="left")
            for col in ("value", "items", "precision", "recall", "AP"):
                per.add_column(col, justify="left" if col == "value" else "right")
            for v in first.per_value:
                per.add_row(v["value"], str(v["items"]), *(_fmt(v[m]) for m in ("precision", "recall", "map")))
            out.print(per)
        for note in dict.fromkeys(note for row in rows for note in row.notes):
            out.print(f"note: {note}", highlight=False)


def _metrics_table(rows, out: Console) -> None:
    from rich.table import Table

    from ..analysis.evaluate import METRIC_NAMES, format_estimate

    first = rows[0]
    table = Table(title=f"{first.label}, k={first.k}, {first.mode}: {first.retrieval_queries} queries "
                  f"(± half the 95% bootstrap interval)", title_justify="left")
    table.add_column("run", no_wrap=True)
    table.add_column("embedder", no_wrap=True)
    for name in METRIC_NAMES:
        table.add_column(_SHORT.get(name, METRIC_NAMES[name]).replace("@k", f"@{first.k}"), justify="right")
    table.add_column("top-1 macro F1", justify="right")
    for row in rows:
        f1 = row.classification["top1"].macro_f1
        table.add_row(row.name, row.embedder,
                      *(format_estimate(row.metrics[n]).replace(" ±0.", "±.") for n in METRIC_NAMES), f"{f1:.3f}")
    out.print(table)
    excluded = ", ".join(f"{name} {n}" for name, n in first.excluded.items() if n)
    out.print(f"items searched {first.items}; queries with the label {first.queries}; not used as queries: "
              f"{excluded or 'none'}", highlight=False)
    for note in dict.fromkeys(note for row in rows for note in row.notes):
        out.print(f"note: {note}", highlight=False)


_SHORT = {"precision": "P@k", "recall": "R@k", "hit_rate": "hit@k", "top1_accuracy": "top-1 acc",
          "majority_accuracy": "maj-of-k acc", "mean_distance": "mean dist", "median_distance": "median dist"}


def _per_class_table(row, out: Console) -> None:
    from rich.table import Table

    table = Table(title=f"per class: {row.name} ({row.label})", title_justify="left")
    for col in ("class", "items", "queries", "precision", "recall", "AP", "hit rate", "top-1 P", "top-1 R",
                "top-1 F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in row.per_class:
        table.add_row(c.label, str(c.items), str(c.queries), *(_fmt(v) for v in (
            c.precision, c.recall, c.map, c.hit_rate, c.top1.precision, c.top1.recall, c.top1.f1)),
            str(c.top1.support))
    out.print(table)


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def cmd_cluster(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..analysis.cluster import cluster_catalog
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        result = cluster_catalog(catalog, args.n, auto=args.range if args.auto else None, label=args.label,
                                 seed=args.seed)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=json_float))
        return 0
    if result.scores:
        out.print("silhouette by n: " + ", ".join(f"{n}: {s:.3f}" for n, s in result.scores.items()),
                  highlight=False)
    table = Table(title=f"{result.n} clusters of {result.items} items (stored in {shown_catalog(args.catalog)})",
                  title_justify="left")
    for col in ("cluster", "items", f"most common {args.label}" if args.label else "", "nearest the centre"):
        if col:
            table.add_column(col, justify="right" if col in ("cluster", "items") else "left", overflow="fold")
    for c in result.clusters:
        top = [f"{c.top_label} ({c.top_share:.0%})" if c.top_label else "-"] if args.label else []
        table.add_row(str(c.cluster), str(c.size), *top, ", ".join(c.samples))
    out.print(table)
    purity = f"; purity against {args.label} {result.purity:.3f}" if result.purity is not None else ""
    out.print(f"silhouette {result.silhouette:.3f}{purity}", highlight=False)
    out.print(f"next: lookalike similar ID --catalog {shown_catalog(args.catalog)} --same-cluster", highlight=False)
    return 0


def cmd_duplicates(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..analysis.duplicates import find_duplicates
    from ..catalog.catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        report = find_duplicates(catalog, args.threshold, neighbours=args.neighbours, where=args.where,
                                 block=args.block_size, threads=args.threads, progress=False if args.quiet else None)
    if args.csv:
        report.write_csv(args.csv)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    if report.groups:
        shown = report.groups[:args.limit]
        table = Table(title=f"duplicate groups in {shown_catalog(args.catalog)}", title_justify="left")
        for col in ("group", "kind", "size", "similarity", "representative", "members"):
            table.add_column(col, justify="right" if col in ("group", "size") else "left", overflow="fold")
        for g in shown:
            others = [i for i in g.ids if i != g.representative]
            more = f" ... +{len(others) - 8}" if len(others) > 8 else ""
            table.add_row(str(g.group), g.kind, str(len(g.members)), f"{g.min_similarity:.3f}-{g.max_similarity:.3f}",
                          g.representative, ", ".join(others[:8]) + more)
        out.print(table)
        if len(report.groups) > len(shown):
            out.print(f"... and {len(report.groups) - len(shown)} more groups (--limit N, --json or --csv)")
    written = f"; groups written to {args.csv}" if args.csv else ""
    print(f"{shown_catalog(args.catalog)}: {report.summary()}{written}")
    return 0


def cmd_recommend(args: argparse.Namespace, out: Console) -> int:
    from ..analysis.recommend import recommend
    from ..catalog.catalog import Catalog

    engine = engine_from_args(args)
    with Catalog.open(args.catalog) as catalog:
        report = recommend(catalog, args.k, args.out, fmt=args.format, where=args.where,
                           queries_where=args.queries_where, dedupe=args.dedupe, threshold=args.threshold,
                           group_by=args.group_by, block=args.block_size, threads=args.threads,
                           resume=not args.restart, progress=False if args.quiet else None, engine=engine,
                           ranking=ranking_from_args(args), rules=not args.no_rules)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0


def seed_parser() -> argparse.ArgumentParser:
    seed = argparse.ArgumentParser(add_help=False)
    seed.add_argument("--seed", type=non_negative_int, default=0, help="seed for sampling and resampling (0)")
    return seed


def cmd_tag(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from ..analysis.tag import DEFAULT_TEMPLATE, tag_catalog
    from ..catalog.catalog import Catalog
    from ..core.errors import QueryError

    with Catalog.open(args.catalog) as catalog:
        if args.remove:
            removed = catalog.remove_predicted(args.column)
            out.print(f"removed the predicted label {args.column!r} from {removed} items", highlight=False)
            return 0
        if bool(args.classes) == bool(args.classes_from):
            raise QueryError("give the classes as --classes a,b,c or take them from a label with --classes-from "
                             "COLUMN (one of the two)")
        if args.classes_from:
            values = sorted({v for _, v in catalog.store.label_values(args.classes_from)})
            if not values:
                raise QueryError(f"no item has a label {args.classes_from!r}; labels in this catalog: "
                                 f"{', '.join(catalog.store.label_names()) or 'none'}")
            classes = values
        else:
            classes = [c.strip() for c in args.classes.split(",")]
        against = args.against or (args.classes_from if args.evaluate else None)
        if args.evaluate and against is None:
            raise QueryError("--evaluate needs the true labels: --against COLUMN (or --classes-from COLUMN)")
        report = tag_catalog(catalog, args.column, classes, args.template or [DEFAULT_TEMPLATE], against=against,
                             options=encode_options(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=json_float))
        return 0
    rule = ("softmax probability over the classes" if report.rule == "softmax"
            else "sigmoid probability of the class")
    out.print(f"{args.catalog}: {report.items} items tagged {report.column!r} from {len(report.classes)} classes "
              f"({report.model}, prompts like {report.templates[0]!r}) in {report.seconds:.1f} s; mean score "
              f"{report.mean_score:.3f} ({rule})", highlight=False)
    table = Table(title=f"predicted {report.column}", title_justify="left")
    table.add_column("class")
    table.add_column("items", justify="right")
    for c, n in sorted(report.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(c, str(n))
    out.print(table)
    ev = report.evaluation
    if ev is not None:
        out.print(f"against {ev.against}: accuracy {ev.accuracy:.3f}, macro F1 {ev.macro_f1:.3f} over "
                  f"{ev.items} items; chance: majority class {ev.chance_majority:.3f}, uniform guess "
                  f"{ev.chance_uniform:.3f}" + (f"; {ev.unreachable} items have a true value outside the classes"
                                               if ev.unreachable else ""), highlight=False)
        if ev.confusions:
            confusions = Table(title="most frequent confusions", title_justify="left")
            for col in ("true", "predicted", "items"):
                confusions.add_column(col, justify="right" if col == "items" else "left")
            for t, p, n in ev.confusions:
                confusions.add_row(t, p, str(n))
            out.print(confusions)
    out.print(f"next: lookalike similar ID --catalog {args.catalog} --where {report.column}={report.classes[0]}",
              highlight=False)
    return 0


def add_parsers(sub, parents: Parents) -> None:
    """Add the analysis commands to the ``lookalike`` parser."""
    common, run, catalog_arg = parents.common, parents.embed, parents.catalog
    from ..analysis.duplicates import DEFAULT_NEIGHBOURS
    from ..analysis.neighbours import DEFAULT_BLOCK, DEFAULT_THREADS
    from ..catalog.dedupe import DEFAULT_THRESHOLD

    seed = seed_parser()
    p = sub.add_parser("evaluate", parents=[common, run, seed], help="retrieval metrics and kNN classification",
                       description="How good are the recommendations? Leave-one-out over the catalog (or held-out "
                       "--queries): precision/recall/mAP/nDCG/hit rate@k, mean and median neighbour distance, "
                       "kNN classification, with reference rows: chance and a colour histogram of the same photos.")
    p.add_argument("--catalog", action="append", required=not os.environ.get(CATALOG_ENV), default=None,
                   help="a catalog (folder or postgresql:// URL); repeat to compare several (e.g. one per embedder) "
                   f"side by side (default ${CATALOG_ENV})")
    p.add_argument("--label", action="append", default=None,
                   help="items with equal values of this label are relevant (e.g. articleType); repeatable; "
                   "'cluster' uses the stored clusters")
    p.add_argument("--text-from", action="append", default=None, metavar="COLUMN",
                   help="words: each item's own text in COLUMN (e.g. productDisplayName) is a query that should find "
                   "it: recall@k, MRR@k (a catalog built with a text+image model)")
    p.add_argument("--text-label", action="append", default=None, metavar="LABEL",
                   help="words: each value of LABEL (e.g. articleType) in --text-template is a query; items with "
                   "that value are relevant: precision@k, recall@k, mAP@k, nDCG@k")
    p.add_argument("--text-template", default=None, metavar="TEXT",
                   help="prompt for --text-label values, with {} for the value (default 'a photo of {}')")
    p.add_argument("-k", type=positive_int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--queries", help="held-out queries: a CSV manifest (id or path column + label columns)")
    p.add_argument("--query-images", help="image folder of the --queries manifest (default: images/ beside it)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="resamples for the 95%% intervals (default 1000; 0: none)")
    p.add_argument("--no-reference", action="store_true", help="leave out the chance and colour-histogram rows")
    p.add_argument("--per-class", action="store_true", help="also print (and put in --json) the per-class table")
    p.add_argument("--events", action="store_true",
                   help="replay the searches the server logged and score them by shoppers' clicks and add-to-cart "
                   "events: click MRR, recall@k, CTR@k, for this catalog and each --against catalog")
    p.add_argument("--against", action="append", default=None, metavar="CATALOG",
                   help="with --events: another catalog (e.g. another model's) to replay the same searches "
                   "against, side by side, with a paired t-test against the first; repeatable")
    p.add_argument("--against-no-rules", action="store_true",
                   help="with --events: also replay on this catalog without its default rules (an offline A/B of "
                   "the rules)")
    p.add_argument("--against-rules", action="append", default=None, metavar="FILE.toml",
                   help="with --events: also replay on this catalog with these rules instead of its own (a rules "
                   "file as `lookalike rules set` takes); repeatable")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cluster", parents=[common, catalog_arg, seed], help="k-means clusters, stored per item",
                       description="k-means on the catalog's vectors, stored per item (for `similar "
                       "--same-cluster`, `--label cluster`, `plot map --color-by cluster`). Replaces earlier "
                       "clusters.")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("-n", type=int_at_least(2), help="number of clusters")
    how.add_argument("--auto", action="store_true", help="choose n by silhouette over --range")
    p.add_argument("--range", type=int_range, default=(2, 12), metavar="LOW:HIGH", help="n tried by --auto (2:12)")
    p.add_argument("--label", help="report each cluster's most common value and the purity against this label")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_cluster)


    passes = argparse.ArgumentParser(add_help=False)
    passes.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                        help=f"search threads (default {DEFAULT_THREADS})")
    passes.add_argument("--block-size", type=positive_int, default=DEFAULT_BLOCK,
                        help=f"queries per index search (default {DEFAULT_BLOCK})")
    passes.add_argument("--threshold", type=similarity, default=DEFAULT_THRESHOLD,
                        help=f"cosine similarity at which two items are near duplicates (default {DEFAULT_THRESHOLD})")

    p = sub.add_parser("tag", parents=[common, run, catalog_arg], help="zero-shot labels from words, stored per item",
                       description="Label every item with the class whose words its photo matches best (a catalog "
                       "built with a text+image model). The predicted label is stored apart from the manifest's "
                       "labels and can be used by --where and the page's filters; --evaluate compares it with an "
                       "existing label.")
    p.add_argument("--column", required=True, help="name of the predicted label, e.g. style")
    p.add_argument("--classes", default=None, help="comma-separated class names, e.g. casual,formal,sports,party")
    p.add_argument("--classes-from", default=None, metavar="LABEL",
                   help="take the classes from the values of an existing label (and --evaluate against it)")
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help="prompt with {} for the class name (default 'a photo of {}'); repeat to average several")
    p.add_argument("--evaluate", action="store_true",
                   help="compare the predictions with a label: accuracy, macro F1, top confusions, chance")
    p.add_argument("--against", default=None, metavar="LABEL", help="the label --evaluate compares with "
                   "(default: --classes-from)")
    p.add_argument("--remove", action="store_true", help="delete the predicted label --column instead")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("duplicates", parents=[common, catalog_arg, passes], help="exact and near-duplicate groups",
                       description="Group items that are the same file (content hash) or look the same "
                       "(similarity >= --threshold, joined into connected components). A whole-catalog run is "
                       "saved for `search/similar/recommend --dedupe`.")
    p.add_argument("--neighbours", type=positive_int, default=DEFAULT_NEIGHBOURS,
                   help=f"neighbours searched per item (default {DEFAULT_NEIGHBOURS}; more are fetched for items "
                   "whose last neighbour is still above the threshold)")
    p.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                   help="only items with this label value (not saved for --dedupe)")
    p.add_argument("--csv", help="also write one row per group member to this CSV file")
    p.add_argument("--limit", type=non_negative_int, default=20, help="groups to print (default 20; all in --json)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_duplicates)

    p = sub.add_parser("recommend", parents=[common, catalog_arg, passes, parents.engine],
                       help="every item's k look-alikes, to parquet/csv/jsonl",
                       description="Write, for every item, its k most similar items (item_id, rank, similar_id, "
                       "similarity) to --out, never the item itself or its exact copies. An interrupted run "
                       "resumes when started again with the same options.")
    p.add_argument("-k", type=positive_int, default=10, help="recommendations per item (default 10)")
    p.add_argument("--out", required=True, help="file to write: .parquet, .csv or .jsonl; or a folder (ending in "
                   "/) to keep the part files as a partitioned Parquet dataset")
    p.add_argument("--format", choices=["parquet", "csv", "jsonl"], help="instead of the extension")
    p.add_argument("--where", action="append", default=None, metavar="LABEL=VALUE",
                   help="only recommend items with this label value (every item still gets recommendations)")
    p.add_argument("--queries-where", action="append", default=None, metavar="LABEL=VALUE",
                   help="only write recommendations for items with this label value")
    p.add_argument("--dedupe", action="store_true", help="one item per near-duplicate group, none of the "
                   "item's own group (finds the groups first unless saved at this --threshold)")
    p.add_argument("--group-by", metavar="LABEL", help="one recommendation per value of this label, e.g. "
                   "productDisplayName; the value is written as an extra column")
    p.add_argument("--restart", action="store_true", help="ignore an interrupted run and start over")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_ranking_options(p)
    p.set_defaults(func=cmd_recommend)


