"""Ranking rules (boost, bury, pin, exclude), diversity (MMR) and rank fusion on small catalogs with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike import Catalog, QueryError
from lookalike.catalog.catalog import CONFIG_FILE, DB_FILE
from lookalike.catalog.ranking import Ranking, candidates, mmr, rrf
from lookalike.core.config import CatalogConfig
from lookalike.core.errors import UnknownItemError
from lookalike.models.registry import create_embedder
from lookalike.store import ItemRecord, SQLiteStore
from lookalike.store.products import ProductRecord

DIM = 512  # the model-free colorhist model's, so a server can open the catalog


def _at(cos: float, direction: int, dim: int = DIM) -> np.ndarray:
    """A unit vector with this cosine to e0, its remainder along axis ``direction``."""
    v = np.zeros(dim, dtype=np.float32)
    v[0], v[direction] = cos, np.sqrt(1 - cos * cos)
    return v


# the query q = e0; a and b are near-copies of each other; c is Acme's; d is out of stock; e is far off
SHOP = {
    "q": (_at(1.0, 1), {"brand": "House"}),
    "a": (_at(0.95, 1), {"brand": "Other"}),
    "b": (_at(0.949, 1) + np.float32(0.001) * _at(0.0, 2), {"brand": "Other"}),
    "c": (_at(0.90, 2), {"brand": "Acme"}),
    "d": (_at(0.85, 3), {"brand": "House", "stock": "out"}),
    "e": (_at(0.30, 4), {"brand": "House"}),
    "f": (_at(0.70, 5), {"brand": "Other"}),
}


def shop_catalog(path: Path, items=SHOP, variants: dict | None = None) -> Catalog:
    """A catalog of products with these vectors and labels, written straight into its store."""
    path.mkdir(parents=True)
    store = SQLiteStore(path / DB_FILE)
    store.write([ItemRecord(id=i, path=f"/shop/{i}.jpg", size=1, mtime_ns=1, sha256=f"h{i}", status="ok",
                            width=10, height=10, vector=v / np.linalg.norm(v)) for i, (v, _) in items.items()],
                [ProductRecord(i, (i,), (variants or {}).get(i, {i: labels})) for i, (_, labels) in items.items()])
    store.close()
    info = create_embedder("colorhist").info
    CatalogConfig(embedder=info).save(path / CONFIG_FILE)
    return Catalog.open(path)


@pytest.fixture
def shop(tmp_path):
    with shop_catalog(tmp_path / "shop.lk") as catalog:
        yield catalog


def ids(matches) -> list[str]:
    return [m.id for m in matches]


def test_plain_order_is_similarity(shop):
    assert ids(shop.similar("q", k=6)) == ["a", "b", "c", "d", "f", "e"]
    assert all(m.rules == [] for m in shop.similar("q", k=6))


def test_boost_adds_its_weight_to_the_similarity(shop):
    boosted = shop.similar("q", k=3, ranking=Ranking.parse(boost=["brand=Acme:0.1"]))
    assert ids(boosted) == ["c", "a", "b"]
    assert boosted[0].rules == ["boost brand=Acme +0.1"] and boosted[1].rules == []
    assert boosted[0].similarity == pytest.approx(0.90, abs=1e-5)  # the cosine is shown as it is
    assert [m.rank for m in boosted] == [1, 2, 3]
    assert ids(shop.similar("q", k=3, ranking=Ranking.parse(boost=["brand=Acme"]))) == ["c", "a", "b"]  # 0.1
    small = shop.similar("q", k=3, ranking=Ranking.parse(boost=["brand=Acme:0.02"]))  # 0.92 < 0.949
    assert ids(small) == ["a", "b", "c"] and small[2].rules == ["boost brand=Acme +0.02"]


def test_boost_reaches_beyond_the_first_k(shop):
    # f is 5th by similarity; a big boost brings it into a list of 2
    assert ids(shop.similar("q", k=2, ranking=Ranking.parse(boost=["brand=Other:0.3"]))) == ["a", "b"]
    got = shop.similar("q", k=2, ranking=Ranking.parse(boost=["brand=House:0.5"]))
    assert ids(got) == ["d", "a"]


def test_bury_goes_below_every_other_result(shop):
    got = shop.similar("q", k=6, ranking=Ranking.parse(bury=["brand=Other"]))
    assert ids(got) == ["c", "d", "e", "a", "b", "f"]
    assert got[3].rules == ["bury brand=Other"]


def test_pin_comes_first_even_when_not_found(shop):
    got = shop.similar("q", k=3, ranking=Ranking.parse(pin=["e"]))
    assert ids(got) == ["e", "a", "b"]
    assert got[0].rules == ["pin"] and got[0].similarity == pytest.approx(0.30, abs=1e-5)
    with pytest.raises(UnknownItemError, match="nope"):
        shop.similar("q", k=3, ranking=Ranking.parse(pin=["nope"]))


def test_exclude_leaves_out_and_still_fills_k(shop):
    got = shop.similar("q", k=3, ranking=Ranking.parse(exclude=["brand=Other"]))
    assert ids(got) == ["c", "d", "e"]


def test_multi_valued_labels_match_any_of_their_values(tmp_path):
    variants = {"f": {"f-red": {"brand": "Other"}, "f-blue": {"brand": "Acme"}}}
    with shop_catalog(tmp_path / "shop.lk", variants=variants) as catalog:
        assert catalog.labels("f")["brand"] in ("Acme | Other", "Other | Acme")
        got = catalog.similar("q", k=2, ranking=Ranking.parse(boost=["brand=Acme:0.4"]))
        assert ids(got) == ["c", "f"]
        assert ids(catalog.similar("q", k=6, ranking=Ranking.parse(exclude=["brand=Acme"]))) == ["a", "b", "d", "e"]


def test_diversity_keeps_near_copies_apart(shop):
    got = shop.similar("q", k=3, ranking=Ranking.parse(diversity=0.5))
    assert ids(got)[0] == "a" and "b" not in ids(got)
    assert any(r.startswith("diversity") for m in got for r in m.rules)
    assert ids(shop.similar("q", k=3, ranking=Ranking.parse(diversity=1.0))) == ["a", "b", "c"]


def test_search_by_vector_items_and_by_photo_take_rules(shop):
    got = shop.search(items=["q"], k=2, ranking=Ranking.parse(boost=["brand=Acme:0.2"]))
    assert ids(got) == ["c", "a"]
    assert ids(shop.similar("q", k=2, by="photo", ranking=Ranking.parse(pin=["e"]))) == ["e", "a"]


def test_default_rules_apply_unless_turned_off(shop, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('boost = ["brand=Acme:0.1"]\nbury = ["stock=out"]\n')
    shop.set_rules(Ranking.from_toml(rules))
    assert shop.rules().to_dict() == {"boost": ["brand=Acme:0.1"], "bury": ["stock=out"]}
    assert ids(shop.similar("q", k=6)) == ["c", "a", "b", "f", "e", "d"]
    assert ids(shop.similar("q", k=6, rules=False)) == ["a", "b", "c", "d", "f", "e"]
    # a request adds to the defaults
    assert ids(shop.similar("q", k=2, ranking=Ranking.parse(pin=["e"])))[:2] == ["e", "c"]
    shop.clear_rules()
    assert ids(shop.similar("q", k=3)) == ["a", "b", "c"]
    with Catalog.open(shop.location if hasattr(shop, "location") else tmp_path / "shop.lk") as again:
        assert again.rules() == Ranking()


@pytest.mark.parametrize("text, message", [
    ('boost = "brand=Acme"', "list of strings"),
    ('boost = ["brand"]', "label=value"),
    ('color = ["x=y"]', "unknown key 'color'"),
    ("diversity = 2", "between 0"),
    ("boost = [", "not a TOML"),
])
def test_bad_rules_files_say_what_to_fix(tmp_path, text, message):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(QueryError, match=message) as info:
        Ranking.from_toml(path)
    assert str(path) in str(info.value)


def test_rules_must_name_known_labels(shop):
    with pytest.raises(QueryError, match="unknown label 'colour'"):
        shop.similar("q", ranking=Ranking.parse(boost=["colour=Red"]))


def test_mmr_known_answer():
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert mmr(np.array([0.9, 0.89, 0.5]), vectors, 2, 1.0).tolist() == [0, 1]
    assert mmr(np.array([0.9, 0.89, 0.5]), vectors, 2, 0.5).tolist() == [0, 2]


def test_rrf_known_answer():
    fused = rrf([["a", "b", "c"], ["c", "d"]])
    assert [i for i, _ in fused] == ["c", "a", "b", "d"]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    assert [i for i, _ in rrf([["a", "b"], ["b", "x"]], weights=[1.0, 0.0])] == ["a", "b"]


def test_candidates_fetch_more_than_k():
    assert candidates(10) == 50 and candidates(1) == 41 and candidates(100) == 400


# -- command line ---------------------------------------------------------------------------------------------

def test_cli_rules_set_show_clear_and_similar(tmp_path, capsys):
    from lookalike.cli import main

    shop_catalog(tmp_path / "shop.lk").close()
    where = ["--catalog", str(tmp_path / "shop.lk")]
    rules = tmp_path / "rules.toml"
    rules.write_text('# our shop\nboost = ["brand=Acme:0.1"]\nbury = ["stock=out"]\n')
    assert main(["rules", "set", str(rules), *where]) == 0
    capsys.readouterr()
    assert main(["rules", "show", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out) == {"boost": ["brand=Acme:0.1"], "bury": ["stock=out"]}
    assert main(["similar", "q", "-k", "3", "--json", *where]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in got] == ["c", "a", "b"] and got[0]["rules"] == ["boost brand=Acme +0.1"]
    assert main(["similar", "q", "-k", "2", "--json", "--no-rules", "--pin", "e", *where]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == ["e", "a"]
    assert main(["similar", "q", "-k", "3", "--exclude", "brand=Other", *where]) == 0
    assert "rules" not in capsys.readouterr().out.splitlines()[1]  # no rule moved a result: no column
    assert main(["rules", "clear", *where]) == 0
    capsys.readouterr()
    assert main(["rules", "show", *where]) == 0
    assert "no default rules" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--boost", "brand"], "label=value"),
    (["--diversity", "3"], "between 0"),
    (["--pin", "nope"], "unknown item id 'nope'"),
    (["--bury", "colour=Red"], "unknown label 'colour'"),
])
def test_cli_bad_rules_exit_2_with_one_line(tmp_path, capsys, extra, message):
    from lookalike.cli import main

    shop_catalog(tmp_path / "shop.lk").close()
    assert main(["similar", "q", "--catalog", str(tmp_path / "shop.lk"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_rules_set_bad_file_exit_2(tmp_path, capsys):
    from lookalike.cli import main

    shop_catalog(tmp_path / "shop.lk").close()
    assert main(["rules", "set", str(tmp_path / "missing.toml"), "--catalog", str(tmp_path / "shop.lk")]) == 2
    assert "missing.toml: cannot read" in capsys.readouterr().err


# -- REST API -------------------------------------------------------------------------------------------------

def test_api_similar_takes_rules_and_says_what_moved(tmp_path):
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    with shop_catalog(tmp_path / "shop.lk") as catalog:
        catalog.set_rules(Ranking.parse(bury=["stock=out"]))
    with TestClient(create_app(ServeSettings(catalog=tmp_path / "shop.lk"))) as client:
        got = client.get("/api/items/q/similar", params={"k": 6}).json()["results"]
        assert [r["id"] for r in got] == ["a", "b", "c", "f", "e", "d"] and got[-1]["rules"] == ["bury stock=out"]
        got = client.get("/api/items/q/similar", params={"k": 3, "rules": "false", "boost": "brand=Acme:0.1",
                                                         "pin": "e"}).json()["results"]
        assert [r["id"] for r in got] == ["e", "c", "a"]
        assert got[0]["rules"] == ["pin"] and got[1]["rules"] == ["boost brand=Acme +0.1"]
        got = client.get("/api/items/q/similar", params={"k": 3, "diversity": 0.5}).json()["results"]
        assert "b" not in [r["id"] for r in got]
        bad = client.get("/api/items/q/similar", params={"boost": "brand"})
        assert bad.status_code == 422 and "label=value" in bad.json()["detail"]
        assert client.get("/api/items/q/similar", params={"diversity": 2}).status_code == 422
        bad = client.get("/api/items/q/similar", params={"pin": "x" * 300})
        assert bad.status_code == 422 and "x" * 100 not in bad.json()["detail"]
