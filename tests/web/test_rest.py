"""Every REST route, against a real uvicorn server on a free port."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from gischat.settings import Settings

from conftest import TEST_ROOMS, TIMEOUT, LiveServer, ServerFactory, text, wait_for, ws_client

pytestmark = pytest.mark.anyio

RULES_KEYS = {
    "rules",
    "main_lang",
    "min_author_length",
    "max_author_length",
    "max_message_length",
    "max_image_size",
    "max_geojson_features",
}
DEFAULT_RULES: dict[str, Any] = {
    "rules": "Be kind and nice to this wonderful world",
    "main_lang": "en",
    "min_author_length": 3,
    "max_author_length": 32,
    "max_message_length": 255,
    "max_image_size": 800,
    "max_geojson_features": 500,
}
TEXT_KEYS = ["type", "author", "avatar", "text"]


def client_for(server: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT)


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The response is a JSON error whose `detail` is a string that mentions every word."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, str), body
    assert detail
    for word in words:
        assert word in detail, (word, detail)
    return detail


async def counts(http: httpx.AsyncClient) -> dict[str, int]:
    response = await http.get("/status")
    assert response.status_code == 200
    return {room["name"]: room["nb_connected_users"] for room in response.json()["rooms"]}


async def users(http: httpx.AsyncClient, room: str) -> list[str]:
    response = await http.get(f"/room/{room}/users")
    assert response.status_code == 200, response.text
    names = response.json()
    assert isinstance(names, list)
    return names


# --- GET /rooms ----------------------------------------------------------------------------------


async def test_rooms_in_settings_order(http: httpx.AsyncClient) -> None:
    response = await http.get("/rooms")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == TEST_ROOMS


async def test_rooms_keep_configured_order_not_sorted(server_factory: ServerFactory) -> None:
    rooms = ["Zeta", "alpha", "Mid room", "Beta"]
    async with client_for(server_factory(rooms=rooms)) as http:
        assert (await http.get("/rooms")).json() == rooms
        assert [r["name"] for r in (await http.get("/status")).json()["rooms"]] == rooms


def test_rooms_setting_is_comma_separated() -> None:
    settings = Settings(rooms="QGIS,Field and mobile, Living room", _env_file=None)
    assert settings.rooms == ["QGIS", "Field and mobile", "Living room"]


def test_rooms_setting_drops_empty_names() -> None:
    settings = Settings(rooms=" ,QGIS,, ,Living room ,", _env_file=None)
    assert settings.rooms == ["QGIS", "Living room"]


# --- GET /rules ----------------------------------------------------------------------------------


async def test_rules_defaults(http: httpx.AsyncClient) -> None:
    response = await http.get("/rules")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == RULES_KEYS
    assert body == DEFAULT_RULES


async def test_rules_custom_settings(server_factory: ServerFactory) -> None:
    custom = {
        "rules": "Soyez sympas, pas de spam",
        "main_lang": "fr",
        "min_author_length": 2,
        "max_author_length": 20,
        "max_message_length": 100,
        "max_image_size": 400,
        "max_geojson_features": 10,
    }
    async with client_for(server_factory(**custom)) as http:
        body = (await http.get("/rules")).json()
    assert set(body) == RULES_KEYS
    assert body == custom


# --- GET /status ---------------------------------------------------------------------------------


async def test_status_shape_and_order(http: httpx.AsyncClient) -> None:
    response = await http.get("/status")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "healthy": True,
        "rooms": [{"name": name, "nb_connected_users": 0} for name in TEST_ROOMS],
        "channels": [{"name": name, "nb_connected_users": 0} for name in TEST_ROOMS],
    }


async def test_status_counts_open_websockets(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with (
        ws_client(server, "QGIS") as a,
        ws_client(server, "QGIS"),
        ws_client(server, "Field and mobile"),
    ):
        expected = {"QGIS": 2, "Field and mobile": 1, "Living room": 0}

        async def settled() -> bool:
            return await counts(http) == expected

        await wait_for(settled)
        body = (await http.get("/status")).json()
        assert [room["name"] for room in body["rooms"]] == TEST_ROOMS
        assert all(set(room) == {"name", "nb_connected_users"} for room in body["rooms"])

        await a.close()
        expected = {"QGIS": 1, "Field and mobile": 1, "Living room": 0}
        await wait_for(settled)

    expected = dict.fromkeys(TEST_ROOMS, 0)
    await wait_for(settled)


# --- GET /room/{room}/users ----------------------------------------------------------------------


async def test_users_sorted_case_insensitively(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with AsyncExitStack() as stack:
        for nickname in ["carol", "Bob", "alice", "Dave"]:
            client = await stack.enter_async_context(ws_client(server, "QGIS"))
            await client.register(nickname)
        # Connected but not registered: not a user.
        await stack.enter_async_context(ws_client(server, "QGIS"))
        assert await users(http, "QGIS") == ["alice", "Bob", "carol", "Dave"]
        assert await users(http, "Living room") == []


async def test_users_percent_encoded_room(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server, "Field and mobile") as a, ws_client(server, "QGIS") as b:
        await a.register("fieldworker")
        await b.register("desk_user")
        assert await users(http, "Field%20and%20mobile") == ["fieldworker"]
        assert await users(http, "QGIS") == ["desk_user"]
    # Gone with their sockets.

    async def empty() -> bool:
        return await users(http, "Field%20and%20mobile") == []

    await wait_for(empty)


async def test_non_ascii_room_names(server_factory: ServerFactory) -> None:
    server = server_factory(rooms=["Café", "R&D lab", "Карта"])
    async with client_for(server) as http, ws_client(server, "Карта") as a:
        await a.register("Ivan")
        assert (await http.get("/rooms")).json() == ["Café", "R&D lab", "Карта"]
        assert await users(http, "%D0%9A%D0%B0%D1%80%D1%82%D0%B0") == ["Ivan"]
        assert await users(http, "Caf%C3%A9") == []
        assert await users(http, "R%26D%20lab") == []
        response = await http.put("/room/R%26D%20lab/text", json=text("bot_1"))
        assert response.status_code == 200, response.text


async def test_users_unknown_room(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/room/Attic/users"), 404, "Attic")
    assert_error(await http.get("/room/Field%20and%20mobil/users"), 404)


# --- GET /version --------------------------------------------------------------------------------


async def test_version(http: httpx.AsyncClient) -> None:
    response = await http.get("/version")
    assert response.status_code == 200
    assert response.json() == {"version": importlib.metadata.version("gischat")}


# --- PUT /room/{room}/text -----------------------------------------------------------------------


async def test_put_text_echoes_the_message(http: httpx.AsyncClient) -> None:
    response = await http.put("/room/QGIS/text", json=text("curl-bot", "Deploy finished"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == TEXT_KEYS
    assert body == {"type": "text", "author": "curl-bot", "avatar": None, "text": "Deploy finished"}


async def test_put_text_avatar_absent_is_null(http: httpx.AsyncClient) -> None:
    response = await http.put("/room/QGIS/text", json={"type": "text", "author": "bot_1", "text": "hi"})
    assert response.status_code == 200, response.text
    assert response.json() == {"type": "text", "author": "bot_1", "avatar": None, "text": "hi"}


async def test_put_text_avatar_kept_extra_keys_dropped(http: httpx.AsyncClient) -> None:
    body = {**text("bot_1", "hi", avatar="mGeoPackage.svg"), "extra": "ignored"}
    response = await http.put("/room/QGIS/text", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == text("bot_1", "hi", avatar="mGeoPackage.svg")
    assert list(response.json()) == TEXT_KEYS


async def test_put_text_without_type_is_text(http: httpx.AsyncClient) -> None:
    response = await http.put("/room/QGIS/text", json={"author": "bot_1", "text": "no type"})
    assert response.status_code == 200, response.text
    assert response.json() == text("bot_1", "no type")


async def test_put_text_reaches_the_room_only(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with (
        ws_client(server, "QGIS") as a,
        ws_client(server, "QGIS") as b,
        ws_client(server, "Field and mobile") as other,
    ):
        await a.register("alice")  # a registered socket hears REST messages as well
        response = await http.put("/room/QGIS/text", json=text("curl-bot", "to QGIS"))
        assert response.status_code == 200, response.text
        echoed = response.json()
        assert await a.expect("text") == echoed
        assert await b.expect("text") == echoed

        # A message in the other room after the PUT marks the point by which a leak would show.
        await other.send({"type": "newcomer", "newcomer": "marker"})
        await other.expect_no("text", until=lambda m: m.get("type") == "newcomer")


async def test_put_text_to_room_with_space(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server, "Field and mobile") as a:
        response = await http.put("/room/Field%20and%20mobile/text", json=text("bot_1", "outside"))
        assert response.status_code == 200, response.text
        assert await a.expect("text") == text("bot_1", "outside")


async def test_put_text_does_not_register_the_author(server: LiveServer, http: httpx.AsyncClient) -> None:
    assert (await http.put("/room/QGIS/text", json=text("curlbot"))).status_code == 200
    assert await users(http, "QGIS") == []
    async with ws_client(server, "QGIS") as a:
        await a.register("curlbot")
    # And the same author may post again: nothing was reserved.
    assert (await http.put("/room/Living%20room/text", json=text("curlbot"))).status_code == 200


async def test_put_text_unknown_room(http: httpx.AsyncClient) -> None:
    assert_error(await http.put("/room/Attic/text", json=text("bot_1")), 404, "Attic")
    # The room is checked first, whatever the body.
    assert_error(await http.put("/room/Attic/text", content=b"not json"), 404)
    assert_error(await http.put("/room/qgis/text", json=text("bot_1")), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(text("a b!"), "author", id="author-bad-characters"),
        pytest.param(text("ab"), "author", id="author-too-short"),
        pytest.param(text("x" * 33), "author", id="author-too-long"),
        pytest.param({"type": "text", "author": 42, "text": "hi"}, "author", id="author-not-string"),
        pytest.param({"type": "text", "text": "hi"}, "author", id="author-missing"),
        pytest.param(text("bot_1", "x" * 256), "text", id="text-too-long"),
        pytest.param({"type": "text", "author": "bot_1"}, "text", id="text-missing"),
        pytest.param({"type": "image", "author": "bot_1", "image_data": "AAAA"}, "type", id="type-image"),
        pytest.param({**text("bot_1"), "type": "nb_users"}, "type", id="type-server-only"),
    ],
)
async def test_put_text_invalid_message(http: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    assert_error(await http.put("/room/QGIS/text", json=body), 422, field)


async def test_put_text_at_max_length_accepted(http: httpx.AsyncClient) -> None:
    response = await http.put("/room/QGIS/text", json=text("bot_1", "é" * 255))
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "é" * 255


async def test_put_text_not_json(http: httpx.AsyncClient) -> None:
    response = await http.put(
        "/room/QGIS/text", content=b"this is not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "JSON")


async def test_put_text_empty_body(http: httpx.AsyncClient) -> None:
    assert_error(await http.put("/room/QGIS/text"), 422)


async def test_put_text_json_list(http: httpx.AsyncClient) -> None:
    assert_error(await http.put("/room/QGIS/text", json=[text("bot_1")]), 422, "object")


async def test_put_text_rejected_is_not_broadcast(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server, "QGIS") as a:
        assert (await http.put("/room/QGIS/text", json=text("bot_1", "x" * 256))).status_code == 422
        await a.send({"type": "newcomer", "newcomer": "marker"})
        await a.expect_no("text", until=lambda m: m.get("type") == "newcomer")


async def test_put_text_registered_nickname_conflict(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server, "QGIS") as a:
        await a.register("alice")
        assert_error(await http.put("/room/QGIS/text", json=text("alice")), 409, "alice")
        assert_error(await http.put("/room/QGIS/text", json=text("ALICE")), 409)
        assert_error(await http.put("/room/QGIS/text", json=text("Alice")), 409)
        # Registered in QGIS only: free to use elsewhere.
        response = await http.put("/room/Field%20and%20mobile/text", json=text("alice", "elsewhere"))
        assert response.status_code == 200, response.text
        assert response.json() == text("alice", "elsewhere")

    async def released() -> bool:
        return await users(http, "QGIS") == []

    await wait_for(released)
    assert (await http.put("/room/QGIS/text", json=text("alice"))).status_code == 200


async def test_put_text_conflict_is_not_broadcast(server: LiveServer, http: httpx.AsyncClient) -> None:
    async with ws_client(server, "QGIS") as a, ws_client(server, "QGIS") as b:
        await a.register("alice")
        assert (await http.put("/room/QGIS/text", json=text("alice", "spoof"))).status_code == 409
        await a.send({"type": "newcomer", "newcomer": "marker"})
        await b.expect_no("text", until=lambda m: m.get("type") == "newcomer")


async def test_put_text_body_too_large(server_factory: ServerFactory) -> None:
    server = server_factory(max_frame_size=2048, max_message_length=5000)
    async with client_for(server) as http:
        big = text("bot_1", "x" * 3000)
        assert_error(await http.put("/room/QGIS/text", json=big), 413)

        # Without Content-Length (chunked), the limit still holds.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b" " * 512

        response = await http.put(
            "/room/QGIS/text", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert_error(response, 413)

        # Just under the limit is fine.
        response = await http.put("/room/QGIS/text", json=text("bot_1", "y" * 1900))
        assert response.status_code == 200, response.text


# --- GET /about ---------------------------------------------------------------------------------------


async def test_about_page(http: httpx.AsyncClient) -> None:
    response = await http.get("/about")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert DEFAULT_RULES["rules"] in page
    for room in TEST_ROOMS:
        assert room in page
    assert 'href="docs"' in page


async def test_about_page_runs_no_inline_code(http: httpx.AsyncClient) -> None:
    response = await http.get("/about")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    page = response.text
    assert "<script>" not in page
    assert "<style>" not in page
    for asset in ("static/about.js", "static/about.css"):
        assert asset in page
        served = await http.get(f"/{asset}")
        assert served.status_code == 200
        assert served.text


async def test_about_page_escapes_configured_text(server_factory: ServerFactory) -> None:
    rooms = ["QGIS", "Tom & Jerry", 'say "hi"', "<b>bold<b>"]
    server = server_factory(rules="<script>alert(1)</script>", rooms=rooms)
    async with client_for(server) as http:
        response = await http.get("/about")
    assert response.status_code == 200
    page = response.text
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Tom &amp; Jerry" in page
    assert "Tom & Jerry" not in page
    assert 'data-room="say &quot;hi&quot;"' in page
    assert "<b>bold" not in page
    assert "&lt;b&gt;bold&lt;b&gt;" in page


# --- /docs and /openapi.json ---------------------------------------------------------------------


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow `$ref`s (into `#/components/...`) until reaching a concrete node."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert isinstance(ref, str), ref
        assert ref.startswith("#/"), ref
        assert ref not in seen, f"$ref cycle at {ref}"
        seen.add(ref)
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def has_example(spec: dict[str, Any], content: dict[str, Any]) -> bool:
    """An example in the media type object, or in the schema it points to."""
    if "example" in content or content.get("examples"):
        return True
    schema = resolve(spec, content.get("schema", {}))
    return isinstance(schema, dict) and bool(schema.get("examples") or "example" in schema)


EXPECTED_OPERATIONS = [
    ("/rooms", "get"),
    ("/rules", "get"),
    ("/status", "get"),
    ("/version", "get"),
    ("/room/{room}/users", "get"),
    ("/room/{room}/text", "put"),
]


async def test_docs_page(http: httpx.AsyncClient) -> None:
    response = await http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "openapi.json" in response.text


async def test_openapi_documents_every_route(http: httpx.AsyncClient) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["version"] == importlib.metadata.version("gischat")
    paths = spec["paths"]
    for path, method in EXPECTED_OPERATIONS:
        assert path in paths, path
        operation = paths[path][method]
        ok = operation["responses"]["200"]
        content = ok["content"]["application/json"]
        schema = resolve(spec, content["schema"])
        assert isinstance(schema, dict), (path, method)
        assert schema, (path, method)
        assert has_example(spec, content), f"no example for {method.upper()} {path}"
    # The page is not part of the API.
    assert "/" not in paths


async def test_openapi_put_text(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    operation = spec["paths"]["/room/{room}/text"]["put"]
    body = operation["requestBody"]["content"]["application/json"]
    assert "example" in body or body.get("examples")
    example = body.get("example") or next(iter(body["examples"].values()))["value"]
    # FastAPI drops None values from the spec, so a null avatar may be left out.
    assert {"type", "author", "text"} <= set(example) <= set(TEXT_KEYS)
    assert set(operation["responses"]) >= {"200", "404", "409", "413", "422"}
    for status in ("404", "409", "413", "422"):
        error = operation["responses"][status]["content"]["application/json"]
        assert resolve(spec, error["schema"])["properties"]["detail"]["type"] == "string"
    response_schema = resolve(spec, operation["responses"]["200"]["content"]["application/json"]["schema"])
    assert list(response_schema["properties"]) == TEXT_KEYS


async def test_openapi_example_is_accepted(http: httpx.AsyncClient) -> None:
    """The documented request body works as documented."""
    spec = (await http.get("/openapi.json")).json()
    body = spec["paths"]["/room/{room}/text"]["put"]["requestBody"]["content"]["application/json"]
    example = body.get("example") or next(iter(body["examples"].values()))["value"]
    response = await http.put("/room/QGIS/text", json=example)
    assert response.status_code == 200, response.text
    assert response.json() == {"avatar": None, **example}
