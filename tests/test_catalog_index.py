"""A catalog's index through its life: chosen automatically, caught up from the change log without a
rebuild, rebuilt when the catalog's size calls for another kind, shown by status, re-tuned on demand."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import COLORS, SHAPES, make_image
from lookalike import Catalog, EncodeOptions
from lookalike.index import choice, vector_index

QUIET = EncodeOptions(workers=0, progress=False)


def make_photos(folder, n, offset=0):
    names = []
    for i in range(n):
        colour = list(COLORS.values())[(i + offset) % len(COLORS)]
        shade = tuple(min(255, c + 7 * ((i + offset) // len(COLORS))) for c in colour)
        name = f"p{i + offset:03d}.jpg"
        make_image(folder / name, color=shade, shape=SHAPES[(i + offset) % 3], size=(48, 64), quality=90)
        names.append(name[:-4])
    return names


def commit_every(monkeypatch, rows: int) -> None:
    """Index runs commit every ``rows`` photos, whatever the time: only the row count decides."""
    from lookalike.catalog import ingest

    monkeypatch.setattr(ingest, "COMMIT_ROWS", rows)
    monkeypatch.setattr(ingest, "COMMIT_SECONDS", 3600.0)


@pytest.fixture
def builds(monkeypatch):
    """Counts full index builds (incremental catch-up must not call this)."""
    calls = []
    original = vector_index.VectorIndex.build.__func__

    def counting(cls, keys, vectors, plan=None, seed=0, **kwargs):
        calls.append(plan.kind if plan else "flat")
        return original(cls, keys, vectors, plan, seed, **kwargs)

    monkeypatch.setattr(vector_index.VectorIndex, "build", classmethod(counting))
    return calls


def test_catalog_catches_up_without_rebuilding(tmp_path, builds):
    make_photos(tmp_path / "a", 20)
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        catalog.configure_index(kind="hnsw")
        catalog.add(tmp_path / "a", options=QUIET)
        assert catalog.index.kind == "hnsw" and builds == ["hnsw"]
        reader = Catalog.open(tmp_path / "shop.lk")  # another process's view, opened before the changes
        assert len(reader) == 20
        make_photos(tmp_path / "a", 6, offset=20)
        catalog.add(tmp_path / "a", options=QUIET)
        catalog.remove(["p003", "p004"])
        assert builds == ["hnsw"], "adding and removing must not rebuild the graph"
        assert len(catalog) == 24
        found = [m.id for m in catalog.similar("p001", k=23)]
        assert "p003" not in found and "p004" not in found and "p025" in found
        # The reader catches up in memory from the change log, also without a rebuild.
        reader._checked_at = 0
        assert len(reader) == 24 and builds == ["hnsw"]
        assert [m.id for m in reader.similar("p001", k=23)] == found
        reader.close()
    with Catalog.open(tmp_path / "shop.lk") as again:  # loads the saved, caught-up index
        assert [m.id for m in again.similar("p001", k=23)] == found
        assert again.index.retired == 2
    assert builds == ["hnsw"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_an_add_applies_its_own_commits_to_the_index_without_reading_vectors_back(tmp_path, monkeypatch, dtype):
    """The writer's index follows each commit from the vectors in hand (as stored: float16 in a large
    catalog); the saved index names the store's generation and answers as one rebuilt from the store."""
    from lookalike.store.base import Store

    if dtype == "float16":
        monkeypatch.setattr(choice, "FP16_MIN_ITEMS", 0)  # a large catalog's float16 vectors from the first item

    make_photos(tmp_path / "a", 12)
    read_back = []
    original = Store.vectors

    def counting(self, *args, **kwargs):
        keys, vectors = original(self, *args, **kwargs)
        read_back.append(len(keys))
        return keys, vectors

    monkeypatch.setattr(Store, "vectors", counting)
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        catalog.add(tmp_path / "a", options=QUIET)
        make_photos(tmp_path / "a", 5, offset=12)
        catalog.add(tmp_path / "a", options=QUIET)
        assert sum(read_back) == 0, read_back
        found = [(m.id, round(m.similarity, 5)) for m in catalog.similar("p001", k=16)]
        generation = catalog.store.generations()[0]
    stamp = json.loads((tmp_path / "shop.lk" / "index" / "stamp.json").read_text())
    assert stamp["generation"] == generation and stamp["size"] == 17
    monkeypatch.setattr(Store, "vectors", original)
    import shutil

    shutil.rmtree(tmp_path / "shop.lk" / "index")
    with Catalog.open(tmp_path / "shop.lk") as rebuilt:
        assert rebuilt.index.plan.dtype == dtype
        assert [(m.id, round(m.similarity, 5)) for m in rebuilt.similar("p001", k=16)] == found


