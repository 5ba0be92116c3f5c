"""Shared fixtures: tiny images made on the spot and timm's tiny test models, loaded once per session."""

from __future__ import annotations

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
