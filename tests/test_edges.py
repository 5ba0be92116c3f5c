"""Real-world edges (issue 24): read-only catalogs, photos gone after indexing, REST API edges, PostgreSQL
errors that say what is wrong, text longer than the model's context, first contact with the CLI and page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image
from lookalike import Catalog, CatalogError, EncodeOptions

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200)}


def cli(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=120)


def build(root: Path, labels: bool = True) -> Path:
    """A colour-histogram catalog of six photos (colour x shape), from a manifest with labels colour and shape."""
    photos = root / "photos"
    rows = ["path,colour,shape"]
    for colour, rgb in COLOURS.items():
        for shape in ("rect", "ellipse"):
            make_image(photos / f"{colour}-{shape}.jpg", color=rgb, shape=shape, quality=90)
            rows.append(f"{colour}-{shape}.jpg,{colour},{shape}")
    (root / "styles.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(root / "shop.lk", "colorhist") as catalog:
        if labels:
            catalog.add(root / "styles.csv", images=photos, options=EncodeOptions(workers=0, progress=False))
        else:
            catalog.add(photos, options=EncodeOptions(workers=0, progress=False))
    return root / "shop.lk"


# -- 3. a read-only catalog ------------------------------------------------------------------------------------


def test_a_read_only_catalog_searches_and_refuses_writes_in_one_line(tmp_path, monkeypatch):
    """Root ignores file modes, so the writability probe is told what a read-only mount would say; SQLite then
    opens the file with mode=ro, which it enforces for root too."""
    shop = build(tmp_path)
    shutil.rmtree(shop / "index")
    from lookalike.store import sqlite

    monkeypatch.setattr(sqlite, "writable", lambda path: False)
    with Catalog.open(shop) as catalog:
        assert catalog.status().items == 6
        assert catalog.similar("red-rect", k=2)[0].id
        assert catalog.search(tmp_path / "photos" / "blue-rect.jpg", k=1)[0].id == "blue-rect"
        with pytest.raises(CatalogError, match="read-only") as err:
            catalog.add(tmp_path / "photos", options=EncodeOptions(workers=0, progress=False))
        assert "\n" not in str(err.value)
        with pytest.raises(CatalogError, match="read-only"):
            catalog.add_image((tmp_path / "photos" / "red-rect.jpg").read_bytes(), "another")
        with pytest.raises(CatalogError, match="read-only"):
            catalog.remove(["red-rect"])


def _read_only_mount(folder: Path) -> tuple[str, ...] | None:
    """A prefix that runs a command with ``folder`` bind-mounted read-only (a user namespace), or None."""
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" && exec "$@"'
    prefix = ("unshare", "-rm", "sh", "-c", script, "sh")
    try:
        probe = subprocess.run([*prefix, "sh", "-c", f'touch "{folder}/.probe"'], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode != 0 and b"Read-only" in probe.stderr else None


@pytest.mark.slow
def test_a_catalog_on_a_read_only_mount_serves_status_search_and_similar(tmp_path):
    shop = build(tmp_path)
    shutil.rmtree(shop / "index")  # the FAISS cache cannot be written there either
    prefix = _read_only_mount(shop)
    if prefix is None:
        pytest.skip("cannot bind-mount read-only here (unshare -rm)")
    for args in (("status",), ("similar", "red-rect"), ("search", str(tmp_path / "photos" / "red-rect.jpg"))):
        res = cli(*args, "--catalog", str(shop), cwd=tmp_path, prefix=prefix)
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
    for args in (("index", str(tmp_path / "photos")), ("tune",), ("cluster", "-n", "2")):
        res = cli(*args, "--catalog", str(shop), cwd=tmp_path, prefix=prefix)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.strip().count("\n") == 0 and "read-only" in res.stderr


# -- 4. photos deleted or moved after indexing -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gone(tmp_path_factory) -> Path:
    """A catalog of six photos, two of them deleted after indexing (red-rect, blue-ellipse)."""
    root = tmp_path_factory.mktemp("gone")
    shop = build(root)
    (root / "photos" / "red-rect.jpg").unlink()
    (root / "photos" / "blue-ellipse.jpg").unlink()
    return shop


def api(shop: Path, **settings):
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    return TestClient(create_app(ServeSettings(catalog=shop, **settings)))


def test_status_counts_photos_gone_since_indexing(gone):
    with Catalog.open(gone) as catalog:
        status = catalog.status()
    assert status.missing == 2 and status.to_dict()["missing"] == 2
    res = cli("status", "--catalog", str(gone), cwd=gone.parent)
    assert res.returncode == 0, res.stderr
    assert "6 searchable, 0 failed, 2 photos missing" in res.stdout and "--prune" in res.stdout


def test_search_marks_items_whose_photo_is_gone(gone):
    with Catalog.open(gone) as catalog:
        matches = catalog.similar("red-ellipse", k=5)
    assert {m.id for m in matches if m.missing} == {"red-rect", "blue-ellipse"}
    assert all(m.to_dict()["missing"] == m.missing for m in matches)
    with api(gone) as client:
        body = client.get("/api/items/red-ellipse/similar?k=5").json()
    assert {r["id"] for r in body["results"] if r["missing"]} == {"red-rect", "blue-ellipse"}


def test_a_thumbnail_of_a_gone_photo_is_404_without_server_paths(gone):
    with api(gone, thumbnail_cache=gone.parent / "thumbs") as client:
        for url in ("/api/items/red-rect/thumbnail", "/api/items/red-rect/image"):
            r = client.get(url)
            assert r.status_code == 404, (url, r.text)
            assert str(gone.parent) not in r.text and "photos" not in r.text
            assert "gone" in r.json()["detail"]
        assert client.get("/api/items/green-rect/thumbnail").status_code == 200


# -- 5. REST API edges ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    shop = build(tmp_path_factory.mktemp("served"))
    with api(shop, thumbnail_cache=shop.parent / "thumbs") as client:
        yield client, shop


def jpeg(shop: Path) -> bytes:
    return (shop.parent / "photos" / "red-rect.jpg").read_bytes()


def detail(r) -> str:
    body = r.json()
    assert set(body) == {"detail"} and "\n" not in body["detail"], r.text[:300]
    return body["detail"]


def test_head_answers_like_get_without_a_body(served):
    client, _ = served
    for url in ("/", "/api/health", "/api/items/red-rect/image", "/api/items/red-rect/thumbnail"):
        get, head = client.get(url), client.head(url)
        assert head.status_code == get.status_code == 200, (url, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


def test_cors_is_off_by_default_and_set_by_lookalike_cors_origins(served, monkeypatch):
    client, shop = served
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/api/search", headers=preflight).headers
    monkeypatch.setenv("LOOKALIKE_CORS_ORIGINS", "https://shop.example, https://www.shop.example/")
    with api(shop) as cors:
        r = cors.options("/api/search", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        got = cors.get("/api/health", headers={"Origin": "https://www.shop.example"})
        assert got.headers["access-control-allow-origin"] == "https://www.shop.example"
        other = cors.options("/api/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_long_values_are_never_echoed_in_errors(served):
    client, shop = served
    image = {"image": ("a.jpg", jpeg(shop), "image/jpeg")}
    answers = [
        client.post("/api/search", data={"where": "a" * 100_000}, files=image),
        client.post("/api/search", data={"where": "b" * 100_000 + "=x"}, files=image),
        client.get("/api/items", params={"where": "c" * 50_000}),
        client.get("/api/items/" + "d" * 5000),
        client.get("/api/items/" + "e" * 5000 + "/similar"),
        client.get("/api/items/" + "f" * 5000 + "/thumbnail"),
    ]
    for r in answers:
        assert r.status_code in (404, 422), r.status_code
        assert len(r.content) < 700 and len(detail(r)) < 600


@pytest.mark.parametrize("case, words", [
    ("no closing boundary", "without its closing boundary"),
    ("wrong boundary", "boundary its Content-Type declares"),
    ("json", "not JSON"),
    ("raw image", "raw body"),
])
def test_a_malformed_search_body_says_what_is_wrong(served, case, words):
    client, shop = served
    part = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg'
            b"\r\n\r\n" + jpeg(shop) + b"\r\n")
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    if case == "no closing boundary":
        r = client.post("/api/search", content=part, headers=multipart)
    elif case == "wrong boundary":
        r = client.post("/api/search", content=part + b"--xyz--\r\n",
                        headers={"Content-Type": "multipart/form-data; boundary=abc"})
    elif case == "json":
        r = client.post("/api/search", json={"text": "red"})
    else:
        r = client.post("/api/search", content=jpeg(shop), headers={"Content-Type": "image/jpeg"})
    assert r.status_code in (400, 422)
    message = detail(r)
    assert words in message and "send a photo (image), words (text), or both" not in message


def test_two_image_parts_and_form_fields_in_the_url_are_refused(served):
    client, shop = served
    data = jpeg(shop)
    two = client.post("/api/search", files=[("image", ("a.jpg", data, "image/jpeg")),
                                            ("image", ("b.jpg", data, "image/jpeg"))])
    assert two.status_code == 422 and "2 image parts" in detail(two)
    k_in_url = client.post("/api/search?k=2", files={"image": ("a.jpg", data, "image/jpeg")})
    assert k_in_url.status_code == 422 and detail(k_in_url).startswith("k: ")
    fine = client.post("/api/search", data={"k": "2"}, files={"image": ("a.jpg", data, "image/jpeg")})
    assert fine.status_code == 200 and len(fine.json()["results"]) == 2


def test_a_body_that_never_comes_is_answered_408_and_closed():
    import anyio

    from lookalike.api.limits import BodyLimitMiddleware

    async def app(scope, receive, send):  # reads the body, as a form endpoint does
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        try:
            await Request(scope, receive).body()
        except Exception as exc:  # noqa: BLE001 - the middleware's HTTPException, answered as the app would
            await JSONResponse({"detail": exc.detail}, status_code=exc.status_code)(scope, receive, send)
            return
        await JSONResponse({})(scope, receive, send)

    sent: list[dict] = []

    async def receive():
        await anyio.sleep(3600)  # headers said a body comes; it never does

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/search", "headers": [(b"content-length", b"100")]}

    async def main():
        with anyio.fail_after(5):
            await BodyLimitMiddleware(app, max_upload_bytes=1000, body_timeout=0.3)(scope, receive, send)

    anyio.run(main)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert b"stopped arriving" in b"".join(m.get("body", b"") for m in sent)


# -- 6. PostgreSQL errors say what is wrong -----------------------------------------------------------------


@pytest.mark.parametrize("reason, sqlstate, words", [
    ('connection failed: connection to server at "db", port 5432 failed: FATAL:  password authentication failed '
     'for user "shop"', None, "authentication failed for user 'shop'; check the user and password"),
    ('connection failed: connection to server at "db", port 5432 failed: FATAL:  database "shopdb" does not exist',
     None, "no database 'shopdb'"),
    ('connection failed: connection to server at "db", port 5432 failed: FATAL:  role "shop" does not exist',
     None, "no role 'shop'"),
    ("connection failed: connection to server at \"db\", port 1 failed: Connection refused", None, "cannot be reached"),
    ("failed to resolve host 'nohost.invalid': [Errno -2] Name or service not known", None, "cannot be reached"),
    ("the server's words, translated", "28P01", "authentication failed"),
    ("the server's words, translated", "3D000", "no database"),
])
def test_connection_problems_are_told_apart(reason, sqlstate, words):
    from lookalike.store.postgres import connection_problem

    message = connection_problem(reason, sqlstate)
    assert words in message
    assert ("try again when it is back" in message) == (words == "cannot be reached")


def test_a_wrong_password_or_a_missing_database_is_named_not_a_retry(pg_server):
    import time

    import psycopg

    from lookalike.core.errors import StoreUnavailableError

    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pw_only")
        conn.execute("CREATE ROLE pw_only LOGIN PASSWORD 'right'")
        hba = pg_server.data / "pg_hba.conf"
        if "pw_only" not in hba.read_text():  # this role alone must give a password; the others stay trusted
            hba.write_text("host all pw_only 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    time.sleep(0.3)
    base = pg_server.url  # postgresql://postgres@127.0.0.1:PORT/postgres
    host = base.split("@", 1)[1].rsplit("/", 1)[0]
    cases = [
        (f"postgresql://pw_only:wrong-pw@{host}/postgres", "authentication failed for user 'pw_only'"),
        (f"postgresql://postgres@{host}/no_such_db", "no database 'no_such_db'"),
        ("postgresql://postgres:pw@127.0.0.1:1/postgres", "cannot be reached"),
    ]
    for url, words in cases:
        with pytest.raises(StoreUnavailableError) as err:
            Catalog.open(url)
        message = str(err.value)
        assert words in message and "\n" not in message and "wrong-pw" not in message
        assert ("try again when it is back" in message) == (words == "cannot be reached")


# -- 7. words longer than the model's context ---------------------------------------------------------------


def test_words_cut_to_the_context_are_said_with_the_token_count(tiny_clip, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="lookalike")
    short = tiny_clip.tokenize(["red dress"])
    assert not [r for r in caplog.records if "cut" in r.getMessage()]
    context = int(short.shape[1])  # 32 for the tiny model
    tiny_clip.tokenize(["red " * 100])
    cut = [r.getMessage() for r in caplog.records if "cut" in r.getMessage()]
    assert len(cut) == 1 and f"{context} of 102 tokens used" in cut[0]


@pytest.mark.slow
def test_the_command_line_caps_words_as_the_api_does(word_shop, clip_hub):
    env_home = {"HF_HOME": str(clip_hub)}
    res = subprocess.run([sys.executable, "-m", "lookalike.cli", "search", "--text", "red " * 300, "--catalog",
                          str(word_shop / "shop.lk")], capture_output=True, text=True, env={**ENV, **env_home},
                         timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "1,200 characters" in res.stderr and "1,000" in res.stderr and "red red red" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "lookalike.cli", "search", "--text", "red " * 60, "--catalog",
                          str(word_shop / "shop.lk"), "-k", "1"], capture_output=True, text=True,
                         env={**ENV, **env_home}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "of 62 tokens used" in res.stderr


# -- 10. first contact ---------------------------------------------------------------------------------------


def test_the_api_docs_load_nothing_from_a_cdn(served):
    import re

    client, _ = served
    for url in ("/docs", "/redoc"):
        page = client.get(url)
        assert page.status_code == 200
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert refs and all(ref.startswith("/") for ref in refs), refs
        assert "cdn" not in page.text and "fonts.googleapis" not in page.text
        for ref in refs:
            assert client.get(ref).status_code == 200, ref


def test_a_non_image_upload_does_not_name_pillow(served):
    client, _ = served
    r = client.post("/api/search", files={"image": ("notes.txt", b"just some words", "text/plain")})
    assert r.status_code == 415
    assert "Pillow" not in detail(r) and "not an image lookalike can read (JPEG, PNG, WebP" in detail(r)


@pytest.mark.slow  # three command-line runs: runs in .ci/run, not in the quick suite
def test_a_filter_value_no_item_has_names_the_values_closest_first(tmp_path):
    shop = build(tmp_path)
    for args in (("similar", "red-rect"), ("search", str(tmp_path / "photos" / "red-rect.jpg")), ("items",)):
        res = cli(*args, "--catalog", str(shop), "--where", "colour=gren", cwd=tmp_path)
        assert res.returncode == 2, res.stdout
        line = res.stderr.strip()
        assert "\n" not in line and "colour='gren'" in line and "closest first: green, " in line


def test_index_of_a_manifest_says_how_many_photos_had_no_row(tmp_path):
    photos = tmp_path / "photos"
    for colour, rgb in COLOURS.items():
        make_image(photos / f"{colour}.jpg", color=rgb)
    (tmp_path / "styles.csv").write_text("path,colour\nred.jpg,red\n")
    res = cli("index", str(tmp_path / "styles.csv"), "--images", str(photos), "--catalog", str(tmp_path / "c.lk"),
              "--model", "colorhist", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 of 3 photos" in res.stdout + res.stderr and "no row in styles.csv" in res.stdout + res.stderr


def test_items_lists_a_catalog_with_filters_and_paging(tmp_path):
    import json

    shop = build(tmp_path)
    res = cli("items", "--catalog", str(shop), "--where", "shape=rect", "--limit", "2", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    page = json.loads(res.stdout)
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == ["red-rect", "green-rect"]
    assert page["items"][0]["labels"] == {"colour": "red", "shape": "rect"}
    res = cli("items", "--catalog", str(shop), "--offset", "4", cwd=tmp_path)
    assert res.returncode == 0 and "items 5-6 of 6" in res.stdout and "blue-ellipse" in res.stdout
    with api(shop) as client:  # the same page as GET /api/items
        ids = [i["id"] for i in client.get("/api/items?where=shape=rect&limit=2").json()["items"]]
    assert ids == ["red-rect", "green-rect"]


@pytest.mark.slow
@pytest.mark.browser
def test_first_contact_in_a_real_browser(tmp_path):
    """Offline: the API docs render from local assets; filters survive in a shared link; a text file leaves no
    broken image and no "Pillow"; an item without a title is named by its labels; a gone photo says so."""
    from test_serve import CHROMIUM, CHROMIUM_ARGS, serve_catalog

    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    shop = build(tmp_path)
    (tmp_path / "photos" / "blue-ellipse.jpg").unlink()
    expect.set_options(timeout=20_000)
    server = serve_catalog(shop)
    url = next(server)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(30_000)
            outside: list[str] = []

            def offline(route):  # nothing but the server itself: a machine without the internet
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(url + "/docs")
            expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
            assert not outside, outside

            page.goto(url + "/#browse")
            cards = page.locator("[data-testid=results] button.card")
            expect(cards).to_have_count(6)
            red = page.locator("button.card[data-id='red-rect']")
            expect(red.locator(".name")).to_have_text("red · rect")
            expect(red.locator(".labels").first).to_have_text("id red-rect")
            expect(page.locator("button.card[data-id='blue-ellipse'] [data-testid=photo-missing]")).to_be_visible()

            page.get_by_test_id("facet-colour").select_option("red")
            expect(cards).to_have_count(2)
            assert "where=colour%3Dred" in page.url
            shared = browser.new_page()
            shared.goto(page.url)
            expect(shared.get_by_test_id("facet-colour")).to_have_value("red")
            expect(shared.locator("[data-testid=results] button.card")).to_have_count(2)

            page.get_by_test_id("file").set_input_files(
                {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"})
            expect(page.get_by_test_id("error")).to_contain_text("not an image lookalike can read")
            assert "Pillow" not in page.get_by_test_id("error").text_content()
            expect(page.get_by_test_id("query-image")).to_be_hidden()
            browser.close()
    finally:
        next(server, None)
