"""Manifests: the rows of a CSV file with their labels, each naming a photo (or several) in an image folder.

What to index: every image under a folder, or the rows of a CSV manifest with their labels.

A manifest row names an image by ``id`` (the Kaggle ``styles.csv`` layout: id 15970 means
``images/15970.jpg``) or by a ``path``/``file``/``filename``/``image`` column; every other column becomes
a label. Images in the folder that no row names are still indexed, unlabelled, as a shop's catalog
often has photos its spreadsheet lags behind.

Manifests are read as people save them: comma, tab, semicolon or pipe separated (sniffed), UTF-8 with or
without a byte-order mark, UTF-16 or Windows-1252, any line ends. A row finds its file by exact name first,
then by the name a person would call the same: ignoring case, Unicode composition, ``.jpeg``/``.jpg``,
backslashes, ``./`` and ``file://``; a row that so matches two files is skipped with a warning.

A row is one product with one photo unless ``product_column`` groups rows (its variants: sizes, colours) into
one product, or its path cell lists several photos, ``|``-separated.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import SourceError
from .listing import SourceItem, SourceListing, file_ids, scan_folder, undecodable_counts, undecodable_lines

log = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "file", "filename", "image", "image_path", "filepath")
ID_COLUMNS = ("id", "item_id", "sku", "product_id")
# The longest manifest field read (a pasted product description): csv's own limit is 128 KiB, and a manifest
# with one longer field was refused whole; the bound keeps a file with a missing quote from becoming one field.
MAX_FIELD_CHARS = 16 * 2**20


def manifest_items(manifest: Path, images: Path | None, product_column: str | None = None) -> SourceListing:
    if images is None:
        images = manifest.parent / "images" if (manifest.parent / "images").is_dir() else manifest.parent
    if not images.is_dir():
        raise SourceError(f"{images}: image folder not found; pass --images DIR for manifest {manifest.name}")
    text, warnings = _read_text(manifest)
    with _field_limit(MAX_FIELD_CHARS):
        dialect = _sniff(text)
        records = _records(manifest, text, dialect)
    if not records:
        raise SourceError(f"{manifest}: manifest is empty; it needs a header row with an id or path column")
    header = [h.strip() for h in records[0][1]]
    path_col, id_col = _id_and_path_columns(header)
    if path_col is None and id_col is None:
        raise SourceError(_no_id_column_message(manifest, header, text, dialect.delimiter))
    product_col = _product_column(manifest, header, product_column)
    label_cols = [i for i in range(len(header)) if i not in (path_col, id_col, product_col) and header[i]]
    scan = scan_folder(images)
    found = scan.images
    undecodable = dict(scan.undecodable)  # found by a row, a file this install cannot read says why
    index = _NameIndex(images, found + list(undecodable))
    rows: list[tuple[int, str | None, Path, dict[str, str]]] = []  # line, id (None: from the file), file, labels
    places: list[tuple[int, str | None]] = []  # each row's photo: its position in the row, the row's product
    missing = ambiguous = 0
    skipped: list[tuple[Path, str]] = []
    for line_no, row in records[1:]:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            # Kaggle's styles.csv has unquoted commas in its last column: keep them there.
            row = row[: len(header) - 1] + [dialect.delimiter.join(row[len(header) - 1 :])]
        elif len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        item_id = row[id_col].strip() if id_col is not None else None
        labels = {header[i]: row[i].strip() for i in label_cols if row[i].strip()}
        product = row[product_col].strip() or None if product_col is not None else None
        position = 0
        for ref, path, rivals in _row_files(row, path_col, id_col, index, manifest.parent, dialect.delimiter):
            if rivals:
                ambiguous += 1
                if ambiguous <= 5:
                    names = " and ".join(f"'{_shown(p, images)}'" for p in rivals[:3])
                    warnings.append(f"{manifest.name} line {line_no}: '{ref}' matches {names} alike in {images} "
                                    "(names that differ only in case, accents or extension spelling); photo "
                                    "skipped: rename one file or spell the row exactly")
                continue
            if path is None:
                missing += 1
                if missing <= 5:
                    warnings.append(f"{manifest.name} line {line_no}: no image found for '{ref}' in {images}")
                continue
            if path in undecodable:
                skipped.append((path, undecodable[path]))
                if len(skipped) <= 5:
                    warnings.append(f"{manifest.name} line {line_no}: '{ref}' is {_shown(path, images)}, "
                                    f"skipped: {undecodable[path]}")
                continue
            rows.append((line_no, item_id, path, labels))
            places.append((position, product))
            position += 1
    if ambiguous > 5:
        warnings.append(f"{manifest.name}: {ambiguous} rows in all match more than one image in {images}")
    if missing > 5:
        warnings.append(f"{manifest.name}: {missing} rows in all name an image that is not in {images}")
    row_ids = _one_id_per_line(rows, _row_ids(rows, index), product_col is not None and id_col is None)
    items = [SourceItem(id=item_id, path=path.resolve(), labels=labels, product=product, position=position)
             for item_id, (_, _, path, labels), (position, product) in zip(row_ids, rows, places, strict=True)]
    _refuse_duplicate_ids(manifest, sorted({(item.id, line) for item, (line, *_) in zip(items, rows, strict=True)}))
    claimed = {item.path for item in items}
    unclaimed = [path for path in found if path.resolve() not in claimed]
    ids = file_ids(unclaimed, images, taken={item.id for item in items})
    items.extend(SourceItem(id=item_id, path=path.resolve()) for path, item_id in zip(unclaimed, ids, strict=True))
    notes = []
    if unclaimed:
        log.info("%d images in %s have no row in %s; indexed unlabelled", len(unclaimed), images, manifest.name)
        notes.append(f"{len(unclaimed)} of {len(found)} photos in {images} had no row in {manifest.name}; indexed "
                     "unlabelled, under their file names")
    named = {path for path, _ in skipped}
    skipped += [(path, reason) for path, reason in undecodable.items() if path not in named]
    if len(skipped) > 5 or len(skipped) > len(named):
        warnings.append(f"{manifest.name}: skipped {', '.join(undecodable_lines(skipped))} in {images}")
    clash = sorted({item.id for item in items[:len(rows)]} & set(ids))
    if clash:  # a row's id spelled like the id an image without a row gets ("a.jpg"): rare, but never merged
        raise SourceError(f"{manifest}: ids {clash[:5]} of rows are also the ids of images without a row; "
                          "rename those rows' ids or give the images rows")
    return SourceListing(items=items, warnings=warnings, skipped=undecodable_counts(skipped), notes=notes)


# --- reading the text: encoding and delimiter ----------------------------------------------------------------

DELIMITERS = ",\t;|"  # csv.Sniffer's order of preference
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}


def _read_text(manifest: Path) -> tuple[str, list[str]]:
    """The manifest's text: UTF-8 (with or without a byte-order mark), UTF-16 with a mark (Excel's "Unicode
    text"), else Windows-1252 (Excel's "CSV" on a European Windows) with a warning."""
    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        raise SourceError(f"{manifest}: cannot read manifest ({exc.strerror})") from exc
    if raw.startswith(b"PK\x03\x04"):
        raise SourceError(f"{manifest}: this is a spreadsheet workbook (.xlsx), not CSV text; "
                          "save it as CSV (UTF-8) and pass that file")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding), []
    except UnicodeDecodeError as exc:
        if encoding == "utf-16":
            raise SourceError(f"{manifest}: cannot read manifest as UTF-16 ({exc.reason}); "
                              "save it as CSV (UTF-8)") from exc
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text, [f"{manifest.name} is not UTF-8; read as Windows-1252: if names look wrong, save it as "
                  "CSV (UTF-8)"]


