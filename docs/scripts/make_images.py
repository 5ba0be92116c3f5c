"""Make the site's pictures (docs/img/) from the shared shop photos and the built-in real model.

    python docs/scripts/make_images.py [--photos ../shared/datasets/fashion-products] [--out docs/img]

Indexes the photos (styles.csv + images/) with the built-in ImageNet MobileNetV2 (``--model mobilenetv2``, no
download) into a temporary catalog through the command line, draws the grid, map and cluster figures with
``lookalike plot``, writes the HTML report, then serves the catalog and photographs the page and the report
with headless Chromium driven by Playwright, as the browser test does (Debian's ``chromium``; ``.ci/run``
installs it). The PNGs are reduced to 256 colours so the repository stays small. Takes about a minute or
two on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def lookalike(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    print("lookalike", *args, flush=True)
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], env=env, check=True, **kwargs)


def first_of(manifest: Path, article: str) -> str:
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if row["articleType"] == article and (manifest.parent / "images" / f"{row['id']}.jpg").is_file():
                return row["id"]
    raise SystemExit(f"{manifest}: no {article} with a photo")


def shrink(path: Path, width: int | None = None) -> None:
    """Fewer bytes for the repository: at most ``width`` pixels wide, 256 colours."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if width and img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outfit_photo(images: Path, ids: list[str], target: Path) -> Path:
    """A shopper's "outfit" photo: catalog photos of several kinds pasted side by side (their own files stay in
    the catalog; the outfit is not), as the region test does."""
    from PIL import Image

    parts = [Image.open(images / f"{i}.jpg").convert("RGB") for i in ids]
    height = min(im.height for im in parts)
    parts = [im.resize((round(im.width * height / im.height), height)) for im in parts]
    outfit = Image.new("RGB", (sum(im.width for im in parts), height), "white")
    x = 0
    for im in parts:
        outfit.paste(im, (x, 0))
        x += im.width
    outfit.save(target)
    return target


def screenshots(catalog: Path, report: Path, query: Path, out: Path, outfit: Path | None = None) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed for the screenshots: apt-get install chromium")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--catalog", str(catalog),
                               "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("lookalike serve did not start") from None
                time.sleep(0.3)
        expect.set_options(timeout=60_000)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/")
            page.get_by_test_id("file").set_input_files(str(query))
            expect(page.get_by_test_id("results-title")).to_contain_text("most like your photo")
            cards = page.locator("[data-testid=results] button.card img")
            expect(cards.first).to_be_visible()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / "serve.png"))
            cards.nth(1).click()  # more like this
            expect(page.get_by_test_id("query-item")).to_be_visible()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / "serve-item.png"))
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
            phone.goto(page.url)
            expect(phone.get_by_test_id("query-item")).to_be_visible()
            phone.wait_for_load_state("networkidle")
            phone.screenshot(path=str(out / "serve-phone.png"))
            if outfit is not None:  # drag over the middle third of an outfit photo: its handbag
                page.goto(url + "/")
                page.get_by_test_id("file").set_input_files(str(outfit))
                expect(page.get_by_test_id("results-title")).to_contain_text("most like your photo")
                photo = page.get_by_test_id("query-image")
                expect(photo).to_be_visible()
                frame = photo.bounding_box()
                with page.expect_response(lambda r: r.url.endswith("/api/search")):
                    page.mouse.move(frame["x"] + 0.36 * frame["width"], frame["y"] + 0.05 * frame["height"])
                    page.mouse.down()
                    page.mouse.move(frame["x"] + 0.64 * frame["width"], frame["y"] + 0.95 * frame["height"], steps=5)
                    page.mouse.up()
                expect(page.get_by_test_id("results-title")).to_contain_text("part of your photo you marked")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(out / "serve-region.png"))
            doc = browser.new_page(viewport={"width": 1100, "height": 1400})
            doc.goto(report.as_uri())
            doc.wait_for_load_state("load")
            doc.screenshot(path=str(out / "report.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "datasets" / "fashion-products",
                        help="a folder with styles.csv and images/ (default ../shared/datasets/fashion-products)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go (docs/img)")
    args = parser.parse_args()
    manifest = args.photos / "styles.csv"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} not found: give --photos a folder with styles.csv and images/")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "shop.lk"
        lookalike("index", str(manifest), "--images", str(args.photos / "images"), "--catalog", str(catalog),
                  "--model", "mobilenetv2", "-q")
        items = [first_of(manifest, kind) for kind in ("Casual Shoes", "Handbags", "Tshirts")]
        lookalike("plot", "grid", "--catalog", str(catalog), "--items", ",".join(items), "-k", "5",
                  "--out", str(args.out / "grid.png"))
        lookalike("plot", "map", "--catalog", str(catalog), "--method", "tsne", "--links", "12",
                  "--out", str(args.out / "map.png"))
        lookalike("cluster", "--catalog", str(catalog), "-n", "6", "--label", "articleType")
        lookalike("plot", "clusters", "--catalog", str(catalog), "--label", "articleType",
                  "--out", str(args.out / "clusters.png"))
        report = Path(tmp) / "report.html"
        lookalike("report", "--catalog", str(catalog), "--label", "articleType", "--method", "tsne",
                  "--out", str(report))
        query = args.photos / "images" / f"{first_of(manifest, 'Backpacks')}.jpg"
        outfit = outfit_photo(args.photos / "images", [first_of(manifest, kind) for kind in
                                                       ("Tshirts", "Handbags", "Heels")], Path(tmp) / "outfit.jpg")
        screenshots(catalog, report, query, args.out, outfit)
    for name, width in (("serve.png", 1000), ("serve-item.png", 1000), ("serve-phone.png", None),
                        ("serve-region.png", 1000),
                        ("report.png", 900), ("grid.png", 1000), ("map.png", 1000), ("clusters.png", 1000)):
        shrink(args.out / name, width)


if __name__ == "__main__":
    main()
