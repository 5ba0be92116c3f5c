"""Search by words and combined queries: the text tower searched in the same index, any mix of photos, words
and items (each for or against) combined by the documented rule, and one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import word_options
from lookalike import Catalog
from lookalike.catalog.query import QueryPart, QueryWeights, combine
from lookalike.catalog.ranking import Ranking
from lookalike.core.config import EncodeOptions
from lookalike.core.errors import NoTextModelError, QueryError

OPTIONS = word_options()
VECTORS = Ranking.parse(keyword_weight=0)  # the vector list alone (words are fused with keyword hits by default)


@pytest.fixture
def catalog(word_shop, tiny_clip):
    with Catalog.open(word_shop / "shop.lk", embedder=tiny_clip) as cat:
        cat.encoder(OPTIONS)
        yield cat


def _brute(catalog: Catalog, query: np.ndarray, exclude: set[str] = frozenset()) -> list[str]:
    ids = [i for i in catalog.ids() if i not in exclude]
    sims = np.array([float(np.dot(catalog.vector(i), query)) for i in ids])
    return [ids[j] for j in np.argsort(-sims, kind="stable")]


def test_words_are_searched_in_the_photo_index(catalog):
    query = catalog.encoder().encode_text("red floral summer dress")
    found = catalog.search(text="red floral summer dress", k=5, ranking=VECTORS)
    assert [m.id for m in found] == _brute(catalog, query)[:5]
    assert found[0].similarity == pytest.approx(float(np.dot(catalog.vector(found[0].id), query)), abs=1e-5)


def test_a_photo_and_words_together_follow_the_documented_rule(catalog, word_shop):
    photo = word_shop / "photos" / "blue-rect.jpg"
    enc = catalog.encoder()
    image, words, avoid = enc.encode(photo), enc.encode_text("in black leather"), enc.encode_text("stripes")
    expected = image + words - 0.5 * avoid
    expected /= np.linalg.norm(expected)
    found = catalog.search(photo, text="in black leather", not_text="stripes", k=12)
    assert [m.id for m in found] == _brute(catalog, expected)
    heavier = image + 3 * words
    found = catalog.search(photo, text="in black leather", k=4, weights=["text=3"])
    assert [m.id for m in found] == _brute(catalog, heavier / np.linalg.norm(heavier))[:4]


def test_more_like_these_items_less_like_that_one(catalog):
    a, b, c = (catalog.vector(i) for i in ("red-rect", "green-rect", "blue-stripes"))
    expected = (a + b) / 2 - 0.5 * c
    found = catalog.search(items=["red-rect", "green-rect"], not_items=["blue-stripes"], k=12)
    ids = [m.id for m in found]
    assert ids == _brute(catalog, expected / np.linalg.norm(expected), {"red-rect", "green-rect", "blue-stripes"})
    assert len(ids) == 9


def test_similar_with_words_is_the_item_plus_the_words(catalog):
    item, words = catalog.vector("red-ellipse"), catalog.encoder().encode_text("for women")
    expected = (item + words) / np.linalg.norm(item + words)
    found = catalog.similar("red-ellipse", text="for women", k=11)
    assert [m.id for m in found] == _brute(catalog, expected, {"red-ellipse"})


def test_words_keep_filters_dedupe_and_min_similarity(catalog):
    found = catalog.search(text="a yellow thing", k=10, where={"shape": "ellipse"})
    assert {m.labels["shape"] for m in found} == {"ellipse"} and len(found) == 4
    every = catalog.search(text="a yellow thing", k=12, ranking=VECTORS)
    cut = (every[3].similarity + every[4].similarity) / 2
    assert [m.id for m in catalog.search(text="a yellow thing", k=12, min_similarity=cut, ranking=VECTORS)] == [
        m.id for m in every[:4]]
    assert len(catalog.search(text="a yellow thing", k=5, dedupe=True)) == 5
    assert [m.id for m in catalog.similar("red-rect", text="yellow", k=3, where=["shape=rect"])] == [
        m.id for m in catalog.similar("red-rect", text="yellow", k=11) if m.labels["shape"] == "rect"][:3]


def test_combine_is_a_weighted_sum_of_unit_vectors_renormalised():
    x, y, z = np.eye(3, dtype=np.float32)
    parts = [QueryPart("image", 2 * x), QueryPart("item", y), QueryPart("item", z), QueryPart("text", z, True)]
    expected = x + (y + z) / 2 - 0.5 * z
    np.testing.assert_allclose(combine(parts), expected / np.linalg.norm(expected), atol=1e-6)
    assert QueryWeights.parse({"text": 2}).text == 2 and QueryWeights.parse(["negative=0"]).negative == 0
    with pytest.raises(QueryError, match="unknown query weight 'colour'"):
        QueryWeights.parse(["colour=2"])
    with pytest.raises(QueryError, match="must be 0 or more"):
        QueryWeights.parse(["text=-1"])
    with pytest.raises(QueryError, match="something to look for"):
        combine([QueryPart("item", x, True)])
    with pytest.raises(QueryError, match="cancel out"):
        combine([QueryPart("item", x), QueryPart("text", x, True)], QueryWeights(negative=1))


def test_bad_queries_fail_in_one_line(catalog):
    with pytest.raises(QueryError, match="nothing to search for"):
        catalog.search(k=3)
    with pytest.raises(QueryError, match="empty words"):
        catalog.search(text="  ")
    with pytest.raises(QueryError, match="unknown item id 'nope'"):
        catalog.search(items=["nope"])


def test_a_catalog_without_a_text_tower_refuses_words_naming_the_models_that_have_one(labelled_catalog):
    with pytest.raises(NoTextModelError, match="colorhist embeds photos only.*clip-vit-b32.*fashion-siglip"):
        labelled_catalog.search(text="red", not_text="dress")  # words to avoid need a text tower
    found = labelled_catalog.search(text="red dress", k=5)  # words to find are searched as keywords
    assert found and all(m.labels["colour"] == "red" and m.found_by == ["keyword"] for m in found)
    with pytest.raises(NoTextModelError):
        labelled_catalog.similar("red-rect", text="but blue")
    found = labelled_catalog.search(items=["red-rect"], not_items=["blue-rect"], k=3)  # items need no text tower
    assert len(found) == 3 and "red-rect" not in {m.id for m in found}


def test_words_through_the_rest_api(word_shop, hub_cache, tiny_clip):
    """/api/search takes text with or without a photo; /api/items/{id}/similar takes text; answers equal the
    library's; a search with nothing to look for is refused."""
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app
    from lookalike.api.schemas import SearchResult

    photo = word_shop / "photos" / "blue-rect.jpg"
    with Catalog.open(word_shop / "shop.lk", embedder=tiny_clip) as catalog:
        catalog.encoder(EncodeOptions(device="cpu", workers=0, progress=False))
        words = [m.id for m in catalog.search(text="red floral summer dress", k=4)]
        both = [m.id for m in catalog.search(photo, text="in black leather", k=4)]
        similar = [m.id for m in catalog.similar("red-rect", text="for women", k=4)]
    settings = ServeSettings(catalog=word_shop / "shop.lk", device="cpu")
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/health").json()["text"] is True
        r = client.post("/api/search", data={"text": "red floral summer dress", "k": "4"})
        assert r.status_code == 200, r.text
        body = r.json()
        SearchResult.model_validate(body)
        assert body["query"]["kind"] == "text" and body["query"]["text"] == "red floral summer dress"
        assert [m["id"] for m in body["results"]] == words
        r = client.post("/api/search", data={"text": "in black leather", "k": "4"},
                        files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200 and r.json()["query"]["kind"] == "upload+text", r.text
        assert [m["id"] for m in r.json()["results"]] == both
        r = client.get("/api/items/red-rect/similar", params={"text": "for women", "k": 4})
        assert r.status_code == 200 and r.json()["query"]["kind"] == "item+text", r.text
        assert [m["id"] for m in r.json()["results"]] == similar
        r = client.post("/api/search", data={"k": "4"})
        assert r.status_code == 422 and "photo" in r.json()["detail"]


def test_an_image_only_server_answers_words_as_keywords(shop):
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(catalog=shop / "shop.lk", device="cpu"))) as client:
        assert client.get("/api/health").json()["text"] is False
        r = client.post("/api/search", data={"text": "red dress"})  # keywords of the labels
        assert r.status_code == 200 and r.json()["query"]["kind"] == "keywords", r.text
        assert {m["labels"]["colour"] for m in r.json()["results"]} == {"red"}
        r = client.get("/api/items/red-rect/similar", params={"text": "but blue"})
        assert r.status_code == 422 and "cannot search by words" in r.json()["detail"]


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)