class _Dialect(csv.Dialect):
    delimiter = ","
    quotechar = '"'
    doublequote = True
    skipinitialspace = False
    lineterminator = "\r\n"
    quoting = csv.QUOTE_MINIMAL
    strict = False


def _sniff(text: str) -> type[csv.Dialect]:
    """The delimiter, one of ``,<tab>;|``: of those that ``csv.Sniffer`` finds splitting the first 64 KiB
    consistently (quoted fields skipped over), the first that gives the header an id or path column, else
    the first. When none is consistent (one column, Kaggle's ragged last column) the header alone decides:
    the delimiter that yields an id or path column, else the one it holds most of, else a comma. Quotes are
    always ``"`` (a spreadsheet's), never a guessed apostrophe."""
    sample = text[: 1 << 16]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]  # whole lines only
    first = next((line for line in sample.splitlines() if line.strip()), "")
    working = [d for d in DELIMITERS if any(c is not None for c in _id_and_path_columns(_split(first, d)))]
    sniffed: dict[str, bool] = {}
    for chunk in (sample, first):
        for d in DELIMITERS:
            try:
                sniffed[d] = bool(csv.Sniffer().sniff(chunk, delimiters=d).skipinitialspace)
            except csv.Error:
                continue
        if sniffed:
            break
    if sniffed:
        delimiter = next((d for d in sniffed if d in working), next(iter(sniffed)))
    elif working:
        delimiter = working[0]
    else:
        delimiter = max(DELIMITERS, key=lambda d: len(_split(first, d)))  # ties: the first, a comma
    skip = sniffed.get(delimiter, False)
    return type("SniffedDialect", (_Dialect,), {"delimiter": delimiter, "skipinitialspace": skip})


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return [cell.strip() for cell in next(csv.reader([line], _Dialect, delimiter=delimiter), [])]
    except csv.Error:
        return [line]


