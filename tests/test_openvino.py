"""The OpenVINO runtime: conversion once per model and weights, the same vectors as PyTorch, one-line
refusals when it cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL, make_image

pytest.importorskip("openvino")

from lookalike import Catalog, LookalikeError  # noqa: E402
from lookalike.core.config import EncodeOptions  # noqa: E402
from lookalike.engines.embed import Encoder, FileTask, encode_files  # noqa: E402

FP32_OV = EncodeOptions(device="cpu", runtime="openvino", precision="fp32", progress=False)
FP32_TORCH = EncodeOptions(device="cpu", runtime="torch", precision="fp32", progress=False)


def varied_photos(folder: Path, n: int) -> list[Path]:
    """``n`` small photos that differ in colour, shape and size."""
    shapes = ("rect", "ellipse", "stripes")
    out = []
    for i in range(n):
        colour = ((37 * i) % 256, (91 * i + 40) % 256, (53 * i + 120) % 256)
        out.append(make_image(folder / f"p{i:03d}.jpg", color=colour, shape=shapes[i % 3],
                              size=(80 + 8 * (i % 5), 96 + 12 * (i % 4)), quality=90))
    return out


@pytest.mark.slow
def test_conversion_is_cached_and_a_second_encoder_does_not_convert(tmp_path, tiny_embedder, monkeypatch):
    import openvino

    first = Encoder(tiny_embedder, FP32_OV, cache_dir=tmp_path / "cache")
    assert first.runtime == "openvino" and first.precision == "fp32"
    folders = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and (folders[0] / "model.xml").is_file() and (folders[0] / "model.bin").is_file()
    assert folders[0].name.startswith("timm_test_resnet.r160_in1k-")

    def refuse(*args, **kwargs):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    second = Encoder(tiny_embedder, EncodeOptions(device="cpu", runtime="openvino", precision="bf16"),
                     cache_dir=tmp_path / "cache")
    assert second.model.xml == first.model.xml
    assert second.encode(make_image(tmp_path / "x.jpg")).shape == (tiny_embedder.dim,)
    assert not list((tmp_path / "cache").glob(".converting-*"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["model.bin cut short", "model.xml overwritten", "source.json gone"])
def test_a_damaged_converted_model_in_the_cache_is_converted_again(tmp_path, tiny_embedder, damage, caplog):
    """A cache entry that is not as it was written (a truncated copy, a full disk, a hand edit) is never
    compiled: it is converted again, with a one-line warning, and gives the same vectors."""
    import shutil

    from lookalike.engines import openvino_runtime as ovr

    photos = varied_photos(tmp_path / "photos", 4)
    # This test's cache starts as a copy of the suite's converted model (converted once per session at most):
    # the conversion under test is the one after the damage.
    shared = ovr.converted(tiny_embedder).parent
    shutil.copytree(shared, tmp_path / "cache" / shared.name)
    first = Encoder(tiny_embedder, FP32_OV, cache_dir=tmp_path / "cache")
    before = first.encode(photos)
    folder = first.model.xml.parent
    if damage == "model.bin cut short":
        data = (folder / "model.bin").read_bytes()
        (folder / "model.bin").write_bytes(data[: len(data) // 3])
    elif damage == "model.xml overwritten":
        (folder / "model.xml").write_text("<net")
    else:
        (folder / "source.json").unlink()
    with caplog.at_level("WARNING"):
        again = Encoder(tiny_embedder, FP32_OV, cache_dir=tmp_path / "cache")
    assert again.model.xml == first.model.xml
    np.testing.assert_allclose(again.encode(photos), before, atol=1e-6)
    warned = [r.getMessage() for r in caplog.records if "converting the model again" in r.getMessage()]
    assert len(warned) == 1 and str(folder) in warned[0]


def test_openvino_fp32_vectors_equal_pytorch_fp32(tmp_path, tiny_embedder):
    photos = varied_photos(tmp_path / "photos", 10)
    ov, pt = Encoder(tiny_embedder, FP32_OV), Encoder(tiny_embedder, FP32_TORCH)
    a, b = ov.encode(photos), pt.encode(photos)
    assert a.dtype == np.float32 and a.shape == b.shape == (10, tiny_embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_openvino_files_pipeline_keeps_order_batches_and_failures(tmp_path, tiny_embedder):
    """The same contract as PyTorch's: batches in task order, bad files reported with reasons, not dropped."""
    photos = varied_photos(tmp_path / "photos", 9)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    files = photos[:4] + [tmp_path / "broken.jpg", tmp_path / "missing.jpg"] + photos[4:]
    tasks = [FileTask(p, ref=i) for i, p in enumerate(files)]
    for workers in (0, 2):
        encoder = Encoder(tiny_embedder, EncodeOptions(device="cpu", runtime="openvino", precision="fp32",
                                                       batch_size=3, workers=workers))
        batches = list(encode_files(encoder, tasks))
        assert len(batches) == 4
        refs = [r.task.ref for b in batches for r in b.embedded]
        assert refs == [0, 1, 2, 3, 6, 7, 8, 9, 10]
        errors = {r.task.ref: r.error for b in batches for r in b.others}
        assert set(errors) == {4, 5} and "cannot" in errors[5]
        vectors = np.concatenate([b.vectors for b in batches if b.vectors is not None])
        np.testing.assert_allclose(vectors, Encoder(tiny_embedder, FP32_TORCH).encode(photos), atol=2e-5)


