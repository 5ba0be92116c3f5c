"""Embedders: the registry, the three ways weights arrive (hub cache, local file, random), preprocessing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL, make_image
from lookalike.core.errors import ModelUnavailableError, UnknownModelError
from lookalike.core.images import load_image
from lookalike.models import create_embedder, list_models, resolve

TIMM_NAME = TINY_MODEL.split(":", 1)[1]


def test_registry_has_the_issue_models_with_their_pooling():
    models = list_models()
    assert {"resnet50", "resnet50-avg", "inception_v3", "efficientnet_b0"} <= set(models)
    assert models["resnet50"].pool == "max"
    assert models["resnet50-avg"].pool == "avg"
    assert resolve("timm:convnext_tiny").timm_name == "convnext_tiny"


def test_unknown_names_fail_with_the_valid_ones():
    with pytest.raises(UnknownModelError, match="resnet50.*efficientnet_b0.*timm:<name>"):
        resolve("resnet5O")
    with pytest.raises(UnknownModelError, match="unknown timm model 'no_such_net'"):
        resolve("timm:no_such_net")


def test_vectors_are_unit_float32_of_the_model_width(tiny_embedder, tmp_path):
    from lookalike.engines.embed import Encoder

    paths = [make_image(tmp_path / f"{i}.png", color=(40 * i, 90, 200 - 30 * i)) for i in range(3)]
    enc = Encoder(tiny_embedder)
    one = enc.encode(paths[0])
    many = enc.encode(paths)
    assert one.shape == (tiny_embedder.dim,) and one.dtype == np.float32
    assert many.shape == (3, tiny_embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(one, many[0], atol=1e-5)


def test_max_pooling_differs_from_average_pooling(tmp_path):
    img = make_image(tmp_path / "a.png")
    from lookalike.engines.embed import Encoder

    avg = create_embedder(TINY_MODEL, weights="random")
    from lookalike.models.timm import create_timm_embedder

    mx = create_timm_embedder("t", TIMM_NAME, pool="max", weights="random")
    assert mx.info.pool == "max"
    a, m = Encoder(avg).encode(img), Encoder(mx).encode(img)
    assert not np.allclose(a, m)


def _save_weights(path: Path, seed: int = 7) -> dict:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_is_loaded_exactly(tmp_path, suffix):
    state = _save_weights(tmp_path / f"w{suffix}")
    emb = create_embedder(TINY_MODEL, weights=str(tmp_path / f"w{suffix}"))
    loaded = emb.model.state_dict()
    key = "conv1.0.weight" if "conv1.0.weight" in loaded else next(iter(loaded))
    assert torch.equal(loaded[key], state[key])
    assert emb.info.weights.startswith("file:")


def test_missing_or_wrong_weights_file_is_one_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not found"):
        create_embedder(TINY_MODEL, weights=str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelUnavailableError, match=r"test_resnet.*bad\.pth"):
        create_embedder(TINY_MODEL, weights=str(bad))


def _cli(args: list[str], env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)


@pytest.mark.slow
def test_weights_come_from_a_hub_cache_offline(tmp_path, photo_dir):
    """The real hub path: timm resolves the weights in HF_HOME's cache with HF_HUB_OFFLINE=1."""
    home = tmp_path / "hf"
    repo = home / "hub" / f"models--timm--{TIMM_NAME}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    state = _save_weights(repo / "snapshots" / commit / "model.safetensors", seed=11)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _save_weights(tmp_path / "same.safetensors", seed=11)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    hub = _cli(["index", str(photo_dir), "--catalog", "hub.lk", "--model", TINY_MODEL, "-q"], env, tmp_path)
    assert hub.returncode == 0, hub.stderr
    status = _cli(["status", "--catalog", "hub.lk", "--json"], env, tmp_path)
    assert f"hf-hub:timm/{TIMM_NAME}" in status.stdout
    local = _cli(["index", str(photo_dir), "--catalog", "file.lk", "--model", TINY_MODEL, "--weights",
                  str(tmp_path / "same.safetensors"), "-q"], env, tmp_path)
    assert local.returncode == 0, local.stderr
    from lookalike import Catalog

    with Catalog.open(tmp_path / "hub.lk") as a, Catalog.open(tmp_path / "file.lk") as b:
        for item in a.ids():
            np.testing.assert_allclose(a.vector(item), b.vector(item), atol=1e-4)
    assert state  # the cache held exactly the weights written above


