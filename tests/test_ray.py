"""The Ray engine: the same catalog as the local engine, built by Ray Data decoding tasks and embedding actors.

The pieces (decoding rows, an actor's call, turning rows back into batches, sizing the actor pool) are tested
without Ray; the runs on Ray share one local Ray (2 CPUs) per module and are marked slow.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL, make_image
from lookalike import Catalog, EncodeOptions
from lookalike.core.errors import LookalikeError
from lookalike.engines.embed import Encoder, FileTask, encode_files
from lookalike.engines.ray_engine import (
    EmbedActor,
    RayEngine,
    RayOptions,
    actors_for,
    decode_rows,
    local_cpus,
    to_encoded_batch,
)

WORKTREE_SRC = Path(__file__).resolve().parents[1] / "src"
QUIET = EncodeOptions(progress=False)


def shop_with_bad_files(root: Path) -> Path:
    """Twelve labelled photos (a manifest), one without a row, and three files that cannot be embedded."""
    photos = root / "photos"
    rows = ["path,colour,shape"]
    for colour, rgb in {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200),
                        "yellow": (230, 210, 40)}.items():
        for shape in ("rect", "ellipse", "stripes"):
            rel = f"{'shoes/' if shape == 'stripes' else ''}{colour}-{shape}.jpg"
            make_image(photos / rel, color=rgb, shape=shape, quality=90)
            if rel != "yellow-rect.jpg":
                rows.append(f"{rel},{colour},{shape}")
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not a picture")
    good = (photos / "red-rect.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "styles.csv").write_text("\n".join(rows) + "\n")
    return root / "styles.csv"


def catalog_rows(path: Path) -> dict[str, tuple]:
    """id -> (path, size, sha256, status, reason, labels) of every item of a catalog."""
    with Catalog.open(path) as cat:
        items = cat.store.items()
        labels = cat.store.labels()
        return {i: (r.path, r.size, r.sha256, r.status, r.reason, labels.get(r.key, {})) for i, r in items.items()}


def catalog_vectors(path: Path) -> dict[str, np.ndarray]:
    with Catalog.open(path) as cat:
        keys, vectors = cat.store.vectors(cat.config.embedder.dim)
        ids = {row.key: i for i, row in cat.store.items().items()}
        return {ids[int(k)]: v for k, v in zip(keys, vectors, strict=True)}


# -- without Ray -------------------------------------------------------------------------------------------


def test_the_actor_pool_is_sized_from_the_cluster_and_refused_when_it_cannot_fit():
    assert actors_for({"CPU": 8}, RayOptions()) == 7  # one CPU left for a decoding task
    assert actors_for({"CPU": 96, "GPU": 8}, RayOptions(gpus_per_actor=1)) == 8
    assert actors_for({"CPU": 2}, RayOptions(actors=2, cpus_per_actor=0.5, decode_cpus=0.5)) == 2
    with pytest.raises(LookalikeError, match="need 3"):
        actors_for({"CPU": 2}, RayOptions(actors=2))
    with pytest.raises(LookalikeError, match="GPUs do not fit"):
        actors_for({"CPU": 16, "GPU": 1}, RayOptions(actors=2, gpus_per_actor=1))
    with pytest.raises(LookalikeError, match="GPUs do not fit"):
        actors_for({"CPU": 16}, RayOptions(gpus_per_actor=1))
    assert local_cpus(RayOptions(actors=4)) >= 5  # a local Ray declares what the asked-for pool needs
    with pytest.raises(LookalikeError, match="--actors 0"):
        RayEngine(RayOptions(actors=0))


def test_decoding_rows_and_an_actors_call_give_the_local_engines_results(tmp_path, tiny_embedder):
    """The Ray pipeline's two steps, run in this process: the same reasons, hashes and vectors as
    ``encode_files``, and every file exactly once."""
    manifest = shop_with_bad_files(tmp_path)
    files = sorted(p for p in manifest.parent.joinpath("photos").rglob("*") if p.is_file())
    known = {files[0]: None}
    tasks = [FileTask(p, known.get(p), ref=i) for i, p in enumerate(files)]
    encoder = Encoder(tiny_embedder, EncodeOptions(workers=0, batch_size=64, progress=False))
    local = list(encode_files(encoder, tasks))
    assert len(local) == 1

    rows = {"ref": np.array([t.ref for t in tasks]), "path": np.array([str(t.path) for t in tasks], dtype=object),
            "known": np.array([""] * len(tasks), dtype=object)}
    decoded = decode_rows(rows, pil_transform=tiny_embedder.pil_transform, draft=tiny_embedder.draft_size,
                          max_pixels=encoder.options.max_pixels, max_bytes=encoder.options.max_bytes)
    actor = object.__new__(EmbedActor)  # its __init__ only fetches the model from Ray's object store
    actor.encoder, actor.node, actor.actor, actor.pid = encoder, "node-1", "actor-1", os.getpid()
    actor.runtime = f"{encoder.runtime} {encoder.precision} {encoder.device}"
    batch = {k: np.asarray(v, dtype=object) if k in ("sha256", "error", "pixels") else np.asarray(v)
             for k, v in decoded.items()}
    out = actor(batch)
    assert "pixels" not in out  # only vectors travel back
    ray_batch = to_encoded_batch({k: np.asarray(v) for k, v in out.items()}, {t.ref: t for t in tasks})

    def results(b):
        return sorted((r.task.ref, r.sha256, r.size, r.width, r.height, r.error, r.unchanged)
                      for r in b.embedded + b.others)

    assert results(ray_batch) == results(local[0])
    assert len(ray_batch.embedded) == 12 and len(ray_batch.others) == 3
    order = {r.task.ref: i for i, r in enumerate(local[0].embedded)}
    mine = np.stack([ray_batch.vectors[i] for i, r in sorted(enumerate(ray_batch.embedded),
                                                             key=lambda x: order[x[1].task.ref])])
    np.testing.assert_allclose(mine, local[0].vectors, atol=1e-6)


def test_a_cluster_address_that_nothing_answers_is_refused_in_one_line_not_retried_for_minutes(tmp_path, capsys):
    """Ray retries an unreachable ``--ray-address`` for minutes, a warning every few seconds; lookalike asks
    the port first and stops with one line naming the address. A port that answers passes; a malformed
    address gets the form to use."""
    import socket
    import time

    from lookalike.cli import main
    from lookalike.engines.ray_engine import check_reachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        check_reachable(f"127.0.0.1:{open_port}")
        check_reachable(f"ray://127.0.0.1:{open_port}")
    with socket.socket() as closed:  # a port just freed: nothing listens there
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    for bad in ("localhost", "10.0.0.5:port", ":6379", "10.0.0.5:70000"):
        with pytest.raises(LookalikeError, match="HOST:PORT"):
            check_reachable(bad)
    make_image(tmp_path / "photos" / "a.jpg")
    started = time.monotonic()
    code = main(["index", str(tmp_path / "photos"), "--catalog", str(tmp_path / "c.lk"), "--model", TINY_MODEL,
                 "--weights", "random", "--engine", "ray", "--ray-address", f"127.0.0.1:{closed_port}", "-q"])
    assert code == 2 and time.monotonic() - started < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach Ray at 127.0.0.1:{closed_port}" in err[0], err


def test_actors_receive_a_text_image_model_without_its_text_tower(tiny_clip):
    """What ``RayEngine`` ships to its actors: the image tower and what scores with it, not the text tower;
    the same photo vectors; the driver's embedder keeps both towers."""
    import pickle

    shipped = tiny_clip.image_only()
    text_bytes = sum(p.numel() * p.element_size() for p in tiny_clip.text_model.parameters()
                     if not any(p is q for q in tiny_clip.model.parameters()) and p is not tiny_clip.clip.logit_scale)
    assert text_bytes > 0
    assert len(pickle.dumps(shipped)) < len(pickle.dumps(tiny_clip)) - 0.9 * text_bytes
    assert (shipped.has_text, shipped.text_model, tiny_clip.has_text) == (False, None, True)
    assert shipped.logit_scale == tiny_clip.logit_scale
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, size=(3, *tiny_clip.data_config["input_size"][1:], 3), dtype=np.uint8)
    options = EncodeOptions(progress=False, runtime="torch", precision="fp32")
    np.testing.assert_allclose(Encoder(pickle.loads(pickle.dumps(shipped)), options).embed_uint8(photos),
                               Encoder(tiny_clip, options).embed_uint8(photos), atol=1e-6)
    assert tiny_clip.text_model is not None and tiny_clip.tokenize(["a red shoe"]).shape[0] == 1


