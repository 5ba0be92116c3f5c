"""Decoding user images: orientation, every colour mode to RGB, JPEG draft scaling, one-line errors."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import huge_png_header, make_image
from lookalike.core.errors import ImageError
from lookalike.core.images import content_hash, decode, load_image, source_size

RED, GREEN, BLUE, YELLOW, WHITE = (220, 20, 20), (20, 180, 40), (20, 40, 220), (230, 210, 30), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in img.getpixel(xy))


def assert_close(actual, expected, tol: int = 12) -> None:
    assert len(actual) == len(expected), (actual, expected)
    assert all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True)), (actual, expected)


def quadrants(size=(60, 40)) -> Image.Image:
    """Top-left red, top-right blue, bottom-left green, bottom-right yellow."""
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = RED
    arr[: h // 2, w // 2 :] = BLUE
    arr[h // 2 :, : w // 2] = GREEN
    arr[h // 2 :, w // 2 :] = YELLOW
    return Image.fromarray(arr, "RGB")


def quadrant_colours(img: Image.Image) -> tuple[tuple[int, ...], ...]:
    """Colours at the centres of the four quadrants: TL, TR, BL, BR."""
    w, h = img.size
    return tuple(pixel(img, (x, y)) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4))


def jpeg(size=(160, 120), quality=90, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # blocky, so it compresses like a photo
    img = Image.fromarray(small, "RGB").resize(size, Image.Resampling.BILINEAR)
    return encode(img, "JPEG", quality=quality)




# --- EXIF orientation -------------------------------------------------------------------------------------

# What the eye sees for the stored quadrants (TL red, TR blue, BL green, BR yellow) under each tag.
ORIENTATIONS = {
    1: ((60, 40), (RED, BLUE, GREEN, YELLOW)),
    2: ((60, 40), (BLUE, RED, YELLOW, GREEN)),  # mirrored left-right
    3: ((60, 40), (YELLOW, GREEN, BLUE, RED)),  # rotated 180
    6: ((40, 60), (GREEN, RED, YELLOW, BLUE)),  # shown rotated 90 clockwise: the left half ends on top
    8: ((40, 60), (BLUE, YELLOW, RED, GREEN)),  # shown rotated 90 counter-clockwise: left half at the bottom
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(quadrants(), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation  # the tag really is in the file

    img = decode(data)

    expected_size, expected_colours = ORIENTATIONS[orientation]
    assert img.mode == "RGB"
    assert img.size == expected_size
    for got, want in zip(quadrant_colours(img), expected_colours, strict=True):
        assert_close(got, want, tol=30)


def test_exif_orientation_is_applied_with_draft_too():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(quadrants((1200, 800)), "JPEG", quality=90, exif=exif.tobytes())
    img = decode(data, draft_size=100)
    w, h = img.size
    assert h > w and min(w, h) >= 100 and max(w, h) <= 600
    for got, want in zip(quadrant_colours(img), (GREEN, RED, YELLOW, BLUE), strict=True):
        assert_close(got, want, tol=30)


@pytest.mark.parametrize(("orientation", "upright"), [(1, (1200, 800)), (6, (800, 1200)), (8, (800, 1200))])
def test_a_drafted_image_still_knows_the_size_of_the_photo(orientation, upright):
    """Catalogs record the photo's size, not the reduced size the decoder chose for the model."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(quadrants((1200, 800)), "JPEG", quality=90, exif=exif.tobytes())
    img = decode(data, draft_size=100)
    assert max(img.size) <= 600  # really drafted
    assert source_size(img) == upright
    assert source_size(decode(data)) == upright == decode(data).size


# --- colour modes -----------------------------------------------------------------------------------------

