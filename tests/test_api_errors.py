"""Real-world inputs at the REST API: every error is one JSON line that never echoes the upload, speaks to API
clients (not to the terminal), and reaches even a client that sends its whole body before reading."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import huge_png_header
from lookalike.api import ServeSettings, create_app
from test_api import TOKEN, client_for, photo, upload
from test_serve import serve_catalog

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NON_ASCII = "商品.jpg"


def rfc5987_part(data: bytes, name: str = "image", filename: str = NON_ASCII,
                 fields: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A multipart body whose file part is named only as ``filename*=utf-8''...`` (RFC 5987), as some clients
    send non-ASCII names, and the headers to post it with."""
    from urllib.parse import quote

    out = b""
    for key, value in (fields or {}).items():
        out += f'--xyz\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    out += (f"--xyz\r\nContent-Disposition: form-data; name=\"{name}\"; filename*=utf-8''{quote(filename)}\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n--xyz--\r\n"
    return out, {"Content-Type": "multipart/form-data; boundary=xyz"}


def noise_png(side: int) -> bytes:
    """Noise does not compress: about 3 bytes a pixel."""
    image = Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def one_line(r) -> str:
    """The answer's ``detail``, checked to be the answer's only key, a string, on one line."""
    assert r.headers["content-type"] == "application/json", r.text[:300]
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), r.text[:300]
    assert "\n" not in r.text
    return body["detail"]


@pytest.fixture(scope="module")
def client(shop) -> TestClient:
    with client_for(shop, max_upload_bytes=200_000) as c:
        yield c


@pytest.fixture(scope="module")
def writable(shop, tmp_path_factory) -> TestClient:
    """A copy of the shop, default limits (20 MB uploads), the admin token."""
    folder = tmp_path_factory.mktemp("writable")
    shutil.copytree(shop / "shop.lk", folder / "shop.lk")
    with client_for(shop, catalog=folder / "shop.lk") as c:
        yield c


# -- 1. file parts named only by RFC 5987 filename* ---------------------------------------------------------


def test_search_accepts_a_file_part_named_only_by_filename_star(client, shop):
    body, headers = rfc5987_part(photo(shop, "blue-ellipse").read_bytes(), fields={"k": "3"})
    r = client.post("/api/search", content=body, headers=headers)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["query"]["filename"] == NON_ASCII
    assert r.json()["results"][0]["id"] == "blue-ellipse"


def test_a_filename_star_part_over_one_megabyte_is_a_file_not_a_field(writable, shop):
    data = noise_png(700)  # about 1.5 MB: a form field would be refused over 1 MB (400)
    assert len(data) > 1024 * 1024
    body, headers = rfc5987_part(data)
    r = writable.post("/api/search", content=body, headers=headers)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["query"]["filename"] == NON_ASCII


def test_add_and_predict_accept_filename_star_parts(writable, shop):
    body, headers = rfc5987_part(photo(shop, "red-ellipse").read_bytes(), fields={"id": "star-item"})
    r = writable.post("/api/items", content=body, headers={**headers, **AUTH})
    assert r.status_code == 201, r.text[:300]
    assert r.json()["id"] == "star-item"
    assert writable.delete("/api/items/star-item", headers=AUTH).status_code == 200
    body, headers = rfc5987_part(photo(shop, "red-ellipse").read_bytes(), fields={"k": "2"})
    r = writable.post("/api/predict", content=body, headers=headers)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["closest_images"]) == 2


def test_a_filename_star_with_quotes_and_escapes_keeps_its_name(client, shop):
    name = 'a "b" \\c.jpg'
    body, headers = rfc5987_part(photo(shop, "red-rect").read_bytes(), filename=name)
    r = client.post("/api/search", content=body, headers=headers)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["query"]["filename"] == name


