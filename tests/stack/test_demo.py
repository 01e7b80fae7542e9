"""The demo (compose.demo.yaml): seeded, idempotent, resettable, and its interactive docs
work in a real browser through Traefik over HTTPS."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.seed import DEFAULT_COUNT, demo_items
from tests.stack.harness import ROOT, Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI installs Chromium and sets this, so there the browser test can't be skipped away.
REQUIRE_BROWSER = os.environ.get("BERTH_REQUIRE_BROWSER") == "1"
SCREENSHOTS = ROOT / "test-output"


@pytest.fixture(scope="module")
def demo(stack_factory: Callable[..., Stack]) -> Stack:
    stack = stack_factory(files=("compose.yaml", "compose.demo.yaml"))
    stack.up()
    return stack


def seed(stack: Stack, *args: str) -> str:
    return stack.run("run", "--rm", "--no-deps", "seed", *args).stderr


def test_demo_is_seeded_with_realistic_items(demo: Stack) -> None:
    assert demo.psql("SELECT count(*) FROM items") == str(DEFAULT_COUNT)
    distinct_prices = int(demo.psql("SELECT count(DISTINCT price) FROM items"))
    assert distinct_prices > 1000
    with demo.client() as client:
        first = client.get("/api/items", params={"limit": 1}).json()["items"][0]
    assert first["name"] == demo_items()[0]["name"]


def test_seeding_again_adds_nothing(demo: Stack) -> None:
    assert f"0 items added, {DEFAULT_COUNT} in the table" in seed(demo)
    assert demo.psql("SELECT count(*) FROM items") == str(DEFAULT_COUNT)


def test_reset_returns_to_the_seeded_state(demo: Stack) -> None:
    snapshot = "SELECT md5(string_agg(name || price, ',' ORDER BY id)) FROM items"
    seeded = demo.psql(snapshot)
    with demo.client() as client:
        client.post("/api/items", json={"name": "Scribbled by a visitor", "price": "1"})
        client.delete("/api/items/1")
        client.patch("/api/items/2", json={"price": "0.01"})
    assert demo.psql(snapshot) != seeded

    reseeded = f"reset and seeded: {DEFAULT_COUNT} items added, {DEFAULT_COUNT} in the table"
    assert reseeded in seed(demo, "--reset")
    assert demo.psql(snapshot) == seeded


def test_docs_need_no_cdn(demo: Stack) -> None:
    with demo.client() as client:
        page = client.get("/docs").text
        assets = client.get("/docs-assets/swagger-ui-bundle.js")
        schema = client.get("/openapi.json").json()
    assert "/docs-assets/swagger-ui-bundle.js" in page
    assert "cdn." not in page
    assert assets.status_code == 200
    assert schema["openapi"].startswith("3.1")


def test_docs_try_it_out_in_a_real_browser(demo: Stack) -> None:
    if not Path(CHROMIUM).exists():
        if REQUIRE_BROWSER:
            pytest.fail(f"Chromium is required here but missing at {CHROMIUM}")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    expected = demo_items()[0]["name"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync",
            ],
        )  # fmt: skip
        try:
            context = browser.new_context(ignore_https_errors=True)  # the stack's own cert
            page = context.new_page()
            page.goto(f"https://localhost:{demo.https_port}/docs")
            operation = page.locator("#operations-items-list_items_api_items_get")
            operation.locator(".opblock-summary").click()
            operation.get_by_role("button", name="Try it out").click()
            operation.get_by_role("button", name="Execute").click()
            body = operation.locator(".live-responses-table .response-col_description pre")
            expect(body.first).to_contain_text(expected, timeout=15_000)
            expect(operation.locator(".live-responses-table tr.response .response-col_status").first
                   ).to_have_text("200")  # fmt: skip
            SCREENSHOTS.mkdir(exist_ok=True)
            page.screenshot(path=SCREENSHOTS / "demo-docs-try-it-out.png", full_page=True)
        finally:
            browser.close()
    assert (SCREENSHOTS / "demo-docs-try-it-out.png").stat().st_size > 10_000