@pytest.mark.slow
def test_words_from_the_command_line(word_shop, clip_hub, tiny_clip):
    env = {"HF_HOME": str(clip_hub)}
    root = word_shop
    text = _cli(["search", "--text", "red floral summer dress", "--catalog", "shop.lk", "-k", "3", "--json"], root,
                env)
    assert text.returncode == 0, text.stderr
    with Catalog.open(root / "shop.lk", embedder=tiny_clip) as catalog:
        catalog.encoder(OPTIONS)
        expected = [m.id for m in catalog.search(text="red floral summer dress", k=3)]
        assert [m["id"] for m in json.loads(text.stdout)] == expected
        photo = _cli(["search", "photos/blue-rect.jpg", "--text", "in black leather", "--catalog", "shop.lk", "-k",
                      "4", "--json", "--precision", "fp32"], root, env)
        assert photo.returncode == 0, photo.stderr
        assert [m["id"] for m in json.loads(photo.stdout)] == [
            m.id for m in catalog.search(root / "photos" / "blue-rect.jpg", text="in black leather", k=4)]
    similar = _cli(["similar", "red-rect", "--text", "for women", "--catalog", "shop.lk", "-k", "3"], root, env)
    assert similar.returncode == 0 and 'but "for women"' in similar.stdout, similar.stderr
    items = _cli(["search", "--item", "red-rect", "--item", "green-rect", "--not-item", "blue-stripes", "--catalog",
                  "shop.lk", "-k", "3", "--json"], root, env)
    assert items.returncode == 0 and "red-rect" not in items.stdout, items.stderr
    nothing = _cli(["search", "--catalog", "shop.lk"], root, env)
    assert nothing.returncode == 2 and len(nothing.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_an_image_only_catalog_refuses_text_in_one_line(labelled_catalog):
    res = _cli(["search", "--text", "red", "--not-text", "dress", "--catalog", str(labelled_catalog.path)],
               labelled_catalog.path.parent)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "fashion-siglip" in lines[0] and "clip-vit-b32" in lines[0], res.stderr


# -- evaluation by words ------------------------------------------------------------------------------------


def _ranked(catalog: Catalog, query: np.ndarray) -> list[str]:
    return _brute(catalog, query)


def test_evaluate_text_from_a_column_by_brute_force(catalog):
    from lookalike.analysis.words import TEXT_FROM, evaluate_words

    rows = evaluate_words(catalog, TEXT_FROM, "colour", k=4, bootstrap=50)
    ours, chance = rows
    assert (ours.name, chance.name, ours.queries, ours.items) == (str(catalog.path), "chance", 12, 12)
    enc = catalog.encoder()
    recalls, rrs = [], []
    for item in catalog.ids():
        colour = item.split("-")[0]
        top = _ranked(catalog, enc.encode_text(colour))[:4]
        relevant = [i.split("-")[0] == colour for i in top]
        recalls.append(sum(relevant) / 3)
        rrs.append(1 / (relevant.index(True) + 1) if any(relevant) else 0.0)
    assert ours.metrics["recall"].value == pytest.approx(np.mean(recalls))
    assert ours.metrics["mrr"].value == pytest.approx(np.mean(rrs))
    assert ours.metrics["recall"].low is not None and set(chance.metrics) == {"recall", "mrr", "hit_rate"}


def test_evaluate_each_label_value_as_words(catalog):
    from lookalike.analysis.words import TEXT_LABEL, evaluate_words

    ours, chance = evaluate_words(catalog, TEXT_LABEL, "shape", k=4, template="a {} thing", bootstrap=0)
    assert ours.queries == 3 and ours.template == "a {} thing"
    enc = catalog.encoder()
    precision = []
    for shape in ("ellipse", "rect", "stripes"):
        top = _ranked(catalog, enc.encode_text(f"a {shape} thing"))[:4]
        precision.append(np.mean([i.endswith(shape) for i in top]))
    assert ours.metrics["precision"].value == pytest.approx(np.mean(precision))
    assert [v["value"] for v in ours.per_value] == ["ellipse", "rect", "stripes"]
    assert 0 <= chance.metrics["precision"].value <= 1


def test_evaluation_by_words_needs_a_text_tower_and_a_known_column(catalog, labelled_catalog):
    from lookalike.analysis.words import TEXT_FROM, TEXT_LABEL, evaluate_words

    with pytest.raises(NoTextModelError):
        evaluate_words(labelled_catalog, TEXT_FROM, "colour")
    with pytest.raises(QueryError, match="unknown label 'title'"):
        evaluate_words(catalog, TEXT_FROM, "title")
    with pytest.raises(QueryError, match="no \\{\\}"):
        evaluate_words(catalog, TEXT_LABEL, "shape", template="a thing")


@pytest.mark.slow
def test_evaluate_by_words_from_the_command_line(word_shop, clip_hub):
    res = _cli(["evaluate", "--catalog", "shop.lk", "--text-from", "colour", "--text-label", "shape", "-k", "3",
                "--bootstrap", "20", "--json"], word_shop, {"HF_HOME": str(clip_hub)})
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["kind"], r["name"]) for r in rows] == [("text-from", "shop.lk"), ("text-from", "chance"),
                                                      ("text-label", "shop.lk"), ("text-label", "chance")]
    table = _cli(["evaluate", "--catalog", "shop.lk", "--text-label", "shape", "--label", "colour", "-k", "3",
                  "--bootstrap", "0", "--per-class"], word_shop, {"HF_HOME": str(clip_hub)})
    assert table.returncode == 0 and "each shape value as the query" in table.stdout and "P@3" in table.stdout
