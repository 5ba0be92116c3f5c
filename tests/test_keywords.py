"""Words as keywords: keyword search on an image-only catalog, rank fusion with vector results in a known order,
keyword weight 0 = vectors only, the REST API and the command line."""

from __future__ import annotations

import pytest

from lookalike import Catalog
from lookalike.catalog.ranking import Ranking, rrf
from lookalike.core.config import EncodeOptions
from lookalike.core.errors import NoTextModelError, QueryError
from test_ranking import ids, shop_catalog

OPTIONS = EncodeOptions(workers=0, progress=False)
TITLES = {"red-rect": "Nike Men Red Running Shoes", "green-rect": "Puma Women Green Tshirt",
          "blue-rect": "Nike Women Blue Shirt", "red-ellipse": "Fossil Men Red Watch"}


@pytest.fixture
def titled(catalog_location, photo_dir):
    """An image-only (colour histogram) catalog of the twelve photos, four of them with titles, on each backend."""
    rows = ["path,productDisplayName,colour"]
    for path in sorted(photo_dir.rglob("*.jpg")):
        colour, shape = path.stem.split("-")
        rows.append(f"{path.relative_to(photo_dir).as_posix()},{TITLES.get(path.stem, 'Plain ' + shape)},{colour}")
    (photo_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(catalog_location, "colorhist") as catalog:
        catalog.add(photo_dir / "labels.csv", images=photo_dir, options=OPTIONS)
        yield catalog


def test_words_on_an_image_only_catalog_are_keywords(titled):
    found = titled.search(text="nike shirt", k=5)
    assert ids(found)[0] == "blue-rect" and set(ids(found)) == {"blue-rect", "red-rect"}
    assert all(m.found_by == ["keyword"] and m.similarity == 0.0 for m in found)
    assert [m.rank for m in found] == [1, 2]
    assert ids(titled.search(text="nike", k=5, where={"colour": "red"})) == ["red-rect"]
    assert ids(titled.search(text="watches", k=5)) == ["red-ellipse"]  # stemmed
    assert titled.search(text="zebra", k=5) == []
    boosted = titled.search(text="nike", k=5, ranking=Ranking.parse(boost=["colour=red"]))
    assert ids(boosted)[0] == "red-rect" and boosted[0].rules == ["boost colour=red +0.1"]
    with pytest.raises(NoTextModelError):  # what to avoid still needs a text tower
        titled.search(text="nike", not_text="red")
    with pytest.raises(QueryError, match="empty words"):
        titled.search(text="  ")


def test_the_index_follows_relabels_and_removals(titled, photo_dir):
    assert ids(titled.search(text="fossil", k=3)) == ["red-ellipse"]
    titled.remove(["red-ellipse"])
    assert titled.search(text="fossil", k=3) == []
    (photo_dir / "labels.csv").write_text("path,productDisplayName,colour\nblue-rect.jpg,Casio Blue Watch,blue\n")
    titled.add(photo_dir / "labels.csv", images=photo_dir, options=OPTIONS)
    assert ids(titled.search(text="casio", k=3)) == ["blue-rect"]
    assert "blue-rect" not in ids(titled.search(text="nike", k=5))


def test_keywords_and_vectors_fuse_by_reciprocal_rank(tmp_path):
    """Vector ranks for item q: a, b, c, d, f, e; the keyword "out" finds only d. RRF: d scores 1/64 + 1/61,
    above a's 1/61."""
    with shop_catalog(tmp_path / "shop.lk") as shop:
        vectors_only = shop.search(items=["q"], text="out", k=6, ranking=Ranking.parse(keyword_weight=0))
        assert ids(vectors_only) == ["a", "b", "c", "d", "f", "e"]
        assert all(m.found_by == ["vector"] for m in vectors_only)
        plain = ids(shop.search(items=["q"], k=6))
        assert ids(vectors_only) == plain
        fused = shop.search(items=["q"], text="out", k=6)
        assert ids(fused) == [i for i, _ in rrf([plain, ["d"]])] == ["d", "a", "b", "c", "f", "e"]
        assert fused[0].found_by == ["vector", "keyword"] and fused[1].found_by == ["vector"]
        assert fused[0].similarity == pytest.approx(0.85, abs=1e-5)  # its cosine, not its fused score
        # a keyword hit the vectors did not reach gets its cosine to the query computed
        far = shop.search(items=["q"], text="out", k=2, ranking=Ranking.parse(keyword_weight=5))
        assert ids(far) == ["d", "a"]


def test_keyword_weight_must_be_zero_or_more():
    with pytest.raises(QueryError, match="keyword weight"):
        Ranking.parse(keyword_weight=-1)


def test_the_rest_api_answers_keywords_and_takes_a_weight(tmp_path):
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    shop_catalog(tmp_path / "shop.lk").close()
    with TestClient(create_app(ServeSettings(catalog=tmp_path / "shop.lk", device="cpu"))) as client:
        r = client.post("/api/search", data={"text": "acme", "k": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"]["kind"] == "keywords" and [m["id"] for m in body["results"]] == ["c"]
        assert body["results"][0]["found_by"] == ["keyword"]
        r = client.post("/api/search", data={"text": "acme", "k": "3", "keyword_weight": "-1"})
        assert r.status_code == 422


def test_the_command_line_searches_keywords_and_fuses_with_a_weight(tmp_path, capsys):
    import json

    from lookalike.cli import main

    shop_catalog(tmp_path / "shop.lk").close()
    where = ["--catalog", str(tmp_path / "shop.lk")]
    assert main(["search", "--text", "acme", *where]) == 0
    out = capsys.readouterr().out
    assert "keyword search" in out.splitlines()[0] and " c " in out
    assert main(["search", "--item", "q", "--text", "out", "-k", "3", "--json", *where]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == ["d", "a", "b"]
    assert main(["search", "--item", "q", "--text", "out", "-k", "3", "--json", "--keyword-weight", "0", *where]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == ["a", "b", "c"]
    assert main(["search", "--text", "acme", "--keyword-weight", "-2", *where]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keyword weight" in err[0]
