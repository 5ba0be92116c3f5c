"""The REST API through FastAPI's TestClient: every endpoint, and every kind of bad input refused clearly."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import COLORS, SHAPES, TINY_MODEL, huge_png_header, make_image
from lookalike import Catalog, EncodeOptions
from lookalike.api import ServeSettings, create_app
from lookalike.api.schemas import SearchResult

TOKEN = "test-admin-token"


def client_for(shop: Path, catalog: Path | None = None, **settings) -> TestClient:
    settings.setdefault("admin_token", TOKEN)
    return TestClient(create_app(ServeSettings(catalog=catalog or shop / "shop.lk", **settings)))


@pytest.fixture(scope="module")
def client(shop) -> TestClient:
    with client_for(shop, max_upload_bytes=200_000) as c:
        yield c


def upload(path: Path | bytes, name: str = "photo.jpg") -> dict:
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    return {"image": (name, data, "image/jpeg")}


def photo(shop: Path, name: str) -> Path:
    return next((shop / "photos").rglob(f"{name}.jpg"))


# -- reading ---------------------------------------------------------------------------------------------


def test_health_says_what_is_served(client):
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["items"] == 12 and body["writable"] is True
    assert body["model"].startswith(TINY_MODEL) and body["device"] == "cpu"


def test_search_by_upload_ranks_the_same_photo_first(client, shop):
    r = client.post("/api/search", files=upload(photo(shop, "blue-ellipse")), data={"k": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    SearchResult.model_validate(body)
    assert body["query"] == {"kind": "upload", "id": None, "filename": "photo.jpg", "text": None}
    assert len(body["results"]) == 4 and body["took_ms"] > 0
    first = body["results"][0]
    assert first["id"] == "blue-ellipse" and first["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert first["labels"] == {"colour": "blue", "shape": "ellipse", "name": "blue ellipse thing"}
    sims = [m["similarity"] for m in body["results"]]
    assert sims == sorted(sims, reverse=True)
    assert [m["rank"] for m in body["results"]] == [1, 2, 3, 4]


def test_search_filters_and_threshold(client, shop):
    r = client.post("/api/search", files=upload(photo(shop, "red-rect")),
                    data={"k": "10", "where": ["shape=stripes"]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert sorted(m["id"] for m in results) == sorted(f"shoes/{c}-stripes" for c in COLORS)
    everything = client.post("/api/search", files=upload(photo(shop, "red-rect")), data={"k": "12"}).json()
    cut = everything["results"][5]["similarity"]
    above = client.post("/api/search", files=upload(photo(shop, "red-rect")),
                        data={"k": "12", "min_similarity": str(cut)}).json()["results"]
    assert [m["id"] for m in above] == [m["id"] for m in everything["results"] if m["similarity"] >= cut]
    assert 6 <= len(above) < 12


def test_similar_excludes_the_item_and_honours_k_and_where(client):
    body = client.get("/api/items/green-rect/similar", params={"k": 5}).json()
    SearchResult.model_validate(body)  # the documented shape, built without revalidation
    ids = [m["id"] for m in body["results"]]
    assert len(ids) == 5 and "green-rect" not in ids
    assert body["query"] == {"kind": "item", "id": "green-rect", "filename": None, "text": None}
    filtered = client.get("/api/items/green-rect/similar", params={"k": 20, "where": "colour=green"}).json()
    assert sorted(m["id"] for m in filtered["results"]) == ["green-ellipse", "shoes/green-stripes"]
    both = client.get("/api/items/green-rect/similar",
                      params=[("k", "20"), ("where", "colour=green"), ("where", "shape=ellipse")]).json()
    assert [m["id"] for m in both["results"]] == ["green-ellipse"]


def test_ids_with_slashes_work_everywhere(client):
    item = client.get("/api/items/shoes/red-stripes").json()
    assert item["id"] == "shoes/red-stripes"
    assert client.get(item["image_url"]).status_code == 200
    assert client.get(item["thumbnail_url"]).status_code == 200
    similar = client.get("/api/items/shoes/red-stripes/similar", params={"k": 3}).json()
    assert len(similar["results"]) == 3 and "shoes/red-stripes" not in [m["id"] for m in similar["results"]]


def test_browse_pages_filters_and_counts_facets(client):
    first = client.get("/api/items", params={"limit": 5}).json()
    rest = client.get("/api/items", params={"offset": 5, "limit": 50}).json()
    assert first["total"] == rest["total"] == 12
    ids = [it["id"] for it in first["items"] + rest["items"]]
    assert len(ids) == 12 == len(set(ids))
    assert first["facets"]["colour"] == {c: 3 for c in sorted(COLORS)}
    assert first["facets"]["shape"] == {s: 4 for s in sorted(SHAPES)}
    assert "name" not in first["facets"]  # every value unique: it names items, it does not group them
    blue = client.get("/api/items", params={"where": "colour=blue"}).json()
    assert blue["total"] == 3 and {it["labels"]["colour"] for it in blue["items"]} == {"blue"}
    assert blue["facets"]["shape"] == {s: 1 for s in sorted(SHAPES)}
    assert client.get("/api/items", params={"limit": 0}).json()["items"] == []


def test_original_image_and_cached_thumbnail(client, shop):
    item = client.get("/api/items/yellow-ellipse").json()
    original = client.get(item["image_url"])
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    assert original.content == photo(shop, "yellow-ellipse").read_bytes()
    thumb = client.get(item["thumbnail_url"], params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert "max-age" in thumb.headers["cache-control"]
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64
    again = client.get(item["thumbnail_url"], params={"size": 64}, headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304
    cached = list((shop / "shop.lk" / "thumbnails" / "64").rglob("*.jpg"))
    assert cached, "thumbnails are kept on disk"
    assert client.get(item["thumbnail_url"], params={"size": 2000}).status_code == 422


def test_openapi_docs_and_page_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/search", "/api/items", "/api/items/{item_id}/similar", "/api/predict", "/api/health"):
        assert path in paths
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_predict_answers_like_the_seed_system(client, shop):
    r = client.post("/api/predict", files=upload(photo(shop, "red-ellipse")))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"closest_images", "uploaded_image"}
    assert len(body["closest_images"]) == 10
    for encoded in body["closest_images"] + [body["uploaded_image"]]:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "JPEG"


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, status, words", [
    (b"hello, I am a text file\n", 415, "not an image"),
    (b"", 415, "empty"),
    (huge_png_header(50000, 50000), 422, "MP limit"),
])
def test_bad_uploads_are_refused_with_a_message(client, data, status, words):
    r = client.post("/api/search", files=upload(data, "bad.bin"))
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_truncated_jpeg_is_422(client, shop):
    data = photo(shop, "red-rect").read_bytes()
    r = client.post("/api/search", files=upload(data[: len(data) // 2]))
    assert r.status_code == 422 and "truncated" in r.json()["detail"]


def test_upload_over_the_limit_is_413(client):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, "PNG")  # noise does not compress: about 480 KB, over this client's 200 KB limit
    r = client.post("/api/search", files=upload(buffer.getvalue(), "big.png"))
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_missing_image_field_is_422(client):
    assert client.post("/api/search", data={"k": "3"}).status_code == 422


@pytest.mark.parametrize("params, status", [
    ({"k": 0}, 422), ({"k": -3}, 422), ({"k": "many"}, 422), ({"k": 101}, 422),
    ({"where": "colour"}, 422), ({"where": "flavour=sweet"}, 422),
])
def test_bad_k_and_where_are_422(client, params, status):
    r = client.get("/api/items/red-rect/similar", params=params)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("path", [
    "/api/items/nope", "/api/items/nope/similar", "/api/items/nope/image", "/api/items/nope/thumbnail",
    "/api/items/../../../../etc/passwd/image", "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
    "/api/items/%2Fetc%2Fpasswd/image",
])
def test_unknown_ids_are_404_and_no_path_escapes(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "root:" not in r.text


# -- writing (admin token) ----------------------------------------------------------------------------


def test_writes_need_the_token(client, shop):
    files = upload(photo(shop, "red-rect"))
    assert client.post("/api/items", files=files).status_code == 401
    assert client.post("/api/items", files=files, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.delete("/api/items/red-rect").status_code == 401
    assert client.get("/api/items/red-rect").status_code == 200


def test_a_server_without_token_is_read_only(shop):
    with client_for(shop, admin_token=None) as c:
        r = c.post("/api/items", files=upload(photo(shop, "red-rect")), headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403 and "--admin-token" in r.json()["detail"]
        assert c.get("/api/health").json()["writable"] is False


def test_add_then_delete_an_item(shop, tmp_path):
    import shutil

    shutil.copytree(shop / "shop.lk", tmp_path / "shop.lk")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    new = make_image(tmp_path / "new.png", color=(250, 120, 0), shape="ellipse", fmt="PNG")
    with client_for(shop, catalog=tmp_path / "shop.lk") as c:
        assert "orange" not in c.get("/api/items", params={"limit": 0}).json()["facets"]["colour"]
        r = c.post("/api/items", files=upload(new, "new.png"), headers=auth,
                   data={"id": "orange-ellipse", "labels": '{"colour": "orange", "shape": "ellipse"}'})
        assert r.status_code == 201, r.text
        assert r.json()["labels"] == {"colour": "orange", "shape": "ellipse"}
        assert c.get("/api/health").json()["items"] == 13
        found = c.post("/api/search", files=upload(new, "new.png"), data={"k": "1"}).json()["results"]
        assert found[0]["id"] == "orange-ellipse"
        assert c.get("/api/items/orange-ellipse/image").content == new.read_bytes()
        assert c.get("/api/items", params={"where": "colour=orange"}).json()["total"] == 1
        assert c.get("/api/items", params={"limit": 0}).json()["facets"]["colour"]["orange"] == 1
        stored = list((tmp_path / "shop.lk" / "uploads").iterdir())
        assert len(stored) == 1 and stored[0].suffix == ".png"

        again = c.post("/api/items", files=upload(new, "new.png"), headers=auth, data={"id": "orange-ellipse"})
        assert again.status_code == 409
        bad = c.post("/api/items", files=upload(new), headers=auth, data={"labels": "{not json"})
        assert bad.status_code == 422
        assert c.post("/api/items", files=upload(b"plain text"), headers=auth).status_code == 415

        assert c.delete("/api/items/orange-ellipse", headers=auth).json() == {"id": "orange-ellipse", "deleted": True}
        assert c.get("/api/items/orange-ellipse").status_code == 404
        assert c.delete("/api/items/orange-ellipse", headers=auth).status_code == 404
        assert c.get("/api/health").json()["items"] == 12
        assert not list((tmp_path / "shop.lk" / "uploads").iterdir()), "the uploaded file goes with its item"
    with Catalog.open(tmp_path / "shop.lk") as catalog:  # what the API did is on disk
        assert len(catalog) == 12 and "orange-ellipse" not in catalog.ids()


def test_added_item_id_defaults_to_the_content_hash(shop, tmp_path):
    import shutil

    shutil.copytree(shop / "shop.lk", tmp_path / "shop.lk")
    new = make_image(tmp_path / "new.jpg", color=(10, 10, 10))
    with client_for(shop, catalog=tmp_path / "shop.lk") as c:
        r = c.post("/api/items", files=upload(new), headers={"X-Admin-Token": TOKEN})
        assert r.status_code == 201
        item_id = r.json()["id"]
        assert len(item_id) == 16 and int(item_id, 16) >= 0


# -- concurrency ----------------------------------------------------------------------------------------


def test_concurrent_searches_get_the_same_answers_as_one_by_one(client, shop):
    names = [f"{c}-{s}" for c in COLORS for s in ("rect", "ellipse")]
    alone = {n: client.post("/api/search", files=upload(photo(shop, n)), data={"k": "3"}).json()["results"]
             for n in names}
    with ThreadPoolExecutor(8) as pool:
        together = dict(zip(names, pool.map(
            lambda n: client.post("/api/search", files=upload(photo(shop, n)), data={"k": "3"}).json()["results"],
            names), strict=True))
    for n in names:
        assert [m["id"] for m in together[n]] == [m["id"] for m in alone[n]]
        assert np.allclose([m["similarity"] for m in together[n]], [m["similarity"] for m in alone[n]], atol=2e-2)


def test_batcher_batches_waiting_requests_and_reports_failures(tiny_embedder):
    from lookalike.api.batcher import EmbedBatcher
    from lookalike.engines.embed import Encoder

    encoder = Encoder(tiny_embedder, EncodeOptions(precision="fp32", workers=0))
    sizes: list[int] = []
    real = encoder.embed_uint8
    gate = threading.Event()

    def counting(batch):
        gate.wait(5)  # hold the first call so the others queue up behind it
        sizes.append(len(batch))
        return real(batch)

    encoder.embed_uint8 = counting
    batcher = EmbedBatcher(lambda: encoder, max_batch=16)
    h, w = tiny_embedder.data_config["input_size"][1:]
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(9)]
    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(batcher.embed, a) for a in arrays]
        threading.Timer(0.3, gate.set).start()
        vectors = [f.result() for f in futures]
    expected = real(__import__("torch").from_numpy(np.stack(arrays)))
    assert np.allclose(np.stack(vectors), expected, atol=1e-5)
    assert sum(sizes) == 9 and len(sizes) < 9, f"waiting requests should share model calls, got {sizes}"

    encoder.embed_uint8 = lambda batch: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.embed(arrays[0])
    batcher.close()


def test_a_catalog_of_a_model_free_embedder_is_served(labelled_catalog, photo_dir):
    """Any embedder of the registry serves, not only timm backbones (here the colour histogram)."""
    path = labelled_catalog.path
    labelled_catalog.close()
    with TestClient(create_app(ServeSettings(catalog=path))) as c:
        r = c.post("/api/search", files=upload(photo_dir / "green-ellipse.jpg"), data={"k": "3"})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == "green-ellipse"
