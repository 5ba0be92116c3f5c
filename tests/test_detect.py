"""Shop the look: an open-vocabulary detector (a tiny random OWLv2 saved by transformers into a hub cache, offline)
finds items in a photo, each box is searched as a region, results come grouped per box; the CLI, the Python API
and the REST API, and one line naming the detector when its weights are not here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY_OWL_REPO
from lookalike.core.errors import ModelUnavailableError, QueryError
from lookalike.core.regions import MIN_REGION_SIDE


@pytest.fixture
def owl_cache(monkeypatch, owl_hub) -> Path:
    """This process's hub client reads ``owl_hub``, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(owl_hub / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return owl_hub


@pytest.fixture(scope="module")
def look_catalog(tmp_path_factory):
    """Colour-histogram catalog of a few labelled photos (``category``: what kind of item) and an outfit photo."""
    from conftest import make_image
    from lookalike import Catalog
    from lookalike.core.config import EncodeOptions

    root = tmp_path_factory.mktemp("look")
    rows = ["path,category,colour"]
    for kind, shape in (("shirt", "rect"), ("bag", "ellipse"), ("shoes", "stripes")):
        for colour, rgb in (("red", (200, 30, 30)), ("blue", (30, 60, 200))):
            make_image(root / "photos" / f"{colour}-{kind}.jpg", color=rgb, shape=shape, quality=90)
            rows.append(f"{colour}-{kind}.jpg,{kind},{colour}")
    (root / "photos" / "labels.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(root / "shop.lk", "colorhist") as catalog:
        catalog.add(root / "photos" / "labels.csv", options=EncodeOptions(workers=0, progress=False))
    outfit = Image.new("RGB", (240, 120), "white")  # not square: OWLv2 pads it to 240x240
    outfit.paste((200, 30, 30), (10, 10, 110, 110))
    outfit.paste((30, 60, 200), (130, 10, 230, 110))
    outfit.save(root / "outfit.png")
    return root


def test_a_missing_detector_is_one_line_naming_it_and_the_fix(monkeypatch, tmp_path, look_catalog, capsys):
    from huggingface_hub import constants

    from lookalike.cli import main
    from lookalike.models.detector import DEFAULT_DETECTOR, detector_ready, locate

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match=f"detector {DEFAULT_DETECTOR}: HF_HUB_OFFLINE") as err:
        locate(None)
    assert "--detector" in str(err.value) and "hf download" in str(err.value)
    assert not detector_ready(None)
    with pytest.raises(ModelUnavailableError, match="no config.json"):
        locate(str(tmp_path))
    code = main(["search", str(look_catalog / "outfit.png"), "--catalog", str(look_catalog / "shop.lk"),
                 "--detect", "shirt"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and DEFAULT_DETECTOR in err and "Traceback" not in err


def test_the_detector_finds_boxes_in_pixels_of_a_non_square_photo(owl_cache):
    """Boxes come from transformers' own post-processing, scaled back by the longer side (OWLv2 pads to a
    square): the tiny model's patch squares are 60 px of the 240x120 photo, inside it, after NMS."""
    from lookalike.models.detector import detector_ready, load_detector

    assert detector_ready(TINY_OWL_REPO)
    detector = load_detector(TINY_OWL_REPO, "cpu")
    photo = Image.new("RGB", (240, 120), "white")
    found = detector.detect(photo, ["shirt", "bag", "shirt", " "], threshold=0.0, max_boxes=20)
    assert found, "a threshold of 0 keeps every box"
    assert {d.label for d in found} <= {"shirt", "bag"}
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert all(0.0 <= d.score <= 1.0 for d in found)
    for d in found:
        assert 0 <= d.box.x0 < d.box.x1 <= 240 and 0 <= d.box.y0 < d.box.y1 <= 120
        assert d.box.width >= MIN_REGION_SIDE and d.box.height >= MIN_REGION_SIDE
        if d.box.x1 < 240 and d.box.y1 < 120:  # not clipped by the photo's edge: a quarter of the longer side
            assert d.box.width == d.box.height == 60
    assert any(d.box.width == d.box.height == 60 for d in found)
    assert len({(d.box.x0, d.box.y0) for d in found}) == len(found)  # NMS: no two boxes in the same place
    assert len(detector.detect(photo, ["shirt"], threshold=0.0, max_boxes=3)) == 3
    assert detector.detect(photo, ["shirt"], threshold=0.999) == []
    with pytest.raises(QueryError, match="no words"):
        detector.detect(photo, [" "])
    with pytest.raises(QueryError, match="threshold"):
        detector.detect(photo, ["shirt"], threshold=1.5)


def test_shop_the_look_groups_results_per_box(owl_cache, look_catalog):
    from lookalike import Catalog
    from lookalike.catalog.look import detection_words, shop_the_look

    with Catalog.open(look_catalog / "shop.lk") as catalog:
        assert detection_words(catalog) == (["bag", "shirt", "shoes"], "category")  # the category label's values
        assert detection_words(catalog, ["jeans", "jeans", "hat"]) == (["jeans", "hat"], None)
        assert detection_words(catalog, label="colour") == (["blue", "red"], "colour")
        with pytest.raises(QueryError, match="no label 'size'.*labels: category, colour"):
            detection_words(catalog, label="size")
        look = shop_the_look(catalog, look_catalog / "outfit.png", k=2, detector=TINY_OWL_REPO, device="cpu",
                             threshold=0.0, max_boxes=4)
        assert look.size == (240, 120) and look.words == ["bag", "shirt", "shoes"] and look.words_from == "category"
        assert len(look.regions) == 4
        for region in look.regions:
            assert region.label in look.words and len(region.matches) == 2
            assert region.matches[0].similarity >= region.matches[1].similarity
        as_json = look.to_dict()
        assert [set(g) for g in as_json["groups"]] == [{"label", "score", "box", "results"}] * 4
        json.dumps(as_json)


def test_search_detect_on_the_command_line(owl_cache, look_catalog, capsys):
    from lookalike.cli import main

    args = ["search", str(look_catalog / "outfit.png"), "--catalog", str(look_catalog / "shop.lk"), "-k", "2",
            "--detector", TINY_OWL_REPO, "--device", "cpu", "--min-score", "0", "--max-boxes", "2"]
    assert main([*args, "--detect", "shirt", "bag", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["words"] == ["shirt", "bag"] and answer["words_from"] is None and answer["size"] == [240, 120]
    assert len(answer["groups"]) == 2 and all(len(g["results"]) == 2 for g in answer["groups"])
    assert main([*args, "--detect"]) == 0  # the catalog's category values
    out = capsys.readouterr().out
    assert "2 items found" in out and "3 category values" in out and "items most like it" in out
    assert main([*args[:-4], "--min-score", "0.999", "--detect", "shirt"]) == 0
    assert "no items found" in capsys.readouterr().out


@pytest.fixture
def client(owl_cache, look_catalog):
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(catalog=look_catalog / "shop.lk", detector=TINY_OWL_REPO,
                                             device="cpu"))) as c:
        yield c


def _outfit(root: Path) -> dict:
    return {"image": ("outfit.png", (root / "outfit.png").read_bytes(), "image/png")}


def test_rest_search_takes_a_box_and_detect_answers_groups(client, look_catalog):
    from lookalike.api.schemas import DetectResult, SearchResult

    assert client.get("/api/health").json()["detect"] is True
    r = client.post("/api/search", files=_outfit(look_catalog), data={"k": "2", "box": "0,0,0.5,1"})
    assert r.status_code == 200, r.text
    body = SearchResult.model_validate(r.json())
    assert body.query.kind == "region" and body.query.box == [0, 0, 120, 120] and body.query.size == [240, 120]
    assert body.results[0].labels["colour"] == "red"
    right = client.post("/api/search", files=_outfit(look_catalog), data={"k": "2", "box": "130,10,230,110"}).json()
    assert right["results"][0]["labels"]["colour"] == "blue"

    r = client.post("/api/detect", files=_outfit(look_catalog),
                    data={"k": "2", "min_score": "0", "max_boxes": "3", "where": ["colour=red"]})
    assert r.status_code == 200, r.text
    found = DetectResult.model_validate(r.json())
    assert found.size == [240, 120] and found.words_from == "category" and found.words == ["bag", "shirt", "shoes"]
    assert len(found.groups) == 3 and all(len(g.results) == 2 for g in found.groups)
    assert all(m.labels["colour"] == "red" for g in found.groups for m in g.results)
    assert all(g.results[0].thumbnail_url.startswith("/api/items/") for g in found.groups)
    blue = client.post("/api/search", files=_outfit(look_catalog), data={"k": "3", "where": ["colour=blue"]}).json()
    pinned = blue["results"][-1]["id"]  # a blue product, pinned: first in every region the detector found
    ruled = client.post("/api/detect", files=_outfit(look_catalog),
                        data={"k": "2", "min_score": "0", "max_boxes": "2", "pin": pinned}).json()
    assert all(g["results"][0]["id"] == pinned and g["results"][0]["rules"] == ["pin"] for g in ruled["groups"])
    words = client.post("/api/detect", files=_outfit(look_catalog),
                        data={"words": ["hat", "scarf"], "min_score": "0", "max_boxes": "1"}).json()
    assert words["words"] == ["hat", "scarf"] and words["groups"][0]["label"] in ("hat", "scarf")


@pytest.mark.parametrize("path, data, message", [
    ("/api/search", {"box": "0,0,1"}, "not four numbers"),
    ("/api/search", {"box": "0,0,5,5"}, "pixels each way"),
    ("/api/search", {"box": "0,0,999,50"}, "outside the 240x120 photo"),
    ("/api/detect", {"label": "size"}, "no label 'size'"),
    ("/api/detect", {"min_score": "2"}, "min_score"),
])
def test_rest_refuses_bad_regions_in_one_line(client, look_catalog, path, data, message):
    r = client.post(path, files=_outfit(look_catalog), data=data)
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"]


def test_rest_box_needs_a_photo_and_detect_needs_its_detector(monkeypatch, tmp_path, look_catalog):
    from fastapi.testclient import TestClient
    from huggingface_hub import constants

    from lookalike.api import ServeSettings, create_app

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with TestClient(create_app(ServeSettings(catalog=look_catalog / "shop.lk"))) as c:
        assert c.get("/api/health").json()["detect"] is False
        r = c.post("/api/detect", files=_outfit(look_catalog))
        assert r.status_code == 503 and "google/owlv2-base-patch16-ensemble is not installed" in r.json()["detail"]
        assert "LOOKALIKE_DETECTOR" in r.json()["detail"]
        r = c.post("/api/search", data={"text": "red", "box": "0,0,1,1"})
        assert r.status_code == 422 and "needs the photo" in r.json()["detail"]


@pytest.fixture(scope="module")
def look_server(look_catalog, owl_hub):
    from test_serve import serve_catalog

    env = {"HF_HOME": str(owl_hub), "LOOKALIKE_DETECTOR": TINY_OWL_REPO, "LOOKALIKE_DEVICE": "cpu"}
    yield from serve_catalog(look_catalog / "shop.lk", env=env)


@pytest.mark.slow
@pytest.mark.browser
def test_drag_a_region_and_click_found_items_in_a_real_browser(look_server, look_catalog):
    """Upload an outfit, drag a rectangle over its left (red) half: the red items; the right half: the blue
    ones. Find the items: one box per item found over the photo; a click on a box lists its results."""
    from test_serve import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        try:
            page.goto(look_server + "/")
            expect(page.get_by_test_id("summary")).to_contain_text("6 items")
            page.get_by_test_id("file").set_input_files(str(look_catalog / "outfit.png"))
            cards = page.locator("[data-testid=results] button.card")
            expect(page.get_by_test_id("results-title")).to_contain_text("most like your photo")
            photo = page.get_by_test_id("query-image")
            expect(photo).to_be_visible()
            expect(page.get_by_test_id("detect")).to_be_visible()

            def drag(x0: float, y0: float, x1: float, y1: float) -> dict:
                frame = photo.bounding_box()
                with page.expect_response(lambda r: r.url.endswith("/api/search")) as sent:
                    page.mouse.move(frame["x"] + x0 * frame["width"], frame["y"] + y0 * frame["height"])
                    page.mouse.down()
                    page.mouse.move(frame["x"] + x1 * frame["width"], frame["y"] + y1 * frame["height"], steps=5)
                    page.mouse.up()
                return sent.value.json()["query"]

            query = drag(0.05, 0.1, 0.45, 0.9)
            assert query["kind"] == "region" and query["size"] == [240, 120]
            assert abs(query["box"][0] - 12) <= 2 and abs(query["box"][2] - 108) <= 2, query  # 0.05 and 0.45 of 240
            expect(page.get_by_test_id("results-title")).to_contain_text("part of your photo you marked")
            expect(page.get_by_test_id("drawn-box")).to_be_visible()
            expect(cards.first).to_have_attribute("data-id", re.compile("^red-"))
            drag(0.95, 0.9, 0.55, 0.1)  # any direction
            expect(cards.first).to_have_attribute("data-id", re.compile("^blue-"))
            page.screenshot(path=str(ARTIFACTS / "serve-region.png"), full_page=True)
            page.mouse.click(photo.bounding_box()["x"] + 5, photo.bounding_box()["y"] + 5)  # a click is no region
            expect(page.get_by_test_id("drawn-box")).to_have_count(1)

            with page.expect_response(lambda r: r.url.endswith("/api/detect")) as answer:
                page.get_by_test_id("detect").click()
            groups = answer.value.json()["groups"]
            boxes = page.get_by_test_id("found-box")
            expect(boxes).to_have_count(len(groups))
            assert groups, "the tiny detector finds patch boxes at its default threshold"
            expect(boxes.first).to_have_attribute("aria-pressed", "true")
            last = len(groups) - 1
            boxes.nth(last).click()
            expect(boxes.nth(last)).to_have_attribute("aria-pressed", "true")
            expect(page.get_by_test_id("results-title")).to_contain_text(f"look like the {groups[last]['label']}")
            expect(cards).to_have_count(len(groups[last]["results"]))
            assert [cards.nth(i).get_attribute("data-id") for i in range(cards.count())] == [
                r["id"] for r in groups[last]["results"]]
            page.screenshot(path=str(ARTIFACTS / "serve-look.png"), full_page=True)
            assert not problems, problems
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "look-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
