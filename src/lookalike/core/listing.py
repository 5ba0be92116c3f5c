"""What a source lists: photos (``SourceItem``) and what was passed over, and the scan of a folder that both a
folder source and a manifest's image folder start from."""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .images import IMAGE_EXTENSIONS, missing_decoder
from .storage import Location

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceItem:
    """One photo of one row (or one file of a folder): the row's id (a manifest's id cell, or a file's name),
    where the photo's file is (a local path, or an object's URL), the row's labels, the product the row belongs
    to (None: a product of its own, with the row's id) and the photo's place among the row's photos. Objects
    carry the size and modification time their listing gave (None: ask the file system)."""

    id: str
    path: Location
    labels: dict[str, str] = field(default_factory=dict)
    size: int | None = None
    mtime_ns: int | None = None
    product: str | None = None
    position: int = 0

    @property
    def product_id(self) -> str:
        return self.product if self.product is not None else self.id


@dataclass
class SourceListing:
    items: list[SourceItem]
    warnings: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # files passed over, by short reason (the summary's)
    notes: list[str] = field(default_factory=list)  # what a user should hear without -v (one line each)


@dataclass
class FolderScan:
    """What a folder holds for indexing, and what was passed over (said in one warning line).

    ``images[i]`` is a file as listed (under the folder), ``resolved[i]`` the file it is (symbolic links
    followed), ``relative[i]`` its POSIX path under the folder, ``stats[i]`` its (size in bytes, mtime in ns).
    """

    images: list[Path]
    resolved: list[Path] = field(default_factory=list)
    relative: list[str] = field(default_factory=list)
    stats: list[tuple[int, int]] = field(default_factory=list)
    broken_links: list[Path] = field(default_factory=list)  # symbolic links to nothing
    linked_folders: list[Path] = field(default_factory=list)  # symbolic links to folders: not followed
    repeated: list[Path] = field(default_factory=list)  # links to a file already listed: one file, one item
    undecodable: list[tuple[Path, str]] = field(default_factory=list)  # images this install cannot read, and why
    others: Counter[str] = field(default_factory=Counter)  # files that are not images by name, by extension


