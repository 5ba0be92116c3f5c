"""The page's ranking controls in a real browser (headless Chromium through Playwright, as test_serve.py): the
shop's rules shown, the variety slider and a bury from a result card sent with the search, the order the API
gives for the same request, and each card saying which rules moved it."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from lookalike.catalog.ranking import Ranking
from test_ranking import shop_catalog
from test_serve import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, serve_catalog


@pytest.fixture(scope="module")
def ranked_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("web-ranking") / "shop.lk"
    with shop_catalog(path) as catalog:
        catalog.set_rules(Ranking.parse(boost=["brand=Acme:0.01"]))
    yield from serve_catalog(path)


def api_ids(server: str, **params) -> list[str]:
    query = urllib.parse.urlencode([(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)])
    with urllib.request.urlopen(f"{server}/api/items/q/similar?{query}", timeout=30) as r:
        return [m["id"] for m in json.load(r)["results"]]


@pytest.mark.slow
@pytest.mark.browser
def test_slider_and_bury_on_the_page_give_the_apis_order(ranked_server):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    server = ranked_server
    plain = api_ids(server, k="5")
    varied = api_ids(server, k="5", diversity="0.5")
    varied_buried = api_ids(server, k="5", diversity="0.5", bury="brand=Other")
    assert plain != varied != varied_buried  # the catalog makes each control change the order

    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        cards = page.locator("#results .card")
        try:
            page.goto(f"{server}/?k=5#item=q")
            expect(page.get_by_test_id("shop-rules")).to_have_text("boost brand=Acme:0.01")
            expect(cards).to_have_count(5)
            assert [c.get_attribute("data-id") for c in cards.all()] == plain

            page.get_by_test_id("diversity").fill("0.5")  # a range input: sets it and fires input and change
            expect(page.get_by_test_id("diversity-value")).to_have_text("0.5")
            expect(cards.first).to_have_attribute("data-id", varied[0])
            page.wait_for_function("(want) => [...document.querySelectorAll('#results .card')]"
                                   ".map((c) => c.dataset.id).join() === want", arg=",".join(varied))
            assert any("variety 0.5" in m for m in page.locator("#results [data-testid=moved]").all_text_contents())

            other = page.locator("#results li").filter(has=page.locator(".card[data-id='a']"))
            other.get_by_test_id("rank-menu").locator("summary").click()
            other.locator("[data-testid=card-bury][data-term='brand=Other']").click()
            expect(page.get_by_test_id("my-rule")).to_have_text("Bury brand=Other remove")
            page.wait_for_function("(want) => [...document.querySelectorAll('#results .card')]"
                                   ".map((c) => c.dataset.id).join() === want", arg=",".join(varied_buried))
            last = page.locator("#results .card").last
            expect(last.get_by_test_id("moved")).to_contain_text("bury brand=Other")
            assert "bury=brand%3DOther" in page.url and "diversity=0.5" in page.url  # a shared link keeps them
            page.screenshot(path=str(ARTIFACTS / "web-ranking.png"), full_page=True)

            page.get_by_test_id("shop-rules-on").uncheck()  # rules=false: the shop's boost is left out
            page.wait_for_function("(want) => [...document.querySelectorAll('#results .card')]"
                                   ".map((c) => c.dataset.id).join() === want",
                                   arg=",".join(api_ids(server, k="5", diversity="0.5", bury="brand=Other",
                                                        rules="false")))
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web-ranking-failure.png"), full_page=True)
            raise
        browser.close()
