"""`lookalike duplicates` and `--dedupe`: planted copies (resized, recompressed, cropped, exact) group
together; distinct products never do."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike import Catalog, QueryError
from lookalike.analysis import duplicates as duplicates_module
from lookalike.analysis.duplicates import find_duplicates, group_codes, saved_groups
from lookalike.catalog import dedupe as dedupe_module
from lookalike.cli import main
from lookalike.core.config import EncodeOptions
from test_recommend import vector_catalog

PLANTED = {"p0": "p0-small", "p1": "p1-recompressed", "p2": "p2-cropped", "p3": "p3-copy"}


def textured_product(path: Path, rng: np.random.Generator) -> None:
    """A 120x160 photo: a 4x5 grid of random colours on white, so each product is unlike the others."""
    img = Image.new("RGB", (120, 160), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for gx in range(4):
        for gy in range(5):
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.rectangle((12 + gx * 24, 12 + gy * 27, 35 + gx * 24, 38 + gy * 27), fill=colour)
    img.save(path, quality=92)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """12 distinct products and four planted copies, in a ``pixels`` catalog (16x16 thumbnails: a copy
    scores >= 0.95, distinct products <= 0.65 here; a random-weight CNN cannot tell them apart so well)."""
    root = tmp_path_factory.mktemp("planted")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        textured_product(photos / f"p{i}.jpg", rng)
    with Image.open(photos / "p0.jpg") as img:
        img.resize((84, 112), Image.LANCZOS).save(photos / "p0-small.jpg", quality=92)
    with Image.open(photos / "p1.jpg") as img:
        img.save(photos / "p1-recompressed.jpg", quality=25)
    with Image.open(photos / "p2.jpg") as img:
        img.crop((4, 5, 116, 155)).save(photos / "p2-cropped.jpg", quality=92)
    shutil.copy(photos / "p3.jpg", photos / "p3-copy.jpg")
    acme = {"p0", "p1", "p2", "p3"}  # the planted copies and their originals
    rows = ["path,brand"] + [f"{p.name},{'acme' if p.stem.split('-')[0] in acme else 'other'}"
                             for p in sorted(photos.iterdir())]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(root / "shop.lk", "pixels") as catalog:
        catalog.add(root / "labels.csv", images=photos, options=EncodeOptions(workers=0, progress=False))
    return root


@pytest.fixture
def catalog(planted, tmp_path):
    """A fresh copy of the planted catalog per test (duplicates runs save their groups into it)."""
    shutil.copytree(planted / "shop.lk", tmp_path / "shop.lk")
    with Catalog.open(tmp_path / "shop.lk") as cat:
        yield cat


def test_planted_copies_group_together_and_distinct_products_do_not(catalog):
    report = find_duplicates(catalog, threshold=0.9, progress=False)
    groups = {frozenset(g.ids): g for g in report.groups}
    assert set(groups) == {frozenset(pair) for pair in PLANTED.items()}
    assert report.items == 16 and report.duplicates == 4 and report.truncated == 0
    kinds = {g.representative: g.kind for g in report.groups}
    # the largest image represents its group, then the largest file; exact copies: the first added
    assert kinds == {"p0": "near", "p1": "near", "p2": "near", "p3-copy": "exact"}
    for g in report.groups:
        assert g.members[0].id == g.representative and g.members[0].similarity == pytest.approx(1.0, abs=1e-5)
        assert 0.9 <= g.min_similarity <= g.max_similarity <= 1.0
        assert g.members[1].similarity == pytest.approx(g.min_similarity, abs=1e-5)
    assert groups[frozenset(("p3", "p3-copy"))].min_similarity == pytest.approx(1.0, abs=1e-5)
    assert {m.id: (m.width, m.height) for m in groups[frozenset(("p0", "p0-small"))].members} == \
        {"p0": (120, 160), "p0-small": (84, 112)}


def test_a_strict_threshold_keeps_only_exact_copies(catalog):
    report = find_duplicates(catalog, 0.9999, progress=False)
    assert [(g.kind, sorted(g.ids)) for g in report.groups] == [("exact", ["p3", "p3-copy"])]


def test_where_looks_only_at_matching_items(catalog):
    report = find_duplicates(catalog, 0.9, where=["brand=other"], progress=False)
    assert report.items == 8 and report.groups == []
    assert saved_groups(catalog) is None  # a filtered run is not saved for --dedupe


def test_many_copies_of_one_photo_form_one_group_beyond_the_neighbour_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(duplicates_module, "MAX_NEIGHBOURS", 8)
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16)
    vectors = np.vstack([base + 0.001 * rng.standard_normal((30, 16)), rng.standard_normal((10, 16))])
    with vector_catalog(tmp_path / "v.lk", vectors) as cat:
        report = find_duplicates(cat, 0.99, neighbours=3, progress=False)
    assert [len(g.members) for g in report.groups] == [30]
    assert set(report.groups[0].ids) == {f"i{i}" for i in range(30)}
    assert report.truncated == 30  # every copy still had copies beyond 8 neighbours; reported, and warned


def test_neighbours_are_fetched_beyond_k_while_still_above_the_threshold(tmp_path):
    """With neighbours=1 each item sees one other copy first; fetching more links all of them directly."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16)
    vectors = np.vstack([base + 0.001 * rng.standard_normal((12, 16)), rng.standard_normal((5, 16))])
    with vector_catalog(tmp_path / "v.lk", vectors) as cat:
        report = find_duplicates(cat, 0.99, neighbours=1, progress=False)
    assert [sorted(g.ids) for g in report.groups] == [sorted(f"i{i}" for i in range(12))]


