"""What rules, diversity and keyword fusion cost a search: ``POST /api/search`` p50 and requests per second on a
catalog of ``--items`` products (default 100,000), plain against boosts + a bury + a pin + an exclude + MMR
diversity (``ranked``), and against all of that plus words fused with the photo's results by reciprocal rank
fusion over the full-text index (``fused``), in one run on one machine (issue 27: under 2 ms added at p50).

Every request sends its rules as form fields (``boost=...``, ``per request``). With ``--catalog-rules`` the same
rules are also measured as the catalog's default rules (``lookalike rules set``), applied to every request,
which then sends only its photo (and words, for ``fused``): that runs on a second catalog with the same
products and vectors (so that ``plain`` stays a catalog without rules), in the same loop; two servers in one
process share the CPU's caches, which adds to every setting's figures.

The catalogs' vectors are written straight into their stores (seeded random unit vectors, 512-d as the
model-free ``colorhist`` model that embeds the uploaded photo), with ProductRecord labels ``brand`` (20 values)
and ``stock`` (in, out); the index is exact (flat: HNSW reaches no useful recall on random vectors). Requests go
through FastAPI's TestClient in this process, one at a time, every setting in turn (each round starting with
the next one, so that none always follows the same) so that all see the same machine; req/s is 1 / mean
latency of that sequential loop. The words of ``fused`` cycle through 19 brand names (each held by 5% of the
products; not the excluded one); the first search of a word, which ranks all its matches in the full-text
index before its postings are kept in memory, is timed apart (``first search of a word``).

    python benchmarks/ranking_latency.py --items 100000 --requests 500
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine  # noqa: E402

from lookalike import Catalog  # noqa: E402
from lookalike.catalog.catalog import CONFIG_FILE, DB_FILE  # noqa: E402
from lookalike.catalog.ranking import Ranking  # noqa: E402
from lookalike.core.config import CatalogConfig  # noqa: E402
from lookalike.models.registry import create_embedder  # noqa: E402
from lookalike.store import ItemRecord, SQLiteStore  # noqa: E402
from lookalike.store.products import ProductRecord  # noqa: E402

RULES = {"boost": ["brand=b3:0.1", "brand=b7:0.05"], "bury": ["stock=out"], "pin": ["p42"],
         "exclude": ["brand=b11"]}
RANKED = {**RULES, "diversity": "0.7"}
WORDS = [f"b{i}" for i in range(20) if i != 11]  # words on an image-only model: keyword hits fused (RRF)
# (name, catalog, form): "shop" has no rules of its own, "ruled" has RULES as its default rules
SETTINGS = (("plain", "shop", {}),
            ("ranked, per request", "shop", RANKED),
            ("fused, per request", "shop", {**RANKED, "text": None}),
            ("ranked, catalog rules", "ruled", {"diversity": "0.7"}),
            ("fused, catalog rules", "ruled", {"diversity": "0.7", "text": None}))


def build(path: Path, n: int, dim: int, seed: int = 0, rules: bool = False) -> None:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    store = SQLiteStore(path / DB_FILE)
    for start in range(0, n, 20_000):
        count = min(20_000, n - start)
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"p{start + i}" for i in range(count)]
        store.write([ItemRecord(id=i, path=f"/shop/{i}.jpg", size=1, mtime_ns=1, sha256=f"h{i}", status="ok",
                                width=10, height=10, vector=v) for i, v in zip(ids, vectors, strict=True)],
                    [ProductRecord(i, (i,), {i: {"brand": f"b{(start + j) % 20}",
                                                 "stock": "out" if (start + j) % 9 == 0 else "in"}})
                     for j, i in enumerate(ids)])
    store.close()
    CatalogConfig(embedder=create_embedder("colorhist").info).save(path / CONFIG_FILE)
    with Catalog.open(path) as catalog:  # random 512-d vectors defeat HNSW (recall 0.75): exact search for both
        catalog.configure_index(kind="flat")
        if rules:
            catalog.set_rules(Ranking.parse(**{name: RULES[name] for name in ("boost", "bury", "pin", "exclude")}))


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--catalog-rules", action="store_true",
                        help="also measure the rules as a second catalog's default rules")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"shop": Path(tmp) / "shop.lk", "ruled": Path(tmp) / "ruled.lk"}
        settings = [s for s in SETTINGS if args.catalog_rules or s[1] == "shop"]
        if not args.catalog_rules:
            del paths["ruled"]
        print(describe_machine())
        started = time.perf_counter()
        for name, path in paths.items():
            build(path, args.items, 512, rules=name == "ruled")
        print(f"{len(paths)} catalog(s) of {args.items} products written in {time.perf_counter() - started:.1f} s")
        photos = [photo(i) for i in range(16)]
        times: dict[str, list[float]] = {name: [] for name, _, _ in settings}
        first: list[float] = []
        answers: dict[str, list[dict]] = {}
        with contextlib.ExitStack() as stack:
            clients = {name: stack.enter_context(TestClient(create_app(ServeSettings(catalog=path))))
                       for name, path in paths.items()}

            def ask(i: int, catalog: str, form: dict, word: str) -> dict:
                data = {"k": str(args.k), **{key: word if value is None else value for key, value in form.items()}}
                r = clients[catalog].post("/api/search", files={"image": ("q.png", photos[i % 16], "image/png")},
                                          data=data)
                assert r.status_code == 200, r.text
                return r.json()

            for word in WORDS:  # the first search of each word, on each catalog
                for catalog in clients:
                    t = time.perf_counter()
                    ask(0, catalog, {**RANKED, "text": None}, word)
                    first.append(time.perf_counter() - t)
            for i in range(20):  # warm up: label caches filled
                for _, catalog, form in settings:
                    ask(i, catalog, form, WORDS[i % len(WORDS)])
            for i in range(args.requests):  # every setting in turn, starting with another each round
                for name, catalog, form in settings[i % len(settings):] + settings[:i % len(settings)]:
                    t = time.perf_counter()
                    answers[name] = ask(i, catalog, form, WORDS[i % len(WORDS)])["results"]
                    times[name].append(time.perf_counter() - t)
        for name in [n for n in ("ranked, per request", "ranked, catalog rules") if n in answers]:
            assert answers[name][0]["id"] == "p42" and answers[name][0]["rules"] == ["pin"], answers[name][0]
        for name in [n for n in ("fused, per request", "fused, catalog rules") if n in answers]:
            assert any("keyword" in m.get("found_by", []) for m in answers[name]), answers[name]
        print(f"{args.items} products, k={args.k}, {args.requests} requests each, POST /api/search (upload, "
              f"colorhist)")
        p50 = {}
        for name, values in times.items():
            p50[name] = statistics.median(values) * 1000
            print(f"  {name:22s} p50 {p50[name]:7.2f} ms   p90 {np.percentile(values, 90) * 1000:7.2f} ms   "
                  f"{1 / statistics.mean(values):7.1f} req/s")
        for name in list(times)[1:]:
            print(f"  {name} added at p50: {p50[name] - p50['plain']:.2f} ms (goal < 2 ms); ratio "
                  f"{p50[name] / p50['plain']:.2f}")
        print(f"  first search of a word (fused, per request; full-text ranking of its {args.items // 20} matches): "
              f"p50 {statistics.median(first) * 1000:.2f} ms")

if __name__ == "__main__":
    main()
