"""Real-world edges (issue 24): read-only catalogs, photos gone after indexing, REST API edges, PostgreSQL
errors that say what is wrong, text longer than the model's context, first contact with the CLI and page."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image
from lookalike import Catalog, CatalogError, EncodeOptions

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200)}


def cli(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=120)


def build(root: Path, labels: bool = True) -> Path:
    """A colour-histogram catalog of six photos (colour x shape), from a manifest with labels colour and shape."""
    photos = root / "photos"
    rows = ["path,colour,shape"]
    for colour, rgb in COLOURS.items():
        for shape in ("rect", "ellipse"):
            make_image(photos / f"{colour}-{shape}.jpg", color=rgb, shape=shape, quality=90)
            rows.append(f"{colour}-{shape}.jpg,{colour},{shape}")
    (root / "styles.csv").write_text("\n".join(rows) + "\n")
    with Catalog.create(root / "shop.lk", "colorhist") as catalog:
        if labels:
            catalog.add(root / "styles.csv", images=photos, options=EncodeOptions(workers=0, progress=False))
        else:
            catalog.add(photos, options=EncodeOptions(workers=0, progress=False))
    return root / "shop.lk"


# -- 3. a read-only catalog ------------------------------------------------------------------------------------


def test_a_read_only_catalog_searches_and_refuses_writes_in_one_line(tmp_path, monkeypatch):
    """Root ignores file modes, so the writability probe is told what a read-only mount would say; SQLite then
    opens the file with mode=ro, which it enforces for root too."""
    shop = build(tmp_path)
    shutil.rmtree(shop / "index")
    from lookalike.store import sqlite

    monkeypatch.setattr(sqlite, "writable", lambda path: False)
    with Catalog.open(shop) as catalog:
        assert catalog.status().items == 6
        assert catalog.similar("red-rect", k=2)[0].id
        assert catalog.search(tmp_path / "photos" / "blue-rect.jpg", k=1)[0].id == "blue-rect"
        with pytest.raises(CatalogError, match="read-only") as err:
            catalog.add(tmp_path / "photos", options=EncodeOptions(workers=0, progress=False))
        assert "\n" not in str(err.value)


def _read_only_mount(folder: Path) -> tuple[str, ...] | None:
    """A prefix that runs a command with ``folder`` bind-mounted read-only (a user namespace), or None."""
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" && exec "$@"'
    prefix = ("unshare", "-rm", "sh", "-c", script, "sh")
    try:
        probe = subprocess.run([*prefix, "sh", "-c", f'touch "{folder}/.probe"'], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode != 0 and b"Read-only" in probe.stderr else None


def test_a_catalog_on_a_read_only_mount_serves_status_search_and_similar(tmp_path):
    shop = build(tmp_path)
    shutil.rmtree(shop / "index")  # the FAISS cache cannot be written there either
    prefix = _read_only_mount(shop)
    if prefix is None:
        pytest.skip("cannot bind-mount read-only here (unshare -rm)")
    for args in (("status",), ("similar", "red-rect"), ("search", str(tmp_path / "photos" / "red-rect.jpg"))):
        res = cli(*args, "--catalog", str(shop), cwd=tmp_path, prefix=prefix)
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
    res = cli("index", str(tmp_path / "photos"), "--catalog", str(shop), cwd=tmp_path, prefix=prefix)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "read-only" in res.stderr
