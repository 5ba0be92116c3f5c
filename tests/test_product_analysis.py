"""Whole-catalog analyses on a catalog whose product keys are not its photo keys: products of several photos,
a photo shared by two products, a product listed twice with the same photos (an exact copy), size variants.
What a user sees: rows and ids are products, a product is never its own neighbour, its photos are never
counted as items of their own, and leave-one-out leaves the whole product out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from lookalike import Catalog
from lookalike.core.config import EncodeOptions

COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40)}

# style -> (colour, photos); sizes S and M are two rows (variants) of each style
PRODUCTS = {
    "red-1": ("red", ["red-rect.jpg", "red-ellipse.jpg"]),
    "red-2": ("red", ["red-stripes.jpg"]),
    "blue-1": ("blue", ["blue-rect.jpg", "blue-ellipse.jpg"]),
    "blue-2": ("blue", ["blue-stripes.jpg"]),
    "green-1": ("green", ["green-rect.jpg", "green-ellipse.jpg"]),
    "green-2": ("green", ["green-ellipse.jpg", "green-stripes.jpg"]),  # shares green-ellipse with green-1
    "yellow-1": ("yellow", ["yellow-rect.jpg", "yellow-ellipse.jpg"]),
    "yellow-copy": ("yellow", ["yellow-ellipse.jpg", "yellow-rect.jpg"]),  # the same photos as yellow-1
    "yellow-2": ("yellow", ["yellow-stripes.jpg"]),
}


def write_shop(folder: Path) -> Path:
    """Photos and a manifest: one row per (style, size), photos |-separated, grouped by ``style``."""
    for colour, rgb in COLOURS.items():
        for shape in ("rect", "ellipse", "stripes"):
            make_image(folder / f"{colour}-{shape}.jpg", color=rgb, shape=shape, quality=90)
    rows = ["sku,style,path,colour,size"]
    for style, (colour, photos) in PRODUCTS.items():
        for size in ("S", "M"):
            rows.append(f"{style}-{size},{style},{'|'.join(photos)},{colour},{size}")
    (folder / "shop.csv").write_text("\n".join(rows) + "\n")
    return folder / "shop.csv"


@pytest.fixture
def products_catalog(tmp_path: Path):
    """A colour-histogram catalog of 9 products over 12 photos (no torch needed)."""
    manifest = write_shop(tmp_path / "photos")
    catalog = Catalog.create(tmp_path / "shop.lk", "colorhist")
    catalog.add(manifest, images=tmp_path / "photos", product_column="style",
                options=EncodeOptions(workers=0, progress=False))
    yield catalog
    catalog.close()


def test_the_fixture_has_product_keys_that_are_not_photo_keys(products_catalog):
    products = products_catalog.products
    assert len(products) == len(PRODUCTS)
    assert len(products_catalog.table.id_by_key) == 12
    assert not products.one_to_one
    assert any(products.photos_of[key].tolist() != [key] for key in products.id_by_key)


def test_catalog_data_has_one_row_per_product_with_its_centroid(products_catalog):
    from lookalike.analysis.catalog_data import load_catalog_data

    data = load_catalog_data(products_catalog)
    assert sorted(data.ids) == sorted(PRODUCTS)
    for i, pid in enumerate(data.ids):
        assert data.paths[i].endswith(PRODUCTS[pid][1][0])
        assert [Path(p).name for p in data.photo_paths[i]] == PRODUCTS[pid][1]
        assert data.labels[i]["colour"] == PRODUCTS[pid][0]
        assert data.labels[i]["size"] == "M | S"
        np.testing.assert_allclose(data.vectors[i], products_catalog.vector(pid), atol=1e-6)
    content = dict(zip(data.ids, data.content, strict=True))
    assert content["yellow-1"] == content["yellow-copy"]  # same photos: exact copies of each other
    assert len({content[p] for p in PRODUCTS if p != "yellow-copy"}) == len(PRODUCTS) - 1


def test_leave_one_out_leaves_the_whole_product_and_its_copies_out(products_catalog):
    from lookalike.analysis.evaluate import evaluate_catalog

    row = evaluate_catalog(products_catalog, "colour", k=3, references=(), bootstrap=0, keep_per_query=True)[0]
    assert row.items == len(PRODUCTS) and row.queries == len(PRODUCTS)
    per = row.per_query
    assert sorted(per.ids) == sorted(PRODUCTS) and per.base_ids == per.ids
    for qi, qid in enumerate(per.ids):
        found = [per.base_ids[j] for j in per.neighbours[qi].tolist() if j >= 0]
        assert qid not in found
        if qid.startswith("yellow-1") or qid == "yellow-copy":
            assert not {"yellow-1", "yellow-copy"} & set(found)  # its exact copy is left out too
    # relevant products per query: the others of its colour, minus its copy (red-1 has one: red-2)
    assert row.excluded["no_relevant"] == 0
    assert row.metrics["recall"].value <= 1.0


def test_evaluate_colour_histogram_reference_is_per_product(products_catalog):
    from lookalike.analysis.evaluate import evaluate_catalog

    rows = evaluate_catalog(products_catalog, "colour", k=2, references=("colorhist",), bootstrap=0)
    # the catalog's model is colorhist itself, so the reference row is skipped; ask through a pixel catalog
    assert [r.name for r in rows] == [products_catalog.name]
    assert rows[0].items == len(PRODUCTS)


def test_clusters_are_stored_per_product(products_catalog):
    from lookalike.analysis.cluster import cluster_catalog

    result = cluster_catalog(products_catalog, n=4, seed=0)
    assert result.items == len(PRODUCTS)
    clusters = products_catalog.clusters()
    assert sorted(clusters) == sorted(PRODUCTS)
    assert clusters["yellow-1"] == clusters["yellow-copy"]
    # similar(..., same_cluster=True) reads the product's own cluster
    for m in products_catalog.similar("red-1", k=5, same_cluster=True):
        assert clusters[m.id] == clusters["red-1"] and m.id != "red-1"


def test_map_and_cluster_overview_draw_products(products_catalog):
    from lookalike.analysis.cluster import cluster_catalog
    from lookalike.figures.plots import clusters_for_catalog, map_for_catalog

    fig = map_for_catalog(products_catalog, colour_by="colour", links=3, k=2)
    assert f"of {len(PRODUCTS)} items" in fig.axes[0].get_title()
    cluster_catalog(products_catalog, n=3, seed=0)
    clusters_for_catalog(products_catalog, label="colour")


@pytest.fixture
def clip_products(tmp_path: Path, tiny_clip):
    """The same shop in a catalog of the tiny random CLIP (words and photos in one space)."""
    from conftest import TINY_CLIP, word_options

    manifest = write_shop(tmp_path / "photos")
    catalog = Catalog.create(tmp_path / "clip.lk", TINY_CLIP, embedder=tiny_clip)
    catalog.add(manifest, images=tmp_path / "photos", product_column="style", options=word_options())
    catalog.encoder(word_options())
    yield catalog
    catalog.close()


def test_tag_predicts_per_product_from_its_centroid(clip_products):
    from lookalike.analysis.tag import class_vectors, tag_catalog

    classes = ["casual", "formal", "sports"]
    report = tag_catalog(clip_products, "style_guess", classes)
    assert report.items == len(PRODUCTS)
    targets = class_vectors(clip_products.encoder(), classes, ["a photo of {}"])
    for pid in PRODUCTS:
        expected = classes[int(np.argmax(targets @ clip_products.vector(pid)))]
        assert clip_products.item(pid).labels["style_guess"] == expected
    facet = clip_products.facets()["style_guess"]
    assert sum(facet.values()) == len(PRODUCTS)  # counted per product, the shared photo once per product
    value = clip_products.item("green-2").labels["style_guess"]
    total, page = clip_products.browse(where=f"style_guess={value}")
    assert "green-2" in [item.id for item in page] and total == facet[value]


def test_lit_rows_are_photos_with_their_products_labels(clip_products):
    from lookalike.train.lit import catalog_data

    data = catalog_data(clip_products)
    assert len(data.ids) == 12 and len(set(data.ids)) == 12  # each photo once, the shared one too
    table = clip_products.table
    for i, photo_id in enumerate(data.ids):
        path = Path(table.path_by_key[table.key_by_id[photo_id]]).name
        colours = {c for c, photos in PRODUCTS.values() if path in photos}
        assert data.labels["colour"][i] in colours and data.labels["colour"][i] == path.split("-")[0]


def test_recommend_rows_are_products_never_themselves_and_match_similar(products_catalog, tmp_path):
    import csv

    from lookalike.analysis.recommend import recommend

    report = recommend(products_catalog, 3, tmp_path / "recs.csv", progress=False, threads=1)
    rows = list(csv.DictReader(open(tmp_path / "recs.csv", encoding="utf-8")))
    assert report.items == len(PRODUCTS)
    by_item: dict[str, list[str]] = {}
    for row in rows:
        assert row["item_id"] in PRODUCTS and row["similar_id"] in PRODUCTS
        assert row["item_id"] != row["similar_id"]
        by_item.setdefault(row["item_id"], []).append(row["similar_id"])
    assert sorted(by_item) == sorted(PRODUCTS)
    for pid, similar in by_item.items():
        assert len(similar) == len(set(similar)) == 3  # each product once, however many photos found it
        assert similar == [m.id for m in products_catalog.similar(pid, k=3)]
    # yellow-1 and yellow-copy show the same photos: neither is found by its own photos' copies
    assert "yellow-copy" not in by_item["yellow-1"] and "yellow-1" not in by_item["yellow-copy"]


def test_recommend_group_by_and_where_read_product_labels(products_catalog, tmp_path):
    import csv

    from lookalike.analysis.recommend import recommend

    recommend(products_catalog, 3, tmp_path / "recs.csv", where="colour=blue", group_by="colour", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "recs.csv", encoding="utf-8")))
    for row in rows:
        assert row["similar_id"].startswith("blue-") and row["colour"] == "blue"
    per_item = {}
    for row in rows:
        per_item.setdefault(row["item_id"], []).append(row["similar_id"])
    assert all(len(v) == 1 for v in per_item.values())  # one per colour value
    assert sorted(per_item) == sorted(PRODUCTS)


def test_duplicates_group_products_and_dedupe_still_collapses_results(products_catalog):
    from lookalike.analysis.duplicates import find_duplicates

    report = find_duplicates(products_catalog, threshold=0.99999, progress=False, threads=1)
    assert report.items == len(PRODUCTS)
    groups = {frozenset(g.ids): g for g in report.groups}
    assert frozenset({"yellow-1", "yellow-copy"}) in groups  # the same photos
    assert groups[frozenset({"yellow-1", "yellow-copy"})].kind == "exact"
    assert frozenset({"green-1", "green-2"}) in groups  # they share a photo
    assert groups[frozenset({"green-1", "green-2"})].kind == "near"
    assert all(set(g.ids) <= set(PRODUCTS) for g in report.groups)
    # the saved (photo) groups still collapse search results: one product per group of photos
    plain = products_catalog.search_vector(products_catalog.vector("yellow-1"), k=9)
    assert {"yellow-1", "yellow-copy"} <= {m.id for m in plain}
    deduped = products_catalog.search_vector(products_catalog.vector("yellow-1"), k=9, dedupe=True)
    assert len({"yellow-1", "yellow-copy"} & {m.id for m in deduped}) == 1


def test_duplicates_where_reads_product_labels(products_catalog):
    from lookalike.analysis.duplicates import find_duplicates

    report = find_duplicates(products_catalog, threshold=0.99999, where="colour=green", progress=False)
    assert report.items == 2 and [sorted(g.ids) for g in report.groups] == [["green-1", "green-2"]]