def test_batches_that_come_back_fast_share_a_transaction_and_an_interrupt_keeps_what_was_committed(
        tmp_path, monkeypatch):
    make_photos(tmp_path / "a", 5)
    commit_every(monkeypatch, 2)
    options = EncodeOptions(workers=0, progress=False, batch_size=1)
    told: list[int] = []
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        before = catalog.store.generations()[0]
        catalog.add(tmp_path / "a", options=options, on_batch=told.append)
        assert told == [2, 4, 5] and catalog.store.generations()[0] - before == 3  # three transactions
    make_photos(tmp_path / "b", 5)

    def interrupt(indexed: int) -> None:
        raise KeyboardInterrupt

    with Catalog.create(tmp_path / "cut.lk", "colorhist") as catalog:
        with pytest.raises(KeyboardInterrupt):
            catalog.add(tmp_path / "b", options=options, on_batch=interrupt)
        assert len(catalog) == 2  # the first commit stays
        report = catalog.add(tmp_path / "b", options=options)
        assert (report.indexed, report.unchanged, len(catalog)) == (3, 2, 5)


class FailingEngine:
    """Embeds ``good`` batches of one photo each (random unit vectors), then fails as a lost cluster would."""

    name = "failing"

    def __init__(self, dim: int, good: int):
        self.dim, self.good = dim, good

    def encode_files(self, embedder, options, tasks, *, int8=None):
        import hashlib

        import numpy as np

        from lookalike.engines.files import EncodedBatch, FileResult

        rng = np.random.default_rng(0)
        for n, task in enumerate(tasks):
            if n == self.good:
                raise RuntimeError("the cluster went away")
            data = task.path.read_bytes()
            vector = rng.standard_normal((1, self.dim)).astype(np.float32)
            yield EncodedBatch(embedded=[FileResult(task=task, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                                    width=48, height=64)],
                               vectors=vector / np.linalg.norm(vector))

    def detail(self) -> dict:
        return {}


def test_transactions_written_while_the_next_batches_arrive_keep_every_commit_when_the_engine_fails(
        tmp_path, monkeypatch):
    """The commit loop writes one transaction while the next gathers (and spills the index's rows between):
    a failing engine still leaves every photo that came back committed, with a saved index equal to a rebuild,
    no spill file behind, and SQLite's WAL checkpointed (by the loop's checkpointer, not the commits)."""
    import sqlite3

    make_photos(tmp_path / "a", 9)
    commit_every(monkeypatch, 2)
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        engine = FailingEngine(catalog.embedder.dim, good=7)
        with pytest.raises(RuntimeError, match="cluster went away"):
            catalog.add(tmp_path / "a", options=QUIET, engine=engine)
        assert len(catalog) == 7
        assert catalog.store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        found = [(m.id, round(m.similarity, 5)) for m in catalog.similar("p003", k=7)]
    index_dir = tmp_path / "shop.lk" / "index"
    assert not list(index_dir.glob("*.spill"))
    with sqlite3.connect(tmp_path / "shop.lk" / "catalog.sqlite") as conn:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and copied == frames
    with Catalog.open(tmp_path / "shop.lk") as catalog:  # the saved index, proven against the store
        assert [(m.id, round(m.similarity, 5)) for m in catalog.similar("p003", k=7)] == found
        report = catalog.add(tmp_path / "a", options=QUIET)
        assert (report.indexed, report.unchanged, len(catalog)) == (2, 7, 9)
        found = [(m.id, round(m.similarity, 5)) for m in catalog.similar("p003", k=9)]
    import shutil

    shutil.rmtree(index_dir)
    with Catalog.open(tmp_path / "shop.lk") as rebuilt:
        assert [(m.id, round(m.similarity, 5)) for m in rebuilt.similar("p003", k=9)] == found


