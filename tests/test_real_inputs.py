"""Inputs real users send (issue 13): one file is one item, damaged index files are caught, catalogs are
created whole, and the command line behaves like a Unix tool. Model-free embedders keep these fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from lookalike import Catalog, CatalogError, EncodeOptions
from lookalike.catalog.consistency import index_disagrees
from lookalike.index import VectorIndex

INLINE = EncodeOptions(workers=0, progress=False)


def run(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True, cwd=cwd,
                          **kw)


# -- 1. an item is a file ------------------------------------------------------------------------------


def test_a_file_keeps_its_id_when_a_sibling_with_the_same_stem_arrives(tmp_path):
    make_image(tmp_path / "shop" / "a" / "shoe.jpg", color=(200, 30, 30))
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(tmp_path / "shop", options=INLINE)
        assert cat.ids() == ["a/shoe"]
        make_image(tmp_path / "shop" / "a" / "shoe.png", color=(30, 60, 200), shape="ellipse")
        cat.add(tmp_path / "shop", prune=True, options=INLINE)
        assert sorted(cat.ids()) == ["a/shoe", "a/shoe.png"]  # 2 files, 2 items
        assert cat.item("a/shoe").path.endswith("shoe.jpg")
        assert [m.id for m in cat.similar("a/shoe", k=5)] == ["a/shoe.png"]


def test_the_same_name_in_another_folder_is_a_new_item_and_said_never_an_overwrite(tmp_path):
    make_image(tmp_path / "shopA" / "shoe.jpg", color=(200, 30, 30))
    make_image(tmp_path / "shopB" / "shoe.jpg", color=(30, 60, 200), shape="ellipse")
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(tmp_path / "shopA", options=INLINE)
        before = cat.vector("shoe").copy()
        report = cat.add(tmp_path / "shopB", options=INLINE)
        assert sorted(cat.ids()) == ["shoe", "shopB/shoe"]
        conflict = [w for w in report.warnings if "'shoe'" in w]
        assert len(conflict) == 1 and "shopA/shoe.jpg" in conflict[0] and "shopB/shoe.jpg" in conflict[0]
        again = cat.add(tmp_path / "shopA", options=INLINE)  # re-indexing shopA flips nothing back
        assert again.indexed == 0 and sorted(cat.ids()) == ["shoe", "shopB/shoe"]
        np.testing.assert_array_equal(cat.vector("shoe"), before)
        assert "shopA" in cat.item("shoe").path and "shopB" in cat.item("shopB/shoe").path


def test_the_command_line_says_each_warning_once(tmp_path):
    make_image(tmp_path / "shopA" / "shoe.jpg", color=(200, 30, 30))
    make_image(tmp_path / "shopB" / "shoe.jpg", color=(30, 60, 200), shape="ellipse")
    run("index", "shopA", "--catalog", "c.lk", "--model", "pixels", "-q", cwd=tmp_path)
    out = run("index", "shopB", "--catalog", "c.lk", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stderr.splitlines() if "already names" in line]
    assert len(said) == 1 and "shopB/shoe.jpg" in said[0], out.stderr


def test_changing_the_id_scheme_between_runs_never_doubles_items(tmp_path, photo_dir):
    rows = ["id,path,colour"] + [f"sku{i},{p.relative_to(photo_dir).as_posix()},{p.stem.split('-')[0]}"
                                 for i, p in enumerate(sorted(photo_dir.rglob("*.jpg")))]
    (tmp_path / "styles.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(photo_dir, options=INLINE)
        ids = sorted(cat.ids())
        report = cat.add(tmp_path / "styles.csv", images=photo_dir, options=INLINE)
        assert sorted(cat.ids()) == ids and report.indexed == 0
        assert cat.labels("red-rect") == {"colour": "red"}  # the labels arrive, on the same items


def test_a_manifest_that_gives_its_id_to_another_photo_moves_the_item_and_says_so(tmp_path):
    """The shop's own ids win: the product's photo was replaced (in a new folder); the old file still exists."""
    make_image(tmp_path / "2024" / "old.jpg", color=(200, 30, 30))
    make_image(tmp_path / "2025" / "new.jpg", color=(30, 60, 200), shape="ellipse")
    (tmp_path / "m.csv").write_text("id,path\n15970,old.jpg\n")
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        cat.add(tmp_path / "m.csv", images=tmp_path / "2024", options=INLINE)
        (tmp_path / "m.csv").write_text("id,path\n15970,new.jpg\n")
        report = cat.add(tmp_path / "m.csv", images=tmp_path / "2025", options=INLINE)
        assert cat.ids() == ["15970"] and cat.item("15970").path.endswith("new.jpg")
        assert any("now shows" in w and "old.jpg" in w and "new.jpg" in w for w in report.warnings)


# -- 2. a saved index is proven against the store ------------------------------------------------------


def _damage(folder: Path, what: str, store_vectors: np.ndarray) -> None:
    """Damage one index file in place, keeping its size."""
    if what.startswith("rows.npy"):
        rows = np.load(folder / "rows.npy")
        size = (folder / "rows.npy").stat().st_size
        np.save(folder / "rows.npy", np.roll(rows, 1))  # every hit answered under its neighbour's id
        assert (folder / "rows.npy").stat().st_size == size
        if what.endswith("without checksum"):  # a stamp written before checksums existed
            stamp = json.loads((folder / "stamp.json").read_text())
            stamp.pop("rows_sha256")
            (folder / "stamp.json").write_text(json.dumps(stamp))
        return
    path = folder / what
    data = bytearray(path.read_bytes())
    a, b = store_vectors[0].astype(np.float32).tobytes(), store_vectors[1].astype(np.float32).tobytes()
    i, j = data.find(a), data.find(b)
    assert i >= 0 and j >= 0, f"{what}: vectors not found in the file"
    data[i:i + len(a)], data[j:j + len(b)] = b, a  # two items' vectors swapped
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["rows.npy", "rows.npy without checksum", "vectors.bin", "vectors.faiss"])
def test_an_index_file_damaged_in_place_is_caught_and_rebuilt(tmp_path, photo_dir, what):
    with Catalog.create(tmp_path / "c.lk", "colorhist") as cat:
        if what == "vectors.faiss":  # a flat index is built from vectors.bin; a graph keeps a FAISS file
            cat.configure_index(kind="hnsw")
        cat.add(photo_dir, options=INLINE)
        keys, truth = cat.store.vectors(cat.config.embedder.dim)
        by_key = dict(zip(keys.tolist(), truth, strict=True))
        table = cat.table
        ids = {table.id_by_key[k]: k for k in keys.tolist()}
    _damage(tmp_path / "c.lk" / "index", what, truth)
    with Catalog.open(tmp_path / "c.lk") as cat:
        for item_id, key in ids.items():
            top = cat.search_vector(by_key[key], k=1)[0]
            assert top.similarity > 0.999
            np.testing.assert_allclose(by_key[ids[top.id]], by_key[key], atol=1e-6)  # the item (or a copy)
            assert cat.similar(item_id, k=1)[0].id != item_id
        cat.add(photo_dir, options=INLINE)  # a writer saves the repaired index
    loaded, _ = VectorIndex.load(tmp_path / "c.lk" / "index")
    with Catalog.open(tmp_path / "c.lk") as cat:
        assert index_disagrees(loaded, cat.store, cat.config.embedder.dim) is None


def test_an_index_of_another_catalog_is_not_trusted(tmp_path, photo_dir):
    """The index folder copied from another catalog with as many items: same sizes, other vectors."""
    import shutil

    other = tmp_path / "other"
    for i, path in enumerate(sorted(photo_dir.rglob("*.jpg"))):
        make_image(other / path.name, color=(20 * i, 255 - 20 * i, 90), shape="stripes")
    with Catalog.create(tmp_path / "a.lk", "colorhist") as a, Catalog.create(tmp_path / "b.lk", "colorhist") as b:
        a.add(photo_dir, options=INLINE)
        b.add(other, options=INLINE)
    shutil.rmtree(tmp_path / "a.lk" / "index")
    shutil.copytree(tmp_path / "b.lk" / "index", tmp_path / "a.lk" / "index")
    with Catalog.open(tmp_path / "a.lk") as a:
        v = a.vector("red-rect")
        assert a.search_vector(v, k=1)[0].id in ("red-rect", "red-copy") or a.search_vector(v, k=1)[0].id == "red-rect"
        np.testing.assert_allclose(v, a.store.vectors_for([a.table.key_by_id["red-rect"]], 512)[
            a.table.key_by_id["red-rect"]], atol=1e-6)


# -- 3. a catalog is created whole or not at all -------------------------------------------------------


def test_a_folder_left_by_a_creation_killed_before_its_config_is_taken_over(tmp_path, photo_dir):
    from lookalike.store import SQLiteStore

    (tmp_path / "c.lk").mkdir()
    SQLiteStore(tmp_path / "c.lk" / "catalog.sqlite").close()  # what a kill left: the database, no catalog.json
    res = run("index", str(photo_dir), "--catalog", "c.lk", "--model", "pixels", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "12 items searchable" in res.stdout


def test_creation_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    from lookalike.core.config import CatalogConfig

    def killed(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(CatalogConfig, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        Catalog.create(tmp_path / "c.lk", "pixels")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_with_other_files_is_still_refused(tmp_path):
    (tmp_path / "c.lk").mkdir()
    (tmp_path / "c.lk" / "notes.txt").write_text("mine")
    with pytest.raises(CatalogError, match="not an empty folder"):
        Catalog.create(tmp_path / "c.lk", "pixels")


@pytest.mark.slow
def test_a_failed_first_index_leaves_nothing_so_the_retry_may_choose_another_model(tmp_path, photo_dir):
    bad = run("index", "missing", "--catalog", "c.lk", "--model", "pixels", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    (tmp_path / "m.csv").write_text("name,colour\nshoe,red\n")  # no id or path column
    unreadable = run("index", "m.csv", "--images", str(photo_dir), "--catalog", "c.lk", "--model", "pixels",
                     cwd=tmp_path)
    assert unreadable.returncode == 2
    assert not (tmp_path / "c.lk").exists() and not list(tmp_path.glob(".c.lk*"))
    good = run("index", str(photo_dir), "--catalog", "c.lk", "--model", "colorhist", "-q", cwd=tmp_path)
    assert good.returncode == 0, good.stderr


# -- 6. the command line behaves like a Unix tool ------------------------------------------------------


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unix")
    for i, colour in enumerate([(200, 30, 30), (30, 160, 60), (30, 60, 200), (230, 210, 40)]):
        make_image(root / "photos" / f"p{i}.jpg", color=colour)
    with Catalog.create(root / "c.lk", "pixels") as cat:
        cat.add(root / "photos", options=INLINE)
    return root


@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_quietly(small_catalog):
    read, write = os.pipe()
    os.close(read)  # the reader has gone, as `| head -c 100` does once it has its bytes
    try:
        res = subprocess.run([sys.executable, "-m", "lookalike.cli", "similar", "p0", "--catalog", "c.lk", "--json"],
                             stdout=write, stderr=subprocess.PIPE, text=True, cwd=small_catalog)
    finally:
        os.close(write)
    assert res.stderr == "" and res.returncode != 0


def test_similarity_stays_within_minus_one_and_one(small_catalog):
    with Catalog.open(small_catalog / "c.lk") as cat:
        v = cat.vector("p0")
        top = cat.search_vector(v * 1.001, k=2)  # a query a hair longer than unit length
        assert top[0].similarity == 1.0 and top[0].distance == 0.0
        assert all(-1.0 <= m.similarity <= 1.0 and 0.0 <= m.distance <= 2.0 for m in top)


def test_status_of_an_empty_catalog_says_empty_without_per_item_figures(tmp_path):
    (tmp_path / "empty").mkdir()
    from lookalike.cli import main

    with Catalog.create(tmp_path / "z.lk", "pixels") as cat:
        report = cat.add(tmp_path / "empty", options=INLINE)
        assert any("no images found" in w for w in report.warnings)
        status = cat.status()
    assert status.index.endswith("empty") and status.index_detail["disk_bytes_per_item"] is None
    assert main(["status", "--catalog", str(tmp_path / "z.lk")]) == 0


def test_status_names_exact_search_once(small_catalog, capsys):
    from lookalike.cli import main

    assert main(["status", "--catalog", str(small_catalog / "c.lk")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("index"))
    assert line.count("exact") == 1, line


def test_batch_size_help_agrees_with_the_defaults():
    import torch

    from lookalike.cli import build_parser
    from lookalike.engines.embed import HOST_BATCH_SIZE
    from lookalike.engines.torch_runtime import default_batch_size

    text = build_parser()._subparsers._group_actions[0].choices["index"].format_help()
    text = " ".join(text.split())
    assert f"{default_batch_size(torch.device('cpu'))} on CPU" in text
    assert f"{default_batch_size(torch.device('cuda'))} on CUDA" in text and f"{HOST_BATCH_SIZE} for" in text


@pytest.mark.slow  # several seconds: runs in .ci/run, not in the quick suite
def test_an_index_that_misses_its_recall_target_says_so_and_searches_exactly(tmp_path):
    from lookalike.index import IndexPlan, tune
    from lookalike.index.synthetic import clustered_vectors

    vectors = clustered_vectors(1100, 64, seed=3)
    keys = np.arange(len(vectors))
    index = VectorIndex.build(keys, vectors, IndexPlan("ivfpq", params={"nlist": 64, "m": 2, "nbits": 4}))
    quality = tune(index, 0.9999)
    assert quality.recall < 0.9999  # 2 bytes a vector, even re-ranked, cannot reach it
    assert index.settings.exact and "exact scan" in index.describe()
    sims, found = index.search(vectors[:50], 5)
    exact = np.argsort(-(vectors[:50] @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(found, keys[exact])


def test_an_exact_copy_of_the_query_photo_is_always_found(tmp_path, photo_dir, monkeypatch):
    """Even when the index misses it (simulated: the index returns only far items)."""
    with Catalog.create(tmp_path / "c.lk", "colorhist") as cat:
        cat.add(photo_dir, options=INLINE)
        query = photo_dir / "green-ellipse.jpg"
        real = cat.nearest

        def missing_the_copy(vector, k, allowed, exclude, items=False, **kw):
            return [m for m in real(vector, k + 1, allowed, exclude, items, **kw) if m.id != "green-ellipse"][:k]

        monkeypatch.setattr(cat, "nearest", missing_the_copy)
        top = cat.search(query, k=3)
        assert top[0].id == "green-ellipse" and top[0].similarity > 0.999 and [m.rank for m in top] == [1, 2, 3]


def test_links_are_counted_in_the_summary_and_a_linked_file_is_one_item(tmp_path):
    shop = tmp_path / "shop"
    make_image(shop / "real" / "a.jpg", color=(200, 30, 30))
    make_image(tmp_path / "elsewhere" / "b.jpg", color=(30, 60, 200))
    (shop / "alias.jpg").symlink_to(shop / "real" / "a.jpg")  # a second name for a file already listed
    (shop / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (shop / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (shop / "loop").symlink_to(shop, target_is_directory=True)
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        report = cat.add(shop, options=INLINE)
        assert len(cat) == 1 and report.indexed == 1
    said = [w for w in report.warnings if "skipped" in w]
    assert len(said) == 1
    assert "1 broken links" in said[0] and "2 linked folders (not followed" in said[0]
    assert "1 more links to files already listed" in said[0]


# -- issue 24: phones' formats ----------------------------------------------------------------------------


def test_a_folder_of_avif_heic_and_jpeg_indexes_all_three_or_counts_why_not(tmp_path, monkeypatch):
    from PIL import features

    from lookalike.core import images

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF writer to make the test file")
    pytest.importorskip("pillow_heif", reason="pillow-heif (the heic extra) writes the file").register_heif_opener()
    shop = tmp_path / "shop"
    make_image(shop / "x.avif", color=(200, 30, 30))
    make_image(shop / "y.heic", color=(30, 60, 200))
    make_image(shop / "z.jpg", color=(30, 160, 40))
    with Catalog.create(tmp_path / "c.lk", "pixels") as cat:
        report = cat.add(shop, options=INLINE)
        assert report.indexed == 3 and report.failed == 0 and not report.skipped
        assert cat.similar("y", k=1)[0].id in ("x", "z")  # searchable like any other item
    monkeypatch.setattr(images, "heif_available", lambda: False)
    with Catalog.create(tmp_path / "d.lk", "pixels") as cat:
        report = cat.add(shop, options=INLINE)
    assert report.indexed == 2 and report.failed == 0
    assert "skipped 1 (1 reading HEIC needs pillow-heif)" in report.summary()
    assert any('pip install "lookalike[heic]"' in w and "y.heic" in w for w in report.warnings)
