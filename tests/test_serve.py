"""`lookalike serve` as a user runs it: a real server process on a loopback port, driven over sockets and
by headless Chromium (Debian's package, through Playwright)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("LOOKALIKE_ARTIFACTS", ROOT / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root, in a sandbox with no network: no sandboxing, and no background calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lookalike(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "lookalike.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture(scope="module")
def server(shop):
    yield from serve_catalog(shop / "shop.lk", "--admin-token", "t0ken")


def serve_catalog(catalog: Path, *extra: str, env: dict[str, str] | None = None):
    """Run `lookalike serve` on a free port until its health check answers; yield its URL, stop it after."""
    port = free_port()
    proc = lookalike("serve", "--catalog", str(catalog), "--port", str(port), *extra, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.slow
def test_an_oversized_upload_is_refused_before_its_body_is_sent(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  b"Content-Length: 500000000\r\n\r\n")  # 500 MB announced, not one byte of it sent
        answer = b""
        while chunk := s.recv(65536):  # the server answers and closes without waiting for the body
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413")
    assert "limit of 20 MB" in answer


@pytest.mark.slow
def test_serve_refuses_a_missing_catalog_and_a_busy_port_in_one_line(tmp_path, server):
    proc = lookalike("serve", "--catalog", str(tmp_path / "nothing.lk"), "--port", str(free_port()))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1 and "nothing.lk" in err
    busy = server.rsplit(":", 1)[1]
    proc = lookalike("serve", "--catalog", str(tmp_path / "nothing.lk"), "--port", busy)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1 and busy in err


@pytest.mark.slow
@pytest.mark.browser
def test_page_in_a_real_browser(server, shop):
    """Upload a photo, see results, click one, see its look-alikes; filters, errors, drop, paste, keyboard,
    phone width. Screenshots go to artifacts/."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    query = next((shop / "photos").rglob("blue-ellipse.jpg"))
    expect.set_options(timeout=20_000)  # a loaded 2-core CI machine is slow, not broken
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        try:
            _walk_through(page, browser, server, query)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "serve-failure.png"), full_page=True)
            raise
        browser.close()
    assert (ARTIFACTS / "serve-search.png").stat().st_size > 10_000


def _walk_through(page, browser, server: str, query: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(server + "/")
    expect(page.get_by_test_id("summary")).to_contain_text("12 items")

    # Upload by picking a file.
    page.get_by_test_id("file").set_input_files(str(query))
    cards = page.locator("[data-testid=results] button.card")
    expect(page.get_by_test_id("results-title")).to_contain_text("most like your photo")
    expect(cards).to_have_count(12)
    expect(cards.first).to_have_attribute("data-id", "blue-ellipse")
    expect(cards.first.locator(".score")).to_contain_text("100%")
    expect(page.get_by_test_id("query-image")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "serve-search.png"), full_page=True)

    # Click a result: its look-alikes, without itself.
    clicked = cards.nth(1).get_attribute("data-id")
    cards.nth(1).click()
    expect(page.get_by_test_id("query-item")).to_contain_text(f"id {clicked}")
    expect(cards).to_have_count(11)
    ids = [cards.nth(i).get_attribute("data-id") for i in range(11)]
    assert clicked not in ids
    page.screenshot(path=str(ARTIFACTS / "serve-similar.png"), full_page=True)

    # One per look-alike group: the page asks the API for it and shows what it answers (how many groups
    # these look-alike test photos form depends on the model's scores near the threshold).
    with page.expect_response(lambda r: "/similar?" in r.url and "dedupe=true" in r.url) as answer:
        page.get_by_test_id("dedupe").check()
    shown = answer.value.json()["results"]
    assert answer.value.json()["dedupe"] is True and 1 <= len(shown) <= 11
    expect(cards).to_have_count(len(shown))
    assert [cards.nth(i).get_attribute("data-id") for i in range(len(shown))] == [r["id"] for r in shown]
    with page.expect_response(lambda r: "/similar?" in r.url and "dedupe" not in r.url):
        page.get_by_test_id("dedupe").uncheck()
    expect(cards).to_have_count(11)

    # Filter by a label facet.
    page.get_by_test_id("facet-colour").select_option("red")
    expect(cards).to_have_count(3 if not clicked.split("/")[-1].startswith("red") else 2)
    assert all(cards.nth(i).get_attribute("data-id").split("/")[-1].startswith("red")
               for i in range(cards.count()))
    page.get_by_test_id("facet-colour").select_option("")

    # A rejected file: one clear message.
    page.get_by_test_id("file").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"})
    expect(page.get_by_test_id("error")).to_contain_text("not an image")

    # Drag and drop, and paste from the clipboard.
    data = base64.b64encode(query.read_bytes()).decode()
    make_transfer = f"""() => {{
        const bytes = Uint8Array.from(atob("{data}"), c => c.charCodeAt(0));
        const t = new DataTransfer();
        t.items.add(new File([bytes], "dropped.jpg", {{type: "image/jpeg"}}));
        return t; }}"""
    page.goto(server + "/")
    page.get_by_test_id("drop").dispatch_event("drop", {"dataTransfer": page.evaluate_handle(make_transfer)})
    expect(cards.first).to_have_attribute("data-id", "blue-ellipse")
    page.goto(server + "/#browse")
    expect(page.get_by_test_id("results-title")).to_contain_text("Catalog: 12 items")
    page.evaluate(f"""() => document.dispatchEvent(new ClipboardEvent("paste",
        {{clipboardData: ({make_transfer})()}}))""")
    expect(page.get_by_test_id("results-title")).to_contain_text("most like your photo")
    expect(cards.first).to_have_attribute("data-id", "blue-ellipse")

    # Keyboard: Tab reaches "choose a file" and Space opens the file picker. Headless Chromium now and then
    # opens the chooser without telling Playwright, so a miss is retried on a fresh page, at most three times.
    for attempt in range(3):
        page.goto(server + "/")
        expect(page.get_by_test_id("summary")).to_contain_text("12 items")
        for _ in range(10):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "choose":
                break
        assert page.evaluate("document.activeElement.id") == "choose"
        try:
            with page.expect_file_chooser(timeout=5_000) as chooser:
                page.keyboard.press("Space")
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    chooser.value.set_files(str(query))
    expect(cards.first).to_have_attribute("data-id", "blue-ellipse")

    # A phone-sized screen: browse, no sideways scrolling.
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone.goto(server + "/#browse")
    expect(phone.locator("[data-testid=results] button.card")).to_have_count(12)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone.screenshot(path=str(ARTIFACTS / "serve-phone.png"))
    assert not problems, problems