def test_crossing_a_threshold_rebuilds_as_the_new_kind(tmp_path, builds, monkeypatch):
    monkeypatch.setattr(choice, "FLAT_MAX_ITEMS", 10)
    monkeypatch.setattr(choice, "FP16_MIN_ITEMS", 10)
    make_photos(tmp_path / "a", 8)
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        catalog.add(tmp_path / "a", options=QUIET)
        assert (catalog.index.kind, catalog.index.plan.dtype) == ("flat", "float32")
        make_photos(tmp_path / "a", 8, offset=8)
        catalog.add(tmp_path / "a", options=QUIET)
        assert (catalog.index.kind, catalog.index.plan.dtype) == ("hnsw", "float16")
        assert builds == ["flat", "hnsw"]
        assert not list((tmp_path / "shop.lk" / "index").glob("*.spill"))  # the flat index's spill went with it
        detail = catalog.status().index_detail
        assert detail["kind"] == "hnsw" and "16 items" in detail["reason"]
        assert detail["recall"] is not None and detail["recall_queries"] == 16
        # From now on vectors are stored as float16 too: half the bytes in SQLite.
        make_photos(tmp_path / "a", 2, offset=16)
        catalog.add(tmp_path / "a", options=QUIET)
        blobs = {len(b) for (b,) in catalog.store.conn.execute("SELECT vector FROM vectors")}
        assert blobs == {512 * 4, 512 * 2}
        assert len(catalog) == 18 and catalog.similar("p017", k=3)


def test_a_new_catalog_that_outgrows_its_flat_index_in_one_run_leaves_no_spill_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(choice, "FLAT_MAX_ITEMS", 10)
    commit_every(monkeypatch, 2)
    make_photos(tmp_path / "a", 14)
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        catalog.add(tmp_path / "a", options=EncodeOptions(workers=0, progress=False, batch_size=2))
        assert catalog.index.kind == "hnsw" and len(catalog) == 14
        assert not list((tmp_path / "shop.lk" / "index").glob("*.spill"))


def test_a_run_that_takes_a_flat_index_past_its_size_builds_the_graph_first_and_follows_it(
        catalog_location, tmp_path, builds, monkeypatch):
    """A run whose photos take the catalog past the flat index's size gets the graph from its first commit:
    built once, followed commit by commit, its vectors float16 from the first, tuned when the run ends; not a
    flat index over every vector rebuilt as a graph at the end (three copies of each vector held at once).
    On both backends."""
    monkeypatch.setattr(choice, "FLAT_MAX_ITEMS", 10)
    monkeypatch.setattr(choice, "FP16_MIN_ITEMS", 10)
    commit_every(monkeypatch, 4)
    make_photos(tmp_path / "a", 14)
    with Catalog.create(catalog_location, "colorhist") as catalog:
        catalog.add(tmp_path / "a", options=EncodeOptions(workers=0, progress=False, batch_size=4))
        assert builds == ["hnsw"]  # ahead of the run, over the empty store; never rebuilt
        index = catalog.index
        assert (index.kind, index.plan.dtype, index.size) == ("hnsw", "float16", 14)
        assert (index.quality.queries, index.quality.items) == (14, 14)  # tuned on what the run left
        assert {len(blob) for _, blob, _ in catalog.store.raw_vectors()} == {512 * 2}
        found = [(m.id, round(m.similarity, 3)) for m in catalog.similar("p003", k=6)]
        index_dir = catalog.index_dir
    shutil.rmtree(index_dir)
    with Catalog.open(catalog_location) as rebuilt:  # a graph built from the stored vectors answers alike
        assert [(m.id, round(m.similarity, 3)) for m in rebuilt.similar("p003", k=6)] == found


def test_a_run_cut_short_of_the_graph_it_planned_leaves_an_index_for_the_size_it_reached(
        tmp_path, builds, monkeypatch):
    """The engine fails before the catalog reaches the graph's size: what was committed stays, and the writer's
    saved index is the flat one that size calls for, answering as a rebuild from the store does."""
    monkeypatch.setattr(choice, "FLAT_MAX_ITEMS", 10)
    commit_every(monkeypatch, 2)
    make_photos(tmp_path / "a", 14)
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        with pytest.raises(RuntimeError, match="went away"):
            catalog.add(tmp_path / "a", options=QUIET, engine=FailingEngine(catalog.embedder.dim, good=6))
    with Catalog.open(tmp_path / "shop.lk") as reopened:
        assert len(reopened) == 6 and reopened.index.kind == "flat"
        found = [(m.id, round(m.similarity, 4)) for m in reopened.similar("p002", k=5)]
        assert builds == ["hnsw", "flat"]
    shutil.rmtree(tmp_path / "shop.lk" / "index")
    with Catalog.open(tmp_path / "shop.lk") as rebuilt:
        assert [(m.id, round(m.similarity, 4)) for m in rebuilt.similar("p002", k=5)] == found


