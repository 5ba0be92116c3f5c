"""Shared fixtures: tiny images made on the spot and timm's tiny test models, loaded once per session."""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

TINY_MODEL = "timm:test_resnet.r160_in1k"
SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-products"

# Tests never reach the network: a hub lookup that is not cached must fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Models converted to OpenVINO (the CPU default on x86) are cached for the tests apart from the user's own.
os.environ.setdefault("LOOKALIKE_OPENVINO_CACHE",
                      str(Path(tempfile.gettempdir()) / f"lookalike-tests-openvino-{os.getuid()}"))
# OpenMP threads (PyTorch's, FAISS's) that wait sleep at once instead of spinning: where other work shares the cores
# (2 cores, another engineer's run beside this one), spinning threads took the cores from the threads they waited
# for, and tests ran 4x slower (test_index.py at load 7: 58 s spinning, 14 s passive). Set before either library
# loads; the processes the tests start inherit it. The answers do not depend on it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No test reads the host CPU's features (lookalike.core.cpu): unless a test pins another CPU (the ``native_bf16``
# fixture), every test, and every command-line run and Ray worker it starts, sees a CPU without native bf16
# (AVX2: most laptops and CI runners), where ``auto`` runs OpenVINO in fp32 on x86 (PyTorch elsewhere).
# ``LOOKALIKE_CPU_BF16=1 pytest`` runs the suite as on a CPU with AVX512-BF16 or AMX (OpenVINO bf16 by ``auto``),
# on any x86 machine.
os.environ.setdefault("LOOKALIKE_CPU_BF16", "0")


def make_image(path: Path, color=(200, 30, 30), size=(96, 128), shape: str = "rect", fmt: str | None = None,
               mode: str = "RGB", **save) -> Path:
    """A small product-like picture: a coloured shape on white, saved in any format/mode."""
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    if shape == "ellipse":
        draw.ellipse(box, fill=color)
    elif shape == "stripes":
        for x in range(0, w, 8):
            draw.rectangle((x, 0, x + 3, h), fill=color)
    else:
        draw.rectangle(box, fill=color)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **save)
    return path


@pytest.fixture(autouse=True)
def _lookalike_logger_as_it_was():
    """``cli.main`` sets the ``lookalike`` logger up for a terminal (its own stderr handler, no propagation to
    the root); put it back after each test, so that a later test's ``caplog`` sees the records it asserts on."""
    logger = logging.getLogger("lookalike")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(params=[True, False], ids=["native-bf16-cpu", "no-bf16-cpu"])
def native_bf16(request, monkeypatch) -> bool:
    """Run a test on both kinds of x86 CPU: with native bf16 units (AVX512-BF16 or AMX) and without (AVX2).
    Pins the one probe, ``lookalike.core.cpu``, in this process and for the processes the test starts."""
    from lookalike.core import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: request.param)
    monkeypatch.setattr(cpu, "is_x86", lambda: True)
    monkeypatch.setenv(cpu.BF16_ENV, "1" if request.param else "0")
    return request.param


@pytest.fixture(scope="session")
def tiny_embedder():
    from lookalike.models import create_embedder

    return create_embedder(TINY_MODEL, weights="random")


COLORS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40)}
SHAPES = ("rect", "ellipse", "stripes")


@pytest.fixture(scope="module")
def shop(tmp_path_factory, tiny_embedder) -> Path:
    """Twelve labelled photos (colour x shape; stripes under shoes/) in a catalog built with the tiny model."""
    root = tmp_path_factory.mktemp("shop")
    photos = root / "photos"
    rows = ["path,colour,shape,name"]
    for colour, rgb in COLORS.items():
        for shape in SHAPES:
            rel = f"{'shoes/' if shape == 'stripes' else ''}{colour}-{shape}.jpg"
            make_image(photos / rel, color=rgb, shape=shape, quality=90)
            rows.append(f"{rel},{colour},{shape},{colour} {shape} thing")
    (root / "styles.csv").write_text("\n".join(rows) + "\n")
    from lookalike import Catalog, EncodeOptions

    with Catalog.create(root / "shop.lk", TINY_MODEL, embedder=tiny_embedder) as catalog:
        catalog.add(root / "styles.csv", images=photos, options=EncodeOptions(workers=0, progress=False))
    return root


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """Twelve small photos: four colours x three shapes, some in subfolders."""
    folder = tmp_path / "photos"
    colors = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200), "yellow": (230, 210, 40)}
    for name, color in colors.items():
        for shape in ("rect", "ellipse", "stripes"):
            sub = folder / ("shoes" if shape == "stripes" else "")
            make_image(sub / f"{name}-{shape}.jpg", color=color, shape=shape, quality=90)
    return folder


@pytest.fixture
def shared_photos() -> Path:
    if not (SHARED_PHOTOS / "images").is_dir():
        pytest.skip("../shared/datasets/fashion-products is not beside the project")
    return SHARED_PHOTOS


def random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height 8-bit grey, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


