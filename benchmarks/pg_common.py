"""What the PostgreSQL benchmarks share: the shared photos repeated into a source folder, and a PostgreSQL
server (a throwaway one started like the tests' own, with PostgreSQL's default durability, or ``--pg URL``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"
sys.path.insert(0, str(ROOT / "tests"))  # pg_cluster: the tests' throwaway server


def repeated_source(folder: Path, photos: Path, at_least: int) -> list[Path]:
    """``photos/images`` repeated into ``folder/copyN/`` until there are ``at_least`` files (hard links where the
    file system allows: each is its own catalog item, the bytes are stored once)."""
    images = sorted(p for p in (photos / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise SystemExit(f"no photos in {photos / 'images'}")
    copies = -(-at_least // len(images))
    files = []
    for n in range(copies):
        sub = folder / f"copy{n}"
        sub.mkdir(parents=True, exist_ok=True)
        for image in images:
            target = sub / image.name
            if not target.exists():
                try:
                    os.link(image, target)
                except OSError:
                    shutil.copyfile(image, target)
            files.append(target)
    return files


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """A database URL: the one given, or a throwaway durable server for the length of the block."""
    if url:
        yield url
        return
    from pg_cluster import PgCluster, find_binaries

    bindir = find_binaries()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (apt-get install postgresql-15), and no --pg URL given")
    cluster = PgCluster(bindir)
    try:
        cluster.start(durable=True)
        yield cluster.url
    finally:
        cluster.remove()


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
