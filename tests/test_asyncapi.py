"""GET /asyncapi.json: a valid AsyncAPI 3.0.0 document whose examples the server really accepts.

The document is validated against the official AsyncAPI 3.0.0 JSON Schema, published by the
npm package `@asyncapi/specs` (`schemas/3.0.0.json`). `.ci/run` fetches it into
`.cache/asyncapi-specs/` before the tests (`ASYNCAPI_SPECS_DIR` points elsewhere); when it
is missing locally the test fetches it with npm, and skips if npm is not there, except under
CI (`CI=true`), where a missing schema fails.

Every example, the document's and README's ("Examples, as they travel"), is checked the
hard way: client messages are sent to a real server and must come back relayed with the same
keys; server messages must have the exact wire shape.
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
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from gischat.asyncapi import TINY_PNG, field_rules, message_models
from gischat.models import CLIENT_MODELS, SERVER_ONLY_TYPES, Limits

from conftest import Client, LiveServer, ServerFactory, ws_client
from wire import check_shape, next_frame, parse_strict

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SPECS_PACKAGE = "@asyncapi/specs@6"  # the same as .ci/run's
SPECS_SCHEMA = Path("schemas") / "3.0.0.json"
DOCUMENT_URI = "urn:gischat:asyncapi"
# Each example is tried in a room of its own, so their nicknames never collide.
SANDBOX_ROOMS = [f"sandbox-{index}" for index in range(40)]


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
    """(message name, example payload) for every example in the document."""
    for name, message in document["components"]["messages"].items():
        for example in message.get("examples", []):
            yield name, example["payload"]


def readme_examples() -> list[dict[str, Any]]:
    """The JSON objects of README's "Examples, as they travel" block (some span two lines)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Examples, as they travel:\s*```json\n(.*?)```", readme, re.DOTALL)
    assert block, "README lost its 'Examples, as they travel' block"
    text, position = block.group(1), 0
    found: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return found
        value, position = decoder.raw_decode(text, position)
        assert isinstance(value, dict)
        found.append(value)


async def relayed(client: Client, kind: str, **fields: Any) -> dict[str, Any]:
    """The next `kind` frame (matching `fields`); a refusal fails with the server's reason."""
    while True:
        message = await next_frame(client)  # strict JSON, exact wire keys
        if message["type"] == "uncompliant":
            pytest.fail(f"the server refused it: {message['reason']}")
        if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
            return message


async def register(client: Client, nickname: str) -> None:
    await client.send({"type": "newcomer", "newcomer": nickname})
    await relayed(client, "newcomer", newcomer=nickname)


async def assert_accepted(server: LiveServer, room: str, example: dict[str, Any]) -> None:
    """Send a client example as a client would; the server must relay it unchanged.

    Senders register their nickname first, as QTribu does. A like goes only to the socket
    registered as its `liked_author`, so that one receives it.
    """
    kind = example["type"]
    async with AsyncExitStack() as stack:
        sender = await stack.enter_async_context(ws_client(server, room))
        receiver = sender
        if kind == "like":
            receiver = await stack.enter_async_context(ws_client(server, room))
            await register(receiver, example["liked_author"])
            await register(sender, example["liker_author"])
        elif "author" in example:
            await register(sender, example["author"])
        await sender.send(example)
        if receiver is not sender:
            # A refusal goes to the sender: a text sent after the like comes back to the sender
            # only once the like was handled (one sender's messages are handled in order).
            marker = {"type": "text", "author": example["liker_author"], "avatar": None, "text": "marker"}
            await sender.send(marker)
            await relayed(sender, "text", text="marker")
        echo = await relayed(receiver, kind)
    assert set(echo) == set(example), f"{kind}: relayed with keys {sorted(echo)}"
    if kind == "image":  # resized and re-encoded, never the same bytes
        assert base64.b64decode(echo.pop("image_data"), validate=True).startswith(b"\x89PNG")
        example = {key: value for key, value in example.items() if key != "image_data"}
    assert echo == example


# --- the document --------------------------------------------------------------------------------


async def test_document_is_valid_asyncapi_3(
    server_factory: ServerFactory, asyncapi_schema: dict[str, Any]
) -> None:
    document = await get_document(server_factory())
    assert document["asyncapi"] == "3.0.0"
    validator = jsonschema.Draft7Validator(asyncapi_schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}"
        for error in validator.iter_errors(document)
    ]
    assert not errors, "\n".join(errors)