def scan_folder(folder: Path) -> FolderScan:
    """Image files under ``folder``, recursively, in a stable order (``sorted(folder.rglob("*"))``'s: by path
    parts). Hidden files and folders are skipped; a symbolic link to an image is followed (the item is the
    file it points to, listed once however many links lead to it); links to folders are not followed (no
    loops, no catalog reaching outside the folder unasked: index such a folder by its own path); broken
    links are counted; folders that cannot be read are passed over. Images of a format this install cannot
    read (HEIC without pillow-heif) and files that are not images by name are counted, not listed.

    One ``os.scandir`` per folder and one ``stat`` per file (the file type comes with the listing; a file's
    real path is its folder's plus its name, as no linked folder is entered): a driver lists millions of files.
    """
    scan = FolderScan(images=[])
    seen: set[str] = set()
    root = Path(folder)
    reasons: dict[str, str | None] = {}  # why an extension cannot be decoded here (None: it can), asked once each

    def walk(listed: str, real: str, rel: str) -> None:
        try:
            with os.scandir(listed) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (PermissionError, NotADirectoryError, FileNotFoundError):
            return
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            image = suffix in IMAGE_EXTENSIONS
            try:
                if entry.is_symlink():
                    try:
                        st = entry.stat()
                    except OSError:  # to nothing (or a loop)
                        if image:
                            scan.broken_links.append(Path(entry.path))
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        scan.linked_folders.append(Path(entry.path))
                        continue
                    if not image or not stat.S_ISREG(st.st_mode):
                        continue
                    target = os.path.realpath(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    walk(entry.path, os.path.join(real, name), f"{rel}{name}/")
                    continue
                elif image and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    target = os.path.join(real, name)
                else:
                    if entry.is_file(follow_symlinks=False):
                        scan.others[os.path.splitext(name)[1].lower()] += 1
                    continue
            except OSError:  # gone since the folder was listed
                continue
            if target in seen:
                scan.repeated.append(Path(entry.path))
                continue
            seen.add(target)
            if suffix not in reasons:
                reasons[suffix] = missing_decoder(name)
            if reasons[suffix] is not None:
                scan.undecodable.append((Path(entry.path), reasons[suffix]))
                continue
            listed_path = Path(entry.path)
            scan.images.append(listed_path)
            scan.resolved.append(listed_path if target == entry.path else Path(target))  # one Path when they agree
            scan.relative.append(rel + name)
            scan.stats.append((st.st_size, st.st_mtime_ns))

    walk(str(root), os.path.realpath(root), "")
    return scan


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order (see ``scan_folder``)."""
    return scan_folder(folder).images


def folder_listing(folder: Path) -> SourceListing:
    scan = scan_folder(folder)
    items = [SourceItem(id=item_id, path=path, size=size, mtime_ns=mtime)
             for path, item_id, (size, mtime) in zip(scan.resolved, relative_ids(scan.relative), scan.stats,
                                                     strict=True)]
    skipped = undecodable_counts(scan.undecodable)
    if scan.broken_links:
        skipped["broken links"] = len(scan.broken_links)
    if scan.others:
        skipped["not images"] = sum(scan.others.values())
    passed = [f"{len(scan.broken_links)} broken links" if scan.broken_links else "",
              f"{len(scan.linked_folders)} linked folders (not followed; index them by their own path)"
              if scan.linked_folders else "",
              f"{len(scan.repeated)} more links to files already listed" if scan.repeated else ""]
    passed += undecodable_lines(scan.undecodable)
    if scan.others:
        n = sum(scan.others.values())
        passed.append(f"{_count(n, 'file')} that {'is not an image' if n == 1 else 'are not images'} by name "
                      f"({_extensions(scan.others)})")
    passed = [p for p in passed if p]
    warnings = []
    if passed:
        example = (scan.broken_links or scan.linked_folders or scan.repeated or [p for p, _ in scan.undecodable]
                   or [None])[0]
        shown = f", e.g. {example}" if example is not None else ""
        warnings.append(f"{folder}: skipped {', '.join(passed)}{shown}")
    return SourceListing(items=items, warnings=warnings, skipped=skipped)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _extensions(counts: Counter[str]) -> str:
    shown = [f"{n} {ext or 'without extension'}" for ext, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))[:4]]
    more = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {more} more kinds" if more > 0 else "")


def undecodable_counts(undecodable: list[tuple[object, str]]) -> Counter[str]:
    """Short reasons for the summary: 'reading HEIC needs pillow-heif' (the hint's part before the colon)."""
    return Counter(reason.split(":")[0] for _, reason in undecodable)


def undecodable_lines(undecodable: list[tuple[object, str]]) -> list[str]:
    by_reason = Counter(reason for _, reason in undecodable)
    return [f"{_count(n, 'photo')} this install cannot read ({reason})" for reason, n in by_reason.items()]


def file_ids(paths: list[Path], root: Path, taken: set[str] = frozenset()) -> list[str]:
    """Ids for files under ``root``: "shirts/a.jpg" is "shirts/a", unless another file of the list has that
    stem (a.jpg and a.png) or the id is already ``taken``; then the file keeps its suffix."""
    return relative_ids([p.relative_to(root).as_posix() for p in paths], taken)


def relative_ids(relative: list[str], taken: set[str] = frozenset()) -> list[str]:
    """``file_ids`` of POSIX paths relative to the folder."""
    stems = [os.path.splitext(rel)[0] for rel in relative]
    counts = Counter(stems)
    return [stem if counts[stem] == 1 and stem not in taken else rel
            for rel, stem in zip(relative, stems, strict=True)]
