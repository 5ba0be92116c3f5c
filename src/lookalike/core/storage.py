"""Where image files live: local paths, or object stores named by URL (``s3://``, ``gs://``, ``memory://``, any
fsspec protocol), read through fsspec filesystems so one code path serves them all.

A catalog names a local file by its path and an object by its URL; ``file://`` URLs are local paths (so a
folder indexed as ``file:///photos`` and as ``/photos`` is one set of items). fsspec is imported only when a
URL is used, and a protocol whose package is missing (``s3fs``, ``gcsfs``) is named in one line.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import SourceError

Location = Path | str  # a local path, or the URL of an object

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "hf": "huggingface_hub"}


def is_url(text: Location) -> bool:
    """An object-store URL (``s3://b/k``), not a local path; ``file://`` URLs count (see ``local_path``)."""
    return isinstance(text, str) and bool(_URL.match(text))


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def local_path(url: str) -> Path | None:
    """The local path a ``file://`` URL names (percent-escapes decoded), else None."""
    if protocol(url) != "file":
        return None
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise SourceError(f"{url}: file:// URLs name this machine's files; write file:///absolute/path")
    return Path(unquote(parts.path))


def as_location(text: str) -> Location:
    """A location as a catalog stores it (a string) back to what reads it: a URL stays a string."""
    return text if is_url(text) else Path(text)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL.

    Raises:
        SourceError: fsspec, or the protocol's package, is not installed; or the protocol is unknown.
    """
    try:
        import fsspec.core
    except ImportError as exc:
        raise SourceError(f"{url}: reading object stores needs fsspec: pip install fsspec") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package = PACKAGES.get(protocol(url), f"the fsspec package for {protocol(url)}://")
        raise SourceError(f"{url}: {protocol(url)}:// needs {package}: pip install {package}") from exc
    except ValueError as exc:
        raise SourceError(f"{url}: unknown protocol {protocol(url)}:// ({exc})") from exc


@dataclass(frozen=True)
class RemoteFile:
    """An object found under a URL prefix: its URL, its path below the prefix, size and modification time."""

    url: str
    relative: str
    size: int
    mtime_ns: int


def list_objects(url: str, extensions: frozenset[str] | set[str]) -> list[RemoteFile]:
    """Objects under a URL prefix whose names end in one of ``extensions``, recursively, in a stable order;
    names with a part starting with a dot are skipped, as hidden files are in folders.

    Raises:
        SourceError: the prefix holds nothing, or cannot be listed.
    """
    fs, root = filesystem(url)
    scheme = protocol(url)
    try:
        if not fs.isdir(root):
            raise SourceError(f"{url}: no such folder or prefix in {scheme}:// (a single object is not a "
                              "catalog source; name the prefix that holds the photos)")
        found = fs.find(root, detail=True)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - each store raises its own kinds (botocore, google.api_core, OSError)
        raise SourceError(f"{url}: cannot list ({type(exc).__name__}: {str(exc)[:200]})") from exc
    base = PurePosixPath(root.rstrip("/"))
    out = []
    for name, info in sorted(found.items()):
        if info.get("type", "file") != "file":
            continue
        rel = PurePosixPath(name.rstrip("/"))
        try:
            rel = rel.relative_to(base)
        except ValueError:
            rel = PurePosixPath(rel.name)
        if rel.suffix.lower() not in extensions or any(part.startswith(".") for part in rel.parts):
            continue
        out.append(RemoteFile(url=fs.unstrip_protocol(name), relative=rel.as_posix(), size=int(info.get("size") or 0),
                              mtime_ns=mtime_ns(info)))
    return out


def mtime_ns(info: dict) -> int:
    """An object's modification time in nanoseconds from whatever its store reports (0 when none: then a
    changed object of the same size is found by its content hash only when size differs)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created", "time_created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9) if value < 1e11 else int(value)
        if isinstance(value, str):
            try:
                return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0


def size_of(location: Location) -> int:
    """Bytes in a local file or an object.

    Raises:
        OSError: it cannot be reached (gone, no permission, the store refused).
    """
    if not is_url(location):
        return Path(location).stat().st_size
    fs, path = _fs_or_oserror(str(location))
    return int(_store_call(fs.size, path))


def read_bytes(location: Location) -> bytes:
    """The whole content of a local file or an object.

    Raises:
        OSError: it cannot be read.
    """
    if not is_url(location):
        return Path(location).read_bytes()
    fs, path = _fs_or_oserror(str(location))
    return bytes(_store_call(fs.cat_file, path))


def exists(location: Location) -> bool:
    """Is the file or object there? (A store that cannot be asked counts as there: never prune on an outage.)"""
    if not is_url(location):
        return Path(location).exists()
    try:
        fs, path = filesystem(str(location))
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001 - unreachable is not gone
        return True


def _fs_or_oserror(url: str) -> tuple[Any, str]:
    try:
        return filesystem(url)
    except SourceError as exc:
        raise OSError(str(exc)) from exc


def _store_call(fn, path: str):
    try:
        return fn(path)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - store clients raise their own kinds; callers expect OSError
        raise OSError(f"{type(exc).__name__}: {str(exc)[:160]}") from exc
