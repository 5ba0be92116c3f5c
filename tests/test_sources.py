"""What gets indexed: folders of images and CSV/TSV manifests (Kaggle styles.csv and path manifests)."""

from __future__ import annotations

import csv
import os
import shutil
import unicodedata
from pathlib import Path

import pytest

from conftest import make_image
from lookalike.core import manifests
from lookalike.core.errors import SourceError
from lookalike.core.sources import SourceItem, read_source

KAGGLE_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
KAGGLE_COLUMNS = KAGGLE_HEADER.split(",")[1:]


def ids(listing) -> list[str]:
    return [item.id for item in listing.items]


def by_id(listing) -> dict[str, SourceItem]:
    out = {item.id: item for item in listing.items}
    assert len(out) == len(listing.items)
    return out


def image(path: Path, **kw) -> Path:
    """A tiny real image at ``path`` (format from the suffix)."""
    return make_image(path, size=(16, 16), **kw)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- folders ----------------------------------------------------------------------------------------------

def test_folder_ids_are_relative_paths_without_suffix(photo_dir):
    listing = read_source(photo_dir)
    expected = {f"{c}-{s}" for c in ("red", "green", "blue", "yellow") for s in ("rect", "ellipse")}
    expected |= {f"shoes/{c}-stripes" for c in ("red", "green", "blue", "yellow")}
    assert set(ids(listing)) == expected
    assert listing.warnings == []
    item = by_id(listing)["shoes/red-stripes"]
    assert item.path == (photo_dir / "shoes" / "red-stripes.jpg").resolve()
    assert item.path.is_absolute() and item.path.is_file()
    assert item.labels == {}


EXTENSIONS = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "JPG", "JPEG", "Png", "TIFF", "WebP"]


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_folder_lists_every_image_extension_case_insensitively(tmp_path, ext):
    image(tmp_path / "pics" / "deep" / "er" / f"item.{ext}")
    listing = read_source(tmp_path / "pics")
    assert ids(listing) == ["deep/er/item"]
    assert listing.items[0].path.name == f"item.{ext}"


def test_folder_lists_all_extensions_together_recursively(tmp_path):
    root = tmp_path / "shop"
    for i, ext in enumerate(EXTENSIONS):
        image(root / ("sub" if i % 2 else "") / f"p{i:02d}.{ext}")
    listing = read_source(root)
    expected = {("sub/" if i % 2 else "") + f"p{i:02d}" for i in range(len(EXTENSIONS))}
    assert set(ids(listing)) == expected
    assert len(listing.items) == len(EXTENSIONS)


def test_folder_ignores_non_images_and_hidden_things(tmp_path):
    root = tmp_path / "shop"
    image(root / "keep.jpg")
    image(root / "sub" / "keep2.png")
    write(root / "notes.txt", "not an image")
    write(root / "styles.csv", "id,name\n1,x\n")
    write(root / "README", "hello")
    shutil.copy(root / "keep.jpg", root / "keep.jpg.bak")  # image bytes, but not an image name
    image(root / ".thumbnails" / "keep.jpg")  # hidden folder
    image(root / "sub" / ".cache" / "deep" / "x.png")  # hidden folder further down
    shutil.copy(root / "keep.jpg", root / "._keep.jpg")  # macOS resource-fork junk beside the photo
    (root / "album.jpg").mkdir()  # a folder with an image suffix is not a file to decode...
    image(root / "album.jpg" / "inside.jpg")  # ...but what is inside it is
    listing = read_source(root)
    assert sorted(ids(listing)) == ["album.jpg/inside", "keep", "sub/keep2"]
    assert all(item.path.is_file() for item in listing.items)


def test_hidden_parent_of_the_source_itself_does_not_hide_it(tmp_path):
    root = tmp_path / ".config" / "shop"  # only parts below the source count
    image(root / "a.jpg")
    assert ids(read_source(root)) == ["a"]


def test_colliding_stems_keep_their_suffix(tmp_path):
    root = tmp_path / "shop"
    for name in ("a.jpg", "a.png", "b.jpg", "sub/a.jpg", "c.JPG", "c.jpeg"):
        image(root / name)
    listing = read_source(root)
    assert sorted(ids(listing)) == ["a.jpg", "a.png", "b", "c.JPG", "c.jpeg", "sub/a"]
    items = by_id(listing)
    assert items["a.png"].path == (root / "a.png").resolve()
    assert items["sub/a"].path == (root / "sub" / "a.jpg").resolve()


