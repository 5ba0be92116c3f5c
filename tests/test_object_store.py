"""Sources in object stores: listed and read through fsspec (``memory://`` here stands in for ``s3://`` and
``gs://``, which take the same code path), and ``file://`` URLs, which are local paths."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL
from lookalike import Catalog, EncodeOptions
from lookalike.core import storage
from lookalike.core.errors import SourceError
from lookalike.core.sources import read_source

fsspec = pytest.importorskip("fsspec")
INLINE = EncodeOptions(workers=0, progress=False)


def jpeg(color, shape="rect", size=(96, 128)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (255, 255, 255))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    w, h = size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    (draw.ellipse if shape == "ellipse" else draw.rectangle)(box, fill=color)
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def bucket():
    """A fresh prefix in fsspec's in-memory file system: six photos (two in a sub-prefix), a corrupt one, a
    hidden one and a text file. Removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/shop-{uuid.uuid4().hex[:8]}"
    colours = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200)}
    for name, rgb in colours.items():
        fs.pipe(f"{root}/photos/{name}-rect.jpg", jpeg(rgb))
        fs.pipe(f"{root}/photos/{'shoes/' if name == 'blue' else ''}{name}-ellipse.jpg", jpeg(rgb, "ellipse"))
    fs.pipe(f"{root}/photos/broken.jpg", jpeg((0, 0, 0))[:300])
    fs.pipe(f"{root}/photos/.hidden/x.jpg", jpeg((1, 2, 3)))
    fs.pipe(f"{root}/photos/readme.txt", b"not a photo")
    yield f"memory://{root}/photos"
    fs.rm(root, recursive=True)


def test_a_prefix_is_listed_like_a_folder(bucket):
    listing = read_source(bucket)
    ids = [item.id for item in listing.items]
    assert ids == sorted(ids)  # a stable order
    assert set(ids) == {"broken", "green-ellipse", "green-rect", "red-ellipse", "red-rect", "blue-rect",
                        "shoes/blue-ellipse"}  # no hidden object, no text file
    item = next(i for i in listing.items if i.id == "red-rect")
    assert storage.is_url(item.path) and item.path.startswith("memory://")
    assert item.path.endswith(bucket.removeprefix("memory://") + "/red-rect.jpg")
    assert item.size == len(storage.read_bytes(item.path)) and item.mtime_ns > 0
    with pytest.raises(SourceError, match="no such folder or prefix"):
        read_source(bucket + "/nothing-here")
    with pytest.raises(SourceError, match="--images is only for a CSV manifest"):
        read_source(bucket, images="elsewhere")


def test_an_object_store_catalog_is_the_same_as_a_local_one(bucket, tmp_path, tiny_embedder):
    """Same ids, vectors and failure reasons as the same photos on disk; reruns skip unchanged objects, re-embed
    changed ones, and --prune drops deleted ones."""
    fs, root = storage.filesystem(bucket)
    local = tmp_path / "photos"
    for name in fs.find(root):
        rel = Path(name).relative_to(root)
        if not any(p.startswith(".") for p in rel.parts):
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            (local / rel).write_bytes(fs.cat_file(name))
    with Catalog.create(tmp_path / "remote.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        report = cat.add(bucket, options=EncodeOptions(progress=False))  # forked workers read the objects too
        assert (report.indexed, report.failed) == (6, 1)
        remote_rows = {i: (r.status, r.reason, r.sha256) for i, r in cat.store.items().items()}
        remote_vectors = {i: cat.index.vector(cat.table.key_by_id[i]) for i in cat.table.key_by_id}
        assert cat.store.item("red-rect").path.startswith("memory://")
    with Catalog.create(tmp_path / "local.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        cat.add(local, options=INLINE)
        assert {i: (r.status, r.reason, r.sha256) for i, r in cat.store.items().items()} == remote_rows
        for item_id, vector in remote_vectors.items():
            assert float(np.dot(vector, cat.index.vector(cat.table.key_by_id[item_id]))) > 0.9999
    assert "truncated" in remote_rows["broken"][1].lower()

    with Catalog.open(tmp_path / "remote.lk", embedder=tiny_embedder) as cat:
        again = cat.add(bucket, options=INLINE)
        assert (again.indexed, again.unchanged, again.failed_before) == (0, 6, 1)
        fs.pipe(f"{root}/red-rect.jpg", jpeg((250, 120, 0), size=(100, 128)))  # new content, new size
        fs.rm(f"{root}/green-rect.jpg")
        third = cat.add(bucket, options=INLINE, prune=True)
        assert (third.indexed, third.unchanged, third.pruned) == (1, 4, 1)
        assert "green-rect" not in cat.store.items()


def test_file_urls_are_local_paths(photo_dir, tmp_path, tiny_embedder):
    with Catalog.create(tmp_path / "c.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        first = cat.add(photo_dir.resolve().as_uri(), options=INLINE)
        assert first.indexed == 12
        assert not cat.store.item("red-rect").path.startswith("file:")
        second = cat.add(photo_dir, options=INLINE)  # the same files by their plain path: the same items
        assert (second.indexed, second.unchanged) == (0, 12)
    by_url = [i.id for i in read_source(photo_dir.resolve().as_uri()).items]
    assert by_url == [i.id for i in read_source(photo_dir).items]
    with pytest.raises(SourceError, match="file:///absolute/path"):
        read_source("file://otherhost/photos")


def test_an_object_store_without_its_package_is_one_line_naming_it(tmp_path):
    if _has("s3fs"):
        pytest.skip("s3fs is installed")
    with pytest.raises(SourceError, match=r"s3:// needs s3fs: pip install s3fs"):
        read_source("s3://a-bucket/photos/")
    with pytest.raises(SourceError, match="manifests are read from a local file"):
        read_source("memory://somewhere/styles.csv")


def test_a_missing_object_is_a_recorded_failure_not_a_crash(bucket, tmp_path):
    """An object listed and then deleted before it is read fails with a reason, like a vanished file."""
    from lookalike.engines.files import FileReader, FileTask
    from lookalike.models import create_embedder

    embedder = create_embedder("pixels")
    reader = FileReader([FileTask(bucket + "/gone.jpg", ref=0), FileTask(bucket + "/red-rect.jpg", ref=1)],
                        embedder.pil_transform, None, 10**8, 10**8)
    gone, _ = reader[0]
    ok, pixels = reader[1]
    assert gone.error.startswith("cannot read file") and pixels is not None and ok.error is None


def test_the_cli_indexes_a_prefix(bucket, tmp_path, capsys):
    from lookalike.cli import main

    assert main(["index", bucket, "--catalog", str(tmp_path / "p.lk"), "--model", "pixels", "-q"]) == 0
    assert "indexed 6, unchanged 0, failed 1" in capsys.readouterr().out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_the_api_serves_object_store_items(bucket, tmp_path):
    """An item whose file is an object: its image and thumbnail come from the store."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    with Catalog.create(tmp_path / "p.lk", "pixels") as cat:
        cat.add(bucket, options=INLINE)
    with TestClient(create_app(ServeSettings(catalog=tmp_path / "p.lk"))) as client:
        res = client.get("/api/items/red-rect/image")
        assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
        assert res.content == storage.read_bytes(bucket + "/red-rect.jpg")
        thumb = client.get("/api/items/red-rect/thumbnail?size=64")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        assert {m["id"] for m in client.get("/api/items/red-rect/similar?k=3").json()["results"]}
