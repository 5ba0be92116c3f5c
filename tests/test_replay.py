"""A search on a cached OpenVINO model without PyTorch: the preprocessing recorded when the model is converted,
replayed with Pillow and NumPy, equals timm's own transform; the search loads neither torch nor timm and gives
the answers of the loaded model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL, make_image
from test_layers import _run_counting_imports

pytest.importorskip("openvino")

from lookalike import Catalog  # noqa: E402
from lookalike.core import cpu  # noqa: E402
from lookalike.core.config import EncodeOptions  # noqa: E402
from lookalike.core.images import load_image  # noqa: E402
from lookalike.engines import openvino_runtime as ovr  # noqa: E402
from lookalike.engines.embed import Encoder, openvino_without_torch  # noqa: E402
from lookalike.models.preprocess import Preprocess, ReplayedEmbedder  # noqa: E402

FP32_OV = EncodeOptions(device="cpu", runtime="openvino", precision="fp32", progress=False)


def grey_levels(ours: np.ndarray, theirs: np.ndarray, std) -> float:
    """The largest difference of two normalised 3 x H x W model inputs, in 8-bit grey levels."""
    return float((np.abs(ours - theirs) * np.asarray(std).reshape(3, 1, 1) * 255).max())


def replayed_input(record: dict, img: Image.Image) -> np.ndarray:
    """What a process without PyTorch feeds the model: the record read back from JSON, replayed."""
    pre = Preprocess.from_dict(json.loads(json.dumps(record)))
    assert pre is not None
    return pre.normalize(ReplayedEmbedder(None, pre, Path("unused.xml")).prepare(img)[None])[0]


def test_the_record_replays_the_models_own_transform(tiny_embedder, tmp_path):
    record = Preprocess.of(tiny_embedder).to_dict()
    assert record["steps"] == "resize-center-crop" and record["crop"] == [160, 160]
    assert record["mean"] == list(tiny_embedder.data_config["mean"])
    for size in ((300, 400), (400, 300), (160, 160), (90, 500)):
        img = load_image(make_image(tmp_path / f"{size}.jpg", size=size, shape="ellipse", quality=95))
        theirs = tiny_embedder.timm_transform(img).numpy()
        assert grey_levels(replayed_input(record, img), theirs, record["std"]) < 1.01


def test_records_of_another_format_or_damaged_are_not_replayed(tiny_embedder):
    record = Preprocess.of(tiny_embedder).to_dict()
    assert Preprocess.from_dict({**record, "format": 99}) is None
    assert Preprocess.from_dict({**record, "steps": "squash"}) is None
    assert Preprocess.from_dict({k: v for k, v in record.items() if k != "crop"}) is None


@pytest.mark.parametrize(("gpu", "device", "runtime", "expected"), [
    (False, "auto", "openvino", True), (False, "cpu", "auto", None), (True, "auto", "openvino", False),
    (True, "cpu", "openvino", True), (False, "cuda", "auto", False), (False, "auto", "torch", False),
])
def test_openvino_is_chosen_without_torch_only_where_no_gpu_can_be_the_device(monkeypatch, gpu, device, runtime,
                                                                             expected):
    """``None``: whatever ``auto`` picks on this CPU (pinned by the suite) decides."""
    monkeypatch.setattr(cpu, "accelerator_possible", lambda: gpu)
    options = EncodeOptions(device=device, runtime=runtime)
    if expected is None:
        expected = ovr.resolve_runtime("auto", "cpu", cpu.has_native_bf16()) == "openvino"
    assert openvino_without_torch(options) is expected


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mobilenetv2", "resnet50"])
def test_the_replayed_preprocessing_equals_timms_transform_on_real_photos(shared_photos, model):
    """The built-in MobileNetV2 (mean/std 0.5, bilinear) and ResNet-50 (ImageNet, bicubic, crop 0.95): the record
    replayed with Pillow/NumPy against timm's ``create_transform(resolve_data_config(model))`` on full decodes."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from lookalike.models import create_embedder

    emb = create_embedder(model, weights="random" if model == "resnet50" else None)
    record = Preprocess.of(emb).to_dict()
    reference = create_transform(**resolve_data_config({}, model=emb.model if model == "mobilenetv2"
                                                       else timm.create_model(emb.info.timm_name)))
    for photo in sorted((shared_photos / "images").glob("*.jpg"))[:8]:
        with Image.open(photo) as im:
            theirs = reference(im.convert("RGB")).numpy()
        assert grey_levels(replayed_input(record, load_image(photo)), theirs, record["std"]) < 1.01, photo


@pytest.mark.slow
def test_a_search_on_a_cached_openvino_model_imports_no_torch_or_timm(tmp_path, tiny_embedder):
    """Index with OpenVINO (converts once, records the preprocessing), then search from the command line in a
    fresh interpreter: no torch, torchvision or timm, and the same answers as the loaded model's search."""
    photos = [make_image(tmp_path / "photos" / f"p{i}.jpg", color=((40 * i) % 256, 90, (70 * i) % 256),
                         shape=("rect", "ellipse", "stripes")[i % 3], size=(96 + 8 * i, 128)) for i in range(9)]
    with Catalog.create(tmp_path / "shop.lk", TINY_MODEL, embedder=tiny_embedder) as catalog:
        catalog.add(tmp_path / "photos", options=FP32_OV)
        expected = [(m.id, round(m.similarity, 4)) for m in catalog.search(photos[4], k=5)]
        found = ovr.cached_conversion(catalog.config.embedder)
        assert found is not None and found[1] == Preprocess.of(tiny_embedder)
    args = ["search", str(photos[4]), "--catalog", "shop.lk", "-k", "5", "--json", "--device", "cpu",
            "--runtime", "openvino", "--precision", "fp32"]
    res, loaded = _run_counting_imports(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert not {"torch", "torchvision", "timm"} & set(loaded), loaded
    assert [(m["id"], round(m["similarity"], 4)) for m in json.loads(res.stdout)] == expected


def test_an_encoder_on_a_replayed_model_gives_the_loaded_models_vectors(tmp_path, tiny_embedder):
    xml = ovr.converted(tiny_embedder)
    found = ovr.cached_conversion(tiny_embedder.info)
    assert found is not None and found[0] == xml
    replayed = Encoder(ReplayedEmbedder(tiny_embedder.info, found[1], xml), FP32_OV)
    loaded = Encoder(tiny_embedder, FP32_OV)
    assert replayed.runtime == "openvino" and replayed.describe() == "openvino fp32 on cpu"
    images = [make_image(tmp_path / f"{i}.jpg", color=(30 * i, 200 - 20 * i, 90), size=(100 + 9 * i, 140))
              for i in range(4)]
    np.testing.assert_allclose(replayed.encode(images), loaded.encode(images), atol=1e-5)
    assert "torch" in sys.modules  # this process loaded it for the reference; the subprocess test proves the rest
