"""The documentation stays true: every setting and route is documented, the examples are the defaults,
the protocol tables and examples of docs/ say what the server sends, every page of docs/ is in the site's
nav and README's links lead to pages that exist."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices
from starlette.routing import Mount, WebSocketRoute

from gischat.protocol import dialects
from gischat.protocol import messages as models
from gischat.settings import Settings
from gischat.upstream import IGNORED_UPSTREAM
from gischat.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
ENV_EXAMPLE = (ROOT / ".env.example").read_text()

ENVELOPE = ["type", "id", "timestamp"]
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
SERVER_MODELS: dict[str, type[models.WireMessage]] = {
    "nb_users": models.NbUsersMessage,
    "exiter": models.ExiterMessage,
    "uncompliant": models.UncompliantMessage,
}


# Reading README and the pages of docs/.


def page(name: str) -> str:
    """The Markdown of docs/`name` (e.g. "settings.md")."""
    return (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The part of `text` under `heading` (e.g. "## From gischat 2.x"), up to the next heading of that
    level or above; `#` lines inside code blocks are not headings."""
    level = len(heading.split(" ", 1)[0])
    lines = text.splitlines()
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


def json_block(text: str, marker: str) -> list[dict[str, Any]]:
    """The JSON objects (one or more per line, or one over several) of the ```json block right after
    `marker` in `text`."""
    block = re.search(re.escape(marker) + r"[^\n]*\n\s*```json\n(.*?)```", text, re.DOTALL)
    assert block, f"the docs lost the JSON block after {marker!r}"
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


def nav_pages(entries: Any) -> Iterator[str]:
    """The pages named in mkdocs.yml's `nav`, sections included at any depth (web addresses left out)."""
    if isinstance(entries, str):
        if not re.match(r"[a-z][a-z0-9+.-]*:", entries):
            yield entries
    elif isinstance(entries, list):
        for entry in entries:
            yield from nav_pages(entry)
    elif isinstance(entries, dict):
        for value in entries.values():
            yield from nav_pages(value)


def anchors(text: str) -> set[str]:
    """The anchors of the headings of `text`, as GitHub and MkDocs make them: "## Limits: what one client
    may cost everyone else" gives "limits-what-one-client-may-cost-everyone-else"."""
    found: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} (.+)", line)):
            slug = re.sub(r"[^\w\s-]", "", heading.group(1)).strip().lower()
            found.add(re.sub(r"[-\s]+", "-", slug))
    return found


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images of `text` outside code, web addresses left out."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", target)]


def assert_links_resolve(source: Path) -> set[Path]:
    """Every relative link of `source` leads to a file, and its `#anchor` to a heading of that file;
    returns the files linked."""
    linked: set[Path] = set()
    for target in links(source.read_text()):
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        assert file.is_file(), f"{source.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(file.read_text()), (
                f"{source.relative_to(ROOT)} links to {target}: no such heading"
            )
        linked.add(file)
    return linked


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
    # With moderators, so that the /admin routes are served (and must be documented) too.
    app = create_app(Settings(_env_file=None, metrics_enabled=True, admin_tokens="docs:" + "x" * 32))
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
    for row in table(page("settings.md"), "| variable |"):
        documented |= names_in(row[0])
    for variable, names in setting_names():
        for name in names:
            assert name in documented, f"{name} ({variable}) missing from docs/settings.md's table"
            assert f"{name}=" in ENV_EXAMPLE, f"{name} ({variable}) missing from .env.example"
    known = {name for _, names in setting_names() for name in names}
    assert documented <= known, f"docs/settings.md's table names unknown settings: {documented - known}"


def test_readme_opens_with_the_two_commands() -> None:
    head = README[: README.index("## ")]
    assert "pip install . && gischat" in head
    assert 'pip install -e ".[test]" && pytest' in head


def test_rest_table_lists_every_route() -> None:
    rest = page("rest-api.md")
    documented: set[str] = set()
    for row in table(rest, "| route |"):
        documented.update(q for q in quoted(row[0]) if re.match(r"(GET|PUT|POST|DELETE|PATCH|WS) /", q))
    served, documentation = app_routes()
    assert served - documented == set(), "routes missing from docs/rest-api.md's table"
    assert documented - served == set(), "docs/rest-api.md's table lists routes the app does not serve"
    for path in documentation - {"/docs/oauth2-redirect"}:
        assert f"`{path}`" in rest, f"{path} not mentioned in docs/rest-api.md"


def test_protocol_tables_match_the_models() -> None:
    protocol = page("protocol.md")
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
    for row in table(page("protocol.md"), "| type | accepted on |"):
        accepted.setdefault(row[1], set()).update(quoted(row[0]))
    assert accepted["both routes"] == set(dialects.ROOM_TYPES)
    assert accepted["channel route only"] == set(dialects.CHANNEL_ONLY_TYPES)
    assert accepted["neither: server only"] == set(models.SERVER_ONLY_TYPES)


def test_channel_examples_follow_the_table() -> None:
    examples = json_block(page("protocol.md"), "<!-- channel-examples:")
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
    rows = table(section(page("migrating.md"), "## From upstream gischat 3.x"), "| upstream setting |")
    read_here = {name for _, names in setting_names() for name in names}
    listed: set[str] = set()
    for first, meaning in rows:
        for name in names_in(first):
            listed.add(name)
            if name in IGNORED_UPSTREAM:
                assert meaning.startswith("ignored"), f"{name} is ignored, docs/migrating.md says: {meaning}"
            else:
                assert name in read_here, (
                    f"docs/migrating.md says {name} is read, the settings do not read it"
                )
    assert set(IGNORED_UPSTREAM) <= listed, "ignored upstream settings missing from docs/migrating.md's table"


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert (config["docs_dir"], config["strict"], config["theme"]["name"]) == ("docs", True, "material")
    listed = list(nav_pages(config["nav"]))
    assert len(listed) == len(set(listed)), "mkdocs.yml's nav lists a page twice"
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages - set(listed) == set(), "pages of docs/ missing from mkdocs.yml's nav"
    assert set(listed) - pages == set(), "mkdocs.yml's nav lists pages docs/ does not have"


def test_readme_links_lead_to_the_pages() -> None:
    linked = assert_links_resolve(ROOT / "README.md")
    pages = {path.resolve() for path in DOCS.rglob("*.md")}
    assert pages - linked == set(), "pages of docs/ README does not link to"


def test_links_between_pages_resolve() -> None:
    for path in sorted(DOCS.rglob("*.md")):
        for file in assert_links_resolve(path):
            assert file.is_relative_to(DOCS), f"{path.relative_to(ROOT)} links out of docs/: {file}"
