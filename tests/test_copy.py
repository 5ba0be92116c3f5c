"""`lookalike copy SRC DST` between a folder and PostgreSQL, both ways: items, failures, labels, vectors (float32
and float16 bytes), clusters, index options and uploaded images arrive, verified; a destination that holds a
catalog is refused; an interrupted copy leaves no catalog and the next one starts over."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_image
from lookalike import Catalog, EncodeOptions
from lookalike.analysis.cluster import cluster_catalog
from lookalike.catalog import copy as copy_module
from lookalike.catalog.copy import copy_catalog
from lookalike.cli import main
from lookalike.core.errors import CatalogError

QUIET = EncodeOptions(workers=0, progress=False)


@pytest.fixture
def source(tmp_path, photo_dir):
    """A folder catalog with labels, a failed file, clusters, an index option and an uploaded image."""
    (photo_dir / "broken.jpg").write_bytes(b"not a jpeg")
    rows = ["path,colour"] + [f"{p.relative_to(photo_dir).as_posix()},{p.stem.split('-')[0]}"
                              for p in sorted(photo_dir.rglob("*.jpg"))]
    (photo_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    path = tmp_path / "src.lk"
    with Catalog.create(path, "colorhist") as catalog:
        catalog.configure_index(kind="flat", recall=0.9)
        catalog.add(photo_dir / "labels.csv", images=photo_dir, options=QUIET)
        catalog.add_image(make_image(tmp_path / "up.png", color=(5, 200, 90), fmt="PNG").read_bytes(), "up-1",
                          {"colour": "teal"})
        cluster_catalog(catalog, 3)
    return path


def snapshot(location) -> dict:
    with Catalog.open(location) as c:
        keys, vectors = c.store.vectors(c.config.embedder.dim)
        return {"items": {i: (r.key, r.status, r.reason) for i, r in c.store.items().items()},
                "labels": c.store.labels(), "clusters": c.store.clusters(), "keys": keys.tolist(),
                "vectors": vectors, "options": c.index_options().to_dict(), "similar": [
                    m.id for m in c.similar("red-rect", k=5)], "upload": c.image_file(c.item("up-1").path).read_bytes(),
                "same_cluster": [m.id for m in c.similar("red-rect", k=3, same_cluster=True)],
                "embedder": c.config.embedder}


def test_folder_to_postgres_and_back_keeps_everything(source, pg_url, tmp_path):
    before = snapshot(source)
    report = copy_catalog(source, pg_url)
    assert (report.items, report.failed, report.uploads, report.sampled) == (14, 1, 1, 13)
    assert report.clusters == 13 and report.vectors == 13 and report.labels == 14  # the failed file has one too
    in_db = snapshot(pg_url)
    with Catalog.open(pg_url) as c:
        assert c.item("up-1").path.startswith("upload:") and c.store.upload_names()
        assert c.status().failed == 1
    back = tmp_path / "back.lk"
    copy_catalog(pg_url, back)
    again = snapshot(back)
    for copied in (in_db, again):
        assert copied["items"] == before["items"] and copied["labels"] == before["labels"]
        assert copied["clusters"] == before["clusters"] and copied["keys"] == before["keys"]
        np.testing.assert_array_equal(copied["vectors"], before["vectors"])
        assert copied["options"] == before["options"] and copied["embedder"] == before["embedder"]
        assert copied["similar"] == before["similar"] and copied["same_cluster"] == before["same_cluster"]
        assert copied["upload"] == before["upload"]
    with Catalog.open(back) as c:
        assert str(back / "uploads") in c.item("up-1").path and "catalog_id" not in c.config.extra


def test_float16_vectors_are_copied_as_stored(tmp_path, pg_url, photo_dir, monkeypatch):
    monkeypatch.setattr("lookalike.index.choice.FP16_MIN_ITEMS", 0)  # float16 from the first item: a large catalog
    with Catalog.create(tmp_path / "f16.lk", "colorhist") as c:
        c.add(photo_dir, options=QUIET)
        raw = c.store.raw_vectors()
    copy_catalog(tmp_path / "f16.lk", pg_url)
    with Catalog.open(pg_url) as c:
        assert c.store.raw_vectors() == raw and len(raw[0][1]) == 2 * c.config.embedder.dim


def test_a_destination_holding_a_catalog_is_refused_and_an_interrupted_copy_starts_over(source, pg_url, monkeypatch,
                                                                                          capsys):
    calls = {"n": 0}
    original = copy_module._verify

    def failing(*args, **kwargs):
        calls["n"] += 1
        raise KeyboardInterrupt  # killed after the rows, before the config: not a catalog

    monkeypatch.setattr(copy_module, "_verify", failing)
    with pytest.raises(KeyboardInterrupt):
        copy_catalog(source, pg_url)
    assert not Catalog.exists(pg_url)
    monkeypatch.setattr(copy_module, "_verify", original)
    assert main(["copy", str(source), pg_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 14 and report["index"].startswith("flat")
    assert main(["copy", str(source), pg_url]) == 2
    assert "already holds a catalog" in capsys.readouterr().err
    with pytest.raises(CatalogError, match="already holds a catalog"):
        copy_catalog(pg_url, source)
    (source.parent / "busy").mkdir()
    (source.parent / "busy" / "x.txt").write_text("mine")
    with pytest.raises(CatalogError, match="not an empty folder"):
        copy_catalog(pg_url, source.parent / "busy")
