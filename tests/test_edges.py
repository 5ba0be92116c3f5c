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


def _read_only_mount(folder: Path) -> tuple[str, ...] | None:
    """A prefix that runs a command with ``folder`` bind-mounted read-only (a user namespace), or None."""
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" && exec "$@"'
    prefix = ("unshare", "-rm", "sh", "-c", script, "sh")
    try:
        probe = subprocess.run([*prefix, "sh", "-c", f'touch "{folder}/.probe"'], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode != 0 and b"Read-only" in probe.stderr else None


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
    res = cli("index", str(tmp_path / "photos"), "--catalog", str(shop), cwd=tmp_path, prefix=prefix)
    assert res.returncode == 2
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
