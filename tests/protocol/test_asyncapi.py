"""GET /asyncapi.json: a valid AsyncAPI 3.0.0 document whose examples the server really accepts.

The document is validated against the official AsyncAPI 3.0.0 JSON Schema, published by the
npm package `@asyncapi/specs` (`schemas/3.0.0.json`). `.ci/run` fetches it into
`.cache/asyncapi-specs/` before the tests (`ASYNCAPI_SPECS_DIR` points elsewhere); when it
is missing locally the test fetches it with npm, and skips if npm is not there, except under
CI (`CI=true`), where a missing schema fails.

The document describes both sockets of a conversation: `/room/{room}/ws` (2.x) and
`/channel/{channel}/ws` (3.x). Every example, the document's and docs/protocol.md's ("Examples, as
they travel"), is checked the hard way: client messages are sent to a real server, on the socket
they are documented for, and must come back relayed with the same keys (on a channel, as the
documented server frame of the same name, but for its id and timestamp); server messages must
have the exact wire shape of their dialect, key for key and, on channels, in order.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from test_docs import json_block
from websockets.asyncio.client import connect

from gischat.protocol.asyncapi.document import build_document
from gischat.protocol.asyncapi.payloads import TINY_PNG
from gischat.protocol.asyncapi.rules import FILE_NAME_JSON_PATTERN, field_rules
from gischat.protocol.asyncapi.schemas import message_models
from gischat.protocol.dialects import CHANNEL_TYPES, ROOM_TYPES, Dialect
from gischat.protocol.messages import CLIENT_MODELS, SERVER_ONLY_TYPES, Limits, check_file_name
from gischat.protocol.refusals import REPLY_REASON, SCRIPTS_OFF_REASON, Uncompliant
from gischat.web.app import document_settings

from conftest import TIMEOUT, Client, LiveServer, ServerFactory, make_settings, ws_client
from wire import CHANNEL_KEYS, ENVELOPE, check_shape, next_frame, parse_strict

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SPECS_PACKAGE = "@asyncapi/specs@6"  # the same as .ci/run's
SPECS_SCHEMA = Path("schemas") / "3.0.0.json"
DOCUMENT_URI = "urn:gischat:asyncapi"
# Each example is tried in a room of its own, so their nicknames never collide.
SANDBOX_ROOMS = [f"sandbox-{index}" for index in range(40)]
# The instance settings each dialect's examples are tried under: the defaults, and everything on.
CONFIGURATIONS = {
    "defaults": {},
    "scripts-and-replies": {"allow_scripts": True, "reply_threads": True},
}

# The 3.x wire (ENVELOPE, CHANNEL_KEYS) is written down once, in tests/wire.py, not derived from the code.
REPLY = "in_reply_to_id"
# The types a message may answer with: those with an author.
REPLYING_TYPES = {kind for kind, keys in CHANNEL_KEYS.items() if "author" in keys}


# --- the official schema ---------------------------------------------------------------------------


def specs_dir() -> Path:
    return Path(os.environ.get("ASYNCAPI_SPECS_DIR") or ROOT / ".cache" / "asyncapi-specs")


def fetch_specs(target: Path) -> str | None:
    """Download the package with npm into `target` (package root); None, or why it failed."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            packed = subprocess.run(
                [npm, "pack", SPECS_PACKAGE, "--silent", "--pack-destination", tmp],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return f"npm pack {SPECS_PACKAGE} failed: {exc}"
        names = packed.stdout.split()
        if not names:
            return f"npm pack {SPECS_PACKAGE} named no file"
        tarball = Path(tmp) / names[-1]
        with tarfile.open(tarball) as archive:
            for path in (Path("package.json"), SPECS_SCHEMA):
                source = archive.extractfile(f"package/{path.as_posix()}")
                assert source is not None
                (target / path).parent.mkdir(parents=True, exist_ok=True)
                (target / path).write_bytes(source.read())
    return None