def test_auto_picks_openvino_on_x86_cpus_with_or_without_bf16_and_pytorch_elsewhere(tiny_embedder, monkeypatch):
    """Measured faster on both kinds of x86 CPU (README, Speed): bf16 units and AVX2 only."""
    from lookalike.core import cpu
    from lookalike.engines import openvino_runtime as ovr

    assert ovr.resolve_runtime("auto", "cuda", True) == "torch"
    monkeypatch.setattr(cpu, "is_x86", lambda: False)
    assert ovr.resolve_runtime("auto", "cpu", True) == "torch"
    monkeypatch.setattr(cpu, "is_x86", lambda: True)
    assert ovr.resolve_runtime("auto", "cpu", False) == "openvino"
    assert ovr.resolve_runtime("auto", "cpu", True) == "openvino"
    monkeypatch.setattr(ovr, "openvino_available", lambda: False)
    assert ovr.resolve_runtime("auto", "cpu", True) == "torch"
    with pytest.raises(LookalikeError, match="runs on the CPU"):
        ovr.resolve_runtime("openvino", "cuda", True)
    with pytest.raises(LookalikeError, match="unknown runtime"):
        ovr.resolve_runtime("onnx", "cpu", True)


def test_auto_chooses_the_runtime_and_precision_for_the_cpu_it_runs_on(native_bf16):
    """The probe decides, through one name: a CPU with native bf16 runs OpenVINO in bf16; one without (AVX2)
    runs OpenVINO in fp32, since bf16 emulated is slower than fp32 there. Either runtime, asked for, takes the
    CPU's precision."""
    import torch

    from lookalike.engines import openvino_runtime as ovr
    from lookalike.engines import torch_runtime as rt
    from lookalike.engines.embed import resolve_network_runtime

    device, runtime, native = resolve_network_runtime(EncodeOptions(device="cpu"))
    assert (device.type, runtime, native) == ("cpu", "openvino", native_bf16)
    assert resolve_network_runtime(EncodeOptions(device="cpu", runtime="openvino"))[1] == "openvino"
    assert resolve_network_runtime(EncodeOptions(device="cpu", runtime="torch"))[1] == "torch"
    assert ovr.resolve_precision("auto", native, None) == ("bf16" if native_bf16 else "fp32")
    assert rt.resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if native_bf16 else None)
    assert ovr.OpenVinoModel(Path("unused.xml"), "bf16").hint == ("bf16" if native_bf16 else "f32")
    assert ovr.OpenVinoModel(Path("unused.xml"), "fp32").hint == "f32"


