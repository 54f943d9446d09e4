"""The profile explorer in a real headless browser (Playwright driving Debian's Chromium).

One live service with two arms and API keys on reads and writes: the page must ask for the key,
render a looked-up profile, the attention heat map of typed features, both arms side by side, the
live QC/DCTR panel, a clear message for an unknown user, and never turn data into markup.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.ab import PIN_HEADER
from service.config import hash_key
from tests.conftest import RedisServer
from tests.serving import ADMIN_KEYS, USER, LiveServer, settings_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WRITE_KEY = "explorer-write-key"
READ_KEY = "explorer-read-key"
KEYS = f"{ADMIN_KEYS},write:{hash_key(WRITE_KEY)},read:{hash_key(READ_KEY)}"
MARKUP_USER = '<img src=x onerror="document.title=1"><b>bold'  # no '/': a path segment


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is not installed; `make test` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(bundles: dict[str, Path], redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    settings = settings_for(
        bundles["a"], None, redis_url=url, auth_keys=KEYS, ab_challenger_bundle=bundles["b"], ab_challenger_share=0.5
    )
    with LiveServer(settings) as base:
        with httpx.Client(base_url=base, headers={"X-API-Key": WRITE_KEY}) as c:
            arms = c.get("/experiment").json()
            for user in ("alice", MARKUP_USER):  # cached under both versions, so both columns show one
                for arm in ("champion", "challenger"):
                    body = {"user_id": user, "features": USER, "k": 8}
                    r = c.post("/profile", json=body, headers={PIN_HEADER: arms[arm]["model_version"]})
                    assert r.status_code == 200, r.text
            tags = [t["tag"] for t in c.get("/profile/alice", params={"k": 3}).json()["tags"]]
            event = {"user_id": "alice", "k": 3, "items": [{"tags": tags[:2], "clicked": True}, {"tags": tags[2:]}]}
            assert c.post("/feedback", json={"events": [event]}).json()["counted"] == 1
        yield base


def test_explorer_renders_profiles_heatmap_side_by_side_and_live_metrics(browser: Any, served: str) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{served}/explorer")  # redirected to /explorer/
    # reads need a key here: the page says so, then works once one is typed
    expect(page.locator("#arms")).to_contain_text("API key")
    page.fill("#api-key", WRITE_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#arms")).to_contain_text("challenger")
    expect(page.locator("#online tr[data-arm]")).to_have_count(2)

    page.fill("#user-id", "alice")
    page.fill("#lookup-k", "6")
    page.click("#lookup")
    expect(page.locator("#profile .row")).to_have_count(6)
    expect(page.locator("#sidebyside .column")).to_have_count(2)
    expect(page.locator("#sidebyside .column[data-arm=challenger] .row")).to_have_count(6)
    expect(page.locator("#overlap")).to_contain_text("shared")
    width = page.locator("#profile .row .bar").first.evaluate("b => b.style.width")
    assert width.endswith("%") and float(width[:-1]) > 0

    page.fill('#fields input[data-field="clicked_tags"]', "sci-fi, dark comedy, never-seen-tag")
    page.click("#compute")
    expect(page.locator("#heatmap table.heat").first).to_be_visible()
    # the merge table (one row per field) plus one table for the typed field, 3 values x heads
    assert page.locator("#heatmap td.cell").count() >= 3 * 2
    expect(page.locator("#sidebyside .column")).to_have_count(2)
    expect(page.locator("#message")).to_contain_text("never-seen-tag")

    page.fill("#user-id", "nobody-at-all")
    page.click("#lookup")
    expect(page.locator("#message")).to_contain_text("No profile for user “nobody-at-all”")
    expect(page.locator("#result")).to_be_hidden()
    assert errors == []


def test_explorer_shows_data_as_text_never_as_markup(browser: Any, served: str) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(f"{served}/explorer/")
    page.fill("#api-key", READ_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#arms")).to_contain_text("champion")
    page.fill("#user-id", MARKUP_USER)
    page.click("#lookup")
    expect(page.locator("#profile-title")).to_contain_text(MARKUP_USER)
    page.fill('#fields input[data-field="clicked_tags"]', "<i>x</i>")
    page.click("#compute")  # a read key may not compute: the page says why
    expect(page.locator("#message")).to_contain_text("not allowed")
    assert page.locator("body img, body b, body i").count() == 0
    assert page.title() == "utpm profile explorer"
