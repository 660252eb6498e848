"""The moderator's view of the web client in a real browser, against real servers.

Same browser setup as test_browser.py (the system's Chromium, driven by Playwright; skipped
without one, except under CI). A server with ADMIN_TOKENS offers a "Moderate" entry; a page
signed in with a secret gets kick, ban, delete, announce and the ban list, and no page that
is not signed in shows any of it. Every wait is on an element or an event, never a sleep.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import test_browser
from playwright.async_api import Browser, Page, expect
from test_browser import (
    Pages,
    join,
    message_item,
    quiet_server,
    say,
    screenshot,
)

from conftest import TIMEOUT, LiveServer, ServerFactory, channel_client, closing, text, ws_client

pytestmark = pytest.mark.anyio

# The same module-wide fixtures as test_browser.py: one browser, on one event loop, per module.
anyio_backend = test_browser.anyio_backend
browser = test_browser.browser

SECRET = "mod-0123456789abcdefghijklmnopqrstuvwxyz"  # 40 characters
assert len(SECRET) == 40
# Chromium reports a refused request (a wrong secret's 401) as a console error.
REFUSED_SECRET = re.compile(r"status of 401")


@pytest.fixture
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    await opened.close()


def moderated_server(server_factory: ServerFactory, **overrides: Any) -> LiveServer:
    """A server with one moderator token and a room history (deletions act on history)."""
    return quiet_server(server_factory, admin_tokens=f"ops:{SECRET}", max_stored_messages=50, **overrides)


async def sign_in(page: Page, secret: str = SECRET) -> None:
    await page.get_by_role("button", name="Moderate").click()
    await expect(page.locator("#signin-dialog")).to_be_visible()
    await page.fill("#admin-secret", secret)
    await page.press("#admin-secret", "Enter")


async def user_action(page: Page, nickname: str, action: str) -> None:
    row = page.locator("#user-list li").filter(has=page.get_by_role("button", name=nickname, exact=True))
    await row.get_by_role("button", name=action, exact=True).click()
    await expect(page.locator("#action-dialog")).to_be_visible()


async def no_moderation_controls(page: Page) -> None:
    await expect(page.locator(".mod-action")).to_have_count(0)
    await expect(page.locator("#moderation")).to_be_hidden()
    await expect(page.get_by_role("button", name="Kick")).to_have_count(0)
    await expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    await expect(page.locator("body")).not_to_have_class(re.compile(r"\bmoderating\b"))


async def test_moderator_kicks_bans_deletes_and_announces(
    server_factory: ServerFactory, pages: Pages
) -> None:
    server = moderated_server(server_factory)
    async with channel_client(server) as bob, ws_client(server) as carol:
        await bob.register("qchat_bob")
        await carol.register("qtribu_carol")
        page = await pages.open(server)
        await join(page, "mod_alice")
        users = page.locator("#user-list")
        await expect(users).to_contain_text("qtribu_carol")
        await no_moderation_controls(page)

        await sign_in(page)
        await expect(page.locator("#signin-dialog")).to_be_hidden()
        await expect(page.locator("#moderation")).to_be_visible()
        await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        await expect(page.locator("#bans-empty")).to_be_visible()
        # Kick and ban beside everyone but oneself.
        await expect(users.get_by_role("button", name="Kick")).to_have_count(2)
        await expect(users.get_by_role("button", name="Ban")).to_have_count(2)

        # Every socket of the room, the page's included.
        await page.locator("#moderation").get_by_role("button", name="Show", exact=True).click()
        connections = page.locator("#connection-list")
        for nickname in ("qchat_bob", "qtribu_carol", "mod_alice"):
            await expect(connections).to_contain_text(nickname)

        # Kick: the socket is closed with the reason, the room sees the departure.
        await user_action(page, "qchat_bob", "Kick")
        await page.fill("#action-reason", "flooding")
        await page.locator("#action-dialog").get_by_role("button", name="Kick", exact=True).click()
        closed = await closing(bob)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "kicked by a moderator: flooding")
        await expect(page.locator("#action-dialog")).to_be_hidden()
        await expect(users).not_to_contain_text("qchat_bob")
        await expect(page.locator("#log")).to_contain_text("qchat_bob left")

        # Delete: a message in view, with its id, goes from the view and from the room's history.
        await carol.send(text("qtribu_carol", "cheap pills here"))
        spam = message_item(page, "qtribu_carol", "cheap pills here")
        await expect(spam).to_be_visible()
        message_id = await spam.get_attribute("data-id")
        assert message_id
        delete = spam.get_by_role("button", name="Delete qtribu_carol's message")
        await delete.click()
        await expect(delete).to_have_text("Delete for everyone?")
        async with page.expect_response(re.compile(r"/admin/rooms/QGIS/messages/")) as deleted:
            await delete.click()
        assert (await deleted.value).status == 200
        await expect(spam).to_have_count(0)
        async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http:
            history = (await http.get("/channel/QGIS/last")).json()
        assert message_id not in [message.get("id") for message in history]

        # Ban: the banned socket goes, the ban is listed, then lifted.
        await user_action(page, "qtribu_carol", "Ban")
        await page.fill("#action-reason", "trolling")
        await page.fill("#ban-minutes", "30")
        await page.locator("#action-dialog").get_by_role("button", name="Ban", exact=True).click()
        await closing(carol)
        await expect(users).not_to_contain_text("qtribu_carol")
        ban = page.locator("#ban-list li")
        await expect(ban).to_have_count(1)
        await expect(ban).to_contain_text("qtribu_carol")
        await expect(ban).to_contain_text("QGIS")
        await expect(ban).to_contain_text("trolling")
        await expect(page.locator("#bans-empty")).to_be_hidden()
        await screenshot(page, "moderation-desktop.png")
        await ban.get_by_role("button", name="Lift the ban on qtribu_carol").click()
        await expect(ban).to_have_count(0)
        await expect(page.locator("#bans-empty")).to_be_visible()

    # Lifted: the nickname is free again. Announce: every socket of the room gets it.
    async with ws_client(server) as carol_again:
        await carol_again.register("qtribu_carol")
        await page.fill("#announce-text", "Maintenance at noon")
        await page.locator("#announce-form").get_by_role("button", name="Announce").click()
        await carol_again.expect("text", text="Maintenance at noon")
        await expect(message_item(page, "moderator", "Maintenance at noon")).to_be_visible()
        await expect(page.locator("#announce-text")).to_have_value("")

    # Signed out: the controls go, the panel with them.
    await page.get_by_role("button", name="Sign out").click()
    await no_moderation_controls(page)
    await expect(page.get_by_role("button", name="Moderate")).to_be_visible()
    pages.assert_clean()


async def test_nothing_shows_to_others_and_the_secret_stays_in_the_tab(
    server_factory: ServerFactory, pages: Pages
) -> None:
    pages.allowed.append(REFUSED_SECRET)
    server = moderated_server(server_factory)
    async with channel_client(server) as bob:
        await bob.register("qchat_bob")
        ordinary = await pages.open(server)
        await join(ordinary, "walker")
        moderator = await pages.open(server)
        await join(moderator, "mod_alice")
        await say(ordinary, "a message with an id")
        await expect(message_item(moderator, "walker", "a message with an id")).to_be_visible()

        # A wrong secret: the server's detail, and still signed out.
        async with moderator.expect_response(re.compile(r"/admin/bans$")) as refused:
            await sign_in(moderator, "x" * 40)
        answer = await refused.value
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        await expect(moderator.locator("#signin-error")).to_have_text((await answer.json())["detail"])
        await moderator.locator("#signin-dialog").get_by_role("button", name="Cancel").click()
        await no_moderation_controls(moderator)

        await sign_in(moderator)
        await expect(moderator.locator("#moderation")).to_be_visible()
        await expect(
            message_item(moderator, "walker", "a message with an id").get_by_role("button", name="Delete")
        ).to_be_visible()

        # The ordinary page: the discreet entry, and nothing else of moderation.
        await expect(ordinary.get_by_role("button", name="Moderate")).to_be_visible()
        await expect(message_item(ordinary, "walker", "a message with an id")).to_be_visible()
        await expect(ordinary.locator("#user-list")).to_contain_text("mod_alice")
        await no_moderation_controls(ordinary)

        # The secret is in no cookie, no storage, no address.
        stored = await moderator.evaluate(
            """() => [document.cookie, JSON.stringify({...localStorage}), JSON.stringify({...sessionStorage}),
                      location.href, document.documentElement.outerHTML].join("\\n")"""
        )
        assert SECRET not in stored
        assert not [url for url in pages.requests if SECRET in url]
        assert not [cookie for cookie in await moderator.context.cookies() if SECRET in cookie["value"]]

        # Reloading forgets it.
        await moderator.reload()
        await join(moderator, "mod_alice_2")
        await no_moderation_controls(moderator)
    pages.assert_clean()


async def test_no_moderate_entry_without_admin_tokens(server_factory: ServerFactory, pages: Pages) -> None:
    server = quiet_server(server_factory)
    page = await pages.open(server)
    await join(page, "walker")
    await expect(page.locator("#moderate")).to_be_hidden()
    await no_moderation_controls(page)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http:
        assert (await http.get("/client-config")).json()["moderation"] is False
        assert (await http.get("/admin/bans")).status_code == 404
    pages.assert_clean()