async def test_document_lists_exactly_the_protocol(server_factory: ServerFactory) -> None:
    server = server_factory()
    document = await get_document(server)
    types = set(CLIENT_MODELS) | set(SERVER_ONLY_TYPES)
    assert set(document["components"]["messages"]) == types
    channel = document["channels"]["room"]
    assert channel["address"] == "/room/{room}/ws"
    assert channel["parameters"]["room"]["enum"] == server.settings.rooms
    assert set(channel["messages"]) == types
    operations = document["operations"]

    def names(operation: dict[str, Any]) -> list[str]:
        return [ref["$ref"].rsplit("/", 1)[1] for ref in operation["messages"]]

    received = [op for op in operations.values() if op["action"] == "receive"]
    assert [sorted(names(op)) for op in received] == [sorted(CLIENT_MODELS)]
    assert names(received[0]["reply"]) == ["uncompliant"]
    sent = [name for op in operations.values() if op["action"] == "send" for name in names(op)]
    assert sorted(sent) == sorted(types), "each type the server sends is in exactly one send operation"
    # Each message's schema is its model's, key for key and in wire order: a field added to a
    # model shows up here by itself.
    for kind, model in message_models().items():
        message = document["components"]["messages"][kind]
        schema = payload_schema(document, message["payload"]["$ref"])
        assert list(schema["properties"]) == list(model.model_fields), kind
        assert schema["properties"]["type"]["const"] == kind
        assert "type" in schema["required"]
        assert message["examples"], f"no example for {kind}"


def payload_schema(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def test_every_validated_field_has_its_rules_in_the_document() -> None:
    """A validator that reads the instance's limits is invisible to pydantic's schema: its
    rules must be written by `field_rules`, or the document would tell clients less than the truth."""
    rules = field_rules(Limits())
    for model in message_models().values():
        for decorator in model.__pydantic_decorators__.field_validators.values():
            for field in decorator.info.fields:
                assert field in rules, f"{model.__name__}.{field} is validated; add its rules to field_rules"


async def test_document_carries_the_instance_limits(server_factory: ServerFactory) -> None:
    server = server_factory(
        min_author_length=4, max_author_length=20, max_message_length=100, max_geojson_features=7
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
    reasons = [payload["reason"] for name, payload in examples(document) if name == "uncompliant"]
    assert "text: too long (145 characters, max 100)" in reasons
    assert "Too many geojson features : 107 vs max 7 allowed" in reasons


async def test_examples_the_instance_refuses_are_left_out(server_factory: ServerFactory) -> None:
    document = await get_document(server_factory(min_author_length=9))
    authors = {payload.get("author") for _, payload in examples(document)}
    assert "Jane-GIS" not in authors  # 8 characters
    assert "newcomer: must be 9 to 32 characters long (got 8)" in {
        payload.get("reason") for _, payload in examples(document)
    }


async def test_docs_link_to_the_document(server_factory: ServerFactory) -> None:
    server = server_factory()
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        openapi = (await http.get("/openapi.json")).json()
    # /docs shows the description, where the link is relative: it works under any prefix.
    assert "[AsyncAPI document](asyncapi.json)" in openapi["info"]["description"]
    assert "/asyncapi.json" in openapi["paths"]


# --- the examples --------------------------------------------------------------------------------


async def test_every_document_example_is_true(server_factory: ServerFactory) -> None:
    server = server_factory(rooms=SANDBOX_ROOMS)
    document = await get_document(server)
    rooms = iter(SANDBOX_ROOMS)
    for name, payload in examples(document):
        validator = payload_validator(document, document["components"]["messages"][name]["payload"]["$ref"])
        errors = [error.message for error in validator.iter_errors(payload)]
        assert not errors, f"{name} example breaks its own schema: {errors}"
        check_shape(payload)  # every example is shown as it travels from the server
        assert parse_strict(json.dumps(payload)) == payload
        if name in CLIENT_MODELS:
            await assert_accepted(server, next(rooms), payload)
        else:
            model = message_models()[name]
            assert model.model_validate(payload).model_dump() == payload


async def test_every_readme_example_is_true(server_factory: ServerFactory) -> None:
    found = readme_examples()
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


def test_readme_image_example_is_a_real_png() -> None:
    images = [example for example in readme_examples() if example["type"] == "image"]
    assert [image["image_data"] for image in images] == [TINY_PNG]