@contextmanager
def _field_limit(chars: int) -> Iterator[None]:
    """csv's field limit (one setting for the whole process) raised while a manifest is read, then restored."""
    before = csv.field_size_limit(chars)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _records(manifest: Path, text: str, dialect: type[csv.Dialect]) -> list[tuple[int, list[str]]]:
    """Rows with the line each starts on (a quoted field may hold line breaks); blank lines count."""
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            records.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise SourceError(f"{manifest} line {start}: a field is longer than the {csv.field_size_limit()} "
                              "characters a manifest field may hold (often a quote left open); close the quote or "
                              "shorten the field") from exc
        raise SourceError(f"{manifest} line {reader.line_num}: cannot read manifest ({exc})") from exc
    while records and not any(cell.strip() for cell in records[0][1]):
        records.pop(0)  # blank lines before the header
    return records


def _column_key(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch not in " _-")


_PATH_KEYS = [_column_key(c) for c in PATH_COLUMNS]
_ID_KEYS = [_column_key(c) for c in ID_COLUMNS]


def _id_and_path_columns(header: list[str]) -> tuple[int | None, int | None]:
    """Positions of the path and id columns; names match ignoring case, spaces, ``_`` and ``-``
    ("Image Path", "file_name", "Product-ID")."""
    keys = [_column_key(h) for h in header]
    path_col = next((keys.index(k) for k in _PATH_KEYS if k in keys), None)
    id_col = next((keys.index(k) for k in _ID_KEYS if k in keys), None)
    return path_col, id_col


def _no_id_column_message(manifest: Path, header: list[str], text: str, delimiter: str) -> str:
    """Say which delimiter was used, and which one would have found an id or path column."""
    used = _DELIMITER_NAMES[delimiter]
    message = f"{manifest}: no id or path column in header {header[:8]} (read as {used}-separated)"
    line = next((line for line in text.splitlines() if line.strip()), "")
    for other in DELIMITERS:
        columns = _split(line, other)
        if other != delimiter and any(c is not None for c in _id_and_path_columns(columns)):
            return (f"{message}; split on {_DELIMITER_NAMES[other]} the header would be {columns[:8]}, but the rows "
                    f"are {used}-separated: save the manifest with one delimiter throughout")
    return f"{message}; name one of {', '.join(ID_COLUMNS + PATH_COLUMNS)}"


# --- matching rows to files ---------------------------------------------------------------------------------

_SAME_FORMAT = {".jpeg": ".jpg", ".tiff": ".tif"}


def _loose(name: str) -> str:
    """A name as a person reads it: case, Unicode composition (macOS writes "café" decomposed) and the
    spelling of the extension (.jpeg/.jpg, .tiff/.tif) ignored."""
    key = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    stem, dot, suffix = key.rpartition(".")
    if dot and "/" not in suffix:
        key = stem + _SAME_FORMAT.get("." + suffix, "." + suffix)
    return key


def _clean(ref: str) -> str:
    """A path as written anywhere: ``file://`` URLs, Windows backslashes, surrounding spaces."""
    ref = ref.strip()
    if ref.lower().startswith("file://"):
        parts = urlsplit(ref)
        if parts.netloc in ("", "localhost"):
            ref = unquote(parts.path)
    if os.sep == "/":
        ref = ref.replace("\\", "/")
    return ref


