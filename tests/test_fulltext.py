"""The full-text index of products' labels in the store (SQLite FTS5, PostgreSQL tsvector): written with the
labels, following relabels and removals, built on open for a catalog written before it."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from lookalike.store import ItemRecord, SQLiteStore, open_store
from lookalike.store.fulltext import body, words
from lookalike.store.products import ProductRecord

TITLES = {
    "p1": {"productDisplayName": "Nike Men Red Running Shoes", "brand": "Nike", "colour": "Red"},
    "p2": {"productDisplayName": "Puma Women Blue Tshirt", "brand": "Puma", "colour": "Blue"},
    "p3": {"productDisplayName": "Nike Women Black Shirt", "brand": "Nike", "colour": "Black"},
    "p4": {"productDisplayName": "Fossil Men Watch", "brand": "Fossil", "colour": "Silver"},
}


def fill(store, titles=TITLES) -> None:
    rng = np.random.default_rng(0)
    store.write([ItemRecord(id=i, path=f"/shop/{i}.jpg", size=1, mtime_ns=1, sha256=f"h{i}", status="ok",
                            vector=rng.standard_normal(8).astype(np.float32)) for i in titles],
                [ProductRecord(i, (i,), {i: labels}) for i, labels in titles.items()])


def found(store, text: str, limit: int = 10) -> list[str]:
    ids = dict((key, pid) for key, pid in store.products())
    return [ids[key] for key, _ in store.keyword_search(text, limit)]


@pytest.fixture
def store(store_location):
    s = open_store(store_location, create=True)
    fill(s)
    yield s
    s.close()


def test_words_and_bodies_are_plain():
    assert words('Red "shirt" OR -nike* red') == ["red", "shirt", "or", "nike"]
    assert body({"a": {"t": "Nike Shoe", "b": "Nike"}, "b": {"t": "Nike Shoe", "c": "Red"}}) == "Nike Shoe Nike Red"


def test_keywords_find_titles_and_labels_best_first(store):
    assert sorted(found(store, "nike")) == ["p1", "p3"]
    assert found(store, "nike shirt")[0] == "p3"  # both words beat one
    assert found(store, "shirts") == ["p3"]  # stemmed: shirts finds Shirt (not Tshirt: another word)
    assert found(store, "fossil watch", limit=1) == ["p4"]
    assert found(store, "zebra") == []
    assert found(store, "  ?!  ") == []  # no word: nothing, no syntax error
    assert found(store, 'nike" OR "puma') and found(store, "NEAR(") == []  # user text never reaches a parser


def test_keywords_follow_relabels_and_removals(store):
    store.set_products([ProductRecord("p4", ("p4",), {"p4": {"productDisplayName": "Casio Men Watch"}})])
    assert found(store, "fossil") == []
    assert found(store, "casio") == ["p4"]
    store.delete(["p1"])  # the photo goes, and with it its product
    assert found(store, "running") == []
    assert found(store, "nike") == ["p3"]
    store.delete_products(["p3"])
    assert found(store, "nike") == []


def test_keywords_survive_a_copy_of_the_rows(store, tmp_path):
    other = SQLiteStore(tmp_path / "copy.sqlite")
    other.import_rows(items=[tuple(r) for r in store.item_rows()], products=store.product_rows(),
                      product_photos=store.product_photo_rows(), labels=store.label_rows())
    assert sorted(found(other, "nike")) == ["p1", "p3"]
    other.close()


def test_an_sqlite_catalog_from_before_the_index_gets_it_on_open(tmp_path):
    path = tmp_path / "catalog.sqlite"
    s = SQLiteStore(path)
    fill(s)
    s.close()
    conn = sqlite3.connect(path)  # as the release before the keyword index wrote it
    conn.executescript("DROP TABLE product_fts; DROP TABLE product_text;")
    conn.close()
    ro = SQLiteStore(path, read_only=True)  # read-only: a scan of the labels, same answers
    assert not ro.keyword_indexed
    assert sorted(found(ro, "nike")) == ["p1", "p3"] and found(ro, "watch fossil")[0] == "p4"
    ro.close()
    s = SQLiteStore(path)
    assert s.keyword_indexed and sorted(found(s, "nike")) == ["p1", "p3"]
    s.close()


def test_a_postgresql_catalog_from_before_the_index_gets_it_on_open(pg_url):
    import psycopg

    from lookalike.store import parse_database_url

    s = open_store(pg_url, create=True)
    fill(s)
    s.close()
    url = parse_database_url(pg_url)
    with psycopg.connect(url.conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {url.schema}.product_text")
    s = open_store(pg_url)
    assert s.keyword_indexed and sorted(found(s, "nike")) == ["p1", "p3"]
    s.close()


def test_words_scored_one_at_a_time_rank_as_the_full_text_index_ranks_them_together(tmp_path):
    """The catalog keeps each word's postings and adds them up (``combine``); on SQLite that must order products
    exactly as FTS5's own bm25 of the words OR-ed, on a corpus where lengths, repeats and rarity all differ."""
    rng = np.random.default_rng(3)
    vocabulary = ["red", "blue", "shirt", "shoe", "nike", "puma", "watch", "men", "women", "sport", "casual", "dot"]
    titles = {f"p{i}": {"productDisplayName": " ".join(rng.choice(vocabulary, size=int(rng.integers(2, 9))))}
              for i in range(300)}
    store = SQLiteStore(tmp_path / "shop.db")
    try:
        fill(store, titles)
        for query in ("red", "red shirt", "nike watch dot", "women casual sport shoe"):
            terms = words(query)
            ours = store.keyword_search(query, 300)
            theirs = store._rows("SELECT rowid, -bm25(product_fts) FROM product_fts WHERE product_fts MATCH ? "
                                 "ORDER BY bm25(product_fts), rowid", (" OR ".join(f'"{t}"' for t in terms),))
            assert [key for key, _ in ours] == [int(key) for key, _ in theirs]
            assert np.allclose([s for _, s in ours], [float(s) for _, s in theirs])
    finally:
        store.close()