def test_bad_threshold_is_a_query_error(catalog):
    with pytest.raises(QueryError, match="threshold"):
        find_duplicates(catalog, 1.5)
    with pytest.raises(QueryError, match="threshold"):
        find_duplicates(catalog, 0)


@pytest.mark.parametrize("saved", [True, False], ids=["saved groups", "no saved groups"])
def test_dedupe_shows_one_item_per_group_and_still_k_results(catalog, saved, monkeypatch):
    if saved:
        find_duplicates(catalog, 0.9, progress=False)
    else:  # results collapse among themselves at the default threshold (the cropped copy scores 0.93 here)
        assert saved_groups(catalog) is None
        monkeypatch.setattr(dedupe_module, "DEFAULT_THRESHOLD", 0.9)
    query = catalog.vector("p0")
    plain = [m.id for m in catalog.search_vector(query, k=4)]
    assert plain[:2] == ["p0", "p0-small"] or plain[:2] == ["p0-small", "p0"]
    # 12 distinct products: 12 groups, so asking for 12 gives one of each
    deduped = catalog.search_vector(query, k=12, dedupe=True)
    ids = [m.id for m in deduped]
    assert len(ids) == 12 and [m.rank for m in deduped] == list(range(1, 13))
    assert all(sum(i in pair for i in ids) == 1 for pair in PLANTED.items())
    assert ids[0] in ("p0", "p0-small")  # the photo's own look-alike stays first for a photo query
    # similar: not the item's own near-copy, one of every other group
    more = [m.id for m in catalog.similar("p0", k=20, dedupe=True)]
    assert "p0-small" not in more and "p0" not in more and len(more) == 11
    assert all(sum(i in pair for i in more) == 1 for pair in list(PLANTED.items())[1:])
    assert "p0-small" in [m.id for m in catalog.similar("p0", k=3)]


def test_group_codes_follow_the_catalog_and_the_threshold(catalog, planted):
    find_duplicates(catalog, 0.9, progress=False)
    key = catalog.table.key_by_id
    codes = group_codes(catalog, 0.9)
    assert codes[key["p0"]] == codes[key["p0-small"]] != codes[key["p1"]]
    codes = group_codes(catalog, 0.9999)  # another threshold: found again, exact copies only
    assert codes[key["p0"]] != codes[key["p0-small"]] and codes[key["p3"]] == codes[key["p3-copy"]]
    assert saved_groups(catalog)[0]["threshold"] == 0.9999
    # a new item: the saved groups are from an older catalog, so they are found again and include it
    catalog.add_image((planted / "photos" / "p1.jpg").read_bytes(), item_id="p1-again")
    codes = group_codes(catalog, 0.9999)
    key = catalog.table.key_by_id
    assert codes[key["p1-again"]] == codes[key["p1"]]
    assert saved_groups(catalog)[0]["generation"] == catalog.store.generation()


def test_command_line_prints_groups_json_and_csv(catalog, tmp_path, capsys):
    path = str(catalog.path)
    out_csv = tmp_path / "groups.csv"
    assert main(["duplicates", "--catalog", path, "--threshold", "0.9", "--csv", str(out_csv), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "4 groups (1 exact, 3 near)" in printed and "p1-recompressed" in printed and "items/s" in printed
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["kind"] for r in rows} == {"exact", "near"}
    assert sum(r["representative"] == "1" for r in rows) == 4
    assert main(["duplicates", "--catalog", path, "--threshold", "0.9", "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["duplicates"] == 4 and data["groups"][0]["size"] == 2 and data["groups"][0]["members"]
    assert main(["similar", "p2", "--catalog", path, "-k", "30", "--dedupe", "--json"]) == 0
    ids = [m["id"] for m in json.loads(capsys.readouterr().out)]
    assert "p2-cropped" not in ids and len(ids) == 11
    with pytest.raises(SystemExit) as exc:
        main(["duplicates", "--catalog", path, "--threshold", "2"])
    assert exc.value.code == 2


def test_rest_api_dedupes_search_and_similar_on_request(catalog, planted):
    """`dedupe` on /api/search (form field) and /api/items/{id}/similar (query): one item per group."""
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    find_duplicates(catalog, 0.9, progress=False)
    path = catalog.path
    catalog.close()
    with TestClient(create_app(ServeSettings(catalog=path))) as client:
        plain = client.get("/api/items/p0/similar", params={"k": 20}).json()
        assert plain["dedupe"] is False and "p0-small" in [r["id"] for r in plain["results"]]
        body = client.get("/api/items/p0/similar", params={"k": 20, "dedupe": "true"}).json()
        ids = [r["id"] for r in body["results"]]
        assert body["dedupe"] is True and len(ids) == 11 and "p0-small" not in ids and "p0" not in ids
        assert all(sum(i in pair for i in ids) == 1 for pair in list(PLANTED.items())[1:])
        data = (planted / "photos" / "p1.jpg").read_bytes()
        found = client.post("/api/search", files={"image": ("p1.jpg", data, "image/jpeg")},
                            data={"k": "12", "dedupe": "true"}).json()
        ids = [r["id"] for r in found["results"]]
        assert found["dedupe"] is True and len(ids) == 12
        assert all(sum(i in pair for i in ids) == 1 for pair in PLANTED.items())