def test_a_missing_openvino_is_one_line_and_auto_falls_back_to_pytorch(tmp_path, tiny_embedder, monkeypatch, capsys):
    from lookalike.cli import main

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(LookalikeError, match=r"needs the openvino package.*pip install openvino nncf.*--runtime torch"):
        Encoder(tiny_embedder, EncodeOptions(device="cpu", runtime="openvino"))
    assert Encoder(tiny_embedder, EncodeOptions(device="cpu")).runtime == "torch"
    photo = make_image(tmp_path / "photos" / "a.jpg")
    code = main(["index", str(photo.parent), "--catalog", str(tmp_path / "c.lk"), "--model", TINY_MODEL,
                 "--weights", "random", "--runtime", "openvino", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install openvino" in err
    assert not (tmp_path / "c.lk").exists()  # a first run that failed leaves nothing behind


def test_precisions_the_runtime_cannot_run_are_refused_in_one_line(tiny_embedder):
    with pytest.raises(LookalikeError, match="int8 runs on OpenVINO"):
        Encoder(tiny_embedder, EncodeOptions(device="cpu", runtime="torch", precision="int8"))
    with pytest.raises(LookalikeError, match="fp16 is not offered on the CPU"):
        Encoder(tiny_embedder, EncodeOptions(device="cpu", runtime="openvino", precision="fp16"))
    with pytest.raises(LookalikeError, match="needs a model quantised on a catalog"):
        Encoder(tiny_embedder, EncodeOptions(device="cpu", runtime="openvino", precision="int8"))


@pytest.mark.slow
def test_a_trained_model_file_runs_on_openvino_too(tmp_path):
    """Any embedder with a torch ``model`` converts: here a ``.lkm`` autoencoder (letterbox input)."""
    import torch

    from lookalike.models import create_embedder
    from lookalike.models.modelfile import ModelFile, save_model
    from lookalike.models.networks import build_autoencoder

    arch = {"size": 32, "latent": 8, "width": 8}
    torch.manual_seed(0)
    net = build_autoencoder(arch)
    path = tmp_path / "ae.lkm"
    save_model(path, net.state_dict(), ModelFile(
        kind="autoencoder", arch=arch, preprocess={"size": 32, "fill": 255, "mean": [0.5] * 3, "std": [0.25] * 3},
        embedding={"mode": "latent", "modes": {"latent": 8}}))
    embedder = create_embedder(str(path))
    photos = varied_photos(tmp_path / "photos", 6)
    a = Encoder(embedder, FP32_OV).encode(photos)
    b = Encoder(embedder, FP32_TORCH).encode(photos)
    np.testing.assert_allclose(a, b, atol=2e-5)


# -- int8 ------------------------------------------------------------------------------------------------


def int8_catalog(tmp_path: Path, tiny_embedder, n: int = 24, precision: str = "int8"):
    from lookalike import Catalog

    varied_photos(tmp_path / "photos", n)
    catalog = Catalog.create(tmp_path / "shop.lk", TINY_MODEL, embedder=tiny_embedder)
    report = catalog.add(tmp_path / "photos", options=EncodeOptions(device="cpu", runtime="openvino",
                                                                    precision=precision, progress=False))
    return catalog, report


def test_forced_int8_is_calibrated_on_the_catalog_reports_its_recall_and_is_searchable_by_pytorch(
        tmp_path, tiny_embedder, capsys):
    import json

    from lookalike.cli import main

    catalog, report = int8_catalog(tmp_path, tiny_embedder)
    with catalog:
        assert report.indexed == 24 and report.runtime == "openvino int8 on cpu"
        assert len(report.notes) == 1 and report.notes[0].startswith("int8 forced: int8 recall@10 vs fp32 ")
        record = json.loads((tmp_path / "shop.lk" / "catalog.json").read_text())["extra"]
        assert record["runtime"]["runtime"] == "openvino" and record["runtime"]["precision"] == "int8"
        gate = record["int8"]
        assert 0.0 <= gate["recall"] <= 1.0 and gate["k"] == 10 and gate["held"] == 24 and gate["overlap"]
        assert "label" not in gate  # photos without labels: the recall rule alone
        assert (tmp_path / "shop.lk" / gate["model"]).is_file()
        # Calibrated once: a second run with new photos reuses the catalog's int8 model.
        make_image(tmp_path / "photos" / "new.jpg", color=(10, 220, 90), shape="ellipse")
        again = catalog.add(tmp_path / "photos", options=EncodeOptions(device="cpu", runtime="openvino",
                                                                      precision="int8", progress=False))
        assert again.indexed == 1 and again.notes == []
        # Searched with another runtime: the photo's own item first.
        catalog.encoder(EncodeOptions(device="cpu", runtime="torch", precision="fp32"))
        assert catalog.search(tmp_path / "photos" / "p005.jpg", k=3)[0].id == "p005"
    assert main(["status", "--catalog", str(tmp_path / "shop.lk")]) == 0
    out = capsys.readouterr().out
    assert "runtime  openvino int8 on cpu (last index run)" in out
    assert f"int8     recall@10 vs fp32 {gate['recall']:.3f} on 24 calibration photos" in out
    assert main(["status", "--catalog", str(tmp_path / "shop.lk"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"]["int8"]["recall"] == gate["recall"]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["a new photo", "a photo rewritten"])
def test_a_damaged_int8_model_is_made_again_on_the_next_run_and_the_old_files_go(tmp_path, tiny_embedder,
                                                                                  caplog, change):
    """The catalog records the sizes of its int8 model's files; one cut short is not compiled (the catalog
    falls back as if it had none, with a warning naming the file) and the next run calibrates a new one, also
    when the calibration sample, and so the model's file name, is the same as before (a photo rewritten)."""
    import json

    catalog, _ = int8_catalog(tmp_path, tiny_embedder)
    with catalog:
        gate = json.loads((tmp_path / "shop.lk" / "catalog.json").read_text())["extra"]["int8"]
        weights = (tmp_path / "shop.lk" / gate["model"]).with_suffix(".bin")
        weights.write_bytes(weights.read_bytes()[:100])
        with caplog.at_level("WARNING"):
            assert catalog.int8_model() is None
        assert any(str(weights) in r.getMessage() for r in caplog.records)
        name = "new.jpg" if change == "a new photo" else "p003.jpg"
        make_image(tmp_path / "photos" / name, color=(10, 220, 90), shape="ellipse", size=(70, 90))
        again = catalog.add(tmp_path / "photos", options=EncodeOptions(device="cpu", runtime="openvino",
                                                                      precision="int8", progress=False))
        assert again.indexed == 1 and again.notes[0].startswith("int8 forced: ")
        remade = catalog.int8_model()
        assert (remade.path == tmp_path / "shop.lk" / gate["model"]) == (change == "a photo rewritten")
        assert remade is not None and remade.path.with_suffix(".bin").stat().st_size > 100
        left = sorted(p.name for p in (tmp_path / "shop.lk" / "openvino").iterdir())
        assert left == sorted([remade.path.name, remade.path.with_suffix(".bin").name])
        assert catalog.search(tmp_path / "photos" / name, k=1)[0].id == name.removesuffix(".jpg")


@pytest.mark.parametrize("threshold", [pytest.param(0.5, id="gate passes"),
                                       pytest.param(1.01, id="gate fails", marks=pytest.mark.slow)])
def test_auto_uses_int8_only_without_bf16_units_and_only_when_its_gate_passes(tmp_path, tiny_embedder, monkeypatch,
                                                                              threshold, native_bf16):
    """Without bf16 units auto weighs int8 (behind its gate) against fp32; with them it runs bf16 and never
    calibrates: bf16 there is fast and keeps what users see (docs/benchmarks-speed.md)."""
    from lookalike.engines import openvino_runtime as ovr

    monkeypatch.setattr(ovr, "GATE_RECALL", threshold)
    monkeypatch.setattr("lookalike.catalog.catalog.AUTO_MIN_PHOTOS", 12)
    if native_bf16:
        monkeypatch.setattr(ovr, "quantize_int8", lambda *a, **k: pytest.fail("calibrated on a CPU with bf16 units"))
    chosen = "bf16" if native_bf16 else ("int8" if threshold < 1 else "fp32")
    catalog, report = int8_catalog(tmp_path, tiny_embedder, precision="auto")
    with catalog:
        assert report.runtime == f"openvino {chosen} on cpu"
        if native_bf16:
            assert report.notes == [] and catalog.int8_model() is None
        elif chosen == "int8":
            (note,) = report.notes
            assert note.startswith("int8 chosen: ") and "passes the 0.50 gate" in note
        else:
            (note,) = report.notes
            assert note.startswith("int8 not used, fp32 instead: ") and "fails the 1.01 gate" in note
        # Search and serve read the same verdict from the catalog: OpenVINO's auto picks what indexing picked.
        assert catalog.encoder(EncodeOptions(device="cpu", runtime="openvino")).precision == chosen
        # The runtime's own auto: OpenVINO with that verdict on both kinds of CPU.
        auto = catalog.encoder(EncodeOptions(device="cpu"))
        assert (auto.runtime, auto.precision) == ("openvino", chosen)


@pytest.mark.parametrize("max_drop", [pytest.param(1.0, id="precision kept"),
                                      pytest.param(-1.0, id="precision lost", marks=pytest.mark.slow)])
def test_on_a_labelled_catalog_the_gate_also_weighs_label_precision_and_records_it(tmp_path, tiny_embedder,
                                                                                    monkeypatch, max_drop):
    """A manifest with a category label: the gate measures label precision@5, fp32 vs int8, over every photo it
    embedded and records it; with neighbour recall short of its own bar, int8 passes only if the precision drop
    does. A record whose label figures an earlier rule measured (held photos only) is measured again."""
    import json

    from lookalike.core import cpu
    from lookalike.engines import int8_gate
    from lookalike.engines import openvino_runtime as ovr

    shapes = ("rect", "ellipse", "stripes")
    varied_photos(tmp_path / "images", 24)
    manifest = tmp_path / "styles.csv"
    manifest.write_text("id,articleType\n" + "".join(f"p{i:03d},{shapes[i % 3]}\n" for i in range(24)))
    monkeypatch.setattr(ovr, "GATE_RECALL", 1.01)  # the recall rule alone fails
    monkeypatch.setattr("lookalike.catalog.catalog.AUTO_MIN_PHOTOS", 12)
    monkeypatch.setattr(int8_gate, "LABEL_MIN_QUERIES", 12)
    monkeypatch.setattr(int8_gate, "LABEL_RECALL", 0.0)
    monkeypatch.setattr(int8_gate, "LABEL_DROP", max_drop)
    monkeypatch.setenv(cpu.BF16_ENV, "0")  # a CPU without bf16 units, where auto weighs int8
    with Catalog.create(tmp_path / "shop.lk", TINY_MODEL, embedder=tiny_embedder) as catalog:
        report = catalog.add(manifest, tmp_path / "images", options=EncodeOptions(
            device="cpu", runtime="openvino", precision="auto", progress=False))
        (note,) = report.notes
        assert "P@5 by articleType " in note and " on 24 labelled " in note
        assert report.runtime == f"openvino {'int8' if max_drop > 0 else 'fp32'} on cpu"
        gate = json.loads((tmp_path / "shop.lk" / "catalog.json").read_text())["extra"]["int8"]
        assert gate["label"] == "articleType" and gate["labelled"] == 24 and gate["max_drop"] == max_drop
        assert catalog.int8_model().passed is (max_drop > 0)
        # The figure of the precision the catalog indexed with is its own: P@5 by articleType of its vectors.
        vectors = np.stack([catalog.vector(f"p{i:03d}") for i in range(24)])
        names = [shapes[i % 3] for i in range(24)]
        own = int8_gate.label_precision(vectors, vectors, names, names, 5, list(range(24))).mean()
        assert gate["precision_int8" if max_drop > 0 else "precision_fp32"] == pytest.approx(own, abs=0.02)
        catalog._record(int8={k: v for k, v in gate.items() if k not in ("gate_version", "labelled_held")})
        assert catalog.int8_model() is None  # the first rule's record: the gate runs again when int8 is next weighed


def test_forced_int8_on_too_few_photos_is_refused_in_one_line_and_embeds_nothing(tmp_path, tiny_embedder):
    from lookalike.catalog.catalog import MIN_PHOTOS

    varied_photos(tmp_path / "photos", MIN_PHOTOS - 1)
    with Catalog.create(tmp_path / "shop.lk", TINY_MODEL, embedder=tiny_embedder) as catalog:
        with pytest.raises(LookalikeError) as refused:
            catalog.add(tmp_path / "photos", options=EncodeOptions(device="cpu", runtime="openvino",
                                                                   precision="int8", progress=False))
        message = str(refused.value)
        assert "\n" not in message and f"needs at least {MIN_PHOTOS} photos" in message
        assert f"has {MIN_PHOTOS - 1}" in message and "--precision bf16" in message
        assert len(catalog) == 0 and catalog.int8_model() is None


def test_auto_leaves_small_catalogs_in_bf16_without_calibrating(tmp_path, tiny_embedder, monkeypatch, native_bf16):
    """bf16 on a CPU with native bf16; fp32 on one without, where bf16 would be emulated."""
    from lookalike.engines import openvino_runtime as ovr

    monkeypatch.setattr(ovr, "quantize_int8", lambda *a, **k: pytest.fail("calibrated a 24-photo catalog"))
    catalog, report = int8_catalog(tmp_path, tiny_embedder, precision="auto")
    with catalog:
        assert report.notes == [] and catalog.int8_model() is None
        assert report.runtime == f"openvino {'bf16' if native_bf16 else 'fp32'} on cpu"


def test_the_calibration_sample_is_reproducible_and_held_apart():
    from lookalike.engines.openvino_runtime import draw_sample

    paths = [Path(f"/shop/{i:04d}.jpg") for i in range(364)]
    a, b = draw_sample(paths), draw_sample(list(reversed(paths)))
    assert a == b and not a.overlap
    assert len(a.held) == 91 and len(a.calibration) == 273 and not set(a.held) & set(a.calibration)
    small = draw_sample(paths[:30])
    assert small.overlap and sorted(small.held) == sorted(small.calibration) == paths[:30]


@pytest.mark.slow
@pytest.mark.parametrize("native_bf16", [True], ids=["native-bf16-cpu"], indirect=True)
def test_bf16_and_int8_recall_against_fp32_on_the_shared_photos(tmp_path, tiny_embedder, shared_photos, capsys,
                                                                native_bf16):
    """The figures the gate stands on, on real product photos: every vector of the 364 photos from OpenVINO
    bf16 and int8 (calibrated on the catalog) against OpenVINO fp32, recall@10 of the neighbour lists. The CPU
    is pinned as one with native bf16, where auto runs these: elsewhere OpenVINO computes bf16 as fp32."""
    from lookalike import Catalog
    from lookalike.engines.openvino_runtime import neighbour_recall

    vectors = {}
    for precision in ("fp32", "bf16", "int8"):
        with Catalog.create(tmp_path / f"{precision}.lk", TINY_MODEL, embedder=tiny_embedder) as catalog:
            report = catalog.add(shared_photos / "images", options=EncodeOptions(
                device="cpu", runtime="openvino", precision=precision, progress=False))
            assert report.indexed == 364 and report.runtime == f"openvino {precision} on cpu"
            _, vectors[precision] = catalog.store.vectors(catalog.config.embedder.dim)
            if precision == "int8":
                gate = catalog.int8_model()
                assert gate is not None and not gate.overlap and gate.held == 91 and gate.calibration == 273
    recalls = {p: neighbour_recall(vectors[p], vectors["fp32"], 10) for p in ("bf16", "int8")}
    with capsys.disabled():
        print(f"\nrecall@10 vs OpenVINO fp32 over 364 photos ({TINY_MODEL}, random weights): bf16 "
              f"{recalls['bf16']:.3f}, int8 {recalls['int8']:.3f} (gate on 91 held photos: {gate.recall:.3f})")
    assert recalls["bf16"] >= 0.95
    assert recalls["int8"] >= 0.85


# -- serve -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_serve_embeds_uploads_with_the_chosen_runtime(shop, runtime, monkeypatch):
    """``LOOKALIKE_RUNTIME`` (or ``serve --runtime``) picks what the batcher's one model thread runs; the
    answers agree either way, since the catalog's vectors do not depend on it."""
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    monkeypatch.setenv("LOOKALIKE_RUNTIME", runtime)
    monkeypatch.setenv("LOOKALIKE_PRECISION", "fp32")
    settings = ServeSettings(catalog=shop / "shop.lk", device="cpu")
    assert settings.runtime == runtime
    with TestClient(create_app(settings)) as client:
        health = client.get("/api/health").json()
        assert health["runtime"] == runtime and health["precision"] == "fp32"
        photo = next((shop / "photos").rglob("green-ellipse.jpg"))
        r = client.post("/api/search", files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")}, data={"k": "2"})
        assert r.status_code == 200, r.text
        first = r.json()["results"][0]
        assert first["id"] == "green-ellipse" and first["similarity"] > 0.999


@pytest.mark.slow
def test_serve_uses_the_catalogs_int8_model(tmp_path, tiny_embedder):
    from fastapi.testclient import TestClient

    from lookalike.api import ServeSettings, create_app

    catalog, _ = int8_catalog(tmp_path, tiny_embedder)
    catalog.close()
    settings = ServeSettings(catalog=tmp_path / "shop.lk", device="cpu", runtime="openvino", precision="int8")
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/health").json()["precision"] == "int8"
        data = (tmp_path / "photos" / "p007.jpg").read_bytes()
        r = client.post("/api/search", files={"image": ("p.jpg", data, "image/jpeg")}, data={"k": "1"})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "p007"


@pytest.mark.slow
@pytest.mark.parametrize("native_bf16", [True], ids=["native-bf16-cpu"], indirect=True)
def test_both_towers_of_a_text_model_run_on_openvino_converted_once(tmp_path, tiny_clip, monkeypatch, native_bf16):
    """An open_clip model: photos and words on OpenVINO give PyTorch fp32's vectors; each tower is converted
    once and read from the cache after, and also runs in bf16 (the CPU pinned as one with native bf16, so the
    bf16 hint is used on any CPU)."""
    import openvino

    monkeypatch.setenv("LOOKALIKE_OPENVINO_CACHE", str(tmp_path / "cache"))
    photos = varied_photos(tmp_path / "photos", 6)
    words = ["a red shoe", "blue denim jacket", "", "long " * 200, "ünïcode ✓ 日本"]
    pt = Encoder(tiny_clip, FP32_TORCH)
    ov = Encoder(tiny_clip, FP32_OV)
    assert ov.runtime == "openvino"
    np.testing.assert_allclose(ov.encode(photos), pt.encode(photos), atol=2e-5)
    text = ov.encode_text(words)
    assert text.shape == (len(words), tiny_clip.dim) and text.dtype == np.float32
    np.testing.assert_allclose(text, pt.encode_text(words), atol=2e-5)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.name.endswith("-text")]) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    bf16 = Encoder(tiny_clip, EncodeOptions(device="cpu", runtime="openvino", precision="bf16"))
    assert bf16.model.hint == "bf16"
    assert np.min(np.sum(bf16.encode_text(words) * text, axis=1)) > 0.999


def test_a_model_given_fewer_threads_than_cores_does_not_pin_them(tmp_path, tiny_embedder):
    """Ray actors share a node's cores, one OpenVINO model each: pinned, every process put its threads on the
    same first cores (two one-thread actors on two cores ran at one core's rate between them)."""
    from lookalike.engines import openvino_runtime as ovr

    encoder = Encoder(tiny_embedder, FP32_OV)
    assert encoder.model.threads == ovr.cores()
    encoder.model.threads = 1
    compiled = encoder.model.latency()
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    if ovr.cores() > 1:
        assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert encoder.encode(make_image(tmp_path / "x.jpg")).shape == (tiny_embedder.dim,)


def test_the_exit_hook_is_registered_once_however_many_models_come_and_go(monkeypatch):
    """Each registration was one more full garbage collection when the process exits."""
    import atexit

    from lookalike.engines import openvino_runtime as ovr

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn))
    for _ in range(3):
        ovr.OpenVinoModel(Path("unused.xml"), "fp32")  # gone at once: the live set empties (unless another
        # test's model is still alive)
    assert registered in ([], [ovr._release_all])  # once per process: here, or by an earlier test


def test_lookalike_runtime_sets_the_default_runtime_of_index_and_a_bad_value_is_one_line(tmp_path, monkeypatch,
                                                                                          capsys):
    from lookalike.cli import main

    photo = make_image(tmp_path / "photos" / "a.jpg")
    monkeypatch.setenv("LOOKALIKE_RUNTIME", "torch")
    assert main(["index", str(photo.parent), "--catalog", str(tmp_path / "c.lk"), "--model", TINY_MODEL,
                 "--weights", "random", "-q"]) == 0
    assert "torch" in capsys.readouterr().out
    monkeypatch.setenv("LOOKALIKE_RUNTIME", "openvino")
    make_image(tmp_path / "photos" / "b.jpg", color=(0, 90, 200))
    assert main(["index", str(photo.parent), "--catalog", str(tmp_path / "c.lk"), "-q"]) == 0
    assert "openvino" in capsys.readouterr().out
    with Catalog.open(tmp_path / "c.lk") as cat:
        used = cat.status().runtime["runtime"]["used"]  # e.g. ["openvino bf16", "torch bf16"]
        assert sorted(u.split()[0] for u in used) == ["openvino", "torch"]
    monkeypatch.setenv("LOOKALIKE_RUNTIME", "onnx")
    make_image(tmp_path / "photos" / "c.jpg", color=(0, 200, 90))
    assert main(["index", str(photo.parent), "--catalog", str(tmp_path / "c.lk"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "LOOKALIKE_RUNTIME='onnx' is not a runtime" in err


@pytest.mark.slow
def test_processes_converting_the_same_model_at_once_convert_it_once(tmp_path, tiny_embedder, monkeypatch):
    """Ray actors on one node start together: the first converts, the others wait on the lock and read its
    result (threads here: each takes the file lock through its own open file, as processes do)."""
    import threading
    import time

    import openvino

    from lookalike.engines import openvino_runtime as ovr

    real, calls = openvino.convert_model, []

    def slow_convert(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other thread to arrive while this one converts
        return real(*args, **kwargs)

    monkeypatch.setattr(openvino, "convert_model", slow_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ovr.converted(tiny_embedder, tmp_path / "cache")))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 3 and len(set(results)) == 1 and results[0].is_file()
    assert not list((tmp_path / "cache").glob(".converting-*"))
