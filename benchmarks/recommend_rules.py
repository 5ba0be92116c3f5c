"""What ranking rules cost ``lookalike recommend``: seconds and items/s on a catalog of ``--items`` products (default
10,000), rules off against two boosts + a bury + a pin + an exclude, and against those plus MMR diversity 0.7, in
one run on one catalog (issue 27: recommend applies the catalog's rules; keep its speed).

The catalog's vectors are written straight into its store (``lookalike.index.synthetic.clustered_chunks``:
clustered, embedding-like unit vectors, 512-d), one photo per product, with ProductRecord labels ``brand``
(20 values) and ``stock`` (in, out). Each setting runs ``--repeats`` times, interleaved (plain, rules, rules + MMR,
plain, ...) so that all see the same machine; the best run of each is reported, with its ratio to plain.

    python benchmarks/recommend_rules.py --items 10000 -k 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from machine import describe_machine  # noqa: E402

from lookalike import Catalog  # noqa: E402
from lookalike.analysis.recommend import recommend  # noqa: E402
from lookalike.catalog.catalog import CONFIG_FILE, DB_FILE  # noqa: E402
from lookalike.catalog.ranking import Ranking  # noqa: E402
from lookalike.core.config import CatalogConfig  # noqa: E402
from lookalike.index.synthetic import clustered_chunks  # noqa: E402
from lookalike.models.registry import create_embedder  # noqa: E402
from lookalike.store import ItemRecord, SQLiteStore  # noqa: E402
from lookalike.store.products import ProductRecord  # noqa: E402

RULES = dict(boost=["brand=b3:0.1", "brand=b7:0.05"], bury=["stock=out"], pin=["p42"], exclude=["brand=b11"])


def build(path: Path, n: int, dim: int, seed: int = 0) -> None:
    path.mkdir(parents=True)
    store = SQLiteStore(path / DB_FILE)
    start = 0
    for vectors, _ in clustered_chunks(n, dim, seed=seed, chunk=20_000):
        ids = [f"p{start + i}" for i in range(len(vectors))]
        store.write([ItemRecord(id=i, path=f"/shop/{i}.jpg", size=1, mtime_ns=1, sha256=f"h{i}", status="ok",
                                width=10, height=10, vector=v) for i, v in zip(ids, vectors, strict=True)],
                    [ProductRecord(i, (i,), {i: {"brand": f"b{(start + j) % 20}",
                                                 "stock": "out" if (start + j) % 9 == 0 else "in"}})
                     for j, i in enumerate(ids)])
        start += len(vectors)
    store.close()
    CatalogConfig(embedder=create_embedder("colorhist").info).save(path / CONFIG_FILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines

    settings = {"plain": None, "rules": Ranking.parse(**RULES), "rules_mmr": Ranking.parse(**RULES, diversity=0.7)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.lk"
        started = time.perf_counter()
        build(path, args.items, 512)
        print(f"catalog of {args.items} products written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        seconds: dict[str, list[float]] = {name: [] for name in settings}
        with Catalog.open(path) as catalog:
            kind = catalog.index.kind
            for _ in range(args.repeats):
                for name, ranking in settings.items():
                    report = recommend(catalog, args.k, Path(tmp) / f"{name}.parquet", threads=args.threads,
                                       ranking=ranking, rules=False, resume=False, progress=False)
                    seconds[name].append(report.seconds)
    best = {name: min(times) for name, times in seconds.items()}
    print(json.dumps({
        "items": args.items, "k": args.k, "threads": args.threads, "index": kind, "repeats": args.repeats,
        **{f"{name}_s": round(s, 2) for name, s in best.items()},
        **{f"{name}_items_per_s": round(args.items / s) for name, s in best.items()},
        **{f"{name}_ratio": round(s / best["plain"], 2) for name, s in best.items() if name != "plain"},
    }, indent=2))


if __name__ == "__main__":
    main()