def test_a_validation_error_never_echoes_the_upload(client):
    """A file sent as a plain field (no filename at all) is refused in one short line, without its bytes."""
    data = b"\xff\xd8\xff\xe0" + b"JPEGDATA" * 20_000  # 160 KB
    body = (b'--xyz\r\nContent-Disposition: form-data; name="image"\r\nContent-Type: image/jpeg\r\n\r\n' + data
            + b"\r\n--xyz--\r\n")
    r = client.post("/api/search", content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 422
    detail = one_line(r)
    assert detail.startswith("image: ") and "file" in detail
    assert len(r.content) < 500 and "JPEGDATA" not in r.text


# -- 2. every 4xx is one line, naming the field ----------------------------------------------------------


@pytest.mark.parametrize("method, path, kwargs, status, words", [
    ("post", "/api/search", {"data": {"k": "abc"}, "image": True}, 422, "k: Input should be a valid integer"),
    ("post", "/api/search", {"data": {"k": "0"}, "image": True}, 422, "k: Input should be greater than or equal to 1"),
    ("post", "/api/search", {"data": {"k": "3"}}, 422, "send a photo (image), words (text), or both"),
    ("get", "/api/items/red-rect/similar", {"params": {"k": "abc"}}, 422, "k: Input should be a valid integer"),
    ("get", "/api/items/red-rect/thumbnail", {"params": {"size": "0"}}, 422, "size: Input should be greater"),
    ("get", "/api/items", {"params": {"limit": "x", "offset": "-1"}}, 422, "offset: Input should be greater"),
    ("get", "/api/items/red-rect/similar", {"params": {"k": "500"}}, 422, "LOOKALIKE_MAX_K"),
    ("get", "/api/nothing-here", {}, 404, "GET /api/nothing-here"),
    ("get", "/static/nothing.js", {}, 404, "/static/nothing.js"),
    ("post", "/api/health", {}, 405, "GET"),
    ("delete", "/api/items/red-rect", {}, 401, "admin token"),
    ("post", "/api/items", {"data": {"labels": "{not json"}, "image": True, "headers": AUTH}, 422, "labels"),
    ("get", "/api/items/red-rect/similar", {"params": {"where": "colour"}}, 422, "label=value"),
])
def test_every_4xx_is_one_line_that_names_the_field(client, shop, method, path, kwargs, status, words):
    if kwargs.pop("image", False):
        kwargs = {**kwargs, "files": upload(photo(shop, "red-rect"))}
    r = client.request(method.upper(), path, **kwargs)
    assert r.status_code == status, r.text[:300]
    assert words in one_line(r)


def test_several_validation_errors_share_the_line(client):
    detail = one_line(client.get("/api/items", params={"limit": "x", "offset": "-1"}))
    assert "offset: " in detail and "limit: " in detail and "; " in detail


def test_an_unexpected_failure_is_one_json_line_too(shop):
    with TestClient(create_app(ServeSettings(catalog=shop / "shop.lk")), raise_server_exceptions=False) as c:
        def broken(*args):
            raise RuntimeError("disk on fire\nsecond line")

        c.app.state.service.browse = broken
        r = c.get("/api/items")
        assert r.status_code == 500
        assert "disk on fire" not in one_line(r)  # internals stay in the server's log


# -- 3. advice an API client can follow -----------------------------------------------------------------


def test_unknown_items_point_to_the_api_not_the_cli(client):
    for r in (client.get("/api/items/nope"), client.get("/api/items/nope/similar"),
              client.delete("/api/items/nope", headers=AUTH)):
        assert r.status_code == 404
        detail = one_line(r)
        assert "'nope'" in detail and "GET /api/items" in detail
        assert "lookalike status" not in detail and "`" not in detail


def test_limits_are_named_by_their_server_setting(client):
    r = client.post("/api/search", files=upload(huge_png_header(50000, 50000), "bomb.png"))
    assert r.status_code == 422
    detail = one_line(r)
    assert "2500 MP" in detail and "LOOKALIKE_MAX_PIXELS" in detail and "smaller image" in detail
    assert "--max-pixels" not in detail
    r = client.post("/api/search", files=upload(noise_png(400), "big.png"))  # about 480 KB, over 200 KB
    assert r.status_code == 413
    detail = one_line(r)
    assert "LOOKALIKE_MAX_UPLOAD_BYTES" in detail and "smaller image" in detail and "--max-upload" not in detail


def test_the_cli_keeps_its_own_advice(shop):
    """Only the HTTP edge rewrites: the library's message still speaks to the terminal."""
    from lookalike import Catalog
    from lookalike.core.errors import ImageError
    from lookalike.core.images import decode

    with Catalog.open(shop / "shop.lk") as catalog, pytest.raises(Exception, match="lookalike status"):
        catalog.similar("nope", 3)
    with pytest.raises(ImageError, match="--max-pixels"):
        decode(huge_png_header(50000, 50000))


# -- 4. a refused body is read before the connection closes ----------------------------------------------


@pytest.fixture(scope="module")
def server(shop):
    yield from serve_catalog(shop / "shop.lk")


@pytest.mark.slow
def test_urllib_sending_25_mb_gets_the_413(server, tmp_path: Path):
    """urllib writes the whole body before it reads a byte of the answer: the server must read (and drop) the
    refused body before it closes, or the client sees 'Connection reset by peer' instead of the 413."""
    body, headers = rfc5987_part(b"\xff\xd8" + bytes(25 * 1024 * 1024))
    request = urllib.request.Request(f"{server}/api/search", data=body, headers=headers, method="POST")
    for _ in range(2):  # and the server stays up for the next one
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413
        detail = json.loads(refused.value.read())["detail"]
        assert "limit of 20 MB" in detail and "LOOKALIKE_MAX_UPLOAD_BYTES" in detail
    with urllib.request.urlopen(f"{server}/api/health", timeout=5) as r:
        assert r.status == 200