def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    cmyk = Image.new("CMYK", (32, 24), (0, 255, 255, 0))  # no cyan, full magenta + yellow: red
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode(data)
    assert img.mode == "RGB" and img.size == (32, 24)
    assert_close(pixel(img, (16, 12)), (255, 0, 0), tol=20)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composites_over_white(fmt):
    img = Image.new("P", (20, 10), 0)
    img.putpalette([0, 0, 0] + [200, 30, 30] + [0, 0, 0] * 254)  # index 0 black (transparent), 1 red
    img.paste(1, (10, 0, 20, 10))
    data = encode(img, fmt, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode(data)
    assert out.mode == "RGB"
    assert pixel(out, (3, 5)) == WHITE  # transparent: white, as a shop shows it, not black
    assert_close(pixel(out, (15, 5)), (200, 30, 30), tol=2)


def test_la_png_composites_over_white():
    arr = np.zeros((10, 20, 2), np.uint8)
    arr[:, :, 0] = 50
    arr[:, 10:, 1] = 255  # right half opaque, left half fully transparent
    data = encode(Image.fromarray(arr, "LA"), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    out = decode(data)
    assert out.mode == "RGB"
    assert pixel(out, (3, 5)) == WHITE
    assert pixel(out, (15, 5)) == (50, 50, 50)


def test_rgba_png_composites_over_white():
    arr = np.zeros((10, 30, 4), np.uint8)  # left third: transparent black
    arr[:, 10:20] = (200, 30, 30, 255)  # middle: opaque red
    arr[:, 20:] = (0, 0, 0, 128)  # right: half-transparent black over white is mid grey
    data = encode(Image.fromarray(arr, "RGBA"), "PNG")
    out = decode(data)
    assert out.mode == "RGB"
    assert pixel(out, (5, 5)) == WHITE
    assert pixel(out, (15, 5)) == (200, 30, 30)
    assert_close(pixel(out, (25, 5)), (127, 127, 127), tol=2)


def test_rgba_pil_image_through_load_image_composites_over_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = load_image(img)
    assert out.mode == "RGB" and pixel(out, (4, 4)) == WHITE


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    arr = np.zeros((10, 30), np.uint16)
    arr[:, 10:20] = 40000
    arr[:, 20:] = 65535
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # Pillow reads it as 16-bit
    out = decode(data)
    assert out.mode == "RGB"
    assert pixel(out, (5, 5)) == (0, 0, 0)
    assert_close(pixel(out, (15, 5)), (156, 156, 156), tol=1)  # 40000 / 65535 * 255 = 155.6, not 255
    assert pixel(out, (25, 5)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_one_bit_image(fmt):
    img = Image.new("1", (16, 8), 0)
    img.paste(1, (8, 0, 16, 8))
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == "1"
    out = decode(data)
    assert out.mode == "RGB" and out.size == (16, 8)
    assert pixel(out, (2, 4)) == (0, 0, 0)
    assert pixel(out, (12, 4)) == WHITE


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (12, 12), c) for c in ((200, 0, 0), (0, 0, 200), (0, 200, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = decode(data)
    assert out.mode == "RGB" and out.size == (12, 12)
    assert_close(pixel(out, (6, 6)), (200, 0, 0), tol=4)


@pytest.mark.parametrize(
    ("fmt", "save", "tol"),
    [
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 90}, 25),
        ("BMP", {}, 0),
        ("PNG", {}, 0),
        ("JPEG", {"quality": 95}, 25),
    ],
)
def test_common_formats_decode(tmp_path, fmt, save, tol):
    path = make_image(tmp_path / f"x.{fmt.lower()}", color=(200, 30, 30), size=(48, 64), fmt=fmt, **save)
    out = decode(path.read_bytes())
    assert out.mode == "RGB" and out.size == (48, 64)
    assert_close(pixel(out, (24, 32)), (200, 30, 30), tol=tol)  # inside the shape
    assert_close(pixel(out, (1, 1)), WHITE, tol=tol)  # the white background


# --- JPEG draft ---------------------------------------------------------------------------------------------

def test_jpeg_draft_downscales_but_keeps_the_needed_size():
    data = jpeg((1600, 1200))
    full = decode(data)
    assert full.size == (1600, 1200)
    small = decode(data, draft_size=256)
    assert small.mode == "RGB"
    assert 256 <= min(small.size) <= 600
    assert small.size[0] * 3 == small.size[1] * 4  # aspect ratio kept (4:3)
    # Same picture: the downscaled decode matches the full decode resized to the same size.
    ref = np.asarray(full.resize(small.size, Image.Resampling.BOX), np.float64)
    assert np.abs(np.asarray(small, np.float64) - ref).mean() < 8


@pytest.mark.parametrize("draft_size", [256, 600, 1200])
def test_jpeg_draft_never_goes_below_draft_size(draft_size):
    small = decode(jpeg((1600, 1200)), draft_size=draft_size)
    assert min(small.size) >= draft_size


def test_draft_size_does_not_touch_png():
    data = encode(Image.new("RGB", (1600, 1200), (10, 20, 30)), "PNG")
    assert decode(data, draft_size=256).size == (1600, 1200)


# --- bad files ----------------------------------------------------------------------------------------------

def _truncated_jpeg() -> bytes:
    data = jpeg()
    return data[: len(data) // 2]


def _corrupt_jpeg() -> bytes:
    """A valid header (SOI .. SOS), then a body that is garbage for the decoder: part of the scan data,
    then another file's bytes (a botched copy), its start-of-image marker in the middle of the scan.

    libjpeg conceals damaged entropy data that contains no markers (it decodes to grey blocks, as browsers
    show it), so a corrupt body can only be told apart from a damaged photo by its broken structure.
    """
    data = jpeg()
    sos = data.index(b"\xff\xda")
    body = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    cut = body + (len(data) - body) // 3
    return data[:cut] + jpeg(seed=1)


BAD_FILES = {
    "empty": (lambda: b"", "empty"),
    "random-bytes": (lambda: np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
                     "not an image"),
    "text-file": (lambda: b"id,name\n1,red shirt\n2,blue shirt\n" * 20, "not an image"),
    "truncated-jpeg": (_truncated_jpeg, "truncated"),
    "corrupt-jpeg": (_corrupt_jpeg, "corrupt"),
    "huge-png-header": (lambda: huge_png_header(50000, 50000), "MP limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_one_line_image_error(case):
    make, words = BAD_FILES[case]
    with pytest.raises(ImageError) as info:
        decode(make())
    message = str(info.value)
    assert words in message
    assert "\n" not in message and 0 < len(message) < 300


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_through_load_image_name_the_path(tmp_path, case):
    path = tmp_path / f"{case}.jpg"
    path.write_bytes(BAD_FILES[case][0]())
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and BAD_FILES[case][1] in message and "\n" not in message


def test_huge_header_is_refused_quickly_before_decoding():
    data = huge_png_header(50000, 50000)
    assert len(data) < 200
    start = time.process_time()  # this process's CPU time: what the decoding costs, not how busy the machine is
    with pytest.raises(ImageError) as info:
        decode(data)
    assert time.process_time() - start < 0.5  # from the header alone: no 2.5 GB buffer was allocated
    message = str(info.value)
    assert "50000x50000" in message and "2500 MP" in message and "100 MP limit" in message
    assert "--max-pixels" in message


def _stated_limit_mp(message: str) -> float:
    found = re.search(r"([0-9][0-9.,]*) MP limit", message)
    assert found, message
    return float(found.group(1).replace(",", ""))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_max_pixels_is_configurable(fmt):
    data = encode(Image.new("RGB", (40, 30), (0, 128, 255)), fmt)
    assert decode(data, max_pixels=40 * 30).size == (40, 30)  # exactly at the limit: accepted
    assert decode(data, max_pixels=40 * 30 + 1).size == (40, 30)
    with pytest.raises(ImageError) as info:
        decode(data, max_pixels=40 * 30 - 1)
    message = str(info.value)
    assert "40x30" in message
    # The limit the message states is the one that was set (not rounded down to "0 MP").
    assert _stated_limit_mp(message) == pytest.approx((40 * 30 - 1) / 1e6)


def test_max_pixels_applies_to_load_image_inputs(tmp_path):
    img = Image.new("RGB", (40, 30))
    path = tmp_path / "a.png"
    img.save(path)
    for item in (path, str(path), path.read_bytes(), img):
        with pytest.raises(ImageError):
            load_image(item, max_pixels=1000)
        assert load_image(item, max_pixels=1200).size == (40, 30)


# --- load_image -----------------------------------------------------------------------------------------------

def test_load_image_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "shoe.jpg"
    with pytest.raises(ImageError) as info:
        load_image(missing)
    assert str(missing) in str(info.value) and "not found" in str(info.value)
    with pytest.raises(ImageError):
        load_image(str(missing))


def test_load_image_accepts_path_str_bytes_and_pil(tmp_path):
    path = make_image(tmp_path / "shirt.png", color=(30, 60, 200), size=(48, 64))
    pil = Image.open(path)
    results = [load_image(path), load_image(str(path)), load_image(path.read_bytes()),
               load_image(bytearray(path.read_bytes())), load_image(pil)]
    for out in results:
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (48, 64)
        assert pixel(out, (24, 32)) == (30, 60, 200)
    assert all(np.array_equal(np.asarray(results[0]), np.asarray(r)) for r in results[1:])


def test_load_image_converts_a_pil_image_of_another_mode():
    out = load_image(Image.new("L", (10, 10), 77))
    assert out.mode == "RGB" and pixel(out, (5, 5)) == (77, 77, 77)


def test_load_image_with_draft_size_downscales_a_jpeg_file(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg((1600, 1200)))
    assert load_image(path).size == (1600, 1200)
    assert 256 <= min(load_image(path, draft_size=256).size) <= 600


# --- content_hash ---------------------------------------------------------------------------------------------

def test_content_hash_equal_for_identical_bytes_whatever_the_name(tmp_path):
    a = make_image(tmp_path / "a.jpg", quality=90)
    b = tmp_path / "copy" / "other-name.jpg"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    assert content_hash(a.read_bytes()) == content_hash(b.read_bytes())
    assert content_hash(a.read_bytes()) == content_hash(bytes(bytearray(a.read_bytes())))


def test_content_hash_differs_for_different_bytes(tmp_path):
    a = make_image(tmp_path / "a.png", color=(200, 30, 30)).read_bytes()
    b = make_image(tmp_path / "b.png", color=(200, 30, 31)).read_bytes()
    flipped = a[:-1] + bytes([a[-1] ^ 1])
    hashes = {content_hash(a), content_hash(b), content_hash(flipped), content_hash(b""), content_hash(a + b"\0")}
    assert len(hashes) == 5
    assert all(isinstance(h, str) and len(h) >= 32 for h in hashes)


def test_decoding_does_not_depend_on_path_type(tmp_path: Path):
    path = make_image(tmp_path / "x.webp", fmt="WEBP", lossless=True)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(decode(path.read_bytes())))


# --- colour profiles (issue 24) ------------------------------------------------------------------------------


def _icc_rgb_profile(description: str, red, green, blue) -> bytes:
    """A matrix/TRC ICC v2 display profile (D50 colorants, the sRGB tone curve): Display P3 with P3's
    primaries. ImageCms can create only sRGB, LAB and XYZ, so it is written out here, tag by tag."""
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(v) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(s15(c) for c in v)

    desc = description.encode("ascii") + b"\0"
    tags = {
        b"desc": b"desc" + b"\0" * 4 + struct.pack(">I", len(desc)) + desc + b"\0" * 12 + b"\0" * 67,
        b"wtpt": xyz((0.9642, 1.0, 0.8249)),
        b"rXYZ": xyz(red), b"gXYZ": xyz(green), b"bXYZ": xyz(blue),
        # parametric curve 3: the sRGB transfer function
        b"rTRC": b"para" + b"\0" * 4 + struct.pack(">HH", 3, 0)
        + b"".join(s15(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)),
        b"cprt": b"text" + b"\0" * 4 + b"none\0",
    }
    tags[b"gTRC"] = tags[b"bTRC"] = tags[b"rTRC"]
    order = [b"desc", b"wtpt", b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC", b"cprt"]
    offset = 128 + 4 + 12 * len(order)
    table, data, placed = b"", b"", {}
    for sig in order:
        body = tags[sig]
        if id(body) not in placed:
            placed[id(body)] = offset + len(data)
            data += body + b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", placed[id(body)], len(body))
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"APPL" + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + struct.pack(">I", 0)
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(order)) + table + data


DISPLAY_P3 = _icc_rgb_profile("Display P3", (0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419),
                              (0.1571, 0.0666, 0.7841))
SHOP_RED = (230, 20, 20)  # the issue's red


def p3_jpeg(colour=SHOP_RED, size=(64, 64)) -> bytes:
    """A picture of ``colour`` (sRGB) as a phone saves it: the numbers of the same colour in Display P3, and
    the profile that says so."""
    from PIL import ImageCms

    p3 = ImageCms.ImageCmsProfile(io.BytesIO(DISPLAY_P3))
    srgb = Image.new("RGB", size, colour)
    converted = ImageCms.profileToProfile(srgb, ImageCms.createProfile("sRGB"), p3, outputMode="RGB")
    assert max(abs(a - b) for a, b in zip(converted.getpixel((0, 0)), colour, strict=True)) > 15  # differs
    return encode(converted, "JPEG", quality=95, icc_profile=DISPLAY_P3)


def test_a_display_p3_jpeg_decodes_to_its_srgb_colours():
    assert_close(pixel(decode(p3_jpeg()), (32, 32)), SHOP_RED, tol=4)
    assert_close(pixel(decode(p3_jpeg(), draft_size=16), (4, 4)), SHOP_RED, tol=4)


def test_an_srgb_file_and_its_display_p3_twin_are_alike_to_colorhist(tmp_path):
    from lookalike.engines.embed import Encoder
    from lookalike.models.registry import create_embedder

    srgb = tmp_path / "srgb.jpg"
    srgb.write_bytes(encode(Image.new("RGB", (64, 64), SHOP_RED), "JPEG", quality=95))
    p3 = tmp_path / "p3.jpg"
    p3.write_bytes(p3_jpeg())
    vectors = Encoder(create_embedder("colorhist")).encode([str(srgb), str(p3)])
    a, b = (v / np.linalg.norm(v) for v in vectors)
    assert float(a @ b) > 0.95


def test_thumbnails_keep_the_colour_of_a_display_p3_photo(tmp_path):
    from lookalike.api.thumbnails import ThumbnailCache

    photo = tmp_path / "p3.jpg"
    photo.write_bytes(p3_jpeg())
    thumbnail = ThumbnailCache(tmp_path / "cache").get(photo, None, 64)
    with Image.open(thumbnail) as img:
        assert_close(pixel(img.convert("RGB"), (32, 32)), SHOP_RED, tol=6)


def test_png_and_rgba_with_a_profile_are_converted_too():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    p3 = Image.open(io.BytesIO(p3_jpeg(size=(8, 8)))).convert("RGBA")
    rgba.paste(p3.crop((0, 0, 4, 8)), (0, 0))
    img = decode(encode(rgba, "PNG", icc_profile=DISPLAY_P3))
    assert_close(pixel(img, (1, 4)), SHOP_RED, tol=4)
    assert pixel(img, (6, 4)) == (255, 255, 255)  # transparent: white, as before


def test_a_broken_profile_is_one_warning_naming_the_file_and_the_pixels_as_stored(tmp_path, caplog):
    path = tmp_path / "broken-profile.jpg"
    broken = b"not a profile" * 20
    path.write_bytes(encode(Image.new("RGB", (32, 32), SHOP_RED), "JPEG", quality=95, icc_profile=broken))
    with caplog.at_level("WARNING", logger="lookalike"):
        img = load_image(path)
    assert_close(pixel(img, (16, 16)), SHOP_RED, tol=4)
    records = [r for r in caplog.records if "broken-profile.jpg" in r.getMessage()]
    assert len(records) == 1 and "colour profile" in records[0].getMessage()


# --- warnings while decoding (issue 24) ----------------------------------------------------------------------


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose EXIF block promises two text tags longer than the block (Pillow warns once for each)."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 60  # ImageDescription
    exif[0x013B] = "y" * 60  # Artist
    return encode(Image.new("RGB", (32, 32), SHOP_RED), "JPEG", exif=exif.tobytes()[:-100])


def test_decoding_warnings_are_logged_once_per_file_naming_it_not_shown(tmp_path, caplog):
    import warnings

    path = tmp_path / "phone.jpg"
    path.write_bytes(corrupt_exif_jpeg())
    with warnings.catch_warnings(record=True) as shown, caplog.at_level("WARNING", logger="lookalike"):
        warnings.simplefilter("always")
        img = load_image(path)
        load_image(path)  # again: logged again (once per decode of a file), never shown
    assert img.size == (32, 32)
    assert [str(w.message) for w in shown] == []
    records = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(records) == 2
    assert "\n" not in records[0].getMessage() and "Pillow TiffImagePlugin warned" in records[0].getMessage()
    assert warnings.showwarning is not None and not any(  # the capture is gone once decoding is done
        f[0] == "always" and getattr(f[3], "pattern", "").startswith("(PIL") for f in warnings.filters)


def test_warnings_from_decoding_threads_stay_apart_and_the_capture_is_undone(tmp_path, caplog):
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(12):
        paths.append(tmp_path / f"bad{i}.jpg")
        paths[-1].write_bytes(corrupt_exif_jpeg())
        paths.append(tmp_path / f"good{i}.jpg")
        paths[-1].write_bytes(encode(Image.new("RGB", (32, 32), SHOP_RED), "JPEG"))
    filters, show = list(warnings.filters), warnings.showwarning
    with caplog.at_level("WARNING", logger="lookalike"), ThreadPoolExecutor(4) as pool:
        list(pool.map(load_image, paths * 3))
    named = [r.getMessage().split(":")[0] for r in caplog.records]
    assert sorted(set(named)) == sorted(str(p) for p in paths if p.name.startswith("bad"))
    assert len(named) == 36
    assert warnings.filters == filters and warnings.showwarning == show


# --- phones' formats: AVIF and HEIC (issue 24) ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["AVIF", "HEIF"])
def test_avif_and_heic_decode(fmt):
    if fmt == "AVIF":
        from PIL import features

        if not features.check("avif"):
            pytest.skip("this Pillow has no AVIF writer to make the test file")
    else:
        pytest.importorskip("pillow_heif", reason="pillow-heif (the heic extra) writes the file").register_heif_opener()
    img = decode(encode(quadrants(), fmt, quality=95))
    assert img.mode == "RGB" and img.size == (60, 40)
    for got, want in zip(quadrant_colours(img), quadrant_colours(quadrants()), strict=True):
        assert_close(got, want, tol=16)


def test_heic_without_pillow_heif_is_refused_in_one_line_saying_what_to_install(monkeypatch):
    from lookalike.core import images
    from lookalike.core.errors import NotAnImageError

    monkeypatch.setattr(images, "heif_available", lambda: False)
    with pytest.raises(NotAnImageError, match=re.escape('pip install "lookalike[heic]"')) as err:
        decode(b"\0\0\0\x1cftypheic" + b"\0" * 40)
    assert "\n" not in str(err.value)


def test_a_thumbnail_cached_before_colour_profiles_were_honoured_is_made_again(tmp_path):
    from lookalike.api.thumbnails import ThumbnailCache

    photo = tmp_path / "p3.jpg"
    photo.write_bytes(p3_jpeg())
    cache = ThumbnailCache(tmp_path / "cache")
    old = tmp_path / "cache" / "64" / "ab" / "abcdef.jpg"  # the name an earlier version gave it
    old.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (211, 51, 39)).save(old)
    with Image.open(cache.get(photo, "abcdef", 64)) as img:
        assert_close(pixel(img.convert("RGB"), (32, 32)), SHOP_RED, tol=6)
