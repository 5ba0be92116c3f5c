"""`lookalike recommend` with ranking rules: the same answers as `similar` with the same rules, written with a
`rules` column saying what moved each row."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike import QueryError
from lookalike.analysis.recommend import recommend
from lookalike.catalog.ranking import Ranking
from lookalike.cli import main
from lookalike.core.errors import UnknownItemError
from test_ranking import shop_catalog
from test_recommend import vector_catalog


@pytest.fixture
def shop(tmp_path):
    with shop_catalog(tmp_path / "shop.lk") as catalog:
        yield catalog


def rows_by_item(path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in pq.read_table(path).to_pylist():
        out.setdefault(row["item_id"], []).append(row)
    return out


RANKINGS = [
    Ranking.parse(boost=["brand=Acme:0.1"]),
    Ranking.parse(boost=["brand=House:0.5", "brand=Acme:0.02"]),
    Ranking.parse(bury=["brand=Other"]),
    Ranking.parse(pin=["e"]),
    Ranking.parse(pin=["e", "q"], bury=["stock=out"]),
    Ranking.parse(exclude=["brand=Other"]),
    Ranking.parse(diversity=0.5),
    Ranking.parse(boost=["brand=Acme:0.2"], bury=["stock=out"], pin=["f"], exclude=["brand=House"], diversity=0.7),
]


@pytest.mark.parametrize("ranking", RANKINGS, ids=lambda r: r.to_json())
def test_every_row_is_what_similar_answers_with_the_same_rules(shop, tmp_path, ranking):
    out = tmp_path / "recs.parquet"
    recommend(shop, 3, out, progress=False, ranking=ranking)
    got = rows_by_item(out)
    assert sorted(got) == sorted(shop.products.key_by_id)
    for item_id, rows in got.items():
        # a product is never recommended to itself, pinned or not (similar pins it to itself)
        unpinned = dataclasses.replace(ranking, pin=tuple(p for p in ranking.pin if p != item_id))
        expected = shop.similar(item_id, k=3, ranking=unpinned)
        assert [r["similar_id"] for r in rows] == [m.id for m in expected], item_id
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert [r["rules"] for r in rows] == [m.rules for m in expected], item_id
        assert [r["similarity"] for r in rows] == pytest.approx([m.similarity for m in expected], abs=1e-5)


def test_known_answers_for_one_product(shop, tmp_path):
    out = tmp_path / "recs.parquet"
    recommend(shop, 3, out, progress=False, ranking=Ranking.parse(boost=["brand=Acme:0.1"], pin=["e"]))
    q = rows_by_item(out)["q"]
    assert [(r["similar_id"], r["rules"]) for r in q] == [("e", ["pin"]), ("c", ["boost brand=Acme +0.1"]),
                                                          ("a", [])]
    assert q[0]["similarity"] == pytest.approx(0.30, abs=1e-5)  # the pin's own cosine
    assert q[1]["similarity"] == pytest.approx(0.90, abs=1e-5)  # the cosine, not the boosted score
    e = rows_by_item(out)["e"]
    assert "e" not in [r["similar_id"] for r in e]  # a pin is never recommended to itself


def test_catalog_rules_apply_unless_turned_off_and_plain_files_keep_their_columns(shop, tmp_path):
    shop.set_rules(Ranking.parse(bury=["brand=Other"]))
    recommend(shop, 2, tmp_path / "ruled.parquet", progress=False)
    assert [r["similar_id"] for r in rows_by_item(tmp_path / "ruled.parquet")["q"]] == ["c", "d"]
    recommend(shop, 2, tmp_path / "plain.parquet", progress=False, rules=False)
    table = pq.read_table(tmp_path / "plain.parquet")
    assert table.column_names == ["item_id", "rank", "similar_id", "similarity"]
    assert [r["similar_id"] for r in rows_by_item(tmp_path / "plain.parquet")["q"]] == ["a", "b"]


def test_changed_rules_start_over_instead_of_resuming(shop, tmp_path):
    out = tmp_path / "recs.parquet"
    recommend(shop, 2, out, progress=False, ranking=Ranking.parse(boost=["brand=Acme:0.1"]))
    report = recommend(shop, 2, out, progress=False, ranking=Ranking.parse(bury=["brand=Acme"]))
    assert not report.resumed
    assert [r["similar_id"] for r in rows_by_item(out)["q"]] == ["a", "b"]


def test_csv_and_jsonl_carry_the_rules(shop, tmp_path):
    ranking = Ranking.parse(boost=["brand=Acme:0.1"], bury=["stock=out"])
    recommend(shop, 6, tmp_path / "r.csv", progress=False, ranking=ranking)
    with open(tmp_path / "r.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["item_id"] == "q"]
    assert rows[0]["similar_id"] == "c" and rows[0]["rules"] == "boost brand=Acme +0.1"
    assert rows[-1]["similar_id"] == "d" and rows[-1]["rules"] == "bury stock=out"
    recommend(shop, 6, tmp_path / "r.jsonl", progress=False, ranking=ranking)
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    first = next(line for line in lines if line["item_id"] == "q")
    assert first | {"similarity": 0} == {"item_id": "q", "rank": 1, "similar_id": "c", "similarity": 0,
                                         "rules": ["boost brand=Acme +0.1"]}


def test_group_by_and_rules_together(tmp_path):
    vectors = np.eye(6, 8, dtype=np.float32) + 0.5
    labels = [{"brand": b, "name": n} for b, n in
              [("A", "x"), ("A", "x"), ("B", "y"), ("B", "y"), ("C", "z"), ("C", "w")]]
    with vector_catalog(tmp_path / "v.lk", vectors, labels=labels) as catalog:
        recommend(catalog, 3, tmp_path / "g.parquet", group_by="name", progress=False,
                  ranking=Ranking.parse(bury=["brand=C"]))
        table = pq.read_table(tmp_path / "g.parquet")
        assert table.column_names == ["item_id", "rank", "similar_id", "similarity", "name", "rules"]
        for item, rows in rows_by_item(tmp_path / "g.parquet").items():
            names = [r["name"] for r in rows]
            assert len(set(names)) == len(names), item  # one per name still
            buried = [("bury brand=C" in r["rules"]) for r in rows]
            assert buried == sorted(buried), item  # buried rows last


def test_bad_rules_are_refused(shop, tmp_path):
    with pytest.raises(UnknownItemError, match="nope"):
        recommend(shop, 2, tmp_path / "r.parquet", progress=False, ranking=Ranking.parse(pin=["nope"]))
    with pytest.raises(QueryError, match="unknown label 'colour'"):
        recommend(shop, 2, tmp_path / "r.parquet", progress=False, ranking=Ranking.parse(bury=["colour=Red"]))
    with pytest.raises(QueryError, match="leave no item"):
        recommend(shop, 2, tmp_path / "r.parquet", progress=False,
                  ranking=Ranking.parse(exclude=["brand=Other", "brand=House", "brand=Acme"]))


def test_cli_recommend_takes_the_rule_options(shop, tmp_path, capsys):
    where = ["--catalog", str(tmp_path / "shop.lk")]
    out = tmp_path / "cli.parquet"
    assert main(["recommend", "-k", "2", "--out", str(out), "--boost", "brand=Acme:0.1", "--diversity", "0.9",
                 "--quiet", *where]) == 0
    assert [r["similar_id"] for r in rows_by_item(out)["q"]] == ["c", "a"]
    capsys.readouterr()
    assert main(["recommend", "-k", "2", "--out", str(out), "--bury", "colour=Red", "--quiet", *where]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown label 'colour'" in err[0]


def test_a_ray_actor_sends_back_the_rule_flags_of_the_local_rows(shop):
    """The pieces of ``recommend --engine ray`` run here, without Ray: an actor's padded rows with rules turned
    back into exactly the rows (flags included) ``BlockWork`` gives."""
    from lookalike.analysis import recommend as recommend_module
    from lookalike.analysis.neighbours import PhotoOwners, product_blocks
    from lookalike.analysis.recommend_ray import RecommendActor, rows_of
    from lookalike.analysis.recommend_rules import rank_rules

    ranking = shop.ranking_for(Ranking.parse(boost=["brand=Acme:0.1"], pin=["e"], diversity=0.5))
    size = max(shop.products.photos_of) + 1
    rank, _ = rank_rules(shop, ranking, 3, size)
    content = recommend_module._content_codes(shop.table, max(shop.table.id_by_key) + 1)
    work = recommend_module.BlockWork(k=3, candidates=None, limit=7, first_fetch=rank.pool + 1, n_candidates=7,
                                      content=content, groups=None, labels=None,
                                      owners=PhotoOwners(shop.products.products_of), allowed=None, rank=rank)
    actor = object.__new__(RecommendActor)
    actor.work, actor.catalog, actor.index, actor.dim = work, shop, shop.index, 512
    block = next(product_blocks(shop, 32))
    expected = work(shop.index, *block)
    got = rows_of(actor({"block": np.zeros(len(block[0]), dtype=np.int64), "key": block[0]}), 3)
    assert expected[1][4].any()  # some rows were pinned or moved by diversity
    for mine, theirs in zip(got[1], expected[1], strict=True):
        assert mine.dtype == theirs.dtype and mine.tolist() == theirs.tolist()
