"""The vector index against exact search on seeded clustered vectors: the choice function, tuned recall of
every kind, incremental updates, filters, float16, persistence, and the catalog catching up from its log."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lookalike.core.errors import IndexChoiceError
from lookalike.index import IndexPlan, VectorIndex, choice, choose_index, parse_memory, tune, vector_index
from lookalike.index.synthetic import clustered_vectors
from lookalike.index.tuning import ground_truth, recall_at_k, sample_rows

GB = 1024**3
DIM = 64
N = 3000


@pytest.fixture(scope="module")
def data():
    vectors = clustered_vectors(N, DIM, seed=3)
    keys = np.arange(N, dtype=np.int64) * 2 + 5  # item keys are not row numbers
    return keys, vectors


@pytest.fixture(scope="module")
def tuned(data):
    """``tuned(kind)``: an index of every row of ``data`` built and tuned (0.95 on 200 rows) once per kind, for the
    tests that only search it (IVF-PQ's training is the costliest step of this file)."""
    keys, vectors = data
    built: dict[str, VectorIndex] = {}

    def get(kind: str) -> VectorIndex:
        if kind not in built:
            built[kind] = VectorIndex.build(keys, vectors, plan_for(kind))
            tune(built[kind], 0.95, sample=200)
        return built[kind]

    return get


def exact(vectors: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return keys[order]


def plan_for(kind: str, count: int = N) -> IndexPlan:
    return choose_index(count, DIM, 8 * GB, kind)


@pytest.mark.parametrize(("count", "dim", "memory", "kind", "dtype"), [
    (1_000, 2048, 8 * GB, "flat", "float32"),
    (choice.FLAT_MAX_ITEMS, 2048, 8 * GB, "flat", "float16"),  # float16 from FP16_MIN_ITEMS on
    (choice.FLAT_MAX_ITEMS + 1, 2048, 8 * GB, "hnsw", "float16"),
    (1_000_000, 2048, 8 * GB, "hnsw", "float16"),
    (1_000_000, 2048, 1 * GB, "ivfpq", "float16"),  # memory shrinks: compressed codes
    (choice.HNSW_MAX_ITEMS + 1, 2048, 64 * GB, "ivfpq", "float16"),  # too many for a graph
    (20_000, 2048, 50 * 1024**2, "ivfpq", "float16"),  # small catalog, tiny budget
])
def test_choice_follows_count_and_memory(count, dim, memory, kind, dtype):
    plan = choose_index(count, dim, memory)
    assert (plan.kind, plan.dtype) == (kind, dtype)
    assert choice.estimated_bytes(plan, count, dim) <= memory
    assert plan.reason


def test_choice_sizes_ivfpq_for_the_budget():
    plan = choose_index(1_000_000, 2048, 1 * GB)
    assert plan.params["m"] == 2048 // choice.PQ_DIMS_PER_BYTE and 2048 % plan.params["m"] == 0
    assert 512 <= plan.params["nlist"] <= 4096
    tight = choose_index(1_000_000, 2048, 100 * 1024**2)  # 100 MB: fewer code bytes
    assert tight.params["m"] < plan.params["m"]


def test_choice_refuses_what_cannot_fit_and_bad_input():
    with pytest.raises(IndexChoiceError, match="raise --memory"):
        choose_index(10_000_000, 2048, 10 * 1024**2)
    with pytest.raises(IndexChoiceError, match="unknown index kind"):
        choose_index(10, 8, GB, "annoy")
    forced = choose_index(100, 8, GB, "ivfpq")  # too few to train: exact, and says why
    assert forced.kind == "flat" and "cannot train" in forced.reason
    assert choose_index(100, 8, GB, "hnsw").kind == "hnsw"


def test_parse_memory():
    assert parse_memory("4G") == 4 * GB
    assert parse_memory("512m") == 512 * 1024**2
    assert parse_memory("1.5GB") == int(1.5 * GB)
    assert parse_memory("auto") > 0
    with pytest.raises(IndexChoiceError, match="not a size"):
        parse_memory("lots")


@pytest.mark.parametrize("kind", ["flat", "hnsw", pytest.param("ivfpq", marks=pytest.mark.slow)])
def test_tuned_recall_reaches_target(data, kind):
    keys, vectors = data
    index = VectorIndex.build(keys, vectors, plan_for(kind))
    quality = tune(index, target=0.95, sample=300)
    assert quality.recall >= 0.95
    # Checked independently of the tuner's own bookkeeping, on other queries.
    rows = sample_rows(index, 200, seed=11)
    queries = vectors[rows] + 0.02 * np.random.default_rng(1).standard_normal((len(rows), DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, found = index.search(queries, 10)
    assert recall_at_k(found, exact(vectors, keys, queries, 10)) >= 0.93
    if kind == "hnsw":
        assert index.settings.ef_search <= 1024
    if kind == "ivfpq":
        assert index.memory_bytes() / len(keys) < DIM * 4  # codes are smaller than the vectors


def test_tuner_prefers_cheaper_settings(data):
    keys, vectors = data
    index = VectorIndex.build(keys, vectors, plan_for("hnsw"))
    low = tune(index, target=0.5, sample=200)
    ef_low = index.settings.ef_search
    high = tune(index, target=0.99, sample=200)
    assert ef_low <= index.settings.ef_search
    assert low.recall <= high.recall + 1e-9
    # Catalog items as queries get the target without the new-photo margin: never a costlier setting.
    assert index.item_settings.ef_search <= index.settings.ef_search
    item_trials = [t for t in high.table if t["ef_search"] == index.item_settings.ef_search]
    assert item_trials and item_trials[0]["recall"] >= 0.99


def test_float16_storage_keeps_recall(data, tmp_path):
    keys, vectors = data
    index = VectorIndex.build(keys, vectors, IndexPlan("flat", "float16"))
    queries = vectors[:200]
    _, found = index.search(queries, 10)
    assert recall_at_k(found, exact(vectors, keys, queries, 10)) >= 0.99
    exact_flat = VectorIndex.build(keys, vectors)
    index.save(tmp_path / "half", 1)
    exact_flat.save(tmp_path / "full", 1)
    saved = {name: sum(f.stat().st_size for f in (tmp_path / name).iterdir()) for name in ("half", "full")}
    assert saved["half"] < 0.6 * saved["full"]


def test_flat_float32_answers_are_exact_even_where_float16_cannot_tell_items_apart(monkeypatch):
    """Near-ties closer than float16's resolution: the float16 scan cannot order them, the answer must.
    Single queries (float16 scan, proof, fallback), batches (BLAS) and filters all give the exact top-k."""
    import lookalike.index.vector_index as vi

    rng = np.random.default_rng(3)
    dim = 96
    centre = rng.standard_normal(dim)
    centre /= np.linalg.norm(centre)
    # 300 items at similarities 0.9999, 0.999897, ... to the centre: 3e-6 apart, where float16 blurs by 5e-4
    sims = 0.9999 - 3e-6 * rng.permutation(300)
    sideways = rng.standard_normal((300, dim))
    sideways -= np.outer(sideways @ centre, centre)
    sideways /= np.linalg.norm(sideways, axis=1, keepdims=True)
    near = sims[:, None] * centre + np.sqrt(1 - sims**2)[:, None] * sideways
    far = rng.standard_normal((700, dim))
    vectors = np.vstack([near, far / np.linalg.norm(far, axis=1, keepdims=True)]).astype(np.float32)
    keys = np.arange(1000, dtype=np.int64) * 3
    monkeypatch.setattr(vi, "SCREEN_MIN_ITEMS", 64)  # the float16 screen, which large catalogs get
    index = VectorIndex.build(keys, vectors)
    assert index.memory_bytes() < 0.6 * vectors.nbytes  # float16 codes in memory, float32 rows on disk
    assert not index.needs_rebuild()
    queries = np.vstack([centre, vectors[[5, 400, 999]]]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def truth(q, pool):
        sims = vectors[pool].astype(np.float64) @ q.astype(np.float64)
        return set(keys[pool][np.argsort(-sims, kind="stable")[:10]])

    everything = np.arange(1000)
    for q in queries:  # one at a time: the float16 scan
        _, found = index.search(q, 10)
        assert set(found[0]) == truth(q, everything)
    _, found = index.search(np.repeat(queries, 6, axis=0), 10)  # 24 at once: BLAS
    assert [set(f) for f in found[::6]] == [truth(q, everything) for q in queries]
    monkeypatch.setattr(vi, "EXACT_SUBSET_MAX", 10)  # filters through the FAISS selector as well
    allowed = keys[::2]
    for q in queries:
        _, found = index.search(q, 10, allowed=allowed)
        assert set(found[0]) == truth(q, everything[::2])
    monkeypatch.setattr(vi, "SCREEN_MIN_ITEMS", 4096)  # shrunk far below the screen's band: rebuild plain
    assert index.needs_rebuild() and not VectorIndex.build(keys, vectors).needs_rebuild()
    monkeypatch.setattr(vi, "SCREEN_MIN_ITEMS", 256)  # grown far past a plain index's band: rebuild screened
    small = VectorIndex.build(keys[:200], vectors[:200])
    small.update(keys[200:], vectors[200:])
    assert small.needs_rebuild()


@pytest.mark.parametrize("kind", ["flat", "hnsw", pytest.param("ivfpq", marks=pytest.mark.slow)])
def test_incremental_updates_match_a_fresh_build(data, kind):
    keys, vectors = data
    rng = np.random.default_rng(5)
    index = VectorIndex.build(keys[:2000], vectors[:2000], plan_for(kind, 2000))
    tune(index, 0.95, sample=200)
    index.update(keys[2000:], vectors[2000:])  # add
    removed = keys[rng.choice(N, 300, replace=False)]
    index.update(np.empty(0, np.int64), np.empty((0, DIM), np.float32), removed)  # remove
    changed = np.setdiff1d(keys[rng.choice(N, 100, replace=False)], removed)
    new_vectors = clustered_vectors(len(changed), DIM, seed=99)
    index.update(changed, new_vectors)  # update in place

    final = {int(k): v for k, v in zip(keys, vectors, strict=True) if k not in set(removed.tolist())}
    for k, v in zip(changed, new_vectors, strict=True):
        final[int(k)] = v
    final_keys = np.array(sorted(final), dtype=np.int64)
    final_vectors = np.stack([final[k] for k in final_keys])
    assert index.size == len(final_keys)
    assert set(index.keys().tolist()) == set(final_keys.tolist())

    queries = final_vectors[::25]
    truth = exact(final_vectors, final_keys, queries, 10)
    _, found = index.search(queries, 10)
    assert not np.isin(found, removed).any()
    fresh = VectorIndex.build(final_keys, final_vectors, plan_for(kind, len(final_keys)))
    tune(fresh, 0.95, sample=200)
    _, fresh_found = fresh.search(queries, 10, settings=index.settings)
    if kind == "flat":
        np.testing.assert_array_equal(found, truth)
    assert recall_at_k(found, truth) >= recall_at_k(fresh_found, truth) - 0.05
    assert recall_at_k(found, truth) >= 0.9
    # An updated item is found by its new vector, and reads back as it.
    _, top = index.search(new_vectors[:5], 1)
    np.testing.assert_array_equal(top[:, 0], changed[:5])
    np.testing.assert_allclose(index.vector(int(changed[0])), new_vectors[0], atol=2e-3)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
@pytest.mark.parametrize("via_faiss", [False, True])
def test_filtered_search_returns_exactly_the_matching_items(data, tuned, kind, via_faiss, monkeypatch):
    keys, vectors = data
    if via_faiss:  # large filters go through FAISS selectors; a short answer falls back to exact search
        monkeypatch.setattr(vector_index, "EXACT_SUBSET_MAX", 10)
    index = tuned(kind)
    rng = np.random.default_rng(8)
    for size in (15, 40, 900):
        allowed = np.sort(rng.choice(keys, size, replace=False))
        queries = vectors[rng.choice(N, 20, replace=False)]
        sims, found = index.search(queries, 10, allowed=allowed)
        assert (found >= 0).all(), "a filter with enough matches returns k results"
        assert np.isin(found, allowed).all()
        assert (np.diff(sims, axis=1) <= 1e-6).all()
        mask = np.isin(keys, allowed)
        truth = exact(vectors[mask], keys[mask], queries, 10)
        assert recall_at_k(found, truth) >= (1.0 if kind == "flat" or not via_faiss else 0.8)
    few = keys[:3]
    _, found = index.search(vectors[:2], 10, allowed=few)
    assert set(found[found >= 0].tolist()) == set(few.tolist()) and (found[:, 3:] == -1).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", pytest.param("ivfpq", marks=pytest.mark.slow)])
def test_saved_index_loads_and_answers_the_same(data, kind, tmp_path):
    keys, vectors = data
    index = VectorIndex.build(keys, vectors, plan_for(kind))
    tune(index, 0.95, sample=200)
    index.update(keys[:10], vectors[:10][::-1].copy(), removed=keys[10:20])
    index.save(tmp_path, generation=7)
    loaded, generation = VectorIndex.load(tmp_path)
    assert generation == 7 and loaded.plan == index.plan and loaded.settings == index.settings
    assert loaded.quality.recall == index.quality.recall
    queries = vectors[100:130]
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    # Appending after a load writes after the saved rows; a reload sees everything.
    loaded.update(keys[20:25], vectors[:5])
    loaded.save(tmp_path, generation=8)
    again, _ = VectorIndex.load(tmp_path)
    np.testing.assert_allclose(again.vector(int(keys[20])), vectors[0], atol=2e-3)
    assert again.size == index.size


def test_a_flat_index_is_saved_as_rows_and_one_saved_with_its_faiss_file_still_loads(data, tmp_path):
    """A flat index is built again from its row file on load (its codes are written once); a folder written
    by an earlier release, with the FAISS file and a stamp that does not say so, loads as before."""
    import json

    import faiss

    keys, vectors = data
    index = VectorIndex.build(keys, vectors, plan_for("flat"))
    index.update(keys[:10], vectors[:10][::-1].copy(), removed=keys[10:20])
    index.save(tmp_path, generation=3)
    assert not (tmp_path / vector_index.INDEX_FILE).exists()
    queries = vectors[100:130]
    expected = index.search(queries, 10)
    loaded, _ = VectorIndex.load(tmp_path)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], expected[1])
    assert loaded.memory_bytes() == index.memory_bytes() > 0
    faiss.write_index(index.index, str(tmp_path / vector_index.INDEX_FILE))  # the earlier layout
    stamp = json.loads((tmp_path / vector_index.STAMP_FILE).read_text())
    for name in ("faiss", "dim", "float16_codes"):
        stamp.pop(name)
    (tmp_path / vector_index.STAMP_FILE).write_text(json.dumps(stamp))
    earlier, generation = VectorIndex.load(tmp_path)
    assert generation == 3
    np.testing.assert_array_equal(earlier.search(queries, 10)[1], expected[1])


def test_rows_spilled_ahead_of_a_save_count_only_once_saved_and_a_killed_writer_loses_nothing_saved(data, tmp_path):
    """A writer spills each commit's rows to the row file while its next transaction is written; the stamp
    still commits. Killed between spill and save: the last save loads as it was, the spill file of the dead
    writer goes at the next save. Another process writing the file in between: the save writes a whole file."""
    import subprocess
    import sys

    keys, vectors = data
    spill_of = lambda pid: tmp_path / f"{vector_index.VECTORS_FILE}.{pid}-0a1b2c3d.spill"  # noqa: E731
    index = VectorIndex.build(keys[:0], vectors[:0], plan_for("flat"))
    index.update(keys[:100], vectors[:100])
    index.spill(tmp_path)  # a new index: into a file of this process's own until saved
    (own,) = tmp_path.glob(f"*.{os.getpid()}-*.spill")
    assert own.stat().st_size == 100 * vectors.shape[1] * 4
    index.update(keys[100:150], vectors[100:150])
    index.save(tmp_path, generation=1)
    assert not own.exists()
    loaded, _ = VectorIndex.load(tmp_path)
    np.testing.assert_array_equal(loaded.vectors_of(keys[:150]), vectors[:150])

    # Rows appended after the saved ones, spilled in place, then the writer "killed" (no save).
    loaded.update(keys[150:200], vectors[150:200])
    loaded.spill(tmp_path)
    rows_file = tmp_path / vector_index.VECTORS_FILE
    assert rows_file.stat().st_size == 200 * vectors.shape[1] * 4
    del loaded
    survivor, generation = VectorIndex.load(tmp_path)
    assert generation == 1 and survivor.size == 150
    np.testing.assert_array_equal(survivor.vectors_of(keys[:150]), vectors[:150])
    survivor.update(keys[150:170], vectors[180:200])  # the next writer writes over the unsaved rows
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    spill_of(int(dead.stdout)).write_bytes(b"left by a killed writer")
    survivor.save(tmp_path, generation=2)
    assert not spill_of(int(dead.stdout)).exists()
    again, _ = VectorIndex.load(tmp_path)
    np.testing.assert_array_equal(again.vectors_of(keys[150:170]), vectors[180:200])

    # Another process appends to the file between this writer's spill and its save: nothing of theirs is
    # written over; this save replaces the file as a whole, and it holds exactly this writer's rows.
    again.update(keys[170:180], vectors[170:180])
    again.spill(tmp_path)
    with open(rows_file, "ab") as fh:
        fh.write(np.ones((3, vectors.shape[1]), np.float32).tobytes())
    again.save(tmp_path, generation=3)
    final, generation = VectorIndex.load(tmp_path)
    assert generation == 3 and final.size == 180
    np.testing.assert_array_equal(final.vectors_of(keys[150:180]), np.concatenate([vectors[180:200],
                                                                                    vectors[170:180]]))
    # Another process replaced the file with one of just the size this writer expects: still not this
    # writer's file, so its rows are not written into a file nobody reads.
    final.update(keys[180:190], vectors[180:190])
    final.spill(tmp_path)
    size = rows_file.stat().st_size
    replacement = tmp_path / "replacement.bin"
    replacement.write_bytes(rows_file.read_bytes()[:size])
    os.replace(replacement, rows_file)
    final.update(keys[190:195], vectors[190:195])
    final.save(tmp_path, generation=4)
    final, generation = VectorIndex.load(tmp_path)
    assert generation == 4 and final.size == 195
    np.testing.assert_array_equal(final.vectors_of(keys[180:195]), vectors[180:195])
    queries = vectors[:20]
    np.testing.assert_array_equal(final.search(queries, 10)[1],
                                  VectorIndex.build(keys[:195], final.vectors_of(keys[:195]),
                                                    plan_for("flat")).search(queries, 10)[1])


def test_ivfpq_built_in_passes_over_blocks_equals_the_one_built_from_a_matrix(data, tmp_path):
    """``build_streamed`` (two passes over blocks, as a large catalog's store gives them) trains on the same
    sample and answers exactly as ``build`` over the whole matrix in the plan's dtype; its rows are written
    to the row file as they come and read back from it, not held in memory; saved, it loads the same."""
    keys, vectors = data
    plan = plan_for("ivfpq")
    passes = []

    def blocks():
        passes.append(1)
        for start in range(0, N, 700):
            yield keys[start:start + 700], vectors[start:start + 700]

    whole = VectorIndex.build(keys, vectors.astype(np.float16), plan)
    streamed = VectorIndex.build_streamed(plan, N, DIM, blocks, tmp_path)
    assert len(passes) == 2 and streamed.size == N and streamed.plan == plan
    assert all(isinstance(piece, np.memmap) for piece in streamed.vectors._tail)  # one block held at a time
    queries = vectors[:40]
    for a, b in zip(whole.search(queries, 10), streamed.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    streamed.save(tmp_path, generation=7)
    assert not list(tmp_path.glob("*.spill"))
    loaded, generation = VectorIndex.load(tmp_path)
    assert generation == 7
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], whole.search(queries, 10)[1])
    with pytest.raises(ValueError, match="only IVF-PQ"):
        VectorIndex.build_streamed(plan_for("hnsw"), N, DIM, blocks)


def test_ground_truth_leaves_the_query_out(data):
    keys, vectors = data
    index = VectorIndex.build(keys, vectors)
    rows = np.array([0, 1, 2])
    truth = ground_truth(index, rows, 5)
    assert not np.isin(keys[rows], truth).any()
    np.testing.assert_array_equal(truth, exact(vectors, keys, vectors[rows], 6)[:, 1:])
