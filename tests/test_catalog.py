"""The catalog through the Python API: indexing, resuming, failures, search, filters, model safety."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL, make_image
from lookalike import Catalog, CatalogError, EncodeOptions, QueryError

INLINE = EncodeOptions(workers=0, batch_size=4, progress=False)


@pytest.fixture
def catalog(tmp_path, photo_dir, tiny_embedder) -> Catalog:
    cat = Catalog.create(tmp_path / "shop.lk", TINY_MODEL, embedder=tiny_embedder)
    cat.add(photo_dir, options=INLINE)
    yield cat
    cat.close()


def brute_force(cat: Catalog, query: np.ndarray, k: int, skip: set[str]) -> list[str]:
    ids = cat.ids()
    mat = np.stack([cat.vector(i) for i in ids])
    order = np.argsort(-(mat @ query), kind="stable")
    return [ids[j] for j in order if ids[j] not in skip][:k]


def test_indexes_every_photo_and_finds_exact_neighbours(catalog):
    assert len(catalog) == 12
    assert "shoes/red-stripes" in catalog.ids()
    matches = catalog.similar("red-rect", k=5)
    assert [m.rank for m in matches] == [1, 2, 3, 4, 5]
    assert "red-rect" not in [m.id for m in matches]
    assert len({m.id for m in matches}) == 5
    sims = [m.similarity for m in matches]
    assert sims == sorted(sims, reverse=True)
    for m in matches:
        assert m.distance == pytest.approx(np.sqrt(2 - 2 * m.similarity), abs=1e-6)
        assert Path(m.path).is_file()
    expected = brute_force(catalog, catalog.vector("red-rect"), 5, skip={"red-rect"})
    assert [m.id for m in matches] == expected


def test_search_by_path_bytes_or_pil_image_agree(catalog, photo_dir):
    path = photo_dir / "blue-ellipse.jpg"
    by_path = catalog.search(path, k=3)
    by_bytes = catalog.search(path.read_bytes(), k=3)
    with Image.open(path) as im:
        by_pil = catalog.search(im.convert("RGB"), k=3)
    assert by_path[0].id == "blue-ellipse" and by_path[0].similarity > 0.999
    assert [m.id for m in by_bytes] == [m.id for m in by_path]
    assert by_pil[0].id == "blue-ellipse"


def test_similar_excludes_exact_copies_but_search_shows_them(tmp_path, photo_dir, tiny_embedder):
    shutil.copy(photo_dir / "green-rect.jpg", photo_dir / "green-rect-copy.jpg")
    with Catalog.create(tmp_path / "c.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        cat.add(photo_dir, options=INLINE)
        ids = [m.id for m in cat.similar("green-rect", k=12)]
        assert "green-rect-copy" not in ids and "green-rect" not in ids
        assert len(ids) == 11  # 13 items, minus itself and its copy
        top2 = {m.id for m in cat.search(photo_dir / "green-rect.jpg", k=2)}
        assert top2 == {"green-rect", "green-rect-copy"}


def _manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = folder / "styles.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "articleType", "baseColour"])
        writer.writerows(rows)
    return path


@pytest.fixture
def labelled(tmp_path, tiny_embedder) -> Catalog:
    images = tmp_path / "data" / "images"
    colors = {"Red": (200, 30, 30), "Blue": (30, 60, 200), "Green": (30, 160, 60)}
    rows = []
    for n in range(18):
        colour = list(colors)[n % 3]
        kind = "Tshirts" if n < 12 else "Shoes"
        make_image(images / f"{100 + n}.jpg", color=colors[colour], shape=["rect", "ellipse"][n % 2],
                   size=(80 + n, 100))
        rows.append((str(100 + n), kind, colour))
    make_image(images / "999.jpg", color=(10, 10, 10))  # no row: indexed, unlabelled
    manifest = _manifest(tmp_path / "data", rows)
    cat = Catalog.create(tmp_path / "l.lk", TINY_MODEL, embedder=tiny_embedder)
    cat.add(manifest, options=INLINE)
    yield cat
    cat.close()


def test_where_filters_return_only_matching_items_and_still_k_of_them(labelled):
    assert len(labelled) == 19
    shoes = labelled.similar("100", k=5, where=["articleType=Shoes"])
    assert len(shoes) == 5 and all(m.labels["articleType"] == "Shoes" for m in shoes)
    both = labelled.similar("100", k=10, where={"articleType": "Tshirts", "baseColour": "Blue"})
    assert {m.id for m in both} == {str(100 + n) for n in range(12) if n % 3 == 1}
    assert labelled.similar("999", k=3)[0].labels  # unlabelled item still searchable
    assert labelled.similar("100", k=5, where=["articleType=Hats"]) == []
    with pytest.raises(QueryError, match="unknown label 'colour'.*articleType"):
        labelled.similar("100", where=["colour=Red"])
    with pytest.raises(QueryError, match="label=value"):
        labelled.similar("100", where=["articleType"])
    with pytest.raises(QueryError, match="unknown item id '12345'"):
        labelled.similar("12345")


def test_rerun_embeds_only_new_or_changed_files(catalog, photo_dir):
    again = catalog.add(photo_dir, options=INLINE)
    assert (again.indexed, again.unchanged, again.failed) == (0, 12, 0)
    before = catalog.vector("blue-rect").copy()
    make_image(photo_dir / "blue-rect.jpg", color=(240, 120, 0), shape="ellipse")  # new content
    os.utime(photo_dir / "yellow-rect.jpg", ns=(1, 1))  # touched, same content
    make_image(photo_dir / "new" / "purple.jpg", color=(120, 0, 160))
    third = catalog.add(photo_dir, options=INLINE)
    assert (third.indexed, third.unchanged) == (2, 11)
    assert not np.allclose(catalog.vector("blue-rect"), before)
    assert len(catalog) == 13
    assert catalog.add(photo_dir, options=INLINE).indexed == 0


def test_bad_files_are_recorded_skipped_and_retried_only_when_changed(tmp_path, photo_dir, tiny_embedder):
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "notes.png").write_text("not a picture")
    good = (photo_dir / "red-rect.jpg").read_bytes()
    (photo_dir / "cut.jpg").write_bytes(good[: len(good) // 2])
    with Catalog.create(tmp_path / "b.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        first = cat.add(photo_dir, options=INLINE)
        assert (first.indexed, first.failed) == (12, 3)
        reasons = {i: r for i, _, r in cat.status().failures}
        assert "empty" in reasons["empty"]
        assert "not an image" in reasons["notes"]
        assert "truncated" in reasons["cut"]
        assert all("\n" not in r for r in reasons.values())
        second = cat.add(photo_dir, options=INLINE)
        assert (second.indexed, second.failed, second.failed_before) == (0, 0, 3)
        make_image(photo_dir / "cut.jpg", color=(0, 0, 0))  # the file is fixed
        third = cat.add(photo_dir, options=INLINE)
        assert (third.indexed, third.failed_before) == (1, 2)
        assert cat.status().failed == 2
        with pytest.raises(QueryError, match="could not be embedded"):
            cat.similar("empty")


def test_prune_drops_items_whose_files_are_gone(catalog, photo_dir):
    (photo_dir / "green-ellipse.jpg").unlink()
    kept = catalog.add(photo_dir, options=INLINE)
    assert kept.pruned == 0 and len(catalog) == 12
    pruned = catalog.add(photo_dir, prune=True, options=INLINE)
    assert pruned.pruned == 1 and len(catalog) == 11
    assert "green-ellipse" not in {m.id for m in catalog.similar("green-rect", k=11)}


def test_reopened_catalog_answers_the_same_and_rebuilds_a_lost_index(catalog, tmp_path):
    expected = [m.id for m in catalog.similar("red-rect", k=4)]
    catalog.close()
    shutil.rmtree(tmp_path / "shop.lk" / "index")
    with Catalog.open(tmp_path / "shop.lk") as again:
        assert [m.id for m in again.similar("red-rect", k=4)] == expected
    assert (tmp_path / "shop.lk" / "index" / "stamp.json").is_file()  # rebuilt and saved
    assert not (tmp_path / "shop.lk" / "index" / "vectors.faiss").exists()  # a flat index is built from its rows


def test_a_catalog_never_mixes_models(catalog, tmp_path, photo_dir):
    catalog.close()
    with pytest.raises(CatalogError, match="holds timm:test_resnet.*resnet50"):
        Catalog.open_or_create(tmp_path / "shop.lk", model="resnet50")
    with pytest.raises(CatalogError, match="different weights|mix vectors"):
        Catalog.open_or_create(tmp_path / "shop.lk", model=TINY_MODEL, weights=str(tmp_path / "w.pth"))
    with pytest.raises(CatalogError, match="already exists"):
        Catalog.create(tmp_path / "shop.lk", TINY_MODEL)
    with pytest.raises(CatalogError, match="no catalog here"):
        Catalog.open(tmp_path / "nothing.lk")


def test_parallel_decoding_gives_the_same_vectors_as_inline(tmp_path, photo_dir, tiny_embedder):
    with Catalog.create(tmp_path / "p.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        report = cat.add(photo_dir, options=EncodeOptions(workers=2, batch_size=3, progress=False,
                                                          precision="fp32"))
        assert report.indexed == 12
        inline = cat.encoder(EncodeOptions(workers=0, precision="fp32")).encode(
            [photo_dir / "yellow-ellipse.jpg"])[0]
        np.testing.assert_allclose(cat.vector("yellow-ellipse"), inline, atol=1e-5)


def test_cpu_workers_that_embed_give_the_inline_vectors_and_report_bad_files(tmp_path, photo_dir, tiny_embedder):
    """bf16 on a CPU: each worker decodes and embeds whole batches; results keep their files and order."""
    from lookalike.engines.embed import plan_workers

    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    options = EncodeOptions(workers=2, batch_size=3, progress=False, precision="bf16", device="cpu", runtime="torch")
    with Catalog.create(tmp_path / "w.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        plan = plan_workers(cat.encoder(options), 13)
        assert plan.embed_in_workers and plan.workers == 2
        report = cat.add(photo_dir, options=options)
        assert (report.indexed, report.failed) == (12, 1)
        assert cat.status().failures[0][0] == "broken"
        inline = cat.encoder(EncodeOptions(workers=0, precision="bf16", device="cpu", runtime="torch"))
        names = sorted(p.stem for p in photo_dir.glob("*.jpg") if p.stem != "broken")  # top level: id = stem
        expected = inline.encode([photo_dir / f"{n}.jpg" for n in names])
        got = np.stack([cat.vector(n) for n in names])
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_catalog_records_each_photos_own_size_not_the_drafted_one(tmp_path, tiny_embedder):
    folder = tmp_path / "big"
    make_image(folder / "poster.jpg", size=(1000, 1400), quality=90)
    with Catalog.create(tmp_path / "b.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        cat.add(folder, options=INLINE)
        key = cat.store.item("poster").key
        assert cat.store.sizes_for([key])[key][:2] == (1000, 1400)


def test_worker_plan_keeps_the_model_home_where_splitting_it_does_not_pay(tiny_embedder):
    from lookalike.engines.embed import Encoder, plan_workers

    def plan(count: int, **kw):
        return plan_workers(Encoder(tiny_embedder, EncodeOptions(device="cpu", batch_size=4, **kw)), count)

    assert plan(100, workers=2, precision="fp32") == plan(100, workers=2, precision="fp32")
    assert not plan(100, workers=2, precision="fp32").embed_in_workers  # fp32 scales better on all cores
    assert plan(100, workers=0, precision="bf16").workers == 0  # inline, as asked
    assert plan(5, workers=8, precision="bf16").workers == 2  # no more workers than batches
    assert not plan(3, workers=8, precision="bf16").embed_in_workers  # one batch: one process is enough


def test_files_over_the_size_limit_are_not_read(tmp_path, photo_dir, tiny_embedder):
    make_image(photo_dir / "poster.png", size=(900, 900), shape="stripes")
    limit = (photo_dir / "poster.png").stat().st_size - 1
    with Catalog.create(tmp_path / "s.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        report = cat.add(photo_dir, options=EncodeOptions(workers=0, max_bytes=limit, progress=False))
        assert (report.indexed, report.failed) == (12, 1)
        assert "over the" in cat.status().failures[0][2] and cat.status().failures[0][0] == "poster"


def test_labels_of_an_item_and_opening_with_the_wrong_embedder(labelled, tmp_path):
    assert labelled.labels("105") == {"articleType": "Tshirts", "baseColour": "Green"}
    assert labelled.labels("999") == {}
    labelled.close()
    from lookalike.models.timm import create_timm_embedder

    max_pooled = create_timm_embedder(TINY_MODEL, "test_resnet.r160_in1k", pool="max", weights="random")
    with pytest.raises(CatalogError, match="was built with"):
        Catalog.open(tmp_path / "l.lk", embedder=max_pooled)


def test_relabelling_updates_results_without_rebuilding_the_index(labelled, tmp_path):
    manifest = tmp_path / "data" / "styles.csv"
    stamp = tmp_path / "l.lk" / "index" / "stamp.json"
    before = stamp.read_text()
    assert labelled.labels("105")["baseColour"] == "Green"
    manifest.write_text(manifest.read_text().replace("105,Tshirts,Green", "105,Tshirts,Teal"))
    report = labelled.add(manifest, options=INLINE)
    assert report.indexed == 0 and report.unchanged == 19
    assert labelled.labels("105")["baseColour"] == "Teal"
    assert [m.id for m in labelled.similar("100", k=3, where=["baseColour=Teal"])] == ["105"]
    assert stamp.read_text() == before  # labels are not in the vector index: no rebuild


def test_a_killed_embedding_worker_is_one_clear_error_and_keeps_the_catalog(tmp_path, photo_dir, tiny_embedder,
                                                                           monkeypatch):
    """The kernel's OOM killer takes a worker: the run stops with a line saying what to change."""
    import signal

    from lookalike import LookalikeError
    from lookalike.engines import torch_runtime as embed_module

    real = embed_module.EmbeddedBatches.__getitem__

    def dies_on_the_third_batch(self, b):
        if b == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, b)

    monkeypatch.setattr(embed_module.EmbeddedBatches, "__getitem__", dies_on_the_third_batch)
    options = EncodeOptions(workers=2, batch_size=2, progress=False, precision="bf16", device="cpu", runtime="torch")
    with Catalog.create(tmp_path / "k.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        stopped = r"worker process stopped .*(exited unexpectedly|killed by signal).*--workers \(now 2\)"
        with pytest.raises(LookalikeError, match=stopped):
            cat.add(photo_dir, options=options)
    monkeypatch.undo()
    with Catalog.open(tmp_path / "k.lk") as cat:  # still opens; the rerun finishes the job
        report = cat.add(photo_dir, options=INLINE)
        assert len(cat) == 12 and report.indexed + report.unchanged == 12


def test_an_error_inside_an_embedding_worker_stays_itself(tmp_path, photo_dir, tiny_embedder, monkeypatch):
    """Only a worker that died gets the out-of-memory hint; a bug raised in a worker is shown as it is. The
    workers are stopped by the time the error arrives, not later by the garbage collector (which waited 5 s
    per worker)."""
    import multiprocessing

    from lookalike.engines import torch_runtime as embed_module

    def breaks(self, b):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(embed_module.EmbeddedBatches, "__getitem__", breaks)
    options = EncodeOptions(workers=2, batch_size=2, progress=False, precision="bf16", device="cpu", runtime="torch")
    before = set(multiprocessing.active_children())
    with Catalog.create(tmp_path / "e.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        with pytest.raises(RuntimeError, match="model exploded"):
            cat.add(photo_dir, options=options)
        assert set(multiprocessing.active_children()) - before == set()