@pytest.mark.slow
def test_uncached_weights_offline_fail_in_one_line_and_write_nothing(tmp_path, photo_dir):
    env = {"HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1"}
    res = _cli(["index", str(photo_dir), "--catalog", "x.lk", "--model", TINY_MODEL], env, tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert TIMM_NAME in lines[0] and "HF_HUB_OFFLINE" in lines[0] and "--weights" in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x.lk").exists()


def test_preprocessing_is_the_models_own_transform(tiny_embedder, tmp_path):
    img = load_image(make_image(tmp_path / "a.jpg", size=(300, 400), shape="ellipse", quality=95))
    ours = tiny_embedder.tensor(img)
    theirs = tiny_embedder.timm_transform(img)
    assert ours.shape == theirs.shape == (3, 160, 160)
    assert _grey_levels(ours, theirs, tiny_embedder) < 1.01


@pytest.mark.slow
@pytest.mark.parametrize("model", [TINY_MODEL, "resnet50", "inception_v3", "efficientnet_b0"])
def test_preprocessing_matches_timm_on_a_real_photo(shared_photos, model):
    """On a real product photo: equal to timm's own transform on a full decode, and close with draft."""
    import timm
    from timm.data import create_transform, resolve_data_config

    photo = sorted((shared_photos / "images").glob("*.jpg"))[0]
    emb = create_embedder(model, weights="random")
    reference = create_transform(**resolve_data_config({}, model=timm.create_model(emb.info.timm_name)))
    with Image.open(photo) as im:
        expected = reference(im.convert("RGB"))
    full = emb.tensor(load_image(photo))
    assert _grey_levels(full, expected, emb) < 1.01
    drafted = emb.tensor(load_image(photo, draft_size=emb.draft_size))
    assert drafted.shape == expected.shape
    # DCT downscaling changes pixels slightly, not the picture: about one grey level on average.
    assert (drafted - expected).abs().mean().item() < 0.05


def _grey_levels(ours: torch.Tensor, theirs: torch.Tensor, emb) -> float:
    """The largest difference of two normalised model inputs, in 8-bit grey levels."""
    std = torch.tensor(emb.data_config["std"]).view(3, 1, 1)
    return ((ours - theirs).abs() * std * 255).max().item()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(300, 400), (400, 300), (256, 256), (1001, 333), (170, 900), (100, 120)])
def test_resize_center_crop_matches_torchvision_within_one_grey_level(size, interpolation):
    """The cropped-box resize that decoding workers use gives torchvision's Resize + CenterCrop pixels."""
    from torchvision import transforms as T

    from lookalike.models.transforms import ResizeCenterCrop

    rng = np.random.default_rng(sum(size))
    smooth = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(smooth).resize(size, Image.BICUBIC)  # a photo-like picture, not pure noise
    mode = T.InterpolationMode(interpolation)
    steps = [T.Resize(168, interpolation=mode), T.CenterCrop(160)]
    fast = ResizeCenterCrop.replacing(steps)
    assert fast is not None
    ours = np.asarray(fast(img), dtype=np.int16)
    theirs = np.asarray(T.Compose(steps)(img), dtype=np.int16)
    assert ours.shape == theirs.shape == (160, 160, 3)
    assert np.abs(ours - theirs).max() <= 1
    assert (ours != theirs).mean() < 0.05  # rounding: a few values in a hundred at most


