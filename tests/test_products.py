"""Products, not photos: several photos per product, variants with multi-valued labels, a photo embedded once
however many rows name it, answers that are products (each at its best photo), and catalogs of the release
before products (store format 1) opening and upgrading in place, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from conftest import make_image
from lookalike.catalog.catalog import Catalog
from lookalike.core.config import EncodeOptions
from lookalike.core.errors import QueryError, SourceError

INLINE = EncodeOptions(workers=0, progress=False)
FORMAT1 = Path(__file__).parent / "data" / "format1"
COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40)}


@pytest.fixture
def shop(tmp_path) -> Path:
    """Four styles of shirt, each photographed front and back (eight files), sold in sizes S, M and L."""
    images = tmp_path / "images"
    for colour, rgb in COLOURS.items():
        make_image(images / f"{colour}-front.jpg", color=rgb)
        make_image(images / f"{colour}-back.jpg", color=rgb, shape="ellipse")
    return images


def write_manifest(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def sku_rows(shuffle: int | None = None) -> list[str]:
    rows = [f"{colour}-{size},{colour},{colour}-front.jpg|{colour}-back.jpg,{size},{colour}"
            for colour in COLOURS for size in "SML"]
    rows.append("red-XL,red,red-front.jpg,XL,crimson")  # one rare row: its label must not be lost
    if shuffle is not None:
        random.Random(shuffle).shuffle(rows)
    return ["sku,style,path,size,colour", *rows]


def test_rows_of_one_style_are_one_product_with_every_photo_embedded_once(tmp_path, shop):
    manifest = write_manifest(tmp_path / "skus.csv", sku_rows())
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        report = cat.add(manifest, images=shop, options=INLINE, product_column="style")
        assert report.indexed == 8 and (report.products, report.photos) == (4, 8)  # 13 rows, 8 files, 4 styles
        assert sorted(cat.ids()) == sorted(COLOURS) and len(cat) == 4
        status = cat.status().to_dict()
        assert (status["products"], status["photos"]) == (4, 8)
        labels = cat.labels("red")
        assert labels["size"] == "L | M | S | XL" and labels["colour"] == "crimson | red"  # no row wins
        item = cat.item("red")
        assert len(item.photos) == 2 and item.photos[0].endswith("red-front.jpg")
        matches = cat.search(shop / "blue-back.jpg", k=4)
        assert [m.id for m in matches][0] == "blue" and len({m.id for m in matches}) == 4  # one hit per product
        assert matches[0].photo == "blue#2" and matches[0].photos == 2 and matches[0].similarity > 0.999
        again = cat.add(manifest, images=shop, options=INLINE, product_column="style")
        assert again.indexed == 0 and again.unchanged == 8


def test_the_catalog_does_not_depend_on_the_order_of_the_rows(tmp_path, shop):
    found = []
    for seed in (None, 1, 2):
        manifest = write_manifest(tmp_path / f"skus{seed}.csv", sku_rows(seed))
        with Catalog.create(tmp_path / f"c{seed}.lk", "pixels") as cat:
            cat.add(manifest, images=shop, options=INLINE, product_column="style")
            found.append(({i: cat.labels(i) for i in cat.ids()}, sorted(cat.table.id_by_key.values())))
    assert found[0] == found[1] == found[2]


def test_a_filter_matches_a_product_with_such_a_variant_and_says_which(tmp_path, shop):
    manifest = write_manifest(tmp_path / "skus.csv", sku_rows())
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(manifest, images=shop, options=INLINE, product_column="style")
        matches = cat.search(shop / "green-front.jpg", k=5, where=["size=XL"])
        assert [m.id for m in matches] == ["red"] and matches[0].variants == ["red-XL"]
        matches = cat.search(shop / "green-front.jpg", k=5, where=["size=M"])
        assert sorted(m.id for m in matches) == sorted(COLOURS)
        assert {tuple(m.variants) for m in matches} == {(f"{c}-M",) for c in COLOURS}
        assert cat.facets()["size"] == {"L": 4, "M": 4, "S": 4, "XL": 1}  # products per value


def test_similar_queries_with_every_photo_and_never_returns_the_product_itself(tmp_path, shop):
    manifest = write_manifest(tmp_path / "skus.csv", sku_rows())
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(manifest, images=shop, options=INLINE, product_column="style")
        matches = cat.similar("red", k=10)
        assert "red" not in {m.id for m in matches} and len(matches) == 3
        photos = cat.similar("red", k=10, by="photo")
        assert {m.product for m in photos} == {"green", "blue", "yellow"} and len(photos) == 6
        with pytest.raises(QueryError, match="--by"):
            cat.similar("red", by="variant")


def test_rows_naming_one_photo_are_one_product_and_the_photo_is_embedded_once(tmp_path, shop):
    """The issue's case: many SKU rows (sizes) naming the same few photos, indexed as a new user would."""
    rows = ["sku,path,size"] + [f"{c}-{n},{c}-front.jpg,{n}" for c in COLOURS for n in range(50)]
    manifest = write_manifest(tmp_path / "skus.csv", rows)
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        report = cat.add(manifest, images=shop, options=INLINE)
        assert report.indexed == 8  # the four named photos once each, and the four photos no row names
        matches = cat.search(shop / "red-front.jpg", k=3)
        assert len({m.path for m in matches}) == 3  # never the same picture three times
        assert len(cat.labels(matches[0].id)["size"].split(" | ")) == 50
        folder = cat.add(shop, options=INLINE)  # the folder after the manifest: nothing doubles
        assert folder.indexed == 0 and len(cat) == 8


