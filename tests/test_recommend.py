"""`lookalike recommend`: every item's k look-alikes written to Parquet, CSV or JSON lines."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike import Catalog, QueryError
from lookalike.analysis import recommend as recommend_module
from lookalike.analysis.recommend import recommend
from lookalike.catalog.catalog import CONFIG_FILE, DB_FILE
from lookalike.cli import main
from lookalike.core.config import CatalogConfig, EmbedderInfo
from lookalike.core.errors import OutputError
from lookalike.store import ItemRecord, SQLiteStore
from lookalike.store.products import ProductRecord


def vector_catalog(path: Path, vectors: np.ndarray, hashes: list[str] | None = None,
                   labels: list[dict[str, str]] | None = None) -> Catalog:
    """A catalog of items ``i0, i1, ...`` with these vectors (normalised), written straight into the store."""
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    path.mkdir(parents=True)
    store = SQLiteStore(path / DB_FILE)
    store.write([ItemRecord(id=f"i{i}", path=f"/shop/i{i}.jpg", size=1, mtime_ns=1,
                            sha256=hashes[i] if hashes else f"h{i}", status="ok", width=100 + i, height=100,
                            vector=v) for i, v in enumerate(vectors)],
                [ProductRecord(f"i{i}", (f"i{i}",), {f"i{i}": labels[i] if labels else {}})
                 for i in range(len(vectors))])
    store.close()
    info = EmbedderInfo(name="synthetic", timm_name="none", weights="none:test", dim=vectors.shape[1], pool="none")
    CatalogConfig(embedder=info).save(path / CONFIG_FILE)
    return Catalog.open(path)


def read_rows(path: Path) -> list[dict]:
    """Rows of any output format as dicts with typed values, in file order."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [{**r, "rank": int(r["rank"]), "similarity": float(r["similarity"])} for r in csv.DictReader(f)]
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_item(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["item_id"], []).append(row)
    return out


def exact_top_k(vectors: np.ndarray, hashes: list[str], k: int, candidates=None) -> dict[str, list[str]]:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = v @ v.T
    out = {}
    for q in range(len(v)):
        order = [j for j in np.argsort(-sims[q], kind="stable") if hashes[j] != hashes[q]
                 and (candidates is None or j in candidates)]
        out[f"i{q}"] = [f"i{j}" for j in order[:k]]
    return out