def test_ray_options_without_the_ray_engine_are_refused(tmp_path, capsys):
    from lookalike.cli import main

    code = main(["index", str(tmp_path), "--catalog", str(tmp_path / "x.lk"), "--actors", "2", "-q"])
    assert code == 2
    assert "--actors is a Ray option; add --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "x.lk").exists()


# -- on a local Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module; engines join it instead of starting their own."""
    pytest.importorskip("ray")
    from lookalike.engines.ray_engine import ray_session

    with ray_session(RayOptions(actors=1)):
        yield


@pytest.mark.slow
def test_ray_workers_import_this_checkout(local_ray):
    import ray

    @ray.remote(num_cpus=0.1)
    def where() -> str:
        import lookalike

        return lookalike.__file__

    assert Path(ray.get(where.remote())).resolve().is_relative_to(WORKTREE_SRC)


@pytest.mark.slow
def test_a_ray_catalog_is_the_local_catalog(local_ray, tmp_path, tiny_embedder):
    """Same ids, paths, labels, hashes, failures with reasons; vectors within cosine 0.9999 (same precision);
    a rerun skips what is unchanged (by size and mtime, then by content hash on the actors) as local does."""
    manifest = shop_with_bad_files(tmp_path)
    with Catalog.create(tmp_path / "local.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        local = cat.add(manifest, options=QUIET)
    engine = RayEngine(RayOptions(actors=2, cpus_per_actor=0.5, decode_cpus=0.5))
    with Catalog.create(tmp_path / "ray.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        report = cat.add(manifest, options=QUIET, engine=engine)
    assert (report.indexed, report.failed) == (local.indexed, local.failed) == (12, 3)
    assert report.engine == "ray" and report.engine_detail["nodes_used"] == 1
    assert 1 <= report.engine_detail["actors_used"] <= 2
    assert sum(report.engine_detail["images_per_actor"].values()) == 12
    assert "on ray (" in report.summary()

    assert catalog_rows(tmp_path / "ray.lk") == catalog_rows(tmp_path / "local.lk")
    failures = {i: r[4] for i, r in catalog_rows(tmp_path / "ray.lk").items() if r[3] == "failed"}
    assert set(failures) == {"photos/empty", "photos/notes", "photos/cut"} and "truncated" in failures["photos/cut"]
    a, b = catalog_vectors(tmp_path / "local.lk"), catalog_vectors(tmp_path / "ray.lk")
    assert set(a) == set(b)
    cosines = np.array([float(np.dot(a[i], b[i])) for i in a])
    assert cosines.min() >= 0.9999, dict(zip(a, cosines.round(6), strict=True))

    photos = manifest.parent / "photos"
    touched = photos / "red-rect.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes
    make_image(photos / "green-rect.jpg", color=(0, 0, 0), quality=90)  # new bytes
    with Catalog.open(tmp_path / "ray.lk") as cat:
        again = cat.add(manifest, options=QUIET, engine=engine)
    assert (again.indexed, again.unchanged, again.failed, again.failed_before) == (1, 11, 0, 3)
    with Catalog.open(tmp_path / "local.lk") as cat:
        local_again = cat.add(manifest, options=QUIET)
    assert (local_again.indexed, local_again.unchanged) == (1, 11)
    assert catalog_rows(tmp_path / "ray.lk") == catalog_rows(tmp_path / "local.lk")


@pytest.mark.slow
def test_ray_actors_run_the_catalogs_int8_model_on_openvino(local_ray, tmp_path, tiny_embedder):
    """``--precision int8``: the driver calibrates the catalog's int8 model once, the actors receive it through
    the object store and embed with it, and the catalog records what wrote its vectors."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    manifest = shop_with_bad_files(tmp_path)
    options = EncodeOptions(progress=False, runtime="openvino", precision="int8")
    engine = RayEngine(RayOptions(actors=1, cpus_per_actor=0.5, decode_cpus=0.5))
    with Catalog.create(tmp_path / "ray.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        report = cat.add(manifest, options=options, engine=engine)
        assert (report.indexed, report.failed) == (12, 3)
        assert report.engine_detail["runtime"] == ("openvino", "int8", "cpu")
        assert report.runtime == "openvino int8 on cpu" and any("int8 forced" in n for n in report.notes)
        assert cat.status().runtime["runtime"]["precision"] == "int8"
        encoder = cat.encoder(options)
        assert encoder.precision == "int8"
        paths = {row.key: row.path for row in cat.store.items().values() if row.status == "ok"}
        keys, vectors = cat.store.vectors(cat.config.embedder.dim)
        local = encoder.encode([paths[int(k)] for k in keys])
    cosines = np.sum(local * vectors, axis=1)
    assert cosines.min() >= 0.9999, cosines


@pytest.mark.slow
def test_the_cli_indexes_an_object_store_prefix_with_ray_and_says_where(local_ray, tmp_path, capsys):
    """``--engine ray`` from the command line, with a model-free embedder (no PyTorch on the actors), on a
    source named by URL: listed by the driver and read by the decoding tasks through fsspec (``local://`` is
    fsspec's local file system under a URL, the code path of ``s3://`` and ``gs://``)."""
    from lookalike.cli import main

    photos = tmp_path / "photos"
    for i, rgb in enumerate([(200, 30, 30), (30, 160, 60), (30, 60, 200)]):
        make_image(photos / f"p{i}.png", color=rgb, fmt="PNG")
    shutil.copy(photos / "p0.png", photos / "copy.png")
    code = main(["index", f"local://{photos}", "--catalog", str(tmp_path / "p.lk"), "--model", "pixels", "-q",
                 "--engine", "ray", "--actors", "1", "--cpus-per-actor", "0.5", "--decode-cpus", "0.5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "indexed 4" in out and "on ray (1 actor, 1 node)" in out
    with Catalog.open(tmp_path / "p.lk") as cat:
        assert len(cat) == 4 and {m.id for m in cat.similar("p0", k=3)} == {"p1", "p2"}  # never its copy
        assert cat.store.item("p0").path == (photos / "p0.png").as_uri()


@pytest.mark.slow
def test_a_killed_actor_costs_only_its_batches_in_flight(local_ray, tmp_path, tiny_embedder):
    """SIGKILL the embedding actor after the first committed batch: Ray restarts it (a new process, the same
    actor), retries what it held, and every file is committed exactly once with the local engine's vector."""
    import signal

    photos = tmp_path / "photos"
    for i in range(200):
        make_image(photos / f"p{i:03d}.jpg", color=(i, 255 - i, (7 * i) % 256), shape=("rect", "ellipse")[i % 2],
                   quality=90)
    engine = RayEngine(RayOptions(actors=1, cpus_per_actor=0.5, decode_cpus=0.5))
    killed: list[int] = []

    def kill_once(indexed: int) -> None:
        if not killed:
            pids = [p for ps in engine.detail()["actor_pids"].values() for p in ps]
            os.kill(pids[0], signal.SIGKILL)  # the actor process this test's Ray started
            killed.append(pids[0])

    with Catalog.create(tmp_path / "ray.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        report = cat.add(photos, options=EncodeOptions(progress=False, batch_size=2), engine=engine,
                         on_batch=kill_once)
    assert killed and (report.indexed, report.failed) == (200, 0)
    pids = report.engine_detail["actor_pids"]
    assert len(pids) == 1 and len(next(iter(pids.values()))) == 2, pids  # restarted: same actor, new process
    with Catalog.create(tmp_path / "local.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        cat.add(photos, options=EncodeOptions(progress=False, workers=0))
    a, b = catalog_vectors(tmp_path / "local.lk"), catalog_vectors(tmp_path / "ray.lk")
    assert set(a) == set(b) and min(float(np.dot(a[i], b[i])) for i in a) >= 0.9999


@pytest.mark.slow
def test_recommend_on_ray_writes_the_local_rows_and_resumes(local_ray, tmp_path, monkeypatch):
    """Two actors, each with the catalog's index, take blocks of queries: the file is the local run's row for
    row (with --group-by and --queries-where too), a folder --out keeps the parts, and a run interrupted on
    this machine is finished on Ray into the same file."""
    import pyarrow.parquet as pq

    from lookalike.analysis import recommend as recommend_module
    from lookalike.analysis.recommend import recommend
    from test_recommend import interrupted_after, vector_catalog

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    vectors[9] = vectors[3]
    hashes = [f"h{i}" for i in range(400)]
    hashes[9] = hashes[3]
    labels = [{"colour": ["red", "blue", "green"][i % 3], "name": f"product {i // 4}"} for i in range(400)]
    engine = RayEngine(RayOptions(actors=2, cpus_per_actor=0.5))
    with vector_catalog(tmp_path / "shop.lk", vectors, hashes, labels) as cat:
        for name, options in (("plain", {}), ("grouped", {"group_by": "name", "queries_where": ["colour=red"]})):
            local = recommend(cat, 5, tmp_path / f"{name}-local.parquet", block=48, progress=False, **options)
            remote = recommend(cat, 5, tmp_path / f"{name}-ray.parquet", block=48, progress=False, engine=engine,
                               **options)
            assert (remote.items, remote.rows, remote.short) == (local.items, local.rows, local.short)
            assert pq.read_table(tmp_path / f"{name}-ray.parquet").to_pylist() == \
                pq.read_table(tmp_path / f"{name}-local.parquet").to_pylist()

        monkeypatch.setattr(recommend_module, "PART_ROWS", 300)
        recommend(cat, 5, f"{tmp_path / 'parts'}/", block=48, progress=False, engine=engine)
        assert pq.read_table(tmp_path / "parts").to_pylist() == \
            pq.read_table(tmp_path / "plain-local.parquet").to_pylist()

        out = tmp_path / "resumed.parquet"
        with interrupted_after(3, monkeypatch), pytest.raises(KeyboardInterrupt):
            recommend(cat, 5, out, block=48, progress=False)
        report = recommend(cat, 5, out, block=48, progress=False, engine=engine)
        assert report.resumed and 0 < report.computed < 400
        assert pq.read_table(out).to_pylist() == pq.read_table(tmp_path / "plain-local.parquet").to_pylist()


@pytest.mark.slow
def test_a_database_catalog_of_a_text_image_model_is_indexed_and_recommended_on_ray(
        local_ray, tmp_path, tiny_clip, pg_url):
    """A ``postgresql://`` catalog of an open_clip model: Ray's actors embed (the model shipped whole), the driver
    commits into PostgreSQL through the shared commit loop, and the catalog equals a local folder one; the
    search by words works on it; ``recommend`` actors open the catalog by its URL (no shared file system) and
    write the local run's rows."""
    import pyarrow.parquet as pq

    from conftest import TINY_CLIP, word_options
    from lookalike.analysis.recommend import recommend

    manifest = shop_with_bad_files(tmp_path)
    options = word_options()
    with Catalog.create(tmp_path / "local.lk", TINY_CLIP, embedder=tiny_clip) as cat:
        cat.add(manifest, options=options)
    engine = RayEngine(RayOptions(actors=1, cpus_per_actor=0.5, decode_cpus=0.5))
    with Catalog.create(pg_url, TINY_CLIP, embedder=tiny_clip) as cat:
        report = cat.add(manifest, options=options, engine=engine)
        assert (report.indexed, report.failed, report.engine) == (12, 3, "ray")
        words = [m.id for m in cat.search(text="a red photo", k=3)]
    assert catalog_rows(pg_url) == catalog_rows(tmp_path / "local.lk")
    a, b = catalog_vectors(tmp_path / "local.lk"), catalog_vectors(pg_url)
    assert set(a) == set(b) and min(float(np.dot(a[i], b[i])) for i in a) >= 0.9999
    with Catalog.open(tmp_path / "local.lk", embedder=tiny_clip) as cat:
        assert [m.id for m in cat.search(text="a red photo", k=3)] == words

    with Catalog.open(pg_url, embedder=tiny_clip) as cat:
        assert cat.address == pg_url and "://" in cat.address
        local = recommend(cat, 3, tmp_path / "local.parquet", block=4, progress=False)
        remote = recommend(cat, 3, tmp_path / "ray.parquet", block=4, progress=False,
                           engine=RayEngine(RayOptions(actors=2, cpus_per_actor=0.5)))
    assert (remote.items, remote.rows) == (local.items, local.rows) == (12, 36)
    assert pq.read_table(tmp_path / "ray.parquet").to_pylist() == pq.read_table(tmp_path / "local.parquet").to_pylist()