@pytest.fixture(scope="module")
def asyncapi_schema() -> dict[str, Any]:
    path = specs_dir() / SPECS_SCHEMA
    problem = None
    if not path.is_file():
        problem = fetch_specs(specs_dir())
    if not path.is_file():
        reason = (
            f"the AsyncAPI 3.0.0 JSON Schema is missing: {path} ({problem or 'not in the package'}); "
            f"fetch {SPECS_PACKAGE} as .ci/run does, or set ASYNCAPI_SPECS_DIR"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    schema = json.loads(path.read_text())
    assert isinstance(schema, dict)
    return schema


# --- helpers -------------------------------------------------------------------------------------


async def get_document(server: LiveServer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert isinstance(document, dict)
    return document


def python_patterns(schema: Any) -> Any:
    """`schema` with its patterns readable by Python's `re`.

    JSON Schema patterns are ECMA-262 regular expressions; `re` knows no `\\p{..}` classes. The
    nickname alphabet `[\\p{L}\\p{N}_-]` is exactly what `[\\w-]` means in Python.
    """
    if isinstance(schema, list):
        return [python_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: python_patterns(value) for key, value in schema.items()}
    if isinstance(converted.get("pattern"), str):
        converted["pattern"] = converted["pattern"].replace(r"\p{L}\p{N}_", r"\w")
        assert r"\p{" not in converted["pattern"], f"no Python equivalent known for {schema['pattern']}"
    return converted


def payload_validator(document: dict[str, Any], ref: str) -> Validator:
    """A validator for one `#/components/...` schema of the document, its `$ref`s resolved in it."""
    contents = {"components": {"schemas": python_patterns(document["components"]["schemas"])}}
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(contents, default_specification=DRAFT7)
    )
    return jsonschema.Draft7Validator({"$ref": DOCUMENT_URI + ref}, registry=registry)


def examples(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(message key, example payload) for every example in the document, of both channels."""
    for name, message in document["components"]["messages"].items():
        for example in message.get("examples", []):
            yield name, example["payload"]


def payload_schema(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def socket_messages(document: dict[str, Any], channel: str) -> dict[str, dict[str, Any]]:
    """The messages of one channel (`room` or `channel`), by their key in it (`text`, `client.text`)."""
    refs = document["channels"][channel]["messages"]
    return {key: payload_schema(document, ref["$ref"]) for key, ref in refs.items()}


def socket_operations(document: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    return [op for op in document["operations"].values() if op["channel"]["$ref"] == f"#/channels/{channel}"]


def message_keys(refs: list[dict[str, str]]) -> list[str]:
    """The keys, in their channel, of the messages an operation lists."""
    return [ref["$ref"].rsplit("/", 1)[1] for ref in refs]


def protocol_examples() -> list[dict[str, Any]]:
    """The JSON objects of docs/protocol.md's "Examples, as they travel" block (some span two lines)."""
    return json_block((ROOT / "docs" / "protocol.md").read_text(), "Examples, as they travel:")


def is_uuid4(value: Any) -> bool:
    """A lowercase hyphenated UUID4, as the server writes message ids."""
    if not isinstance(value, str):
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return str(parsed) == value and parsed.version == 4


def check_channel_frame(message: dict[str, Any]) -> None:
    """The exact 3.x shape: the envelope, the type's keys in order, `in_reply_to_id` last on a reply."""
    kind = message.get("type")
    assert isinstance(kind, str)
    assert kind in CHANNEL_KEYS, f"unknown type from the server: {message}"
    expected = [*ENVELOPE, *CHANNEL_KEYS[kind]]
    if kind in REPLYING_TYPES and list(message)[-1:] == [REPLY]:
        expected.append(REPLY)
        assert is_uuid4(message[REPLY]), message[REPLY]
    assert list(message) == expected, f"wrong keys for {kind}: {list(message)}"
    assert is_uuid4(message["id"]), message["id"]
    assert type(message["timestamp"]) is int
    assert message["timestamp"] > 0


def envelope_stripped(frame: dict[str, Any]) -> dict[str, Any]:
    """A channel frame's keys after the envelope: the 2.x message (and `in_reply_to_id`)."""
    return {key: value for key, value in frame.items() if key not in ("id", "timestamp")}


@asynccontextmanager
async def socket(server: LiveServer, name: str, dialect: Dialect) -> AsyncIterator[Client]:
    """A websocket to the conversation `name`, on the route of `dialect`."""
    if dialect is Dialect.ROOM:
        async with ws_client(server, name) as client:
            yield client
        return
    url = f"ws://127.0.0.1:{server.port}/channel/{quote(name, safe='')}/ws"
    async with connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        yield Client(ws)


async def read(client: Client, dialect: Dialect) -> dict[str, Any]:
    """The next frame but counts, parsed strictly and checked against its dialect's exact shape."""
    if dialect is Dialect.ROOM:
        return await next_frame(client)
    while True:
        message = parse_strict(await client.recv_raw())
        check_channel_frame(message)
        if message["type"] != "nb_users":
            return message


async def relayed(
    client: Client, kind: str, dialect: Dialect = Dialect.ROOM, **fields: Any
) -> dict[str, Any]:
    """The next `kind` frame (matching `fields`); a refusal fails with the server's reason."""
    while True:
        message = await read(client, dialect)
        if message["type"] == "uncompliant":
            pytest.fail(f"the server refused it: {message['reason']}")
        if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
            return message


async def register(client: Client, nickname: str, dialect: Dialect = Dialect.ROOM) -> None:
    await client.send({"type": "newcomer", "newcomer": nickname})
    await relayed(client, "newcomer", dialect, newcomer=nickname)


async def assert_accepted(
    server: LiveServer, room: str, example: dict[str, Any], dialect: Dialect = Dialect.ROOM
) -> dict[str, Any]:
    """Send a client example as a client would; the server must relay it unchanged. Returns the
    frame as received (on a channel, with the envelope the server gave it).

    Senders register their nickname first, as QTribu does. A like goes only to the socket
    registered as its `liked_author`, so that one receives it. A reply must answer a recent
    message of the conversation: the sender says something first, and the example answers that
    instead of the document's made-up id.
    """
    kind = example["type"]
    async with AsyncExitStack() as stack:
        sender = await stack.enter_async_context(socket(server, room, dialect))
        receiver = sender
        if kind == "like":
            receiver = await stack.enter_async_context(socket(server, room, dialect))
            await register(receiver, example["liked_author"], dialect)
            await register(sender, example["liker_author"], dialect)
        elif "author" in example:
            await register(sender, example["author"], dialect)
        if REPLY in example:
            await sender.send({"type": "text", "author": example["author"], "avatar": None, "text": "first"})
            first = await relayed(sender, "text", dialect, text="first")
            example = {**example, REPLY: first["id"]}
        await sender.send(example)
        if receiver is not sender:
            # A refusal goes to the sender: a text sent after the like comes back to the sender
            # only once the like was handled (one sender's messages are handled in order).
            marker = {"type": "text", "author": example["liker_author"], "avatar": None, "text": "marker"}
            await sender.send(marker)
            await relayed(sender, "text", dialect, text="marker")
        frame = await relayed(receiver, kind, dialect)
    echo = envelope_stripped(frame) if dialect is Dialect.CHANNEL else dict(frame)
    if dialect is Dialect.CHANNEL:
        assert list(echo) == list(example), f"{kind}: relayed with keys {list(echo)}"
    assert set(echo) == set(example), f"{kind}: relayed with keys {sorted(echo)}"
    if kind == "image":  # resized and re-encoded, never the same bytes
        assert base64.b64decode(echo.pop("image_data"), validate=True).startswith(b"\x89PNG")
        example = {key: value for key, value in example.items() if key != "image_data"}
    assert echo == example
    return frame


def reasons(document: dict[str, Any], key: str) -> list[str]:
    """The reasons of the refusal examples of message `key` (`uncompliant`, `channel.server.uncompliant`)."""
    return [example["payload"]["reason"] for example in document["components"]["messages"][key]["examples"]]


# --- the document --------------------------------------------------------------------------------


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
async def test_document_is_valid_asyncapi_3(
    server_factory: ServerFactory, asyncapi_schema: dict[str, Any], configuration: str
) -> None:
    document = await get_document(server_factory(**CONFIGURATIONS[configuration]))
    assert document["asyncapi"] == "3.0.0"
    validator = jsonschema.Draft7Validator(asyncapi_schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}"
        for error in validator.iter_errors(document)
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
async def test_document_lists_exactly_the_protocol(server_factory: ServerFactory, configuration: str) -> None:
    server = server_factory(**CONFIGURATIONS[configuration])
    settings = server.settings
    document = await get_document(server)
    room_kinds = [*ROOM_TYPES, *SERVER_ONLY_TYPES]
    channel_kinds = [*CHANNEL_TYPES, *SERVER_ONLY_TYPES]
    room, channel = document["channels"]["room"], document["channels"]["channel"]
    assert set(document["channels"]) == {"room", "channel"}
    assert room["address"] == "/room/{room}/ws"
    assert channel["address"] == "/channel/{channel}/ws"
    assert room["parameters"]["room"]["enum"] == settings.rooms
    assert channel["parameters"]["channel"]["enum"] == settings.rooms
    # The type lists are the dialect tables: rooms one message per type, channels one per type and
    # direction; every message of the document belongs to exactly one of them.
    assert list(room["messages"]) == room_kinds
    assert list(channel["messages"]) == [f"client.{kind}" for kind in CHANNEL_TYPES] + [
        f"server.{kind}" for kind in channel_kinds
    ]
    listed = [ref["$ref"] for socket in (room, channel) for ref in socket["messages"].values()]
    assert sorted(listed) == sorted(
        f"#/components/messages/{key}" for key in document["components"]["messages"]
    )
    for name, clients, to_server, to_client in (
        ("room", ROOM_TYPES, "{}", "{}"),
        ("channel", CHANNEL_TYPES, "client.{}", "server.{}"),
    ):
        operations = socket_operations(document, name)
        received = [op for op in operations if op["action"] == "receive"]
        assert len(received) == 1, name
        assert message_keys(received[0]["messages"]) == [to_server.format(kind) for kind in clients]
        assert message_keys(received[0]["reply"]["messages"]) == [to_client.format("uncompliant")]
        sent = [key for op in operations if op["action"] == "send" for key in message_keys(op["messages"])]
        assert sorted(sent) == sorted(to_client.format(kind) for kind in [*clients, *SERVER_ONLY_TYPES]), (
            f"{name}: each type the server sends is in exactly one send operation"
        )
    assert len(document["operations"]) == 8
    # Each message's schema is its model's, key for key and in wire order: a field added to a
    # model shows up here by itself. Rooms keep their own schemas, channels theirs.
    models = message_models()
    for kind in room_kinds:
        model = models[kind]
        message = socket_messages(document, "room")[kind]
        assert not message["payload"]["$ref"].startswith("#/components/schemas/Channel")
        schema = payload_schema(document, message["payload"]["$ref"])
        wire_keys = [name for name, field in model.model_fields.items() if not field.exclude]
        assert list(schema["properties"]) == wire_keys == ["type", *CHANNEL_KEYS[kind]], kind
        assert schema["properties"]["type"]["const"] == kind
        assert "type" in schema["required"]
        assert message["examples"], f"no example for {kind}"
    for key, message in socket_messages(document, "channel").items():
        direction, kind = key.split(".")
        schema = payload_schema(document, message["payload"]["$ref"])
        assert (
            message["payload"]["$ref"]
            == f"#/components/schemas/Channel{direction.capitalize()}{models[kind].__name__}"
        )
        assert schema["properties"]["type"]["const"] == kind
        replies = [REPLY] if kind in REPLYING_TYPES else []
        if direction == "client":  # the 2.x shape, `in_reply_to_id` optional last
            assert list(schema["properties"]) == ["type", *CHANNEL_KEYS[kind], *replies], key
            assert "type" in schema["required"]
            assert REPLY not in schema["required"]
        else:  # the 3.x frame: every key, always
            replies = replies if settings.reply_threads else []
            assert list(schema["properties"]) == [*ENVELOPE, *CHANNEL_KEYS[kind], *replies], key
            assert schema["required"] == [*ENVELOPE, *CHANNEL_KEYS[kind]], key
            assert schema["additionalProperties"] is False
        # Scripts are the one type an instance may refuse outright: nothing to show then.
        assert message["examples"] or (kind == "script" and not settings.allow_scripts), (
            f"no example for {key}"
        )


def test_every_validated_field_has_its_rules_in_the_document() -> None:
    """A validator that reads the instance's limits is invisible to pydantic's schema: its
    rules must be written by `field_rules`, or the document would tell clients less than the truth."""
    rules = field_rules(Limits())
    for model in message_models().values():
        for decorator in model.__pydantic_decorators__.field_validators.values():
            for field in decorator.info.fields:
                assert field in rules, f"{model.__name__}.{field} is validated; add its rules to field_rules"


FILE_NAMES = ["wells", "my layer", "wells.v2", "...", ".hidden", "a..b", "é-Ω", "", " x "]
NOT_FILE_NAMES = [
    ".",
    "..",
    " .. ",
    "a/b",
    "a\\b",
    "tab\there",
    "line\nbreak",
    "nul\x00",
    "del\x7f",
    "nel\x85",
]


@pytest.mark.parametrize(
    ("name", "accepted"),
    [*((name, True) for name in FILE_NAMES), *((name, False) for name in NOT_FILE_NAMES)],
)
def test_file_name_pattern_is_check_file_name(name: str, accepted: bool) -> None:
    """The pattern the document gives layer, model and script names accepts what the server does."""
    try:
        check_file_name(name, "layer_name")
    except Uncompliant:
        assert not accepted
    else:
        assert accepted
    assert (re.search(FILE_NAME_JSON_PATTERN, name) is not None) == accepted


async def test_document_carries_the_instance_limits(server_factory: ServerFactory) -> None:
    server = server_factory(
        min_author_length=4,
        max_author_length=20,
        max_message_length=100,
        max_geojson_features=7,
        max_image_length=5000,
        max_model_length=6000,
        max_script_length=7000,
        allow_scripts=True,
    )
    document = await get_document(server)
    schemas = document["components"]["schemas"]
    author = schemas["TextMessage"]["properties"]["author"]
    assert (author["minLength"], author["maxLength"]) == (4, 20)
    assert schemas["LikeMessage"]["properties"]["liked_author"]["maxLength"] == 20
    assert schemas["NewcomerMessage"]["properties"]["newcomer"]["minLength"] == 4
    assert schemas["TextMessage"]["properties"]["text"]["maxLength"] == 100
    assert schemas["LikeMessage"]["properties"]["message"]["maxLength"] == 100
    assert schemas["GeojsonMessage"]["properties"]["geojson"]["properties"]["features"]["maxItems"] == 7
    assert schemas["ImageMessage"]["properties"]["image_data"]["maxLength"] == 5000
    assert schemas["GeojsonMessage"]["properties"]["layer_name"]["pattern"] == FILE_NAME_JSON_PATTERN
    for side in ("Client", "Server"):  # both shapes of a channel carry the same rules
        channel = {name.removeprefix(f"Channel{side}"): schema for name, schema in schemas.items()}
        assert channel["TextMessage"]["properties"]["author"]["minLength"] == 4
        assert channel["TextMessage"]["properties"]["text"]["maxLength"] == 100
        assert channel["ImageMessage"]["properties"]["image_data"]["maxLength"] == 5000
        assert channel["PositionMessage"]["properties"]["author"]["maxLength"] == 20
        assert channel["ModelMessage"]["properties"]["raw_xml"]["maxLength"] == 6000
        assert channel["ScriptMessage"]["properties"]["raw_pycode"]["maxLength"] == 7000
        assert channel["GeojsonMessage"]["properties"]["layer_name"]["pattern"] == FILE_NAME_JSON_PATTERN
        assert channel["ModelMessage"]["properties"]["model_name"]["pattern"] == FILE_NAME_JSON_PATTERN
        assert channel["ScriptMessage"]["properties"]["name"]["pattern"] == FILE_NAME_JSON_PATTERN
    for key in ("uncompliant", "channel.server.uncompliant"):
        assert "text: too long (145 characters, max 100)" in reasons(document, key)
        assert "Too many geojson features : 107 vs max 7 allowed" in reasons(document, key)
    assert "model_name: must not contain '/' or '\\'" in reasons(document, "channel.server.uncompliant")
    assert SCRIPTS_OFF_REASON not in reasons(document, "channel.server.uncompliant")


async def test_examples_the_instance_refuses_are_left_out(server_factory: ServerFactory) -> None:
    document = await get_document(server_factory(min_author_length=9))
    authors = {payload.get("author") for _, payload in examples(document)}
    assert "Jane-GIS" not in authors  # 8 characters
    for key in ("uncompliant", "channel.server.uncompliant"):
        assert "newcomer: must be 9 to 32 characters long (got 8)" in reasons(document, key)
    # Scripts are off by default: no script to show, and the refusal a script gets instead.
    messages = document["components"]["messages"]
    assert messages["channel.client.script"]["examples"] == []
    assert messages["channel.server.script"]["examples"] == []
    assert SCRIPTS_OFF_REASON in reasons(document, "channel.server.uncompliant")
    assert SCRIPTS_OFF_REASON not in reasons(document, "uncompliant")


@pytest.mark.parametrize("reply_threads", [False, True])
async def test_document_reflects_reply_threads(server_factory: ServerFactory, reply_threads: bool) -> None:
    """`in_reply_to_id` is accepted from channel clients either way, sent to channel sockets as a
    reply's last key only with REPLY_THREADS on, and never part of the room's wire."""
    document = await get_document(server_factory(reply_threads=reply_threads))
    for name, schema in document["components"]["schemas"].items():
        kind = schema["properties"]["type"]["const"]
        present = REPLY in schema["properties"]
        if name.startswith("ChannelServer"):
            assert present == (reply_threads and kind in REPLYING_TYPES), name
        elif name.startswith("ChannelClient"):
            assert present == (kind in REPLYING_TYPES), name
            if present:
                assert ("ignored" in schema["properties"][REPLY]["description"]) != reply_threads
        else:
            assert not present, f"{name}: rooms never see {REPLY}"
    replies = [(key, payload) for key, payload in examples(document) if REPLY in payload]
    assert [key for key, _ in replies] == (
        ["channel.client.text", "channel.server.text"] if reply_threads else []
    )
    if reply_threads:
        # The documented reply answers a documented message.
        texts = document["components"]["messages"]["channel.server.text"]["examples"]
        ids = {example["payload"]["id"] for example in texts}
        assert {payload[REPLY] for _, payload in replies} <= ids
    assert (REPLY_REASON in reasons(document, "channel.server.uncompliant")) == reply_threads
    assert REPLY_REASON not in reasons(document, "uncompliant")


def test_tight_limits_leave_examples_out_not_the_document(asyncapi_schema: dict[str, Any]) -> None:
    settings = make_settings(
        min_author_length=1,
        max_author_length=1,
        max_message_length=1,
        max_geojson_features=1,
        max_style_length=0,
        max_image_length=1,
        max_model_length=1,
        max_script_length=1,
        allow_scripts=True,
        reply_threads=True,
    )
    document = build_document(document_settings(settings), "1.0.0")
    assert not list(jsonschema.Draft7Validator(asyncapi_schema).iter_errors(document))
    shown = {key for key, _ in examples(document)}
    assert not shown & {
        *ROOM_TYPES,
        *(f"channel.{side}.{kind}" for side in ("client", "server") for kind in CHANNEL_TYPES),
    }


async def test_docs_link_to_the_document(server_factory: ServerFactory) -> None:
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        openapi = (await http.get("/openapi.json")).json()
    # /docs shows the description, where the link is relative: it works under any prefix.
    assert "[AsyncAPI document](asyncapi.json)" in openapi["info"]["description"]
    assert "/asyncapi.json" in openapi["paths"]


# --- the examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
async def test_every_room_example_is_true(server_factory: ServerFactory, configuration: str) -> None:
    server = server_factory(rooms=SANDBOX_ROOMS, **CONFIGURATIONS[configuration])
    document = await get_document(server)
    rooms = iter(SANDBOX_ROOMS)
    for kind, message in socket_messages(document, "room").items():
        validator = payload_validator(document, message["payload"]["$ref"])
        for example in message["examples"]:
            payload = example["payload"]
            errors = [error.message for error in validator.iter_errors(payload)]
            assert not errors, f"{kind} example breaks its own schema: {errors}"
            check_shape(payload)  # every example is shown as it travels from the server
            assert parse_strict(json.dumps(payload)) == payload
            if kind in ROOM_TYPES:
                await assert_accepted(server, next(rooms), payload)
            else:
                model = message_models()[kind]
                assert model.model_validate(payload).model_dump() == payload


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
async def test_every_channel_example_is_true(server_factory: ServerFactory, configuration: str) -> None:
    """Client examples are accepted on /channel/{c}/ws and come back as the documented server frame
    of the same name, but for the id and timestamp the server gave them; every server example has
    the strict 3.x shape."""
    server = server_factory(rooms=SANDBOX_ROOMS, **CONFIGURATIONS[configuration])
    document = await get_document(server)
    messages = socket_messages(document, "channel")
    frames: dict[tuple[str, str], dict[str, Any]] = {}
    for key, message in messages.items():
        direction, kind = key.split(".")
        validator = payload_validator(document, message["payload"]["$ref"])
        for example in message["examples"]:
            payload = example["payload"]
            errors = [error.message for error in validator.iter_errors(payload)]
            assert not errors, f"{key} example breaks its own schema: {errors}"
            assert parse_strict(json.dumps(payload)) == payload
            assert payload["type"] == kind
            if direction == "server":
                check_channel_frame(payload)
                assert REPLY not in payload or server.settings.reply_threads
                frames[kind, example["name"]] = payload
            else:  # the 2.x shape, as the server relays it to rooms
                assert [k for k in payload if k != REPLY] == ["type", *CHANNEL_KEYS[kind]], key
    rooms = iter(SANDBOX_ROOMS)
    for key, message in messages.items():
        direction, kind = key.split(".")
        if direction != "client":
            continue
        for example in message["examples"]:
            received = await assert_accepted(server, next(rooms), example["payload"], Dialect.CHANNEL)
            documented = frames.pop((kind, example["name"]), None)
            assert documented is not None, f"{key} example {example['name']!r} has no server frame"
            given = [
                "id",
                "timestamp",
                *(["image_data"] if kind == "image" else []),
                *([REPLY] if REPLY in documented else []),
            ]
            assert received == {**documented, **{name: received[name] for name in given}}
            assert list(received) == list(documented)
    for (kind, name), payload in frames.items():  # what the server says of its own
        assert kind in SERVER_ONLY_TYPES, f"server.{kind} example {name!r} answers no client example"
        message = envelope_stripped(payload)
        assert message_models()[kind].model_validate(message).model_dump() == message


async def test_every_documented_example_is_true(server_factory: ServerFactory) -> None:
    found = protocol_examples()
    assert {example["type"] for example in found} == set(CLIENT_MODELS) | set(SERVER_ONLY_TYPES)
    server = server_factory(rooms=SANDBOX_ROOMS)
    rooms = iter(SANDBOX_ROOMS)
    for example in found:
        check_shape(example)
        if example["type"] in CLIENT_MODELS:
            await assert_accepted(server, next(rooms), example)
        else:
            model = message_models()[example["type"]]
            assert model.model_validate(example).model_dump() == example


def test_documented_image_example_is_a_real_png() -> None:
    images = [example for example in protocol_examples() if example["type"] == "image"]
    assert [image["image_data"] for image in images] == [TINY_PNG]