def test_each_leaf_folder_can_be_one_product(tmp_path):
    for colour, rgb in COLOURS.items():
        make_image(tmp_path / "shop" / "shirts" / colour / "front.jpg", color=rgb)
        make_image(tmp_path / "shop" / "shirts" / colour / "back.jpg", color=rgb, shape="ellipse")
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(tmp_path / "shop", options=INLINE, product_per_folder=True)
        assert sorted(cat.ids()) == sorted(f"shirts/{c}" for c in COLOURS)
        assert [m.id for m in cat.search(tmp_path / "shop" / "shirts" / "blue" / "back.jpg", k=1)] == ["shirts/blue"]
        with pytest.raises(SourceError, match="--product-column is for a CSV manifest"):
            cat.add(tmp_path / "shop", options=INLINE, product_column="style")


def test_an_unknown_product_column_names_the_columns(tmp_path, shop):
    manifest = write_manifest(tmp_path / "skus.csv", sku_rows())
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat, pytest.raises(SourceError, match="columns: sku, style"):
        cat.add(manifest, images=shop, options=INLINE, product_column="model")


def test_removing_a_product_keeps_the_photos_other_products_show(tmp_path, shop):
    rows = ["sku,path", "a,red-front.jpg|red-back.jpg", "b,red-back.jpg|blue-front.jpg"]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(manifest, images=shop, options=INLINE)
        assert cat.item("a").photos[1] == cat.item("b").photos[0]  # one file, shown by both
        cat.remove(["a"])
        assert "a" not in cat.ids() and len(cat.item("b").photos) == 2
        assert [m.id for m in cat.search(shop / "red-back.jpg", k=1)] == ["b"]


def check_format1(cat: Catalog) -> None:
    """What the release before products wrote keeps its meaning: one product per photo, same ids, labels,
    clusters and answers."""
    ids = ["1164", "1165", "1529", "1533", "1534", "1538"]
    assert sorted(cat.ids()) == ids and len(cat) == 6
    assert cat.labels("1164")["articleType"] == "Tshirts" and cat.labels("1164")["baseColour"] == "Blue"
    assert sorted(cat.clusters()) == ids
    assert cat.store.get_meta("store_format") == "2"
    status = cat.status().to_dict()
    assert (status["products"], status["photos"]) == (6, 6)
    matches = cat.similar("1164", k=5)
    assert len(matches) == 5 and "1164" not in {m.id for m in matches}
    assert cat.search_vector(cat.vector("1165"), k=1)[0].id == "1165"
    assert sorted(m.id for m in cat.similar("1164", k=5, where=["baseColour=Blue"])) == ["1165", "1538"]
    # an index no query reads, which that release kept on items (sha256), is gone once a writer opened it
    query = ("SELECT name FROM sqlite_master WHERE name = 'items_sha256'" if cat.store.dialect == "sqlite" else
             "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'items_sha256'")
    assert cat.store._rows(query) == []


def test_a_folder_catalog_of_the_release_before_products_opens_and_upgrades_in_place(tmp_path):
    shutil.copytree(FORMAT1 / "shop.lk", tmp_path / "shop.lk")
    with Catalog.open(tmp_path / "shop.lk") as cat:
        check_format1(cat)
    with Catalog.open(tmp_path / "shop.lk") as cat:  # upgraded once
        check_format1(cat)


def test_a_read_only_catalog_of_the_release_before_products_is_read_as_it_is(tmp_path):
    from lookalike.store.sqlite import SQLiteStore

    shutil.copytree(FORMAT1 / "shop.lk", tmp_path / "shop.lk")
    store = SQLiteStore(tmp_path / "shop.lk" / "catalog.sqlite", read_only=True)
    try:
        assert [pid for _, pid in store.products()] == ["1164", "1165", "1529", "1533", "1534", "1538"]
        assert store.counts()["products"] == 6
        labels = store.labels()
        assert labels[store.product("1529")]["articleType"] == store.variants_for(
            [store.product("1529")])[store.product("1529")]["1529"]["articleType"]
        assert store.get_meta("store_format") is None  # untouched
    finally:
        store.close()


@pytest.mark.slow
def test_a_postgresql_catalog_of_the_release_before_products_opens_and_upgrades_in_place(pg_url):
    import psycopg

    from lookalike.store.urls import parse_database_url

    url = parse_database_url(pg_url)
    dump = (FORMAT1 / "postgres.sql").read_text()
    dump = dump.replace("CREATE SCHEMA lookalike;", f"CREATE SCHEMA {url.schema};").replace(
        "lookalike.", f"{url.schema}.")
    with psycopg.connect(url.conninfo, autocommit=True) as conn:
        conn.execute(dump)
    config = json.loads((FORMAT1 / "shop.lk" / "catalog.json").read_text())
    assert config["embedder"]["name"] == "pixels"
    with Catalog.open(pg_url) as cat:
        check_format1(cat)
    with Catalog.open(pg_url) as cat:
        check_format1(cat)
