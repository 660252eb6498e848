"""The web client's HTTP side: the page and its policy, its settings, its files and Leaflet's."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from gischat.settings import Settings
from gischat.web import client as webclient

from conftest import LiveServer, ServerFactory, make_settings

pytestmark = pytest.mark.anyio

STATIC = Path(webclient.__file__).resolve().parent / "web" / "static"


def client_for(server: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http_url, timeout=5)


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


async def test_page_is_served_at_the_root_with_a_strict_policy(server: LiveServer) -> None:
    async with client_for(server) as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == [
        "'self'",
        f"ws://127.0.0.1:{server.port}",
        f"wss://127.0.0.1:{server.port}",
    ]
    assert policy["img-src"] == ["'self'", "data:", "blob:", "https://tile.openstreetmap.org"]
    assert policy["frame-ancestors"] == ["'none'"]
    page = response.text
    # Nothing inline: every script is a file of the instance, under a relative URL.
    assert re.findall(r"<script[^>]*>", page) == [
        '<script src="static/leaflet/leaflet.js" defer>',
        '<script type="module" src="static/app.js">',
    ]
    assert "<style" not in page
    assert not re.search(r"\s(style|on[a-z]+)\s*=", page), "inline style or event handler"
    assert 'href="/' not in page
    assert 'src="/' not in page


async def test_policy_follows_the_tile_setting(server_factory: ServerFactory) -> None:
    subdomains = server_factory(map_tile_url="https://{s}.tiles.example.org/base/{z}/{x}/{y}.png")
    none = server_factory(map_tile_url="")
    async with client_for(subdomains) as http:
        policy = directives((await http.get("/")).headers["content-security-policy"])
        assert policy["img-src"] == ["'self'", "data:", "blob:", "https://*.tiles.example.org"]
    async with client_for(none) as http:
        policy = directives((await http.get("/")).headers["content-security-policy"])
        assert policy["img-src"] == ["'self'", "data:", "blob:"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("chat.example.org", ["'self'", "ws://chat.example.org", "wss://chat.example.org"]),
        ("[::1]:8000", ["'self'", "ws://[::1]:8000", "wss://[::1]:8000"]),
        ("evil.org; script-src *", ["'self'"]),
        (None, ["'self'"]),
    ],
)
def test_policy_names_only_a_well_formed_host(host: str | None, expected: list[str]) -> None:
    policy = directives(webclient.content_security_policy(make_settings(), host))
    assert policy["connect-src"] == expected


def test_tile_sources() -> None:
    assert webclient.tile_source("") is None
    assert (
        webclient.tile_source("https://tile.openstreetmap.org/{z}/{x}/{y}.png")
        == "https://tile.openstreetmap.org"
    )
    assert (
        webclient.tile_source("http://{s}.tile.example.org:8080/{z}/{x}/{y}.png")
        == "http://*.tile.example.org:8080"
    )
    assert webclient.tile_source("https://{tenant}.example.org/{z}/{x}/{y}.png") == "https:"


async def test_client_config(server_factory: ServerFactory) -> None:
    default = server_factory()
    custom = server_factory(map_tile_url="", max_frame_size=65536, reply_threads=True)
    async with client_for(default) as http:
        response = await http.get("/client-config")
    assert response.headers["cache-control"] == "no-cache"
    assert response.json() == {
        "tile_url": Settings.model_fields["map_tile_url"].default,
        "tile_attribution": Settings.model_fields["map_tile_attribution"].default,
        "max_frame_size": 16 * 1024 * 1024,
        "reply_threads": False,
        "moderation": False,
        "matrix_suffix": None,
    }
    async with client_for(custom) as http:
        config = (await http.get("/client-config")).json()
    assert config == {
        "tile_url": "",
        "tile_attribution": "",
        "max_frame_size": 65536,
        "reply_threads": True,
        "moderation": False,
        "matrix_suffix": None,
    }


def test_client_config_follows_reply_threads() -> None:
    """The page offers replies exactly when the server threads them (REPLY_THREADS)."""
    assert webclient.client_config(make_settings())["reply_threads"] is False
    assert webclient.client_config(make_settings(reply_threads=True))["reply_threads"] is True


def test_client_config_offers_moderation_only_when_told() -> None:
    """The page shows its "Moderate" entry only on an instance with moderators (ADMIN_TOKENS)."""
    assert webclient.client_config(make_settings())["moderation"] is False
    assert webclient.client_config(make_settings(), moderation=True)["moderation"] is True


def test_client_sources_load_no_code() -> None:
    """Models and scripts leave the page as downloads, never run: nothing in the client loads,
    evaluates or frames code it was given."""
    for source in STATIC.glob("*.js"):
        code = source.read_text()
        for sink in ("import(", "new Worker", 'setTimeout("', "javascript:", "srcdoc"):
            assert sink not in code, f"{source.name} uses {sink}"


async def test_static_files_and_leaflet_are_served(server: LiveServer) -> None:
    async with client_for(server) as http:
        for name in ("app.js", "chat.js", "connection.js", "dom.js", "geo.js", "images.js", "map.js"):
            response = await http.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert "javascript" in response.headers["content-type"], name
        assert (await http.get("/static/style.css")).headers["content-type"].startswith("text/css")
        assert (await http.get("/static/favicon.svg")).headers["content-type"] == "image/svg+xml"
        leaflet = await http.get("/static/leaflet/leaflet.js")
        assert leaflet.status_code == 200
        assert "Leaflet" in leaflet.text[:500]
        assert (await http.get("/static/leaflet/leaflet.css")).status_code == 200
        assert (await http.get("/static/leaflet/images/marker-icon.png")).status_code == 200
        assert (await http.get("/static/../settings.py")).status_code == 404
        assert (await http.get("/static/nothing.js")).status_code == 404


def test_client_sources_insert_no_html() -> None:
    """Message contents reach the page as text: the client never parses strings as HTML."""
    for source in STATIC.glob("*.js"):
        code = source.read_text()
        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ):
            assert sink not in code, f"{source.name} uses {sink}"
