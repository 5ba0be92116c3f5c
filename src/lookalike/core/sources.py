"""What to index: every image under a folder, or the rows of a CSV manifest with their labels.

A manifest row names an image by ``id`` (the Kaggle ``styles.csv`` layout: id 15970 means
``images/15970.jpg``) or by a ``path``/``file``/``filename``/``image`` column; every other column becomes
a label. Images in the folder that no row names are still indexed, unlabelled, as a shop's catalog
often has photos its spreadsheet lags behind.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SourceError
from .images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "filepath")
ID_COLUMNS = ("id", "item_id", "sku", "product_id")


@dataclass(frozen=True)
class SourceItem:
    """One image to index: the id users will search by, where its file is, and its labels."""

    id: str
    path: Path
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceListing:
    items: list[SourceItem]
    warnings: list[str] = field(default_factory=list)


def read_source(source: str | Path, images: str | Path | None = None) -> SourceListing:
    """List the images of a folder or a CSV manifest.

    Raises:
        SourceError: the source does not exist, or a manifest has no id or path column.
    """
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: no such folder or manifest; pass a folder of images or a CSV file")
    if source.is_dir():
        if images is not None:
            raise SourceError("--images is only for a CSV manifest; a folder source is scanned as is")
        return SourceListing(items=_folder_items(source))
    if source.suffix.lower() in (".csv", ".tsv", ".txt"):
        return _manifest_items(source, Path(images) if images is not None else None)
    raise SourceError(f"{source}: not a folder or a .csv manifest")


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order (hidden folders skipped)."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return found


def _folder_items(folder: Path) -> list[SourceItem]:
    paths = find_images(folder)
    return [SourceItem(id=item_id, path=path.resolve())
            for path, item_id in zip(paths, _file_ids(paths, folder), strict=True)]


def _file_ids(paths: list[Path], root: Path, taken: set[str] = frozenset()) -> list[str]:
    """Ids for files under ``root``: "shirts/a.jpg" is "shirts/a", unless another file of the list has that
    stem (a.jpg and a.png) or the id is already ``taken``; then the file keeps its suffix."""
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
    counts = Counter(stems)
    return [stem if counts[stem] == 1 and stem not in taken else path.relative_to(root).as_posix()
            for path, stem in zip(paths, stems, strict=True)]


def _manifest_items(manifest: Path, images: Path | None) -> SourceListing:
    if images is None:
        images = manifest.parent / "images" if (manifest.parent / "images").is_dir() else manifest.parent
    if not images.is_dir():
        raise SourceError(f"{images}: image folder not found; pass --images DIR for manifest {manifest.name}")
    warnings: list[str] = []
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            dialect = _sniff(sample)
            rows = list(csv.reader(fh, dialect))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{manifest}: cannot read manifest ({exc})") from exc
    if not rows:
        raise SourceError(f"{manifest}: manifest is empty; it needs a header row with an id or path column")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    path_col = next((lower.index(c) for c in PATH_COLUMNS if c in lower), None)
    id_col = next((lower.index(c) for c in ID_COLUMNS if c in lower), None)
    if path_col is None and id_col is None:
        raise SourceError(
            f"{manifest}: no id or path column in header {header[:8]}; name one of "
            f"{', '.join(ID_COLUMNS + PATH_COLUMNS)}"
        )
    label_cols = [i for i in range(len(header)) if i not in (path_col, id_col) and header[i]]
    found = find_images(images)
    by_stem: dict[str, Path] = {}  # 'sub/15970' -> its file, for id lookups
    for path in found:
        by_stem.setdefault(path.relative_to(images).with_suffix("").as_posix(), path)
    items: list[SourceItem] = []
    claimed: set[Path] = set()
    missing = 0
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            # Kaggle's styles.csv has unquoted commas in its last column: keep them there.
            row = row[: len(header) - 1] + [",".join(row[len(header) - 1 :])]
        elif len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        path = _row_path(row, path_col, id_col, (images, manifest.parent), by_stem)
        if path is None:
            missing += 1
            if missing <= 5:
                ref = row[path_col] if path_col is not None else row[id_col]
                warnings.append(f"{manifest.name} line {line_no}: no image found for '{ref}' in {images}")
            continue
        item_id = row[id_col].strip() if id_col is not None else _stem_id(path, images)
        labels = {header[i]: row[i].strip() for i in label_cols if row[i].strip()}
        items.append(SourceItem(id=item_id, path=path.resolve(), labels=labels))
        claimed.add(path.resolve())
    if missing > 5:
        warnings.append(f"{manifest.name}: {missing} rows in all name an image that is not in {images}")
    unclaimed = [path for path in found if path.resolve() not in claimed]
    ids = _file_ids(unclaimed, images, taken={item.id for item in items})
    items.extend(SourceItem(id=item_id, path=path.resolve()) for path, item_id in zip(unclaimed, ids, strict=True))
    if unclaimed:
        log.info("%d images in %s have no row in %s; indexed unlabelled", len(unclaimed), images, manifest.name)
    dupes = len(items) - len({item.id for item in items})
    if dupes:
        raise SourceError(f"{manifest}: {dupes} ids appear more than once; ids must be unique")
    return SourceListing(items=items, warnings=warnings)


def _sniff(sample: str) -> type[csv.Dialect] | csv.Dialect:
    first = sample.splitlines()[0] if sample else ""
    if "\t" in first and "," not in first:
        return csv.excel_tab
    return csv.excel


def _row_path(row: list[str], path_col: int | None, id_col: int | None, roots: tuple[Path, Path],
              by_stem: dict[str, Path]) -> Path | None:
    if path_col is not None and row[path_col].strip():
        candidate = Path(row[path_col].strip())
        if candidate.is_absolute():
            return candidate if candidate.is_file() else None
        # Relative paths may be written from the image folder or from the manifest's own folder.
        return next((root / candidate for root in roots if (root / candidate).is_file()), None)
    if id_col is not None and row[id_col].strip():
        return by_stem.get(row[id_col].strip())
    return None


def _stem_id(path: Path, images: Path) -> str:
    # A row's path may be spelled from the manifest's folder, or absolutely, while ``images`` is spelled
    # the other way: compare like with like before falling back to the bare file name.
    for file, root in ((path, images), (Path(os.path.abspath(path)), Path(os.path.abspath(images))),
                       (path.resolve(), images.resolve())):
        try:
            return file.relative_to(root).with_suffix("").as_posix()
        except ValueError:
            continue
    return path.stem