def test_resize_center_crop_leaves_other_pipelines_to_torchvision():
    from torchvision import transforms as T

    from lookalike.models.transforms import ResizeCenterCrop

    assert ResizeCenterCrop.replacing([T.Resize((200, 100)), T.CenterCrop(96)]) is None
    assert ResizeCenterCrop.replacing([T.Resize(200, max_size=300), T.CenterCrop(96)]) is None
    assert ResizeCenterCrop.replacing([T.Resize(200)]) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_gpu_vectors_agree_with_cpu_vectors(tiny_embedder, tmp_path):
    from lookalike.core.config import EncodeOptions
    from lookalike.engines.embed import Encoder

    paths = [make_image(tmp_path / f"{i}.jpg", color=(30 * i, 100, 200 - 20 * i)) for i in range(6)]
    cpu = Encoder(create_embedder(TINY_MODEL, weights="random"), EncodeOptions(device="cpu", precision="fp32"))
    gpu = Encoder(create_embedder(TINY_MODEL, weights="random"), EncodeOptions(device="cuda"))
    assert gpu.precision in ("bf16", "fp16")
    cos = (cpu.encode(paths) * gpu.encode(paths)).sum(axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("native_bf16", [True], ids=["native-bf16-cpu"], indirect=True)
@pytest.mark.parametrize(("model", "runtime"), [
    (model, runtime) if model == TINY_MODEL or runtime == "torch"
    else pytest.param(model, runtime, marks=pytest.mark.slow)  # a conversion of its own: 5-10 s on 2 cores
    for runtime in ("torch", "openvino")
    for model in (TINY_MODEL, "timm:test_vit.r160_in1k", "timm:mobilenetv3_small_100")])
def test_bf16_vectors_stay_close_to_fp32_whatever_the_architecture(model, runtime, tmp_path, native_bf16):
    """PyTorch: CNNs get BatchNorm folded and one cast to bf16; models with other norms keep autocast.
    OpenVINO: every architecture converts, and its bf16 hint stays as close (the CPU pinned as one with native
    bf16, since OpenVINO on any other runs bf16 as fp32: the hint is what is checked, emulated where need be)."""
    from lookalike.core.config import EncodeOptions
    from lookalike.engines.embed import Encoder

    paths = [make_image(tmp_path / f"{i}.jpg", color=(40 * i, 120, 220 - 30 * i), shape="ellipse") for i in range(4)]
    if runtime == "openvino":
        pytest.importorskip("openvino")
    fp32 = Encoder(create_embedder(model, weights="random"), EncodeOptions(device="cpu", precision="fp32",
                                                                           runtime="torch"))
    bf16 = Encoder(create_embedder(model, weights="random"), EncodeOptions(device="cpu", precision="bf16",
                                                                           runtime=runtime))
    assert bf16.runtime == runtime and (runtime == "torch" or bf16.model.hint == "bf16")
    a, b = fp32.encode(paths), bf16.encode(paths)
    assert a.shape == b.shape == (4, fp32.embedder.dim)
    assert (a * b).sum(axis=1).min() > 0.99


def test_the_cpu_probe_reads_the_cpus_flags_unless_lookalike_cpu_bf16_pins_it(monkeypatch):
    from lookalike.core import cpu
    from lookalike.core.errors import LookalikeError

    monkeypatch.setenv(cpu.BF16_ENV, "1")
    assert cpu.has_native_bf16() is True
    monkeypatch.setenv(cpu.BF16_ENV, "0")
    assert cpu.has_native_bf16() is False
    monkeypatch.setenv(cpu.BF16_ENV, "yes")
    with pytest.raises(LookalikeError, match="LOOKALIKE_CPU_BF16='yes': use 1"):
        cpu.has_native_bf16()
    monkeypatch.delenv(cpu.BF16_ENV)
    info = Path("/proc/cpuinfo")
    flags = info.read_text() if info.is_file() else ""
    assert cpu.has_native_bf16() is ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_colour_histogram_is_the_square_root_of_the_non_white_pixel_frequencies():
    """The NumPy colorhist against NumPy's own histogramdd: background (>= 240 on every channel) left out,
    an all-white photo keeping all its pixels, unit length."""
    from lookalike.models.handcrafted import ColourHistogramEmbedder

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    batch[1, :32] = 255  # half studio white
    batch[2] = 250  # all background
    vectors = ColourHistogramEmbedder().embed_arrays(batch)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 512)
    for row, img in zip(vectors, batch, strict=True):
        pixels = img.reshape(-1, 3).astype(float)
        keep = pixels.min(axis=1) < 240
        keep = keep if keep.any() else np.ones(len(pixels), bool)
        hist, _ = np.histogramdd(pixels[keep], bins=8, range=[(0, 256)] * 3)
        expected = np.sqrt(hist.ravel() / keep.sum())
        np.testing.assert_allclose(row, expected, atol=1e-6)
        assert abs(np.linalg.norm(row) - 1) < 1e-5


def test_model_free_embedders_encode_without_pytorch(tmp_path):
    """``pixels``: the 16 x 16 thumbnail, centred, unit length; the encoder runs it on NumPy (fp32, cpu) and
    a fresh interpreter that encodes with it never imports torch."""
    from lookalike.engines.embed import Encoder

    photo = make_image(tmp_path / "p.png", color=(10, 200, 30), size=(40, 40))
    encoder = Encoder(create_embedder("pixels"))
    assert str(encoder.device) == "cpu" and encoder.precision == "fp32"
    vector = encoder.encode(photo)
    thumb = np.asarray(Image.open(photo).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), float)
    expected = thumb.transpose(2, 0, 1).ravel() - thumb.mean()
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-6)
    code = ("import sys\nfrom lookalike.engines.embed import Encoder\nfrom lookalike.models import create_embedder\n"
            f"Encoder(create_embedder('colorhist')).encode([{str(photo)!r}] * 3)\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