@pytest.fixture
def random_catalog(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors[7] = vectors[5]  # an exact copy: same content hash, same vector
    hashes = [f"h{i}" for i in range(300)]
    hashes[7] = hashes[5]
    labels = [{"colour": ["red", "blue", "green"][i % 3], "name": f"product {i // 4}"} for i in range(300)]
    catalog = vector_catalog(tmp_path / "shop.lk", vectors, hashes, labels)
    yield catalog, vectors, hashes
    catalog.close()


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_every_item_gets_its_exact_k_nearest_without_itself_or_copies(random_catalog, tmp_path, ext):
    catalog, vectors, hashes = random_catalog
    out = tmp_path / f"similar.{ext}"
    report = recommend(catalog, 5, out, block=64, progress=False)
    rows = read_rows(out)
    assert report.items == 300 and report.rows == len(rows) == 1500 and report.computed == 300
    assert report.items_per_second > 0 and not report.resumed and report.short == 0
    assert set(rows[0]) == {"item_id", "rank", "similar_id", "similarity"}
    got = by_item(rows)
    expected = exact_top_k(vectors, hashes, 5)
    assert {item: set(r["similar_id"] for r in rs) for item, rs in got.items()} == \
        {item: set(ids) for item, ids in expected.items()}  # as sets: i5 and i7 tie (same vector)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for item, rs in got.items():
        q = unit[int(item[1:])]
        wanted = [float(q @ unit[int(i[1:])]) for i in expected[item]]
        assert [r["similarity"] for r in rs] == pytest.approx(wanted, abs=1e-5)
    assert all([r["rank"] for r in rs] == [1, 2, 3, 4, 5] for rs in got.values())
    assert all(rs[0]["similarity"] >= rs[-1]["similarity"] for rs in got.values())
    assert "i7" not in [r["similar_id"] for r in got["i5"]] and "i5" not in [r["similar_id"] for r in got["i7"]]
    assert not out.with_name(out.name + ".partial").exists()


def test_threads_and_block_size_do_not_change_the_result(random_catalog, tmp_path):
    catalog, _, _ = random_catalog
    one = recommend(catalog, 4, tmp_path / "a.csv", threads=1, block=1000, progress=False)
    two = recommend(catalog, 4, tmp_path / "b.csv", threads=2, block=7, progress=False)
    assert one.rows == two.rows
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_where_restricts_candidates_and_queries_where_the_items_written(random_catalog, tmp_path):
    catalog, vectors, hashes = random_catalog
    out = tmp_path / "red.jsonl"
    recommend(catalog, 3, out, where=["colour=red"], progress=False)
    got = by_item(read_rows(out))
    assert len(got) == 300  # every item still gets recommendations...
    red = {j for j in range(300) if j % 3 == 0}
    assert all(int(r["similar_id"][1:]) in red for rs in got.values() for r in rs)  # ...of red items only
    assert {i: {r["similar_id"] for r in rs} for i, rs in got.items()} == \
        {i: set(ids) for i, ids in exact_top_k(vectors, hashes, 3, red).items()}
    recommend(catalog, 3, out, queries_where={"colour": "blue"}, progress=False)
    got = by_item(read_rows(out))
    assert set(got) == {f"i{j}" for j in range(300) if j % 3 == 1}


def test_group_by_keeps_one_result_per_label_value_and_fetches_more_when_needed(tmp_path):
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(8)
    close = centre + 0.05 * rng.standard_normal((40, 8))  # 40 variants of one product, near each other
    far = rng.standard_normal((20, 8))
    labels = [{"name": "same product"} for _ in range(40)] + [{"name": f"other {i}"} for i in range(20)]
    with vector_catalog(tmp_path / "v.lk", np.vstack([close, far]), labels=labels) as catalog:
        report = recommend(catalog, 5, tmp_path / "g.parquet", group_by="name", progress=False)
        rows = read_rows(tmp_path / "g.parquet")
    got = by_item(rows)
    assert set(rows[0]) == {"item_id", "rank", "similar_id", "similarity", "name"}
    assert report.short == 0 and all(len(rs) == 5 for rs in got.values())
    for rs in got.values():
        names = [r["name"] for r in rs]
        assert len(set(names)) == len(names)
    assert sum(r["name"] == "same product" for r in got["i0"]) == 1


def test_dedupe_leaves_out_near_copies_and_the_items_own_group(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((30, 12))
    copies = base[:5] + 0.001 * rng.standard_normal((5, 12))  # i30..i34 near-copy i0..i4
    with vector_catalog(tmp_path / "v.lk", np.vstack([base, copies])) as catalog:
        plain = by_item(read_rows(_run(catalog, tmp_path / "plain.csv", k=29)))
        deduped = by_item(read_rows(_run(catalog, tmp_path / "dedupe.csv", k=29, dedupe=True)))
    assert "i30" in [r["similar_id"] for r in plain["i0"]]
    for item, rs in deduped.items():
        ids = [r["similar_id"] for r in rs]
        pairs = {frozenset((f"i{i}", f"i{i + 30}")) for i in range(5)}
        assert not any(frozenset((a, b)) in pairs for a in ids for b in ids)  # one per group
        assert not any(frozenset((item, b)) in pairs for b in ids)  # not the item's own near-copy
    # 35 items in 30 groups: every item has 29 other groups, so still 29 results, one from each
    assert len(deduped["i0"]) == len(deduped["i10"]) == 29


def _run(catalog, out: Path, **options) -> Path:
    recommend(catalog, options.pop("k"), out, progress=False, **options)
    return out


def test_an_interrupted_run_resumes_and_writes_the_same_file(random_catalog, tmp_path, monkeypatch):
    catalog, _, _ = random_catalog
    fresh = tmp_path / "fresh.parquet"
    recommend(catalog, 5, fresh, block=32, progress=False)
    out = tmp_path / "similar.parquet"
    with interrupted_after(3, monkeypatch), pytest.raises(KeyboardInterrupt):
        recommend(catalog, 5, out, block=32, progress=False)
    assert not out.exists() and (tmp_path / "similar.parquet.partial" / "state.json").exists()
    report = recommend(catalog, 5, out, block=32, progress=False)
    assert report.resumed and report.items == 300 and 0 < report.computed < 300
    assert pq.read_table(out).to_pylist() == pq.read_table(fresh).to_pylist()


@contextlib.contextmanager
def interrupted_after(parts: int, monkeypatch):
    """Ctrl-C while the part after ``parts`` part files is being written (small parts: one per block)."""
    monkeypatch.setattr(recommend_module, "PART_ROWS", 100)
    real_write = recommend_module._write_part
    calls = []

    def write(*args):
        calls.append(1)
        if len(calls) > parts:
            raise KeyboardInterrupt
        real_write(*args)

    monkeypatch.setattr(recommend_module, "_write_part", write)
    try:
        yield
    finally:
        monkeypatch.setattr(recommend_module, "_write_part", real_write)


def test_other_options_or_restart_start_over(random_catalog, tmp_path, monkeypatch):
    catalog, _, _ = random_catalog
    out = tmp_path / "s.csv"
    for _ in range(2):
        with interrupted_after(2, monkeypatch), pytest.raises(KeyboardInterrupt):
            recommend(catalog, 5, out, block=32, progress=False)
    report = recommend(catalog, 6, out, block=32, progress=False)  # k changed: start over
    assert not report.resumed and report.computed == 300 and len(read_rows(out)) == 1800
    with interrupted_after(2, monkeypatch), pytest.raises(KeyboardInterrupt):
        recommend(catalog, 5, out, block=32, progress=False)
    report = recommend(catalog, 5, out, block=32, progress=False, resume=False)
    assert not report.resumed and report.computed == 300 and len(read_rows(out)) == 1500


def test_bad_requests_say_what_to_do(random_catalog, tmp_path):
    catalog, _, _ = random_catalog
    with pytest.raises(OutputError, match="parquet, .csv or .jsonl"):
        recommend(catalog, 5, tmp_path / "out.xlsx")
    with pytest.raises(QueryError, match="unknown label 'brand'.*colour, name"):
        recommend(catalog, 5, tmp_path / "out.csv", group_by="brand")
    with pytest.raises(QueryError, match="unknown label"):
        recommend(catalog, 5, tmp_path / "out.csv", where=["brand=x"])
    with pytest.raises(QueryError, match="matches no item"):
        recommend(catalog, 5, tmp_path / "out.csv", where=["colour=purple"])
    with pytest.raises(QueryError, match="positive"):
        recommend(catalog, 0, tmp_path / "out.csv")


def test_command_line_writes_the_file_and_prints_the_rate(random_catalog, tmp_path, capsys):
    catalog, _, _ = random_catalog
    out = tmp_path / "similar.jsonl"
    assert main(["recommend", "--catalog", str(catalog.path), "-k", "3", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "900 recommendations for 300 items" in printed and "items/s" in printed
    assert len(read_rows(out)) == 900
    assert main(["recommend", "--catalog", str(catalog.path), "-k", "3", "--out", str(tmp_path / "x.csv"),
                 "--group-by", "name", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 900 and report["items_per_second"] > 0
    assert main(["recommend", "--catalog", str(catalog.path), "--out", str(tmp_path / "x.txt")]) == 2
    assert "--format" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["recommend", "duplicates"])
def test_new_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--catalog" in capsys.readouterr().out


def test_a_folder_out_keeps_the_parts_as_a_partitioned_dataset(random_catalog, tmp_path, monkeypatch):
    catalog, _, _ = random_catalog
    single = tmp_path / "one.parquet"
    recommend(catalog, 5, single, block=32, progress=False)
    monkeypatch.setattr(recommend_module, "PART_ROWS", 400)
    report = recommend(catalog, 5, f"{tmp_path / 'parts'}/", block=32, progress=False)
    files = sorted((tmp_path / "parts").iterdir())
    assert report.format == "parquet" and len(files) > 1 and all(f.suffix == ".parquet" for f in files)
    assert pq.read_table(tmp_path / "parts").to_pylist() == pq.read_table(single).to_pylist()
    assert not (tmp_path / "parts.partial").exists()
    with pytest.raises(OutputError, match="new or empty folder"):
        recommend(catalog, 5, f"{tmp_path / 'parts'}/", progress=False)


def test_ray_blocks_are_cut_as_the_local_blocks_and_an_actors_rows_are_the_local_rows(random_catalog):
    """The pieces of ``recommend --engine ray`` run here, without Ray: the same blocks of queries, and an
    actor's padded rows turned back into exactly the rows ``BlockWork`` gives."""
    from lookalike.analysis.neighbours import PhotoOwners, product_blocks
    from lookalike.analysis.recommend_ray import RecommendActor, rows_of

    catalog, _, _ = random_catalog
    all_keys = np.array(sorted(catalog.products.photos_of), dtype=np.int64)
    queries = catalog.allowed({"colour": "blue"})
    for wanted, after in ((None, -1), (queries, -1), (queries, 150)):
        local = [blk[0] for blk in product_blocks(catalog, 32, keys=wanted, after=after)]
        mine = recommend_module._key_blocks(all_keys, 32, wanted, after)
        assert [b.tolist() for b in mine] == [b.tolist() for b in local]

    content = recommend_module._content_codes(catalog.table, max(catalog.table.id_by_key) + 1)
    work = recommend_module.BlockWork(k=4, candidates=None, limit=300, first_fetch=5, n_candidates=300,
                                      content=content, groups=None, labels=None,
                                      owners=PhotoOwners(catalog.products.products_of), allowed=None)
    actor = object.__new__(RecommendActor)  # its __init__ only fetches the work from Ray's object store
    actor.work, actor.catalog, actor.index, actor.dim = work, catalog, catalog.index, 16
    block = next(product_blocks(catalog, 32))
    keys = block[0]
    expected = work(catalog.index, *block)
    out = actor({"block": np.zeros(len(keys), dtype=np.int64), "key": keys})
    got = rows_of(out, 4)
    assert got[0].tolist() == expected[0].tolist() and got[2] == expected[2]
    for mine, theirs in zip(got[1], expected[1], strict=True):
        assert mine.dtype == theirs.dtype and mine.tolist() == theirs.tolist()
