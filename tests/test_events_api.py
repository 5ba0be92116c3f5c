"""Every REST answer carries a query_id and is logged; POST /api/events stores shoppers' events (SQLite and
PostgreSQL), refuses bad batches in one line that never repeats the request."""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lookalike import Catalog, EncodeOptions
from lookalike.api import ServeSettings, create_app
from lookalike.store import open_store

QUERY_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")


def build(location: str, photo_dir: Path) -> str:
    rows = ["path,colour,shape"] + [f"{p.name},{p.stem.split('-')[0]},{p.stem.split('-')[1]}"
                                    for p in sorted(photo_dir.glob("*.jpg"))]
    (photo_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(location, "colorhist") as catalog:
        catalog.add(photo_dir / "labels.csv", images=photo_dir, options=EncodeOptions(workers=0, progress=False))
    return location


def store_of(location: str):
    return open_store(location if "://" in location else Path(location) / "catalog.sqlite")


@pytest.fixture
def served(catalog_location, photo_dir):
    return build(catalog_location, photo_dir)


def test_answers_carry_a_query_id_and_are_logged(served, photo_dir):
    photo = (photo_dir / "green-ellipse.jpg").read_bytes()
    with TestClient(create_app(ServeSettings(catalog=served))) as client:
        found = client.post("/api/search", files={"image": ("p.jpg", photo, "image/jpeg")},
                            data={"k": "3", "where": "shape=ellipse"}).json()
        similar = client.get("/api/items/red-rect/similar", params={"k": 4}).json()
    assert QUERY_ID.match(found["query_id"]) and QUERY_ID.match(similar["query_id"])
    assert found["query_id"] != similar["query_id"]
    store = store_of(served)
    logged = {q.id: q for q in store.logged_queries()}  # the log was written when the server stopped, at the latest
    upload, item = logged[found["query_id"]], logged[similar["query_id"]]
    assert upload.kind == "upload" and upload.photo == hashlib.sha256(photo).hexdigest() and upload.k == 3
    assert upload.where == {"shape": "ellipse"}
    assert list(upload.results) == [r["id"] for r in found["results"]]
    assert item.kind == "item" and item.item == "red-rect"
    assert list(item.results) == [r["id"] for r in similar["results"]]
    store.close()


def test_events_are_stored_and_unknown_query_ids_counted(served):
    with TestClient(create_app(ServeSettings(catalog=served))) as client:
        answer = client.get("/api/items/red-rect/similar", params={"k": 3}).json()
        qid, first = answer["query_id"], answer["results"][0]["id"]
        events = [{"query_id": qid, "kind": "impression", "item": r["id"], "position": n}
                  for n, r in enumerate(answer["results"])]
        events += [{"query_id": qid, "kind": "click", "item": first, "position": 0},
                   {"query_id": qid, "kind": "cart", "item": first},
                   {"query_id": "x" * 22, "kind": "click", "item": first}]
        r = client.post("/api/events", json={"events": events})  # right after the answer: its log row is queued
        assert r.status_code == 200, r.text
        assert r.json() == {"stored": 5, "unknown": 1}

        def post(n: int) -> int:
            return client.post("/api/events", json={"events": [
                {"query_id": qid, "kind": "impression", "item": f"{n}-{j}"} for j in range(10)]}).json()["stored"]

        with ThreadPoolExecutor(4) as pool:  # concurrent requests: nothing lost
            assert sum(pool.map(post, range(20))) == 200
    store = store_of(served)
    assert store.event_counts() == {"impression": 203, "click": 1, "cart": 1, "queries": 1}
    store.close()


BAD = [
    ("not json", 422, "Invalid JSON"),
    ('{"events": []}', 422, "events"),
    ('{"events": [{"query_id": "short", "kind": "click", "item": "a"}]}', 422, "query_id"),
    ('{"events": [{"query_id": "aaaaaaaaaaaaaaaaaaaaaa", "kind": "buy", "item": "a"}]}', 422, "kind"),
    ('{"events": [{"query_id": "aaaaaaaaaaaaaaaaaaaaaa", "kind": "click"}]}', 422, "item"),
    ('{"events": [{"query_id": "aaaaaaaaaaaaaaaaaaaaaa", "kind": "click", "item": "a", "SECRETFIELD": 1}]}', 422,
     "Extra inputs"),
    ('{"events": [' + ",".join(['{"query_id": "aaaaaaaaaaaaaaaaaaaaaa", "kind": "click", "item": "a"}'] * 4) + "]}",
     413, "limit of 3"),
    ('{"events": [{"query_id": "aaaaaaaaaaaaaaaaaaaaaa", "kind": "click", "item": "' + "S" * 500 + '"}]}', 413,
     "limit of 400 bytes"),
]


def test_bad_event_batches_are_refused_in_one_line(labelled_catalog):
    path = labelled_catalog.path
    labelled_catalog.close()
    with TestClient(create_app(ServeSettings(catalog=path, max_events=3, max_events_bytes=400))) as client:
        for body, status, words in BAD:
            r = client.post("/api/events", content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, (body[:40], r.text)
            detail = r.json()["detail"]
            assert words in detail and "\n" not in detail
            assert "SECRETFIELD" not in detail and "SSSS" not in detail and "buy" not in detail


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_sends_its_impressions_and_clicks(labelled_catalog, photo_dir):
    """In a real browser: a search shows results (impressions sent), a click on one is sent with its place."""
    import time

    from test_serve import CHROMIUM, CHROMIUM_ARGS, serve_catalog

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    path = labelled_catalog.path
    labelled_catalog.close()
    served = serve_catalog(path)
    url = next(served)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url + "/")
            page.get_by_test_id("file").set_input_files(str(photo_dir / "blue-ellipse.jpg"))
            cards = page.locator("[data-testid=results] button.card")
            expect(page.get_by_test_id("results-title")).to_contain_text("most like your photo", timeout=20_000)
            shown = cards.count()
            clicked = cards.nth(1).get_attribute("data-id")
            with page.expect_response(lambda r: r.url.endswith("/api/events")
                                      and '"click"' in (r.request.post_data or "")) as answer:
                cards.nth(1).click()
            assert answer.value.status == 200, answer.value.text()
            browser.close()
        store = store_of(str(path))
        deadline = time.monotonic() + 10
        while store.event_counts()["click"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        clicks = list(store.events(["click"]))
        assert [(e.item, e.position) for e in clicks] == [(clicked, 1)]
        assert store.event_counts()["impression"] >= shown
        (query,) = [q for q in store.logged_queries() if q.id == clicks[0].query_id]
        assert query.kind == "upload" and query.results[1] == clicked
        store.close()
    finally:
        next(served, None)