class _NameIndex:
    """The image folder's files by name, built once: exact relative paths and stems first, then the same
    names compared loosely (``_loose``)."""

    def __init__(self, root: Path, files: list[Path]):
        self.root = root
        self.root_key = _loose(os.path.abspath(root).replace(os.sep, "/"))
        self.exact: dict[str, Path] = {}
        self.ids: dict[Path, str] = {}  # file -> the id a folder source gives it
        self.stems: dict[str, Path] = {}  # 'sub/15970' -> its first file (15970.jpg before 15970.png)
        self.loose: dict[str, list[Path]] = defaultdict(list)
        self.loose_stems: dict[str, dict[str, Path]] = defaultdict(dict)  # loose stem -> exact stem -> file
        for path in files:
            rel = path.relative_to(root)
            stem = rel.with_suffix("").as_posix()
            self.exact[rel.as_posix()] = path
            self.ids[path] = stem
            self.stems.setdefault(stem, path)
            self.loose[_loose(rel.as_posix())].append(path)
            self.loose_stems[_loose(stem)].setdefault(stem, path)

    def _relative_key(self, path: Path) -> str | None:
        """``path`` below the image folder as a loose key, or None; the folders' own names compare loosely too."""
        key = _loose(os.path.abspath(path).replace(os.sep, "/"))
        prefix = self.root_key.rstrip("/") + "/"
        return key[len(prefix):] if key.startswith(prefix) else None

    def by_path(self, ref: str, base: Path) -> tuple[Path | None, list[Path]]:
        """The file a path cell names: exactly (from the image folder, then ``base``), then loosely."""
        spellings = [Path(s) for s in dict.fromkeys((ref.strip(), _clean(ref)))]
        for path in spellings:
            if not path.is_absolute() and path.as_posix() in self.exact:
                return self.exact[path.as_posix()], []
        candidates: dict[str, Path] = {}
        for path in spellings:
            for full in [path] if path.is_absolute() else [self.root / path, base / path]:
                candidates.setdefault(os.path.normpath(full), full)
        for path in candidates.values():
            if path.is_file():
                return self._on_disk(path), []
        keys = [_loose(path.as_posix()) for path in spellings if not path.is_absolute() and ".." not in path.parts]
        keys += [self._relative_key(path) for path in candidates.values()]  # from ``base``, absolute, or with ..
        for key in keys:
            if key is not None and key in self.loose:
                return _one(self.loose[key])
        return None, []

    def by_id(self, ref: str) -> tuple[Path | None, list[Path]]:
        """The file an id names: ``<id>.<any image extension>``, or the id as a file name."""
        ref = _clean(ref)
        stem = Path(ref).as_posix() if ref else ref
        if stem in self.stems:
            return self.stems[stem], []
        if stem in self.exact:
            return self.exact[stem], []
        twins = self.loose_stems.get(_loose(stem), {})
        if len(twins) == 1:
            return next(iter(twins.values())), []
        if twins:
            return None, list(twins.values())
        return _one(self.loose.get(_loose(stem), []))

    def _on_disk(self, path: Path) -> Path:
        # On a case-insensitive disk "Shoes/A.JPG" opens shoes/a.jpg: use the listing's spelling, so the file
        # is not also listed as a second, unlabelled item.
        try:
            rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))).as_posix()
        except ValueError:  # another drive (Windows)
            return path
        if rel in self.exact:
            return self.exact[rel]
        matches = self.loose.get(self._relative_key(path) or "", [])
        return matches[0] if len(matches) == 1 else path


def _one(matches: list[Path]) -> tuple[Path | None, list[Path]]:
    return (matches[0], []) if len(matches) == 1 else (None, matches)


def _row_file(row: list[str], path_col: int | None, id_col: int | None, index: _NameIndex,
              base: Path) -> tuple[str, Path | None, list[Path]]:
    """What the row names, its file (or None), and the files it matches equally well when it is ambiguous."""
    if path_col is not None and row[path_col].strip():
        return row[path_col].strip(), *index.by_path(row[path_col], base)
    if id_col is not None and row[id_col].strip():
        return row[id_col].strip(), *index.by_id(row[id_col])
    ref = row[path_col] if path_col is not None else row[id_col]
    return ref.strip(), None, []


def _product_column(manifest: Path, header: list[str], name: str | None) -> int | None:
    """The index of the column that groups rows into products (None: each row is a product).

    Raises:
        SourceError: no column has that name (the message lists the columns).
    """
    if name is None:
        return None
    for i, column in enumerate(header):
        if column == name:
            return i
    for i, column in enumerate(header):
        if _column_key(column) == _column_key(name):
            return i
    raise SourceError(f"{manifest}: no column {name!r} to group rows into products; columns: {', '.join(header)}")


