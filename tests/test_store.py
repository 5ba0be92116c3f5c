"""The store contract, run against both backends (SQLite file, PostgreSQL schema): items, labels, failures,
vectors, clusters, uploads, meta, the change log and its generations, one transaction per batch, writers that
lose nothing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import random_unit
from lookalike.core.errors import CatalogError, StoreUnavailableError
from lookalike.store import ItemRecord, Store, open_store, parse_database_url
from lookalike.store.products import ProductRecord

DIM = 8


@pytest.fixture
def store(store_location):
    s = open_store(store_location, create=True)
    yield s
    s.close()


_LABELS: dict[str, dict[str, str]] = {}  # labels given to ok(), written by put() with the photo's product


def ok(item_id: str, vector, labels=None, sha=None, path=None) -> ItemRecord:
    if labels is not None:
        _LABELS[item_id] = labels
    return ItemRecord(id=item_id, path=path or f"/photos/{item_id}.jpg", size=100, mtime_ns=1, sha256=sha or item_id,
                      status="ok", width=40, height=30, vector=np.asarray(vector, np.float32))


def put(store, records) -> None:
    """Write photos, each the one photo of a product with its id (a catalog's default), with ok()'s labels."""
    records = list(records)
    store.write(records, [ProductRecord(r.id, (r.id,), {r.id: _LABELS.pop(r.id)} if r.id in _LABELS else None)
                          for r in records])


def failed(item_id: str, reason: str = "not an image") -> ItemRecord:
    return ItemRecord(id=item_id, path=f"/photos/{item_id}.jpg", size=5, mtime_ns=1, sha256=None, status="failed",
                      reason=reason)


def test_both_backends_implement_the_whole_interface(store):
    assert isinstance(store, Store)
    assert store.generations() == (0, 0) and store.is_empty()
    assert store.counts() == {"ok": 0, "failed": 0, "products": 0}


def test_items_vectors_labels_and_failures_round_trip(store):
    vecs = random_unit(3, DIM)
    put(store, [ok("a", vecs[0], {"colour": "red", "shape": "rect"}), ok("b", vecs[1], {"colour": "red"}),
                 ok("c", vecs[2], {"colour": "blue"}), failed("bad")])
    assert store.counts() == {"ok": 3, "failed": 1, "products": 3}
    assert store.failures() == [("bad", "/photos/bad.jpg", "not an image")]
    items = store.items()
    assert set(items) == {"a", "b", "c", "bad"} and items["a"].status == "ok" and items["bad"].reason
    keys, mat = store.vectors(DIM)
    assert [items[i].key for i in "abc"] == keys.tolist()
    np.testing.assert_array_equal(mat, vecs)
    assert store.vectors_for([items["b"].key], DIM)[items["b"].key].tolist() == vecs[1].tolist()
    assert store.labels_for([items["a"].key]) == {items["a"].key: {"colour": "red", "shape": "rect"}}
    assert store.label_names() == ["colour", "shape"]
    assert store.label_counts() == {"colour": {"red": 2, "blue": 1}, "shape": {"rect": 1}}
    assert store.label_counts({"colour": "red"}) == {"colour": {"red": 2}, "shape": {"rect": 1}}
    assert store.keys_where({"colour": "red"}).tolist() == [items["a"].key, items["b"].key]
    assert store.keys_where({"colour": "red", "shape": "rect"}).tolist() == [items["a"].key]
    assert sorted(store.label_values("colour")) == sorted([(items[i].key, c) for i, c in
                                                          (("a", "red"), ("b", "red"), ("c", "blue"))])
    assert store.sizes_for([items["a"].key]) == {items["a"].key: (40, 30, 100)}
    assert [row[1] for row in store.ok_items()] == ["a", "b", "c"]
    blocks = list(store.iter_vectors(DIM, batch=2))
    assert [len(k) for k, _ in blocks] == [2, 1]
    assert store.vector_bytes() == 3 * DIM * 4


def test_a_large_batch_and_its_rewrite_keep_every_vector_with_its_own_item(store):
    """One write of 1,200 photos (PostgreSQL sends each column as one array; SQLite several statements), then
    a rewrite of every other one with new files and vectors and some failed: each id keeps its key and gets its
    own vector back, whatever order the store returned the keys in."""
    first = random_unit(1200, DIM, seed=3)
    ids = [f"p{i:04d}" for i in range(1200)][::-1]  # not in key order
    put(store, [ok(i, v, {"n": str(n % 7)}) for n, (i, v) in enumerate(zip(ids, first, strict=True))])
    keys = {i: row.key for i, row in store.items().items()}
    assert store.label_counts()["n"] == {str(v): sum(1 for n in range(1200) if n % 7 == v) for v in range(7)}
    second = random_unit(500, DIM, seed=4)
    rewritten = ids[::2]
    put(store, [ok(i, v, path=f"/new/{i}.jpg") for i, v in zip(rewritten[:500], second, strict=True)]
        + [failed(i) for i in rewritten[500:]])
    items = store.items()
    assert {i: row.key for i, row in items.items()} == keys
    assert items[rewritten[0]].path == f"/new/{rewritten[0]}.jpg" and items[ids[1]].path == f"/photos/{ids[1]}.jpg"
    stored_keys, mat = store.vectors(DIM)
    by_key = dict(zip(stored_keys.tolist(), mat, strict=True))
    expected = {**dict(zip(ids, first, strict=True)), **dict(zip(rewritten[:500], second, strict=True))}
    for item_id in rewritten[500:]:
        del expected[item_id]
    assert len(by_key) == len(expected) == 1100
    for item_id, vector in expected.items():
        np.testing.assert_array_equal(by_key[keys[item_id]], vector)
    assert store.counts() == {"ok": 1100, "failed": 100, "products": 1100}  # a product shows an embedded photo


def test_generations_and_the_change_log_say_what_changed(store):
    vecs = random_unit(4, DIM, seed=1)
    put(store, [ok("a", vecs[0]), ok("b", vecs[1])])
    assert store.generations() == (1, 0)
    keys = {i: r.key for i, r in store.items().items()}
    put(store, [ok("b", vecs[2]), ok("c", vecs[3])])  # b replaced, c new
    assert store.generation() == 2
    since, mat = store.vectors(DIM, since=1)
    assert since.tolist() == [keys["b"], store.item("c").key]
    np.testing.assert_array_equal(mat[0], vecs[2])
    put(store, [failed("a")])  # a's vector goes away: logged as removed
    store.delete(["c"])
    assert store.generation() == 4
    assert sorted(store.removed_since(2).tolist()) == sorted([keys["a"], since[1]])
    assert store.removed_since(4).tolist() == []
    # labels alone: the vector index stays valid
    store.set_products([ProductRecord("b", ("b",), {"b": {"colour": "green"}})], relink=False)
    assert store.generations() == (4, 1)
    assert store.labels() == {keys["b"]: {"colour": "green"}}
    store.touch([("b", "/moved/b.jpg", 7, 8)])
    assert store.item("b").path == "/moved/b.jpg" and store.generation() == 4


def test_a_write_says_what_it_committed_for_the_writers_own_index(store):
    """What a writer's index applies without reading back: the generation produced, the keys with their vectors
    (as given, float32) and the keys whose vectors went away."""
    vecs = random_unit(3, DIM, seed=4)
    first = store.write([ok("a", vecs[0]), ok("b", vecs[1])])
    keys = {i: r.key for i, r in store.items().items()}
    assert (first.generation, first.alone) == (1, True) and first.removed.tolist() == []
    assert first.keys.tolist() == [keys["a"], keys["b"]] and first.vectors.dtype == np.float32
    np.testing.assert_array_equal(first.vectors, vecs[:2])
    second = store.write([failed("a"), ok("b", vecs[2])])  # a fails now, b is replaced
    assert second.generation == 2 and second.removed.tolist() == [keys["a"]] and second.keys.tolist() == [keys["b"]]
    stored_keys, stored = store.vectors(DIM)
    assert stored_keys.tolist() == [keys["b"]]
    np.testing.assert_array_equal(stored[0], second.vectors[0])


def test_a_batch_is_one_transaction(store):
    vecs = random_unit(2, DIM, seed=2)
    put(store, [ok("a", vecs[0])])

    def records():
        yield ok("b", vecs[1])
        raise RuntimeError("killed mid-batch")

    with pytest.raises(RuntimeError):
        put(store, records())
    assert set(store.items()) == {"a"} and store.generation() == 1  # b never happened


def test_clusters_meta_uploads_and_float16(store):
    vecs = random_unit(2, DIM, seed=3)
    store.vector_dtype = np.dtype(np.float16)
    put(store, [ok("a", vecs[0]), ok("b", vecs[1], path="upload:abc.jpg")])
    keys, mat = store.vectors(DIM)
    assert mat.dtype == np.float32 and np.allclose(mat, vecs, atol=1e-3)
    store.set_clusters(keys, np.array([1, 0]), {"n": 2, "generation": 1})
    assert store.clusters() == {int(keys[0]): 1, int(keys[1]): 0} and store.cluster_info()["n"] == 2
    assert store.cluster_of(int(keys[0])) == 1 and store.keys_in_cluster(0).tolist() == [int(keys[1])]
    assert store.generations() == (1, 0)  # clusters bump neither counter
    store.set_meta("index_options", {"kind": "flat"})
    assert store.get_meta("index_options") == '{"kind": "flat"}' and store.get_meta("nothing") is None
    store.put_upload("abc.jpg", b"\xff\xd8bytes")
    store.put_upload("abc.jpg", b"\xff\xd8bytes")  # once per name
    store.put_upload("gone.jpg", b"x")
    assert store.upload("abc.jpg") == b"\xff\xd8bytes" and store.upload_names() == ["abc.jpg", "gone.jpg"]
    store.delete_uploads(["abc.jpg", "gone.jpg"])  # abc.jpg is still an item's image: kept
    assert store.upload_names() == ["abc.jpg"]


def test_predicted_labels_filter_and_count_beside_the_sources_and_go_away_alone(store):
    vecs = random_unit(3, DIM)
    put(store, [ok("a", vecs[0], {"colour": "red"}), ok("b", vecs[1], {"colour": "blue"}), ok("c", vecs[2])])
    keys = [store.item(i).key for i in "abc"]
    labels_gen = store.generations()[1]
    store.set_predicted("style", np.array(keys), ["casual", "formal", "casual"], np.array([0.9, 0.6, 0.7]),
                        {"classes": ["casual", "formal"]})
    assert store.generations()[1] == labels_gen + 1
    assert store.label_names() == ["colour", "style"] and store.manifest_label_names() == ["colour"]
    assert store.predicted_names() == ["style"] and store.predicted_info("style") == {"classes": ["casual", "formal"]}
    assert store.keys_where({"style": "casual"}).tolist() == [keys[0], keys[2]]
    assert store.keys_where({"style": "casual", "colour": "red"}).tolist() == [keys[0]]
    assert store.label_counts()["style"] == {"casual": 2, "formal": 1}
    assert store.labels_for([keys[0]]) == {keys[0]: {"colour": "red", "style": "casual"}}
    assert store.predicted_scores_for(keys) == {keys[0]: {"style": 0.9}, keys[1]: {"style": 0.6},
                                                keys[2]: {"style": 0.7}}
    assert store.remove_predicted("style") == 3
    assert store.label_names() == ["colour"] and store.predicted_names() == []


def test_two_writers_at_once_lose_nothing(store_location):
    first = open_store(store_location, create=True)
    second = open_store(store_location)
    vecs = random_unit(80, DIM, seed=4)
    errors = []

    def writer(s, start):
        try:
            for i in range(start, start + 40, 4):
                put(s, [ok(f"i{j}", vecs[j]) for j in range(i, i + 4)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(first, 0)), threading.Thread(target=writer, args=(second, 40))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert first.counts()["ok"] == 80 and first.generation() == 20
    keys, mat = second.vectors(DIM)
    by_id = {r.key: int(i[1:]) for i, r in second.items().items()}
    np.testing.assert_array_equal(mat, vecs[[by_id[k] for k in keys.tolist()]])
    # every generation is accounted for once: a reader catching up batch by batch sees every vector
    seen = set()
    for g in range(20):
        seen |= set(first.vectors(DIM, since=g)[0].tolist()) - set(first.vectors(DIM, since=g + 1)[0].tolist())
    assert len(seen) == 80
    first.close()
    second.close()


def test_copying_rows_keeps_keys(store_location, tmp_path):
    src = open_store(tmp_path / "src.sqlite", create=True)
    vecs = random_unit(3, DIM, seed=5)
    put(src, [ok("a", vecs[0], {"c": "1"}), ok("b", vecs[1]), ok("c", vecs[2])])
    src.delete(["b"])
    dst = open_store(store_location, create=True)
    dst.import_rows(items=src.item_rows(), products=src.product_rows(), product_photos=src.product_photo_rows(),
                    labels=src.label_rows(), vectors=src.raw_vectors(),
                    meta={"generation": str(src.generation())})
    assert dst.items()["c"].key == src.items()["c"].key and dst.generation() == 2
    put(dst, [ok("d", vecs[1])])  # new keys continue after the copied ones
    assert dst.item("d").key > dst.item("c").key
    np.testing.assert_array_equal(dst.vectors(DIM)[1][:2], src.vectors(DIM)[1])
    src.close()
    dst.close()


# -- PostgreSQL only ----------------------------------------------------------------------------------------


def test_a_database_url_never_shows_its_password():
    url = parse_database_url("postgresql://shop:s%40cret@db.example:5433/lookalike?schema=shop_a&sslmode=require")
    assert url.schema == "shop_a" and "s@cret" not in url.display and "s%40cret" not in url.display
    assert url.display == "postgresql://shop@db.example:5433/lookalike?sslmode=require&schema=shop_a"
    assert "schema" not in url.conninfo and "sslmode=require" in url.conninfo
    assert url.redact("password s@cret and s%40cret") == "password *** and ***"
    with pytest.raises(CatalogError, match="plain name"):
        parse_database_url("postgresql://db/x?schema=a;drop")


def test_an_unreachable_database_is_one_line_without_the_password():
    from lookalike.store.postgres import PostgresStore

    with pytest.raises(StoreUnavailableError) as caught:
        PostgresStore("postgresql://shop:hunter2@127.0.0.1:1/lookalike")
    text = str(caught.value)
    assert "\n" not in text and "hunter2" not in text and "postgresql://shop@127.0.0.1:1/lookalike" in text


def test_no_catalog_at_a_url_says_how_to_make_one(pg_url):
    with pytest.raises(CatalogError, match="no catalog here"):
        open_store(pg_url)


def test_a_role_with_rights_on_its_schema_only_is_enough(pg_server):
    import psycopg

    with psycopg.connect(pg_server.url, autocommit=True) as admin:
        admin.execute("DROP SCHEMA IF EXISTS shop_only CASCADE")
        admin.execute("DROP ROLE IF EXISTS shop_only")
        admin.execute("CREATE ROLE shop_only LOGIN")
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        admin.execute("REVOKE CREATE ON DATABASE postgres FROM PUBLIC")
        admin.execute("CREATE SCHEMA shop_only AUTHORIZATION shop_only")
    url = pg_server.url.replace("postgres@", "shop_only@") + "?schema=shop_only"
    store = open_store(url, create=True)
    put(store, [ok("a", random_unit(1, DIM)[0])])
    assert store.counts()["ok"] == 1
    store.close()
    with pytest.raises(CatalogError, match="permission denied"):  # another schema is refused, in one line
        open_store(url.replace("schema=shop_only", "schema=other"), create=True)


def test_a_listener_hears_another_processes_write(pg_url):
    writer = open_store(pg_url, create=True)
    reader = open_store(pg_url)
    heard = threading.Event()
    watch = reader.watch(heard.set)
    try:
        assert heard.wait(5)  # the first call: listening started
        heard.clear()
        put(writer, [ok("a", random_unit(1, DIM)[0])])
        assert heard.wait(1.0)
    finally:
        watch.close()
        reader.close()
        writer.close()


def test_a_new_catalog_file_gets_pages_its_vectors_fit_in_and_an_older_file_keeps_its_own(tmp_path):
    """Vectors larger than a 4 KB page's cell get 64 KB pages (no overflow chains); small ones keep SQLite's
    default; a file written with 4 KB pages (every earlier release) opens with them and keeps its rows."""
    from lookalike.store.sqlite import SQLiteStore, page_size_for

    assert (page_size_for(512), page_size_for(1000), page_size_for(1280), page_size_for(2048)) == (
        4096, 4096, 65536, 65536)
    vecs = random_unit(3, 2048, seed=5)
    big = SQLiteStore(tmp_path / "big.sqlite", page_size=page_size_for(2048))
    big.write([ok("a", vecs[0]), ok("b", vecs[1])])
    assert big.conn.execute("PRAGMA page_size").fetchone()[0] == 65536
    np.testing.assert_array_equal(big.vectors(2048)[1], vecs[:2])
    big.close()
    old = SQLiteStore(tmp_path / "old.sqlite")  # as an earlier release made it
    old.write([ok("a", vecs[0])])
    old.close()
    again = SQLiteStore(tmp_path / "old.sqlite", page_size=65536)
    again.write([ok("c", vecs[2])])
    assert again.conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    np.testing.assert_array_equal(again.vectors(2048)[1], vecs[[0, 2]])
    again.close()