@pytest.fixture(scope="module")
def word_server(word_shop, clip_hub):
    yield from serve_catalog(word_shop / "shop.lk", env={"HF_HOME": str(clip_hub)})


@pytest.mark.slow
@pytest.mark.browser
def test_words_in_a_real_browser(word_server, word_shop, clip_hub):
    """Type words, see what the API answers for them; on an item, "more like this, but ..." with words;
    labels predicted by `lookalike tag` (in another process, while the server runs) are marked predicted."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    tag = lookalike("tag", "--catalog", str(word_shop / "shop.lk"), "--column", "style", "--classes",
                    "casual,formal", env={"HF_HOME": str(clip_hub)})
    assert tag.wait(timeout=120) == 0, tag.communicate()[1]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        try:
            page.goto(word_server + "/")
            expect(page.get_by_test_id("words")).to_be_visible()
            cards = page.locator("[data-testid=results] button.card")
            with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
                page.get_by_test_id("text").fill("red floral summer dress")
                page.get_by_test_id("text").press("Enter")
            results = answer.value.json()["results"]
            assert answer.value.json()["query"]["text"] == "red floral summer dress" and len(results) == 12
            expect(page.get_by_test_id("results-title")).to_contain_text("matching “red floral summer dress”")
            expect(cards).to_have_count(12)
            assert [cards.nth(i).get_attribute("data-id") for i in range(12)] == [r["id"] for r in results]
            assert "text=red" in page.url
            expect(cards.first.get_by_test_id("predicted")).to_contain_text("(predicted,")
            facets = page.request.get(word_server + "/api/items?limit=0").json()["facets"]
            if len(facets.get("style", {})) > 1:  # the page offers a filter only for a label with two values
                expect(page.locator("#facets")).to_contain_text("style (predicted)")
            page.screenshot(path=str(ARTIFACTS / "serve-words.png"), full_page=True)

            picked = cards.nth(2).get_attribute("data-id")
            cards.nth(2).click()
            expect(page.get_by_test_id("query-item")).to_contain_text(f"id {picked}")
            expect(page.get_by_test_id("refine")).to_be_visible()
            with page.expect_response(lambda r: "/similar?" in r.url and "text=" in r.url) as answer:
                page.get_by_test_id("refine-text").fill("in black leather")
                page.get_by_test_id("refine-go").click()
            body = answer.value.json()
            assert body["query"] == {"kind": "item+text", "id": picked, "filename": None, "text": "in black leather"}
            expect(page.get_by_test_id("results-title")).to_contain_text("but “in black leather”")
            expect(cards).to_have_count(len(body["results"]))
            assert [cards.nth(i).get_attribute("data-id") for i in range(len(body["results"]))] == [
                r["id"] for r in body["results"]]
            assert picked not in {r["id"] for r in body["results"]}
            page.screenshot(path=str(ARTIFACTS / "serve-refine.png"), full_page=True)
            page.go_back()
            expect(page.get_by_test_id("refine-text")).to_have_value("")
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "serve-words-failure.png"), full_page=True)
            raise
        browser.close()
    assert not problems, problems
