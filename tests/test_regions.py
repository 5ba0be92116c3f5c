"""A region of a photo (`search PHOTO --box`, the API's `box`): how boxes are read and refused, the crop of the
upright photo, and that a region is searched as what it shows, not as the whole photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.core.errors import QueryError
from lookalike.core.images import load_image
from lookalike.core.regions import MIN_REGION_SIDE, Box, crop_region, parse_box


@pytest.mark.parametrize("text, size, expected", [
    ("0.1,0.2,0.6,0.9", (200, 100), Box(20, 20, 120, 90)),  # fractions of width and height
    ("0,0,1,1", (200, 100), Box(0, 0, 200, 100)),  # the whole photo
    ("10, 20, 110, 90", (200, 100), Box(10, 20, 110, 90)),  # pixels, spaces allowed
    ("0,0,200,100", (200, 100), Box(0, 0, 200, 100)),
    ("0.5,0,2,1", (40, 40), "read as pixels"),  # one number over 1: all four are pixels, and 1.5 px is too small
])
def test_a_box_is_fractions_when_all_four_lie_in_0_1_else_pixels(text, size, expected):
    if isinstance(expected, Box):
        assert parse_box(text).resolve(size) == expected
    else:
        with pytest.raises(QueryError, match=expected):
            parse_box(text).resolve(size)


@pytest.mark.parametrize("text, message", [
    ("0,0,1", "not four numbers"),
    ("a,b,c,d", "not four numbers"),
    ("", "not four numbers"),
    ("0,0,1,1,1", "not four numbers"),
    ("-1,0,10,10", "negative or infinite"),
    ("0,0,inf,10", "negative or infinite"),
    ("0.5,0,0.5,1", "empty"),
    ("0.6,0,0.2,1", "empty"),
    ("9" * 200 + ",0,1,1", "..."),  # a long value is cut in the message
])
def test_malformed_and_empty_boxes_are_refused_in_one_line(text, message):
    with pytest.raises(QueryError, match=message.replace(".", r"\.")) as err:
        parse_box(text)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    assert "x0,y0,x1,y1" in str(err.value)


def test_boxes_outside_the_photo_or_too_small_are_refused():
    with pytest.raises(QueryError, match=r"outside the 200x100 photo.*x1 <= 200 and y1 <= 100"):
        parse_box("0,0,201,50").resolve((200, 100))
    with pytest.raises(QueryError, match=f"5x80 pixels of the 200x100 photo.*at least {MIN_REGION_SIDE}"):
        parse_box("10,10,15,90").resolve((200, 100))
    with pytest.raises(QueryError, match="pixels each way"):
        parse_box("0,0,0.05,1").resolve((200, 100))  # 10 px of 200


def test_pixels_are_of_the_upright_photo_after_exif_orientation(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6: the box is read on the photo as shown."""
    upright = Image.new("RGB", (120, 80), (255, 255, 255))
    upright.paste((220, 20, 20), (0, 0, 60, 80))  # left half red
    upright.paste((20, 20, 220), (60, 0, 120, 80))  # right half blue
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 80x120 on disk; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.png"
    stored.save(path, exif=exif)
    photo = load_image(path)
    assert photo.size == (120, 80)
    left, box = crop_region(photo, "0,0,60,80")
    right, _ = crop_region(photo, "0.5,0,1,1")
    assert box == Box(0, 0, 60, 80) and left.size == right.size == (60, 80)
    assert np.asarray(left).reshape(-1, 3).mean(axis=0).round().tolist() == [220, 20, 20]
    assert np.asarray(right).reshape(-1, 3).mean(axis=0).round().tolist() == [20, 20, 220]
    assert left.info == {}  # the whole photo's EXIF and profile are not the region's


@pytest.fixture
def outfit_catalog(tmp_path: Path, photo_dir: Path):
    """A colour-histogram catalog of the twelve photos plus ``outfit``: red-rect and blue-ellipse side by side
    (their decoded pixels, as a PNG), so a box over each half is exactly that photo's pixels."""
    from lookalike import Catalog
    from lookalike.core.config import EncodeOptions

    left, right = load_image(photo_dir / "red-rect.jpg"), load_image(photo_dir / "blue-ellipse.jpg")
    outfit = Image.new("RGB", (left.width + right.width, left.height), "white")
    outfit.paste(left, (0, 0))
    outfit.paste(right, (left.width, 0))
    outfit.save(photo_dir / "outfit.png")
    catalog = Catalog.create(tmp_path / "shop.lk", "colorhist")
    catalog.add(photo_dir, options=EncodeOptions(workers=0, progress=False))
    yield catalog, photo_dir / "outfit.png", left.width
    catalog.close()


