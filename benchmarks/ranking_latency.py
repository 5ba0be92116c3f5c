"""What rules, diversity and keyword fusion cost a search: ``POST /api/search`` p50 and requests per second on a
catalog of ``--items`` products (default 100,000), plain against boosts + a bury + a pin + an exclude + MMR
diversity (``ranked``), and against all of that plus words fused with the photo's results by reciprocal rank
fusion over the full-text index (``fused``), in one run on one catalog (issue 27: under 2 ms added at p50).

The catalog's vectors are written straight into its store (seeded random unit vectors, 512-d as the model-free
``colorhist`` model that embeds the uploaded photo), with ProductRecord labels ``brand`` (20 values) and
``stock`` (in, out); the index is exact (flat: HNSW reaches no useful recall on random vectors). Requests go
through FastAPI's TestClient in this process, one at a time, alternating plain and ranked so
that both see the same machine; req/s is 1 / mean latency of that sequential loop.

    python benchmarks/ranking_latency.py --items 100000 --requests 300
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lookalike import Catalog  # noqa: E402
from lookalike.catalog.catalog import CONFIG_FILE, DB_FILE  # noqa: E402
from lookalike.core.config import CatalogConfig  # noqa: E402
from lookalike.models.registry import create_embedder  # noqa: E402
from lookalike.store import ItemRecord, SQLiteStore  # noqa: E402
from lookalike.store.products import ProductRecord  # noqa: E402

RANKED = {"boost": ["brand=b3:0.1", "brand=b7:0.05"], "bury": ["stock=out"], "pin": ["p42"],
          "exclude": ["brand=b11"], "diversity": "0.7"}
FUSED = {**RANKED, "text": "b7"}  # words on an image-only model: keyword hits fused with the photo's (RRF)
SETTINGS = (("plain", {}), ("ranked", RANKED), ("fused", FUSED))


def build(path: Path, n: int, dim: int, seed: int = 0) -> None:
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
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.lk"
        started = time.perf_counter()
        build(path, args.items, 512)
        print(f"catalog of {args.items} products written in {time.perf_counter() - started:.1f} s")
        photos = [photo(i) for i in range(16)]
        times: dict[str, list[float]] = {name: [] for name, _ in SETTINGS}
        with TestClient(create_app(ServeSettings(catalog=path))) as client:
            for i in range(20):  # warm up: index loaded, label caches filled
                for _, form in SETTINGS:
                    r = client.post("/api/search", files={"image": ("q.png", photos[i % 16], "image/png")},
                                    data={"k": str(args.k), **form})
                    assert r.status_code == 200, r.text
            for i in range(args.requests):
                for name, form in SETTINGS:
                    t = time.perf_counter()
                    r = client.post("/api/search", files={"image": ("q.png", photos[i % 16], "image/png")},
                                    data={"k": str(args.k), **form})
                    times[name].append(time.perf_counter() - t)
                    assert r.status_code == 200
                    if name == "ranked":
                        ranked = r.json()["results"]
            fused = r.json()["results"]
        assert ranked[0]["id"] == "p42" and ranked[0]["rules"] == ["pin"]
        assert any("keyword" in m.get("found_by", []) for m in fused), fused
        print(f"{args.items} products, k={args.k}, {args.requests} requests each, POST /api/search (upload, "
              f"colorhist)")
        p50 = {}
        for name, values in times.items():
            p50[name] = statistics.median(values) * 1000
            print(f"  {name:7s} p50 {p50[name]:7.2f} ms   p90 {np.percentile(values, 90) * 1000:7.2f} ms   "
                  f"{1 / statistics.mean(values):7.1f} req/s")
        for name in ("ranked", "fused"):
            print(f"  {name} added at p50: {p50[name] - p50['plain']:.2f} ms (goal < 2 ms); ratio {name}/plain "
                  f"{p50[name] / p50['plain']:.2f}")


if __name__ == "__main__":
    main()
