"""The documentation stays true: every setting and route is documented, the examples are the defaults,
and README's protocol tables and examples say what the server sends."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from starlette.routing import Mount, WebSocketRoute

from gischat import dialects, models
from gischat.app import create_app
from gischat.settings import IGNORED_UPSTREAM, Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()

ENVELOPE = ["type", "id", "timestamp"]
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
SERVER_MODELS: dict[str, type[models.WireMessage]] = {
    "nb_users": models.NbUsersMessage,
    "exiter": models.ExiterMessage,
    "uncompliant": models.UncompliantMessage,
}


# Reading README.


def section(heading: str) -> str:
    """README's text under `heading` (e.g. "## Settings"), up to the next heading of that level or
    above; `#` lines inside code blocks are not headings."""
    level = len(heading.split(" ", 1)[0])
    lines = README.splitlines()
    start = lines.index(heading)
    fenced = False
    for end in range(start + 1, len(lines)):
        line = lines[end]
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def table(text: str, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table in `text` whose header row starts with `header`."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"expected one table headed {header!r}, found {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def quoted(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def names_in(cell: str) -> set[str]:
    """Environment variable names quoted in a cell."""
    return {name for name in quoted(cell) if re.fullmatch(r"[A-Z][A-Z0-9_]*", name)}


def json_block(marker: str) -> list[dict[str, Any]]:
    """The JSON objects (one or more per line) of the ```json block right after `marker`."""
    block = re.search(re.escape(marker) + r"[^\n]*\n```json\n(.*?)```", README, re.DOTALL)
    assert block, f"README lost the JSON block after {marker!r}"
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


# What the code says.


def setting_names() -> Iterator[tuple[str, list[str]]]:
    """Each setting's variable and every name it is read under (aliases included)."""
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = [str(choice).upper() for choice in alias.choices] if isinstance(alias, AliasChoices) else []
        yield name.upper(), sorted({name.upper(), *choices})


def wire_keys(kind: str) -> list[str]:
    """The keys a message of `kind` carries after its `type`, in wire order (both dialects)."""
    model = dialects.CHANNEL_TYPES.get(kind) or SERVER_MODELS[kind]
    return [name for name, field in model.model_fields.items() if name != "type" and not field.exclude]


def app_routes() -> tuple[set[str], set[str]]:
    """The app's routes as README's REST table writes them (`GET /rooms`, `WS /room/{room}/ws`,
    `GET /static/...` for a mount), and FastAPI's own documentation routes apart."""
    app = create_app(Settings(_env_file=None, metrics_enabled=True))
    documentation = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    found: set[str] = set()
    own: set[str] = set()

    def walk(routes: list[Any]) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # recent FastAPI keeps included routers whole
            if inner is not None:
                walk(inner.routes)
            elif isinstance(route, Mount):
                found.add(f"GET {route.path}/...")
            elif isinstance(route, WebSocketRoute):
                found.add(f"WS {route.path}")
            elif route.path in documentation:
                own.add(route.path)
            else:
                found.update(f"{method} {route.path}" for method in route.methods - {"HEAD"})

    walk(app.routes)
    return found, own


# The tests.


def test_env_example_holds_the_defaults() -> None:
    assert Settings(_env_file=ROOT / ".env.example") == Settings(_env_file=None)


def test_every_setting_is_documented() -> None:
    documented: set[str] = set()
    for row in table(section("## Settings"), "| variable |"):
        documented |= names_in(row[0])
    for variable, names in setting_names():
        for name in names:
            assert name in documented, f"{name} ({variable}) missing from README's settings table"
            assert f"{name}=" in ENV_EXAMPLE, f"{name} ({variable}) missing from .env.example"
    known = {name for _, names in setting_names() for name in names}
    assert documented <= known, f"README's settings table names unknown settings: {documented - known}"


def test_readme_opens_with_the_two_commands() -> None:
    head = README[: README.index("## ")]
    assert "pip install . && gischat" in head
    assert 'pip install -e ".[test]" && pytest' in head


def test_rest_table_lists_every_route() -> None:
    rest = section("## REST API")
    documented: set[str] = set()
    for row in table(rest, "| route |"):
        documented.update(q for q in quoted(row[0]) if re.match(r"(GET|PUT|POST|DELETE|PATCH|WS) /", q))
    served, documentation = app_routes()
    assert served - documented == set(), "routes missing from README's REST table"
    assert documented - served == set(), "README's REST table lists routes the app does not serve"
    for path in documentation - {"/docs/oauth2-redirect"}:
        assert f"`{path}`" in rest, f"{path} not mentioned in README's REST API section"


def test_protocol_tables_match_the_models() -> None:
    protocol = section("## Websocket protocol")
    server_only = set(models.SERVER_ONLY_TYPES)
    room = {quoted(row[0])[0]: row[1].split(", ") for row in table(protocol, "| type | keys |")}
    assert set(room) == set(dialects.ROOM_TYPES) | server_only
    for kind, keys in room.items():
        assert keys == ["type", *wire_keys(kind)], f"2.x table, {kind}"
    channel_table = "| type | keys after type, id, timestamp |"
    channel = {quoted(row[0])[0]: row[1].split(", ") for row in table(protocol, channel_table)}
    assert set(channel) == set(dialects.CHANNEL_TYPES) | server_only
    for kind, keys in channel.items():
        assert keys == wire_keys(kind), f"3.x table, {kind}"
    # The envelope as the server writes it, on a message it makes itself.
    frame = dialects.nb_users(3).frame(dialects.Dialect.CHANNEL)
    assert frame is not None
    assert list(json.loads(frame.data)) == [*ENVELOPE, "nb_users"]


def test_routing_table_matches_the_dialects() -> None:
    accepted: dict[str, set[str]] = {}
    for row in table(section("## Websocket protocol"), "| type | accepted on |"):
        accepted.setdefault(row[1], set()).update(quoted(row[0]))
    assert accepted["both routes"] == set(dialects.ROOM_TYPES)
    assert accepted["channel route only"] == set(dialects.CHANNEL_ONLY_TYPES)
    assert accepted["neither: server only"] == set(models.SERVER_ONLY_TYPES)


def test_channel_examples_follow_the_table() -> None:
    examples = json_block("<!-- channel-examples:")
    assert {example["type"] for example in examples} >= set(dialects.CHANNEL_ONLY_TYPES)
    for example in examples:
        keys = list(example)
        if keys[-1] == "in_reply_to_id":
            assert example["in_reply_to_id"] in {other["id"] for other in examples}
            keys.pop()
        assert keys == [*ENVELOPE, *wire_keys(example["type"])], f"3.x example: {example}"
        assert UUID4.fullmatch(example["id"]), f"not a lowercase UUID4: {example['id']}"
        assert type(example["timestamp"]) is int


def test_migration_table_covers_upstream_settings() -> None:
    rows = table(section("### From upstream gischat 3.x"), "| upstream setting |")
    read_here = {name for _, names in setting_names() for name in names}
    listed: set[str] = set()
    for first, meaning in rows:
        for name in names_in(first):
            listed.add(name)
            if name in IGNORED_UPSTREAM:
                assert meaning.startswith("ignored"), f"{name} is ignored, README says: {meaning}"
            else:
                assert name in read_here, f"README says {name} is read, the settings do not read it"
    assert set(IGNORED_UPSTREAM) <= listed, "ignored upstream settings missing from README's migration table"