@pytest.fixture
def labelled_catalog(tmp_path: Path, photo_dir: Path):
    """A colour-histogram catalog of ``photo_dir`` from a manifest: labels colour and shape on 11 of the 12
    photos (blue-stripes has no row), plus ``red-copy``, an exact copy of red-rect. No network model needed."""
    import shutil

    from lookalike import Catalog
    from lookalike.core.config import EncodeOptions

    shutil.copy(photo_dir / "red-rect.jpg", photo_dir / "red-copy.jpg")
    rows = ["path,colour,shape"]
    for path in sorted(photo_dir.rglob("*.jpg")):
        colour, shape = path.stem.split("-")
        if path.stem != "blue-stripes":
            rows.append(f"{path.relative_to(photo_dir).as_posix()},{colour},{'rect' if shape == 'copy' else shape}")
    (photo_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    catalog = Catalog.create(tmp_path / "shop.lk", "colorhist")
    catalog.add(photo_dir / "labels.csv", images=photo_dir, options=EncodeOptions(workers=0, progress=False))
    yield catalog
    catalog.close()


@pytest.fixture(scope="session", autouse=True)
def _cache_folder(tmp_path_factory):
    """Database catalogs keep their FAISS cache in a per-user folder: the tests' own, never ~/.cache."""
    old = os.environ.get("LOOKALIKE_CACHE_DIR")
    os.environ["LOOKALIKE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LOOKALIKE_CACHE_DIR", None)
    else:
        os.environ["LOOKALIKE_CACHE_DIR"] = old


# -- PostgreSQL -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server (tests/pg_cluster.py), started the first time a test needs one and stopped
    at the end of the session; skipped, with the reason, where the server binaries are missing."""
    from pg_cluster import PgCluster, find_binaries

    bindir = find_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql-15")
    cluster = PgCluster(bindir)
    try:
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    yield cluster
    cluster.remove()


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """A catalog URL of its own for each test: a fresh schema in the session's database."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:30]
    return f"{pg_server.url}?schema=t_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request, tmp_path) -> str:
    """Where a store lives, once for each backend: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.sqlite")
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["folder", "postgres"])
def catalog_location(request, tmp_path) -> str:
    """Where a catalog lives, once for each backend: a folder, then a PostgreSQL URL."""
    if request.param == "folder":
        return str(tmp_path / "shop.lk")
    return request.getfixturevalue("pg_url")


# -- text+image models (open_clip), laid out as a Hugging Face hub cache -------------------------------------

TINY_CLIP_REPO = "lookalike-test/tiny-clip"
TINY_CLIP = f"hf-hub:{TINY_CLIP_REPO}"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot(home: Path, repo: str) -> Path:
    """The snapshot folder of ``repo`` in the hub cache under ``home`` (HF_HOME), made as the hub client does."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(HUB_COMMIT)
    snapshot = folder / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def save_clip(folder: Path, seed: int = 3, model_cfg: dict | None = None, preprocess_cfg: dict | None = None,
              weights_name: str = "open_clip_model.safetensors") -> dict:
    """A seeded random open_clip model saved as a hub repo holds one: open_clip_config.json + weights."""
    import json

    import torch
    from safetensors.torch import save_file

    from lookalike.models.openclip import TINY_CONFIG, build_clip

    model_cfg = model_cfg or TINY_CONFIG
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in build_clip(model_cfg).state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic", "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if weights_name.endswith(".safetensors"):
        save_file(state, str(folder / weights_name))
    else:
        torch.save(state, folder / weights_name)
    return state


@pytest.fixture(scope="session")
def clip_hub(tmp_path_factory) -> Path:
    """An HF_HOME whose hub cache holds ``lookalike-test/tiny-clip``: a small random CLIP (seed 3)."""
    home = tmp_path_factory.mktemp("hf")
    save_clip(hub_snapshot(home, TINY_CLIP_REPO), seed=3)
    return home


@pytest.fixture
def hub_cache(monkeypatch, clip_hub) -> Path:
    """Point this process's hub client at ``clip_hub`` (subprocesses get HF_HOME instead)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(clip_hub / "hub"))
    return clip_hub


@pytest.fixture(scope="session")
def tiny_clip(clip_hub):
    """``hf-hub:lookalike-test/tiny-clip`` loaded from the cache once, its tokenizer too."""
    from huggingface_hub import constants

    from lookalike.models import create_embedder

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(clip_hub / "hub"))
        embedder = create_embedder(TINY_CLIP)
        assert embedder.tokenizer is not None
    return embedder


def word_options():
    """fp32 on the CPU, inline decoding: exact comparisons with brute force."""
    from lookalike.core.config import EncodeOptions

    return EncodeOptions(device="cpu", precision="fp32", workers=0, progress=False)


@pytest.fixture(scope="module")
def word_shop(tmp_path_factory, tiny_clip) -> Path:
    """The twelve labelled photos (colour x shape) in a catalog of the tiny random CLIP."""
    from lookalike import Catalog

    root = tmp_path_factory.mktemp("words")
    rows = ["path,colour,shape"]
    for colour, rgb in COLORS.items():
        for shape in SHAPES:
            make_image(root / "photos" / f"{colour}-{shape}.jpg", color=rgb, shape=shape, quality=90)
            rows.append(f"{colour}-{shape}.jpg,{colour},{shape}")
    (root / "photos" / "labels.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(root / "shop.lk", TINY_CLIP, embedder=tiny_clip) as catalog:
        catalog.add(root / "photos" / "labels.csv", options=word_options())
    return root




TINY_OWL_REPO = "lookalike-test/tiny-owlv2"


def save_tiny_owl(folder: Path, seed: int = 0) -> Path:
    """A seeded random OWLv2 (transformers' ``Owlv2ForObjectDetection``: 32-pixel images in 4x4 patches, two
    layers a tower) and its processor (a byte-level CLIP tokenizer with no merges), saved with save_pretrained
    as a hub repo holds them. The box head's last layer is zeroed, so each patch predicts its own square
    (OWLv2's box bias): boxes a quarter of the padded photo's side, at known places."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16, pad_token="!")
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = Owlv2Config(text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 16,
                                      "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                                      "pad_token_id": vocab["!"]},
                         vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=32)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def owl_hub(tmp_path_factory) -> Path:
    """An HF_HOME whose hub cache holds ``lookalike-test/tiny-owlv2`` (``save_tiny_owl``)."""
    home = tmp_path_factory.mktemp("hf-owl")
    save_tiny_owl(hub_snapshot(home, TINY_OWL_REPO))
    return home
