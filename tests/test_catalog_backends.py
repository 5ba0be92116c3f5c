"""A catalog is a folder or a postgresql:// URL, everywhere one is taken: the same catalog life on both backends
(create, add, search, similar, labels, remove, uploads, analysis passes, reopen), then what only a database
catalog has (config in the database, cache folder proven on open, memory cache, uploads every process can read,
passwords never shown), through the Python API, the CLI, LOOKALIKE_CATALOG and the REST API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import make_image
from lookalike import Catalog, EncodeOptions
from lookalike.cli import main
from lookalike.core.errors import CatalogError, StoreUnavailableError

QUIET = EncodeOptions(workers=0, progress=False)


def labelled_source(photo_dir):
    rows = ["path,colour,shape"]
    for path in sorted(photo_dir.rglob("*.jpg")):
        colour, shape = path.stem.split("-")
        rows.append(f"{path.relative_to(photo_dir).as_posix()},{colour},{shape}")
    (photo_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    return photo_dir / "labels.csv"


def test_one_catalog_life_on_either_backend(catalog_location, photo_dir, tmp_path):
    manifest = labelled_source(photo_dir)
    with Catalog.create(catalog_location, "colorhist") as catalog:
        report = catalog.add(manifest, images=photo_dir, options=QUIET)
        assert report.indexed == 12 and len(catalog) == 12
        assert catalog.similar("red-rect", k=3)[0].id != "red-rect"
        found = catalog.search(photo_dir / "blue-ellipse.jpg", k=1)
        assert found[0].id == "blue-ellipse" and found[0].similarity > 0.999
        assert {m.labels["colour"] for m in catalog.similar("red-rect", k=3, where={"colour": "red"})} == {"red"}
        assert catalog.facets()["shape"] == {"ellipse": 4, "rect": 4, "stripes": 4}
        catalog.remove(["green-rect"])
        assert len(catalog) == 11 and "green-rect" not in catalog.ids()
        again = catalog.add(manifest, images=photo_dir, options=QUIET)  # resumes: only the removed one
        assert again.indexed == 1 and again.unchanged == 11
        item = catalog.add_image((photo_dir / "red-rect.jpg").read_bytes(), "upload-1", {"colour": "red"})
        assert catalog.image_file(item.path).read_bytes() == (photo_dir / "red-rect.jpg").read_bytes()
        assert "upload-1" in [m.id for m in catalog.similar("red-ellipse", k=12)]
        status = catalog.status()
        assert status.items == 13 and status.index_detail["disk_bytes_per_item"] > 0

    from lookalike import find_duplicates, recommend
    from lookalike.analysis.cluster import cluster_catalog
    from lookalike.analysis.evaluate import evaluate_catalog

    with Catalog.open(catalog_location) as catalog:  # reopened: the saved index is proven and used
        assert len(catalog) == 13 and catalog.similar("red-rect", k=1)[0].id not in ("red-rect", "upload-1")
        groups = find_duplicates(catalog, 0.99)
        assert any({"red-rect", "upload-1"} <= set(g.ids) for g in groups.groups)
        result = cluster_catalog(catalog, 4)
        assert result.n == 4 and len(catalog.clusters()) == 13
        assert catalog.similar("red-rect", k=3, same_cluster=True)
        rows = recommend(catalog, 3, tmp_path / "similar.csv", progress=False)
        assert rows.items == 13
        (evaluation,) = evaluate_catalog(catalog, "shape", k=3, references=(), bootstrap=0)[:1]
        assert evaluation.queries == 12  # the upload has no shape
        catalog.remove(["upload-1"])
        assert catalog.store.upload_names() == []  # an upload no item shows any more is dropped


def test_a_database_catalog_keeps_its_config_and_uploads_in_the_database(pg_url, photo_dir, tmp_path, monkeypatch):
    with Catalog.create(pg_url, "colorhist") as catalog:
        catalog.add(photo_dir, options=QUIET)
        upload = catalog.add_image((photo_dir / "red-rect.jpg").read_bytes(), "up")
        assert upload.path.startswith("upload:") and json.loads(catalog.store.get_meta("config"))["embedder"]
        first_cache = catalog.folder
        assert (first_cache / "index" / "stamp.json").is_file()
    # Another machine: its own cache folder, nothing in it; the catalog and the uploaded image come from the
    # database alone.
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "elsewhere"))
    with Catalog.open(pg_url) as other:
        assert other.folder != first_cache and len(other) == 13
        assert other.image_file(other.item("up").path).read_bytes() == (photo_dir / "red-rect.jpg").read_bytes()
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", "memory")
    with Catalog.open(pg_url) as in_memory:
        assert len(in_memory) == 13 and in_memory.index_dir is None
        scratch = in_memory.folder
    assert not scratch.exists()
    with pytest.raises(CatalogError, match="already exists"):
        Catalog.create(pg_url, "colorhist")


def test_a_damaged_cache_is_proven_wrong_on_open_and_rebuilt(pg_url, photo_dir, caplog):
    with Catalog.create(pg_url, "colorhist") as catalog:
        catalog.add(photo_dir, options=QUIET)
        folder = catalog.index_dir
    with Catalog.create(pg_url.replace("schema=", "schema=b"), "colorhist") as other:
        other.add(photo_dir / "shoes", options=QUIET)
        shutil.rmtree(folder)
        shutil.copytree(other.index_dir, folder)  # another catalog's index where this one's was
    with Catalog.open(pg_url) as catalog:
        assert len(catalog) == 12 and catalog.similar("red-rect", k=1)[0].id != "red-rect"
    assert "does not match the catalog's store" in caplog.text or "rebuilding" in caplog.text


def test_a_recreated_catalog_never_meets_the_old_cache(pg_url, photo_dir):
    with Catalog.create(pg_url, "colorhist") as catalog:
        catalog.add(photo_dir, options=QUIET)
        old = catalog.folder
        catalog.store.drop()
    with Catalog.create(pg_url, "colorhist") as catalog:
        assert catalog.folder != old and len(catalog) == 0


def test_the_cli_takes_a_url_or_lookalike_catalog_and_never_prints_the_password(pg_server, pg_url, photo_dir,
                                                                                 capsys, monkeypatch):
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@")
    assert main(["index", str(photo_dir), "--catalog", url, "--model", "colorhist", "-q"]) == 0
    assert main(["similar", "red-rect", "--catalog", url, "-k", "2", "--json"]) == 0
    assert main(["status", "--catalog", url, "--json"]) == 0
    monkeypatch.setenv("LOOKALIKE_CATALOG", url)
    assert main(["status"]) == 0
    assert main(["duplicates", "--threshold", "0.99", "-q"]) == 0
    out = capsys.readouterr()
    assert main(["evaluate", "--label", "colour", "--bootstrap", "0"]) == 2  # the catalog from the variable
    assert main(["demo", "--catalog", url]) == 2
    errors = capsys.readouterr().err
    assert "label" in errors and "folder catalog" in errors and "s3cret-pw" not in errors
    assert "s3cret-pw" not in out.out + out.err
    assert "indexed 12" in out.out and "postgresql://postgres@127.0.0.1" in out.out
    dead = "postgresql://postgres:s3cret-pw@127.0.0.1:1/postgres"
    assert main(["similar", "x", "--catalog", dead]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unavailable" in err and "s3cret-pw" not in err
    assert main(["similar", "x", "--catalog", pg_url.replace("schema=", "schema=none")]) == 2
    assert "no catalog here" in capsys.readouterr().err


def test_the_rest_api_serves_a_database_catalog_and_keeps_uploads_in_it(pg_url, photo_dir, tmp_path, monkeypatch):
    from lookalike.api import ServeSettings, create_app

    with Catalog.create(pg_url, "colorhist") as catalog:
        catalog.add(photo_dir, options=QUIET)
    monkeypatch.setenv("LOOKALIKE_CATALOG", pg_url)
    settings = ServeSettings(admin_token="t")  # the catalog from LOOKALIKE_CATALOG
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/health").json()["items"] == 12
        new = make_image(tmp_path / "new.png", color=(10, 200, 200), fmt="PNG")
        r = client.post("/api/items", files={"image": ("new.png", new.read_bytes(), "image/png")},
                        data={"id": "teal"}, headers={"Authorization": "Bearer t"})
        assert r.status_code == 201, r.text
        assert client.get("/api/items/teal/image").content == new.read_bytes()
        assert client.get("/api/items/teal/thumbnail?size=64").headers["content-type"] == "image/jpeg"
        body = client.get("/api/items/red-rect/similar?k=12").json()
        assert "teal" in [m["id"] for m in body["results"]]
    with Catalog.open(pg_url) as catalog:
        assert catalog.store.upload_names() and not (photo_dir / "uploads").exists()


def test_a_database_that_is_down_is_one_line(tmp_path):
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        Catalog.open("postgresql://nobody:pw@127.0.0.1:1/db")
    assert not Catalog.exists(str(tmp_path / "none.lk"))


def test_vectors_match_between_backends(tmp_path, pg_url, photo_dir):
    with Catalog.create(tmp_path / "a.lk", "colorhist") as a, Catalog.create(pg_url, "colorhist") as b:
        a.add(photo_dir, options=QUIET)
        b.add(photo_dir, options=QUIET)
        for item_id in ("red-rect", "shoes/blue-stripes"):
            np.testing.assert_array_equal(a.vector(item_id), b.vector(item_id))
            assert [m.id for m in a.similar(item_id, k=5)] == [m.id for m in b.similar(item_id, k=5)]