def test_a_region_is_searched_as_what_it_shows_not_as_the_whole_photo(outfit_catalog):
    from lookalike.catalog.look import search_region

    catalog, outfit, half = outfit_catalog
    whole = catalog.search(outfit, k=3)
    assert whole[0].id == "outfit" and whole[0].similarity == pytest.approx(1.0, abs=1e-5)
    left, size = search_region(catalog, outfit, f"0,0,{half},{size_of(outfit)[1]}", k=3)
    assert size == size_of(outfit) and left.box == Box(0, 0, half, size[1])
    assert left.matches[0].id == "red-rect" and left.matches[0].similarity == pytest.approx(1.0, abs=1e-5)
    # The outfit's own file is the query's file, but the region is not the whole photo: no exact-copy rule.
    assert all(m.id != "outfit" or m.similarity < 0.999 for m in left.matches)
    right, _ = search_region(catalog, outfit, "0.5,0,1,1", k=3)
    assert right.matches[0].id == "blue-ellipse"


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_search_box_on_the_command_line(outfit_catalog, capsys):
    from lookalike.cli import main

    catalog, outfit, half = outfit_catalog
    args = ["search", str(outfit), "--catalog", str(catalog.path), "-k", "2", "--box", "0.5,0,1,1"]
    assert main([*args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["size"] == list(size_of(outfit)) and answer["box"] == [half, 0, 2 * half, answer["size"][1]]
    assert answer["label"] is None and [r["id"] for r in answer["results"]][0] == "blue-ellipse"
    assert main(args) == 0
    table = capsys.readouterr().out
    assert f"region {half},0,{2 * half}" in table and "blue-ellipse" in table
    for bad, message in ((["--box", "0,0,1"], "not four numbers"), (["--box", "0,0,3,3"], "pixels each way"),
                         (["--box", "0,0,1,1", "--detect"], "use one")):
        assert main([*args[:-2], *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["search", "--catalog", str(catalog.path), "--box", "0,0,1,1", "--item", "red-rect"]) == 2
    assert "needs the photo" in capsys.readouterr().err


def test_rules_act_on_region_searches_and_the_region_is_logged_for_replay(outfit_catalog, capsys):
    """A pin and an exclude act on a box search from the command line and the REST API; the REST answer's query is
    logged with its box, so ``evaluate --events`` replays the region (the catalog holds the photo)."""
    from fastapi.testclient import TestClient

    from lookalike.analysis.clicks import Setting, evaluate_clicks
    from lookalike.api import ServeSettings, create_app
    from lookalike.cli import main

    catalog, outfit, half = outfit_catalog
    args = ["search", str(outfit), "--catalog", str(catalog.path), "-k", "3", "--box", "0.5,0,1,1", "--json"]
    assert main(args) == 0
    plain = [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert plain[0] == "blue-ellipse"
    assert main([*args, "--pin", "yellow-rect"]) == 0
    pinned = json.loads(capsys.readouterr().out)["results"]
    assert [r["id"] for r in pinned][:2] == ["yellow-rect", "blue-ellipse"] and pinned[0]["rules"] == ["pin"]
    width, height = size_of(outfit)
    with TestClient(create_app(ServeSettings(catalog=catalog.path))) as client:
        r = client.post("/api/search", files={"image": ("outfit.png", outfit.read_bytes(), "image/png")},
                        data={"k": "3", "box": "0.5,0,1,1", "pin": "yellow-rect"})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert [m["id"] for m in answer["results"]][:2] == ["yellow-rect", "blue-ellipse"]
        assert answer["results"][0]["rules"] == ["pin"]
        r = client.post("/api/events", json={"events": [{"query_id": answer["query_id"], "kind": "click",
                                                          "item": "blue-ellipse"}]})
        assert r.json() == {"stored": 1, "unknown": 0}
    logged = next(q for q in catalog.store.logged_queries() if q.id == answer["query_id"])
    assert logged.kind == "region" and logged.box == (half, 0, width, height)
    report = evaluate_clicks(catalog.store, [Setting("plain", catalog)], k=3)
    assert report.replayed == 1 and report.rows[1].mrr == 1.0  # replayed crop: blue-ellipse first again


@pytest.mark.slow
def test_real_model_a_box_over_each_part_of_an_outfit_finds_that_parts_type(tmp_path):
    """The built-in ImageNet MobileNetV2 over the shipped photos, less three (a T-shirt, a handbag, heels), which
    are put side by side as a shopper's "outfit" photo: the whole photo finds mostly handbags; a box over each
    third finds that part's type first, and mostly its kind (topwear, bags, shoes) in the top 5."""
    import csv

    from lookalike import Catalog, EncodeOptions
    from lookalike.catalog.look import search_region

    demo = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "demo_data"
    rows = list(csv.DictReader((demo / "styles.csv").open()))
    parts = {"1164": "Tshirts", "1597": "Handbags", "2610": "Heels"}
    manifest = tmp_path / "manifest" / "rest.csv"
    manifest.parent.mkdir()
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", *rows[0]])
        writer.writeheader()
        for row in rows:
            if row["id"] not in parts:
                writer.writerow({"path": str(demo / f"{row['id']}.jpg"), **row})
    kinds = {row["id"]: row["subCategory"] for row in rows}
    outfit = Image.new("RGB", (900, 400), "white")
    for i, item in enumerate(parts):
        outfit.paste(load_image(demo / f"{item}.jpg").resize((300, 400)), (300 * i, 0))
    query = tmp_path / "outfit.jpg"  # not under the manifest's folder, whose photos without a row are indexed too
    outfit.save(query, quality=90)
    with Catalog.create(tmp_path / "demo.lk", "mobilenetv2") as catalog:
        catalog.add(manifest, options=EncodeOptions(workers=0, progress=False))
        assert len(catalog) == len(rows) - len(parts)
        whole = [m.labels["articleType"] for m in catalog.search(query, k=5)]
        for i, (item, kind) in enumerate(parts.items()):
            region, size = search_region(catalog, query, f"{i / 3},0,{(i + 1) / 3},1", k=5)
            found = [m.labels["articleType"] for m in region.matches]
            assert size == (900, 400) and found[0] == kind, (kind, found, whole)
            assert sum(m.labels["subCategory"] == kinds[item] for m in region.matches) >= 3, (kind, found)
    assert whole.count("Handbags") >= 3 and "Tshirts" not in whole[:1]