def test_folder_order_is_stable_whatever_the_creation_order(tmp_path):
    names = ["b.jpg", "a.png", "sub/z.jpg", "sub/a.jpg", "c.gif", "A2.bmp", "sub/deeper/m.webp"]
    first, second = tmp_path / "one", tmp_path / "two"
    for name in names:
        image(first / name)
    for name in reversed(names):
        image(second / name)
    listing = ids(read_source(first))
    assert listing == ids(read_source(first))  # same answer twice
    assert listing == ids(read_source(second))  # and independent of the order files were written
    flat = [i for i in listing if "/" not in i]
    assert flat == sorted(flat)


def test_folder_order_goes_by_path_parts_and_the_listing_carries_each_files_size_and_mtime(tmp_path):
    """Files go in the order of their paths' parts (``sorted(rglob)``'s): a folder's contents come right after
    its name, so "a/b" comes before "a-c" and "a.jpg" although "a-" and "a." sort before "a/" as strings. Each
    item's size and mtime are its file's (the catalog compares them with what it stored)."""
    for name in ("a-c.jpg", "a/b.jpg", "a/z/y.jpg", "a.jpg", "B.jpg", "a0.jpg"):
        image(tmp_path / "shop" / name)
    (tmp_path / "shop" / "x.jpg").mkdir()  # a folder named like an image is entered, not listed
    image(tmp_path / "shop" / "x.jpg" / "in.jpg")
    listing = read_source(tmp_path / "shop")
    assert ids(listing) == ["B", "a/b", "a/z/y", "a-c", "a", "a0", "x.jpg/in"]
    for item in listing.items:
        stat = Path(item.path).stat()
        assert (item.size, item.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        assert Path(item.path).is_absolute() and Path(item.path) == Path(item.path).resolve()


def test_empty_folder_gives_no_items(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "notes.txt", "x")
    assert read_source(tmp_path / "empty").items == []


def test_images_option_is_refused_for_a_folder_source(photo_dir, tmp_path):
    with pytest.raises(SourceError, match="--images"):
        read_source(photo_dir, images=tmp_path)


def test_missing_source_raises_naming_it(tmp_path):
    missing = tmp_path / "no-such-shop"
    with pytest.raises(SourceError) as info:
        read_source(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(SourceError):
        read_source(tmp_path / "no-such.csv")


def test_a_file_that_is_neither_folder_nor_manifest_is_refused(tmp_path):
    path = image(tmp_path / "one.jpg")
    with pytest.raises(SourceError) as info:
        read_source(path)
    assert str(path) in str(info.value)


# --- Kaggle styles.csv ---------------------------------------------------------------------------------------

def kaggle(tmp_path: Path, rows: list[str], images: list[str]) -> Path:
    """``styles.csv`` with the Kaggle header and ``rows``, and ``images/<name>`` beside it."""
    root = tmp_path / "fashion"
    for name in images:
        image(root / "images" / name)
    return write(root / "styles.csv", KAGGLE_HEADER + "\n" + "".join(r + "\n" for r in rows))


ROW_15970 = "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt"
ROW_39386 = "39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Peter England Men Party Blue Jeans"


def test_kaggle_labels_are_read(tmp_path):
    styles = kaggle(tmp_path, [ROW_15970, ROW_39386], ["15970.jpg", "39386.jpg"])
    listing = read_source(styles)
    assert ids(listing) == ["15970", "39386"]
    assert listing.warnings == []
    item = by_id(listing)["15970"]
    assert item.path == (styles.parent / "images" / "15970.jpg").resolve()
    assert item.labels == dict(zip(KAGGLE_COLUMNS, ROW_15970.split(",")[1:], strict=True))
    assert by_id(listing)["39386"].labels["articleType"] == "Jeans"
    assert "id" not in item.labels


def test_kaggle_image_without_a_row_is_listed_unlabelled(tmp_path):
    styles = kaggle(tmp_path, [ROW_15970], ["15970.jpg", "99999.jpg", "extra/12345.png"])
    listing = read_source(styles)
    items = by_id(listing)
    assert set(items) == {"15970", "99999", "extra/12345"}
    assert items["99999"].labels == {} and items["extra/12345"].labels == {}
    assert items["99999"].path == (styles.parent / "images" / "99999.jpg").resolve()
    assert items["15970"].labels["baseColour"] == "Navy Blue"


def test_kaggle_unlisted_images_with_the_same_stem_keep_their_suffix(tmp_path):
    # As in a folder source: 2.jpg and 2.png are two photos, not a duplicate id.
    styles = kaggle(tmp_path, [ROW_15970], ["15970.jpg", "2.jpg", "2.png"])
    listing = read_source(styles)
    assert sorted(ids(listing)) == ["15970", "2.jpg", "2.png"]
    assert by_id(listing)["2.png"].path.name == "2.png"


def test_kaggle_row_id_claims_one_file_and_a_same_stem_twin_keeps_its_suffix(tmp_path):
    styles = kaggle(tmp_path, [ROW_15970], ["15970.jpg", "15970.png"])
    items = by_id(read_source(styles))
    assert set(items) == {"15970", "15970.png"}
    assert items["15970"].labels and items["15970.png"].labels == {}
    assert items["15970.png"].path.name == "15970.png"


def test_kaggle_row_without_image_warns_with_its_line_and_is_skipped(tmp_path):
    missing = "11111,Women,Footwear,Shoes,Heels,Red,Winter,2016,Party,Missing Heels"
    styles = kaggle(tmp_path, [ROW_15970, missing, ROW_39386], ["15970.jpg", "39386.jpg"])
    listing = read_source(styles)
    assert ids(listing) == ["15970", "39386"]
    assert len(listing.warnings) == 1
    warning = listing.warnings[0]
    assert "styles.csv" in warning and "line 3" in warning and "11111" in warning
    assert "\n" not in warning


def test_kaggle_many_missing_images_are_summarised(tmp_path):
    rows = [f"{n},Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt {n}" for n in range(100, 108)]
    styles = kaggle(tmp_path, [ROW_15970, *rows], ["15970.jpg"])
    listing = read_source(styles)
    assert ids(listing) == ["15970"]
    per_line = [w for w in listing.warnings if " line " in w]
    assert [w.split(" line ")[1].split(":")[0] for w in per_line] == ["3", "4", "5", "6", "7"]
    summary = [w for w in listing.warnings if " line " not in w]
    assert len(summary) == 1 and "8 rows" in summary[0]


def test_kaggle_unquoted_commas_stay_in_the_last_column(tmp_path):
    overflow = "1163,Men,Apparel,Topwear,Tshirts,Blue,Summer,2011,Casual,Puma Men, Blue T-shirt, Slim"
    styles = kaggle(tmp_path, [overflow, ROW_15970], ["1163.jpg", "15970.jpg"])
    listing = read_source(styles)
    assert ids(listing) == ["1163", "15970"]  # the run goes on past the bad row
    labels = by_id(listing)["1163"].labels
    assert labels["productDisplayName"] == "Puma Men, Blue T-shirt, Slim"
    assert labels["usage"] == "Casual" and labels["year"] == "2011"
    assert set(labels) == set(KAGGLE_COLUMNS)
    assert listing.warnings == []


def test_kaggle_short_rows_are_padded_and_blank_lines_ignored(tmp_path):
    short = "1164,Women,Accessories"
    styles = kaggle(tmp_path, ["", ROW_15970, "", "   ", short, "", "2222,Men"], ["15970.jpg", "1164.jpg"])
    listing = read_source(styles)
    assert ids(listing) == ["15970", "1164"]
    assert by_id(listing)["1164"].labels == {"gender": "Women", "masterCategory": "Accessories"}
    # Blank lines count for the line numbers a user looks up in an editor; they never become rows.
    assert len(listing.warnings) == 1 and "line 8" in listing.warnings[0] and "2222" in listing.warnings[0]


def test_kaggle_quoted_fields_and_byte_order_mark(tmp_path):
    root = tmp_path / "fashion"
    image(root / "images" / "7.jpg")
    text = KAGGLE_HEADER + '\n7,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,"Shirt, ""slim"" fit"\n'
    (root / "styles.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # as Excel saves it
    listing = read_source(root / "styles.csv")
    assert ids(listing) == ["7"]
    assert listing.items[0].labels["productDisplayName"] == 'Shirt, "slim" fit'


def test_manifest_empty_values_are_not_labels(tmp_path):
    styles = kaggle(tmp_path, ["5,Men,,Topwear,,Blue,,,,"], ["5.jpg"])
    assert read_source(styles).items[0].labels == {"gender": "Men", "subCategory": "Topwear", "baseColour": "Blue"}


# --- other manifests -----------------------------------------------------------------------------------------

def test_images_folder_given_explicitly(tmp_path):
    pics = tmp_path / "elsewhere" / "pics"
    image(pics / "15970.jpg")
    image(pics / "39386.jpg")
    styles = write(tmp_path / "meta" / "styles.csv", f"{KAGGLE_HEADER}\n{ROW_15970}\n{ROW_39386}\n")
    image(tmp_path / "meta" / "images" / "15970.jpg", color=(0, 0, 255))  # beside the CSV, but not asked for
    listing = read_source(styles, images=pics)
    assert ids(listing) == ["15970", "39386"]
    assert by_id(listing)["15970"].path == (pics / "15970.jpg").resolve()
    assert by_id(listing)["39386"].labels["articleType"] == "Jeans"
    assert read_source(styles, images=str(pics)).items == listing.items


def test_missing_images_folder_raises(tmp_path):
    styles = write(tmp_path / "styles.csv", f"{KAGGLE_HEADER}\n{ROW_15970}\n")
    with pytest.raises(SourceError) as info:
        read_source(styles, images=tmp_path / "nope")
    assert "nope" in str(info.value)


def test_manifest_next_to_images_without_images_subfolder(tmp_path):
    image(tmp_path / "shop" / "a.jpg")
    image(tmp_path / "shop" / "b.jpg")
    manifest = write(tmp_path / "shop" / "list.csv", "id,colour\na,red\n")
    items = by_id(read_source(manifest))
    assert set(items) == {"a", "b"}
    assert items["a"].labels == {"colour": "red"} and items["b"].labels == {}


def test_path_column_relative_to_images_folder(tmp_path):
    pics = tmp_path / "pics"
    image(pics / "shirts" / "blue.jpg")
    image(pics / "shoes" / "red.png")
    manifest = write(tmp_path / "catalog.csv", "path,colour\nshirts/blue.jpg,blue\nshoes/red.png,red\n")
    listing = read_source(manifest, images=pics)
    assert ids(listing) == ["shirts/blue", "shoes/red"]  # same ids a folder source would give
    assert ids(listing) == ids(read_source(pics))
    items = by_id(listing)
    assert items["shoes/red"].labels == {"colour": "red"}
    assert items["shoes/red"].path == (pics / "shoes" / "red.png").resolve()


def test_path_column_relative_to_the_manifest_folder(tmp_path):
    image(tmp_path / "shop" / "pics" / "shirts" / "blue.jpg")
    manifest = write(tmp_path / "shop" / "catalog.csv", "file,colour\npics/shirts/blue.jpg,blue\n")
    items = by_id(read_source(manifest, images=tmp_path / "shop" / "pics"))
    assert set(items) == {"shirts/blue"}
    assert items["shirts/blue"].labels == {"colour": "blue"}
    assert items["shirts/blue"].path == (tmp_path / "shop" / "pics" / "shirts" / "blue.jpg").resolve()


@pytest.mark.parametrize("manifest_abs", [False, True])
@pytest.mark.parametrize("images_abs", [False, True])
def test_ids_do_not_depend_on_how_paths_are_spelled(tmp_path, monkeypatch, manifest_abs, images_abs):
    image(tmp_path / "shop" / "pics" / "shirts" / "blue.jpg")
    image(tmp_path / "shop" / "pics" / "shoes" / "blue.jpg")
    image(tmp_path / "shop" / "pics" / "hat.jpg")
    write(tmp_path / "shop" / "catalog.csv", "path,colour\npics/shirts/blue.jpg,navy\npics/shoes/blue.jpg,sky\n")
    monkeypatch.chdir(tmp_path)
    manifest = Path("shop/catalog.csv")
    pics = Path("shop/pics")
    listing = read_source(manifest.absolute() if manifest_abs else manifest,
                          images=pics.absolute() if images_abs else pics)
    items = by_id(listing)
    assert set(items) == {"shirts/blue", "shoes/blue", "hat"}
    assert items["shirts/blue"].labels == {"colour": "navy"} and items["shoes/blue"].labels == {"colour": "sky"}
    assert items["shoes/blue"].path == (tmp_path / "shop" / "pics" / "shoes" / "blue.jpg").resolve()


def test_absolute_paths_in_manifest(tmp_path):
    pics = tmp_path / "pics"
    inside = image(pics / "sub" / "a.jpg")
    outside = image(tmp_path / "other" / "b.png")
    manifest = write(tmp_path / "m.csv", f"path,colour\n{inside.resolve()},red\n{outside.resolve()},green\n"
                                         f"{tmp_path / 'other' / 'gone.jpg'},blue\n")
    listing = read_source(manifest, images=pics)
    items = by_id(listing)
    assert set(items) == {"sub/a", "b"}  # inside the image folder: relative id; outside: its stem
    assert items["b"].path == outside.resolve() and items["b"].labels == {"colour": "green"}
    assert items["sub/a"].labels == {"colour": "red"}
    assert len(listing.warnings) == 1 and "line 4" in listing.warnings[0] and "gone.jpg" in listing.warnings[0]


def test_id_and_path_columns_together(tmp_path):
    image(tmp_path / "pics" / "IMG_0001.jpg")
    image(tmp_path / "pics" / "IMG_0002.jpg")
    manifest = write(tmp_path / "m.csv", "sku,filename,colour\nSKU-1,IMG_0001.jpg,red\nSKU-2,IMG_0002.jpg,\n")
    items = by_id(read_source(manifest, images=tmp_path / "pics"))
    assert set(items) == {"SKU-1", "SKU-2"}
    assert items["SKU-1"].path.name == "IMG_0001.jpg" and items["SKU-1"].labels == {"colour": "red"}
    assert items["SKU-2"].labels == {}


def test_manifest_without_id_or_path_column_names_its_columns(tmp_path):
    image(tmp_path / "a.jpg")
    manifest = write(tmp_path / "m.csv", "name,colour,price\nred shirt,red,10\n")
    with pytest.raises(SourceError) as info:
        read_source(manifest)
    message = str(info.value)
    assert "name" in message and "colour" in message and "price" in message
    assert "id" in message and "path" in message  # and says what it looks for
    assert "m.csv" in message


def test_empty_manifest_raises(tmp_path):
    image(tmp_path / "a.jpg")
    with pytest.raises(SourceError, match="empty"):
        read_source(write(tmp_path / "m.csv", ""))


@pytest.mark.parametrize(
    "rows",
    [
        "id,colour\n1,red\n1,blue\n",  # the same id twice
        "id,path,colour\nx,a.jpg,red\nx,b.jpg,blue\n",  # two files under one id
    ],
)
def test_duplicate_ids_raise(tmp_path, rows):
    image(tmp_path / "images" / "1.jpg")
    image(tmp_path / "images" / "a.jpg")
    image(tmp_path / "images" / "b.jpg")
    with pytest.raises(SourceError) as info:
        read_source(write(tmp_path / "m.csv", rows))
    assert "more than once" in str(info.value) and "m.csv" in str(info.value)


def test_tsv_manifest(tmp_path):
    pics = tmp_path / "pics"
    image(pics / "shirt.jpg")
    image(pics / "trousers.png")
    manifest = write(tmp_path / "catalog.tsv",
                     "Filename\tcolour\ttitle\nshirt.jpg\tblue\tShirt, slim, blue\ntrousers.png\tgrey\tChinos\n")
    listing = read_source(manifest, images=pics)
    items = by_id(listing)
    assert set(items) == {"shirt", "trousers"}
    assert items["shirt"].labels == {"colour": "blue", "title": "Shirt, slim, blue"}  # commas are just text
    assert items["trousers"].labels == {"colour": "grey", "title": "Chinos"}
    assert listing.warnings == []


def test_manifest_whose_rows_name_no_present_image_still_lists_the_folder(tmp_path):
    # A manifest that names nothing present still indexes the folder, with a warning per missing row.
    image(tmp_path / "images" / "9.jpg")
    listing = read_source(write(tmp_path / "styles.csv", f"{KAGGLE_HEADER}\n{ROW_15970}\n"))
    assert ids(listing) == ["9"] and len(listing.warnings) == 1


def test_relative_source_paths_work(tmp_path, monkeypatch):
    image(tmp_path / "shop" / "x" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    listing = read_source("shop")
    assert ids(listing) == ["x/a"]
    assert listing.items[0].path == (tmp_path / "shop" / "x" / "a.jpg").resolve()
    assert os.path.isabs(listing.items[0].path)


# --- manifest dialects: delimiters, encodings, line ends --------------------------------------------------------

def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_semicolon_manifest_with_crlf_from_a_european_spreadsheet(tmp_path):
    image(tmp_path / "images" / "shoes" / "a.jpg")
    image(tmp_path / "images" / "b.jpg")
    text = 'id;path;category\r\n15970;shoes/a.jpg;Schuhe, rot\r\n39386;b.jpg;"Hemd; blau"\r\n'
    listing = read_source(write_bytes(tmp_path / "export.csv", text.encode("utf-8")))
    items = by_id(listing)
    assert set(items) == {"15970", "39386"} and listing.warnings == []
    assert items["15970"].labels == {"category": "Schuhe, rot"}  # a comma is text in a ;-separated file
    assert items["39386"].labels == {"category": "Hemd; blau"}  # a quoted delimiter too
    assert items["15970"].path == (tmp_path / "images" / "shoes" / "a.jpg").resolve()


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_every_delimiter_line_end_and_byte_order_mark(tmp_path, delimiter, newline, bom):
    image(tmp_path / "images" / "1.jpg")
    image(tmp_path / "images" / "2.png")
    others = "".join(d for d in ",;|" if d != delimiter)
    rows = [["id", "colour", "title"], ["1", "red", f'"a {others} b"'], ["2", "", '"two\nlines"']]
    text = newline.join(delimiter.join(row) for row in rows) + newline
    listing = read_source(write_bytes(tmp_path / "m.csv", bom + text.encode("utf-8")))
    items = by_id(listing)
    assert set(items) == {"1", "2"} and listing.warnings == []
    assert items["1"].labels == {"colour": "red", "title": f"a {others} b"}
    assert items["2"].labels == {"title": "two\nlines"} and items["2"].path.name == "2.png"


def test_tab_separated_manifest_with_commas_in_its_header(tmp_path):
    image(tmp_path / "images" / "1.jpg")
    text = "id\tname, as shown\tprice, EUR\n1\tShirt, blue\t9,99\n"
    listing = read_source(write(tmp_path / "m.txt", text))
    assert listing.items[0].labels == {"name, as shown": "Shirt, blue", "price, EUR": "9,99"}


def test_utf16_and_windows_1252_exports_are_read(tmp_path):
    image(tmp_path / "images" / "1.jpg")
    image(tmp_path / "images" / "2.jpg")
    text = "id;Farbe\r\n1;Grün\r\n2;Weiß\r\n"
    utf16 = read_source(write_bytes(tmp_path / "a.txt", text.replace(";", "\t").encode("utf-16")))  # "Unicode text"
    assert by_id(utf16)["1"].labels == {"Farbe": "Grün"} and utf16.warnings == []
    ansi = read_source(write_bytes(tmp_path / "b.csv", text.encode("cp1252")))  # Excel's "CSV" on Windows
    assert by_id(ansi)["2"].labels == {"Farbe": "Weiß"}
    assert len(ansi.warnings) == 1 and "UTF-8" in ansi.warnings[0] and "b.csv" in ansi.warnings[0]


def test_a_workbook_saved_as_csv_is_refused_with_the_fix(tmp_path):
    with pytest.raises(SourceError, match="save it as CSV"):
        read_source(write_bytes(tmp_path / "m.csv", b"PK\x03\x04" + bytes(60)))


def test_header_names_match_ignoring_case_spaces_and_underscores(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    items = by_id(read_source(write(tmp_path / "m.csv", "Image Path,File_Name_Colour\na.jpg,red\n")))
    assert items["a"].labels == {"File_Name_Colour": "red"}


def test_no_id_column_names_the_delimiter_that_would_have_found_one(tmp_path):
    image(tmp_path / "images" / "1.jpg")
    text = "id;colour\n" + "".join(f"{n},red\n" for n in range(30))  # header and rows disagree
    with pytest.raises(SourceError) as info:
        read_source(write(tmp_path / "m.csv", text))
    message = str(info.value)
    assert "no id or path column" in message and "\n" not in message
    assert "read as ','-separated" in message and "split on ';'" in message and "['id', 'colour']" in message


# --- duplicate ids ------------------------------------------------------------------------------------------

def test_duplicate_ids_are_named_with_their_lines(tmp_path):
    image(tmp_path / "images" / "15970.jpg")
    image(tmp_path / "images" / "7.jpg")
    rows = ["15970,a", "7,b", "", "8,c", "9,d", "10,e", "15970,f", "7,g", "7,h"]
    with pytest.raises(SourceError) as info:
        read_source(write(tmp_path / "m.csv", "id,colour\n2,x\n" + "\n".join(rows) + "\n"))
    message = str(info.value)
    assert "m.csv" in message and "2 ids appear more than once" in message and "\n" not in message
    assert "id '15970' on lines 3 and 9" in message and "id '7' on lines 4, 10 and 11" in message


def test_path_manifest_naming_one_file_twice_names_both_lines(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    with pytest.raises(SourceError, match=r"id 'a' on lines 2 and 4"):
        read_source(write(tmp_path / "m.csv", "path,colour\na.jpg,red\nb.jpg,blue\n./A.JPG,green\n"))


def test_path_manifest_files_sharing_a_stem_keep_their_suffix(tmp_path):
    image(tmp_path / "images" / "a.jpg")
    image(tmp_path / "images" / "a.png")
    items = by_id(read_source(write(tmp_path / "m.csv", "path,colour\na.jpg,red\na.png,blue\n")))
    assert items["a.jpg"].labels == {"colour": "red"} and items["a.png"].labels == {"colour": "blue"}


# --- a row and its file match when a person would say they have the same name -----------------------------

NFD_CAFE = unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize(
    ("column", "cell", "on_disk"),
    [
        ("path", "Shoes/Red Sneaker.JPG", "shoes/red sneaker.jpg"),  # case, on a case-sensitive disk
        ("path", "img\\\\sub\\\\a.jpg", "img/sub/a.jpg"),  # Windows backslashes (\\ in the test source)
        ("path", ".\\\\img\\\\A.jpg", "img/a.jpg"),
        ("path", "./img/a.jpg", "img/a.jpg"),
        ("path", "  img/a.jpg  ", "img/a.jpg"),
        ("path", "café.jpg", f"{NFD_CAFE}.jpg"),  # macOS writes names decomposed
        ("path", f"{NFD_CAFE}.jpg", "café.jpg"),
        ("path", "photo.jpeg", "photo.JPG"),  # the same format spelled another way
        ("path", "FILE_URL", "My Shoes/a b.jpg"),  # file:// URL, percent-encoded
        ("id", "15970", "15970.jpeg"),
        ("id", "15970", "15970.PNG"),
        ("id", "SKU-Ab1", "sku-ab1.jpg"),
        ("id", "Café", f"{NFD_CAFE}.webp"),
        ("id", "15970.JPG", "15970.jpg"),  # an id written as its file name
    ],
)
def test_rows_find_their_file_however_the_name_is_spelled(tmp_path, column, cell, on_disk):
    pics = tmp_path / "images"
    file = image(pics / on_disk)
    if cell == "FILE_URL":
        cell = file.absolute().as_uri()
    cell = cell.replace("\\\\", "\\")
    listing = read_source(write(tmp_path / "m.csv", f'{column},colour\n"{cell}",red\n'), images=pics)
    assert listing.warnings == []
    assert len(listing.items) == 1  # the file is the row's, not also an unlabelled item of its own
    item = listing.items[0]
    assert item.path == file.resolve() and item.labels == {"colour": "red"}
    if column == "path":
        assert item.id == Path(on_disk).with_suffix("").as_posix()  # as a folder source names it
    else:
        assert item.id == cell


def test_an_exact_name_wins_over_a_loose_one(tmp_path):
    pics = tmp_path / "images"
    image(pics / "red.jpg")
    image(pics / "Red.jpg")
    listing = read_source(write(tmp_path / "m.csv", "path,colour\nRed.jpg,dark\nred.jpg,light\n"), images=pics)
    assert by_id(listing)["Red"].labels == {"colour": "dark"} and by_id(listing)["red"].labels == {"colour": "light"}
    assert listing.warnings == []


@pytest.mark.parametrize(("column", "cell"), [("path", "RED.JPEG"), ("id", "RED")])
def test_a_row_matching_two_files_loosely_is_skipped_with_a_warning(tmp_path, column, cell):
    pics = tmp_path / "images"
    image(pics / "red.jpg")
    image(pics / "Red.jpg")
    listing = read_source(write(tmp_path / "m.csv", f"{column},colour\n{cell},x\n"), images=pics)
    assert sorted(ids(listing)) == ["Red", "red"] and all(item.labels == {} for item in listing.items)
    assert len(listing.warnings) == 1
    warning = listing.warnings[0]
    assert "line 2" in warning and "'red.jpg'" in warning and "'Red.jpg'" in warning and "\n" not in warning


def test_the_folder_is_listed_once_not_per_row(tmp_path, monkeypatch):
    for n in range(20):
        image(tmp_path / "images" / f"P{n}.jpg")
    calls = []
    real = manifests.scan_folder
    monkeypatch.setattr(manifests, "scan_folder", lambda folder: calls.append(folder) or real(folder))
    rows = "".join(f"p{n},x\n" for n in range(20))  # every row needs the loose lookup
    listing = read_source(write(tmp_path / "m.csv", "id,colour\n" + rows))
    assert len(calls) == 1 and len(listing.items) == 20 and listing.warnings == []


# --- big fields (issue 24) ---------------------------------------------------------------------------------


def test_a_manifest_with_a_one_megabyte_field_is_read_whole(tmp_path):
    image(tmp_path / "images" / "a1.jpg")
    image(tmp_path / "images" / "a2.jpg")
    description = "long " * 210_000  # 1 MB: a product description pasted whole, over csv's 128 KiB default
    manifest = write(tmp_path / "m.csv", f'id,description,colour\na1,"{description}",red\na2,short,blue\n')
    limit = csv.field_size_limit()
    listing = read_source(manifest)
    assert csv.field_size_limit() == limit  # restored for whoever reads CSV next
    items = by_id(listing)
    assert items["a1"].labels == {"description": description.strip(), "colour": "red"}
    assert items["a2"].labels == {"description": "short", "colour": "blue"}


def test_a_field_over_the_bound_names_the_manifest_the_line_and_the_limit(tmp_path, monkeypatch):


    monkeypatch.setattr(manifests, "MAX_FIELD_CHARS", 1000)
    image(tmp_path / "images" / "a1.jpg")
    manifest = write(tmp_path / "m.csv", f'id,description\na1,short\n\na2,"{"x" * 2000}"\n')
    limit = csv.field_size_limit()
    with pytest.raises(SourceError) as err:
        read_source(manifest)
    assert csv.field_size_limit() == limit
    message = str(err.value)
    assert "\n" not in message
    assert str(manifest) in message and "line 4" in message and "1000 characters" in message


# --- phones' formats: AVIF and HEIC (issue 24) ----------------------------------------------------------------


def phone_image(path: Path) -> Path:
    """A tiny AVIF (Pillow's own writer) or HEIC (pillow-heif's) picture."""
    if path.suffix.lower() == ".avif":
        from PIL import features

        if not features.check("avif"):
            pytest.skip("this Pillow has no AVIF writer to make the test file")
    else:
        pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif (the heic extra) writes the HEIC file")
        pillow_heif.register_heif_opener()
    return image(path)


def without_heic(monkeypatch) -> None:
    from lookalike.core import images

    monkeypatch.setattr(images, "heif_available", lambda: False)


def test_a_folder_of_phone_photos_lists_avif_heic_and_jpeg(tmp_path):
    phone_image(tmp_path / "shop" / "x.avif")
    phone_image(tmp_path / "shop" / "y.heic")
    phone_image(tmp_path / "shop" / "w.HEIF")
    image(tmp_path / "shop" / "z.jpg")
    listing = read_source(tmp_path / "shop")
    assert sorted(ids(listing)) == ["w", "x", "y", "z"]
    assert listing.warnings == [] and not listing.skipped


def test_heic_without_pillow_heif_is_counted_with_the_install_hint_as_are_non_images(tmp_path, monkeypatch):
    without_heic(monkeypatch)
    shop = tmp_path / "shop"
    image(shop / "z.jpg")
    (shop / "y.heic").write_bytes(b"\0\0\0\x1cftypheic" + b"\0" * 40)  # never decoded while listing
    write(shop / "notes.txt", "not a photo")
    write(shop / "sub" / "video.mov", "not a photo either")
    listing = read_source(shop)
    assert ids(listing) == ["z"]
    assert listing.skipped == {"reading HEIC needs pillow-heif": 1, "not images": 2}
    [warning] = listing.warnings
    assert "\n" not in warning and 'pip install "lookalike[heic]"' in warning
    assert "2 files that are not images by name (1 .mov, 1 .txt)" in warning and "y.heic" in warning


def test_a_manifest_row_finds_its_avif_photo(tmp_path):
    phone_image(tmp_path / "images" / "a1.avif")
    image(tmp_path / "images" / "a2.jpg")
    listing = read_source(write(tmp_path / "m.csv", "id,colour\na1,red\na2,blue\n"))
    assert by_id(listing)["a1"].path.name == "a1.avif" and by_id(listing)["a1"].labels == {"colour": "red"}
    assert listing.warnings == []


def test_a_manifest_row_whose_photo_is_heic_without_pillow_heif_says_what_to_install(tmp_path, monkeypatch):
    without_heic(monkeypatch)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a1.heic").write_bytes(b"\0\0\0\x1cftypheic" + b"\0" * 40)
    (tmp_path / "images" / "loose.heic").write_bytes(b"\0\0\0\x1cftypheic" + b"\0" * 40)
    image(tmp_path / "images" / "a2.jpg")
    listing = read_source(write(tmp_path / "m.csv", "id,colour\na1,red\na2,blue\n"))
    assert ids(listing) == ["a2"]
    assert listing.skipped == {"reading HEIC needs pillow-heif": 2}
    assert any("line 2" in w and "a1.heic" in w and "lookalike[heic]" in w for w in listing.warnings)
    assert not any("no image found" in w for w in listing.warnings)