def test_a_run_into_ivfpq_range_follows_no_index_and_builds_ivfpq_from_the_store_in_passes(
        catalog_location, tmp_path, builds, monkeypatch):
    """A run that takes the catalog past the graph's size applies none of its commits to an in-memory index
    (which would hold every vector) and builds IVF-PQ when it ends, in passes over the store; killed or not,
    the saved index answers as one rebuilt from the store. On both backends."""
    monkeypatch.setattr(choice, "FLAT_MAX_ITEMS", 10)
    monkeypatch.setattr(choice, "HNSW_MAX_ITEMS", 20)
    commit_every(monkeypatch, 4)
    followed, streamed = [], []
    update, build_streamed = vector_index.VectorIndex.update, vector_index.VectorIndex.build_streamed.__func__
    monkeypatch.setattr(vector_index.VectorIndex, "update",
                        lambda self, keys, *a, **kw: (followed.append(len(keys)), update(self, keys, *a, **kw))[1])
    monkeypatch.setattr(vector_index.VectorIndex, "build_streamed", classmethod(
        lambda cls, plan, count, *a, **kw: (streamed.append(count), build_streamed(cls, plan, count, *a, **kw))[1]))
    make_photos(tmp_path / "a", 30)
    with Catalog.create(catalog_location, "colorhist") as catalog:
        catalog.add(tmp_path / "a", options=EncodeOptions(workers=0, progress=False, batch_size=4))
        assert (followed, streamed, builds) == ([], [30], ["flat"])  # the flat one is the empty store's
        assert (catalog.index.kind, catalog.index.size) == ("ivfpq", 30)
        assert {len(blob) for _, blob, _ in catalog.store.raw_vectors()} == {512 * 2}  # stored as a large one's
        found = [(m.id, round(m.similarity, 4)) for m in catalog.similar("p003", k=5)]
        index_dir = catalog.index_dir
    assert not list(index_dir.glob("*.spill"))
    shutil.rmtree(index_dir)
    with Catalog.open(catalog_location) as rebuilt:
        assert [(m.id, round(m.similarity, 4)) for m in rebuilt.similar("p003", k=5)] == found


def test_configure_index_switches_kind_and_keeps_results_sensible(tmp_path):
    make_photos(tmp_path / "a", 30)
    with Catalog.create(tmp_path / "shop.lk", "colorhist") as catalog:
        catalog.add(tmp_path / "a", options=QUIET)
        exact = [m.id for m in catalog.similar("p005", k=5)]
        catalog.configure_index(kind="hnsw", recall=0.99)
        assert catalog.index.kind == "hnsw" and catalog.index.quality.target == 0.99
        assert [m.id for m in catalog.similar("p005", k=5)] == exact
        assert catalog.index_options().to_dict() == {"kind": "hnsw", "memory": "auto", "recall": 0.99}
        quality = catalog.tune(0.5)
        assert quality.target == 0.5 and quality.recall >= 0.5


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.slow
def test_index_options_tune_and_status_from_the_command_line(tmp_path):
    make_photos(tmp_path / "a", 12)
    res = run("index", "a", "--catalog", "shop.lk", "--model", "colorhist", "--index", "hnsw", "--recall", "0.9",
              "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    status = json.loads(run("status", "--catalog", "shop.lk", "--json", cwd=tmp_path).stdout)
    detail = status["index_detail"]
    assert detail["kind"] == "hnsw" and detail["recall_target"] == 0.9 and detail["recall"] >= 0.9
    assert detail["memory_bytes_per_item"] > 0 and detail["disk_bytes_per_item"] > 0
    assert "hnsw" in run("status", "--catalog", "shop.lk", cwd=tmp_path).stdout
    tuned = run("tune", "--catalog", "shop.lk", "--recall", "0.99", cwd=tmp_path)
    assert tuned.returncode == 0 and "efSearch=" in tuned.stdout and "chosen" in tuned.stdout
    tuned = json.loads(run("tune", "--catalog", "shop.lk", "--json", cwd=tmp_path).stdout)
    assert tuned["quality"]["target"] == 0.9
    bad = run("index", "a", "--catalog", "other.lk", "--model", "colorhist", "--memory", "12x", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "12x" in bad.stderr
    assert not (tmp_path / "other.lk").exists()
    bad = run("index", "a", "--catalog", "shop.lk", "--recall", "1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "recall" in bad.stderr


def test_an_index_that_does_not_fit_is_refused_clearly(tmp_path):
    make_photos(tmp_path / "a", 3)
    res = run("index", "a", "--catalog", "shop.lk", "--model", "colorhist", "--memory", "1K", cwd=tmp_path)
    assert res.returncode == 2 and "raise --memory" in res.stderr and "Traceback" not in res.stderr