def _row_files(row: list[str], path_col: int | None, id_col: int | None, index: _NameIndex, base: Path,
               delimiter: str) -> list[tuple[str, Path | None, list[Path]]]:
    """``_row_file`` for each photo a row names: a path cell may list several, ``|``-separated (unless ``|``
    separates the columns)."""
    cell = row[path_col] if path_col is not None else ""
    if delimiter == "|" or "|" not in cell:
        return [_row_file(row, path_col, id_col, index, base)]
    refs = [ref.strip() for ref in cell.split("|") if ref.strip()]
    return [(ref, *index.by_path(ref, base)) for ref in refs]


def _one_id_per_line(rows: list[tuple[int, str | None, Path, dict[str, str]]], ids: list[str],
                     numbered: bool) -> list[str]:
    """Every photo of a row takes the row's id (its first photo's, when the id comes from the file); with
    ``numbered`` (rows grouped into products, ids from files), rows naming one file are told apart by their
    line: ``a~7``."""
    first: dict[int, str] = {}
    for (line, *_), item_id in zip(rows, ids, strict=True):
        first.setdefault(line, item_id)
    out = [first[line] for line, *_ in rows]
    if numbered:
        lines_per_id: dict[str, set[int]] = defaultdict(set)
        for (line, *_), item_id in zip(rows, out, strict=True):
            lines_per_id[item_id].add(line)
        out = [item_id if len(lines_per_id[item_id]) == 1 else f"{item_id}~{line}"
               for (line, *_), item_id in zip(rows, out, strict=True)]
    return out


def _row_ids(rows: list[tuple[int, str | None, Path, dict[str, str]]], index: _NameIndex) -> list[str]:
    """Each row's id: its id cell, else its file's id as a folder source gives it ("shirts/a"), keeping the
    suffix when two different files of the manifest share a stem (a.jpg and a.png)."""
    def file_key(path: Path) -> Path:  # one file spelled two ways (outside the folder) counts once
        return path if path in index.ids else path.resolve()

    derived: dict[Path, str] = {}
    for _, item_id, path, _ in rows:
        if item_id is None:
            derived.setdefault(file_key(path), index.ids.get(path) or _stem_id(path, index.root))
    files_per_id = Counter(derived.values())
    out = []
    for _, item_id, path, _ in rows:
        if item_id is None:
            item_id = derived[file_key(path)]
            if files_per_id[item_id] > 1:
                item_id = _stem_id(path, index.root, keep_suffix=True)
        out.append(item_id)
    return out


def _refuse_duplicate_ids(manifest: Path, id_lines: list[tuple[str, int]]) -> None:
    lines: dict[str, list[int]] = defaultdict(list)
    for item_id, line in id_lines:
        lines[item_id].append(line)
    repeated = [(item_id, found) for item_id, found in lines.items() if len(found) > 1]
    if not repeated:
        return
    shown = "; ".join(f"id '{item_id}' on lines {_line_list(found)}" for item_id, found in repeated[:5])
    more = f"; and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    raise SourceError(f"{manifest}: {len(repeated)} ids appear more than once ({shown}{more}); ids must be "
                      "unique: merge or renumber those rows")


def _line_list(lines: list[int]) -> str:
    shown = [str(n) for n in lines[:4]] + ([f"{len(lines) - 4} more"] if len(lines) > 4 else [])
    return " and ".join(shown) if len(shown) == 2 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _shown(path: Path, images: Path) -> str:
    try:
        return path.relative_to(images).as_posix()
    except ValueError:
        return str(path)


def _stem_id(path: Path, images: Path, keep_suffix: bool = False) -> str:
    # A row's path may be spelled from the manifest's folder, or absolutely, while ``images`` is spelled
    # the other way: compare like with like before falling back to the bare file name.
    for file, root in ((path, images), (Path(os.path.abspath(path)), Path(os.path.abspath(images))),
                       (path.resolve(), images.resolve())):
        try:
            rel = file.relative_to(root)
        except ValueError:
            continue
        return rel.as_posix() if keep_suffix else rel.with_suffix("").as_posix()
    return path.name if keep_suffix else path.stem
