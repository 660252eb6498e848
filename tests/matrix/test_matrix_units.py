"""The Matrix bridge's parts on their own, fast: no homeserver, no network.

Names (aliases, virtual users, Matrix participants' nicknames), the registration file and the
`gischat matrix-registration` command, the MATRIX_* settings, the conversion of posts into Matrix
events (the posts built by the real wire models, so their bodies are what the server writes), the
jobs the hub's posts become, the bridge's work queue, and the application service routes' token
and answers (an app whose homeserver is unreachable: the routes answer all the same).

End-to-end behaviour against a real Synapse is tests/matrix/test_matrix_bridge.py's.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from mautrix.errors import (
    IntentError,
    MatrixUnknownRequestError,
    MForbidden,
    MLimitExceeded,
    MNotFound,
    MUnknown,
)
from PIL import Image
from starlette.testclient import TestClient

import gischat.matrix.convert
import gischat.matrix.queue
from gischat.cli import main
from gischat.matrix import names
from gischat.matrix.config import MatrixSettings
from gischat.matrix.convert import LIKE_REACTION, MatrixMessage, message_event, reaction, said_key
from gischat.matrix.outbound import Action, Job, job_of
from gischat.matrix.queue import Link, WorkQueue, describe, transient
from gischat.matrix.registration import registration, registration_yaml
from gischat.protocol import dialects
from gischat.protocol import messages as models
from gischat.protocol.channel_messages import ModelMessage, PositionMessage, ScriptMessage
from gischat.protocol.dialects import Post
from gischat.settings import Settings, SettingsError, load_settings, project
from gischat.web.app import create_app

from conftest import make_settings

AS_TOKEN = "as-token-0123456789abcdef0123456789abcdef"
HS_TOKEN = "hs-token-fedcba9876543210fedcba9876543210"
SERVER = "example.org"
HOMESERVER = "http://synapse:8008"
ROOMS = ["QGIS", "Field and mobile", "Living room"]
PREFIX = "gischat_"
LIMITS = models.Limits(allow_scripts=True)
ENV_NAMES = {name.upper() for name in Settings.model_fields} | {
    "MAIN_LANG",
    "MAIN_LANGUAGE",
    "CHANNELS",
    "INSTANCE_ID",
}


def bridge(**overrides: Any) -> dict[str, Any]:
    """The four settings the bridge requires, then `overrides` (a None removes one)."""
    values: dict[str, Any] = {
        "matrix_homeserver_url": HOMESERVER,
        "matrix_server_name": SERVER,
        "matrix_as_token": AS_TOKEN,
        "matrix_hs_token": HS_TOKEN,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def settings_of(**overrides: Any) -> Settings:
    return load_settings(_env_file=None, rooms=list(ROOMS), **bridge(**overrides))


def matrix_settings(**overrides: Any) -> MatrixSettings:
    return project(MatrixSettings, settings_of(**overrides))


def settings_error(**values: Any) -> str:
    """The one line a bad set of settings is refused with."""
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, rooms=list(ROOMS), **values)
    message = str(info.value)
    assert message
    assert "\n" not in message, message
    return message


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """For every test: no setting in the environment (whatever its case), no .env in the working
    directory."""
    for name in list(os.environ):
        if name.upper() in ENV_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("room", "expected"),
    [
        ("Field and mobile", "field-and-mobile"),
        ("QGIS", "qgis"),
        ("Living room", "living-room"),
        ("GIS tribe #1", "gis-tribe-1"),
        ("Café, s'il vous plaît", "caf-sil-vous-plat"),  # accents and punctuation dropped
        ("Ünïcödé", "ncd"),
        ("a.b_c=d-e", "a.b_c=d-e"),  # the characters a localpart keeps
        ("  two  spaces", "--two--spaces"),  # each space is a '-'
        ("日本", ""),
    ],
)
def test_slug(room: str, expected: str) -> None:
    assert names.slug(room) == expected
    assert re.fullmatch(r"[a-z0-9._=-]*", names.slug(room))


def test_portal_alias() -> None:
    assert names.portal_alias(PREFIX, "Field and mobile", SERVER) == "#gischat_field-and-mobile:example.org"
    assert names.portal_alias("gc.", "QGIS", "matrix.example.org:8448") == "#gc.qgis:matrix.example.org:8448"
    assert matrix_settings().alias("Living room") == "#gischat_living-room:example.org"


def decode_localpart(encoded: str) -> str:
    """The inverse of `puppet_localpart`'s encoding (after the prefix), as the issue states it:
    `_x` is an uppercase X, `__` an underscore, `=hh` a byte of UTF-8; `=bot` is the escaped bot."""
    if encoded == "=" + names.BOT_NAME:
        return names.BOT_NAME
    out = bytearray()
    index = 0
    while index < len(encoded):
        char = encoded[index]
        if char == "_":
            following = encoded[index + 1]
            assert following == "_" or following.islower(), encoded
            out += b"_" if following == "_" else following.upper().encode()
            index += 2
        elif char == "=":
            out.append(int(encoded[index + 1 : index + 3], 16))
            index += 3
        else:
            out += char.encode()
            index += 1
    return out.decode()


@pytest.mark.parametrize(
    ("nickname", "expected"),
    [
        ("alice", "gischat_alice"),
        ("Alice", "gischat__alice"),  # uppercase as `_x`
        ("al_ice", "gischat_al__ice"),  # `_` as `__`
        ("Jean-Pierre.2", "gischat__jean-_pierre.2"),
        ("jöe", "gischat_j=c3=b6e"),  # other characters as their UTF-8 bytes
        ("a=b", "gischat_a=3db"),  # `=` itself is escaped
        ("日本", "gischat_=e6=97=a5=e6=9c=ac"),
        ("bot", "gischat_=bot"),  # would be the bridge bot's localpart
        ("Bot", "gischat__bot"),  # is not
    ],
)
def test_puppet_localpart(nickname: str, expected: str) -> None:
    assert names.puppet_localpart(PREFIX, nickname) == expected


NICKNAMES = [
    "alice",
    "Alice",
    "ALICE",
    "_a",
    "A",
    "__",
    "a_",
    "_A",
    "x=41",
    "xA",
    "x_a",
    "bot",
    "Bot",
    "bot_",
    "robot",
    "Jean-Pierre.2",
    "Élodie_Ça-va",
    "日本語",
    "🌍-map",
    "a.b",
]


def test_puppet_localparts_are_reversible_distinct_and_valid() -> None:
    localparts = [names.puppet_localpart(PREFIX, nickname) for nickname in NICKNAMES]
    assert len(set(localparts)) == len(NICKNAMES)  # no two nicknames share a virtual user
    for nickname, localpart in zip(NICKNAMES, localparts, strict=True):
        assert localpart.startswith(PREFIX)
        assert decode_localpart(localpart.removeprefix(PREFIX)) == nickname
        # What a homeserver registers today: lowercase letters, digits and `._=-` (no `/` or `+`).
        assert re.fullmatch(r"[a-z0-9._=-]+", localpart), localpart
        assert localpart != names.bot_localpart(PREFIX)


def test_the_bot_and_the_virtual_users() -> None:
    settings = matrix_settings()
    assert settings.bot == "@gischat_bot:example.org"
    assert settings.puppet("alice") == "@gischat_alice:example.org"
    assert settings.puppet("bot") == "@gischat_=bot:example.org"
    assert settings.ours("@gischat_alice:example.org")
    assert settings.ours(settings.bot)
    assert not settings.ours("@jane:example.org")
    assert not settings.ours("@gischat_alice:elsewhere.org")


@pytest.mark.parametrize("nickname", ["日" * 32, "𠀀" * 32], ids=["cjk", "cjk-extension-b"])
def test_virtual_user_ids_fit_the_matrix_limit(nickname: str) -> None:
    settings = matrix_settings()
    models.check_nickname(nickname, models.Limits(), "author")  # a nickname gischat accepts
    assert len(settings.puppet(nickname)) <= 255


@pytest.mark.parametrize(
    ("display", "mxid", "expected"),
    [
        ("Jane Doe", "@jane:example.org", "Jane_Doe"),  # spaces to `_`
        ("  Jane  ", "@jane:example.org", "Jane"),
        ("Élodie Ça-va!", "@e:example.org", "Élodie_Ça-va"),  # accents kept, punctuation dropped
        ("O'Brien (GIS)", "@ob:example.org", "OBrien_GIS"),
        ("李 小龙", "@li:example.org", "李_小龙"),
        (None, "@jane.doe:example.org", "janedoe"),  # no display name: the localpart
        ("", "@jane_doe:example.org", "jane_doe"),
        ("   ", "@jane-doe:example.org", "jane-doe"),
        ("!!!", "@j.d:example.org", "jd"),  # nothing left: the localpart's letters and digits
        ("!!!", "@...:example.org", "someone"),
    ],
)
def test_nickname_base(display: str | None, mxid: str, expected: str) -> None:
    assert names.nickname_base(display, mxid, 32) == expected


@pytest.mark.parametrize("max_length", [12, 16, 32, 64, 256])
def test_nickname_base_leaves_room_for_the_suffix_and_a_number(max_length: int) -> None:
    base = names.nickname_base("x" * 300, "@x:example.org", max_length)
    assert base == "x" * (max_length - len(names.MATRIX_SUFFIX) - 2)
    limits = models.Limits(max_author_length=max_length)
    for number in (1, 2, 9, 50):  # inbound tries up to 50
        nickname = names.matrix_nickname(base, number)
        assert len(nickname) <= max_length
        assert models.check_nickname(nickname, limits, "author") == nickname


def test_matrix_nicknames() -> None:
    assert names.matrix_nickname("Jane", 1) == "Jane-matrix"
    assert names.matrix_nickname("Jane", 2) == "Jane2-matrix"
    assert names.matrix_nickname("Jane_Doe", 13) == "Jane_Doe13-matrix"
    assert names.is_matrix_nickname("Jane-matrix")
    assert names.is_matrix_nickname("Jane2-matrix")
    assert names.is_matrix_nickname("JANE-MATRIX")  # nicknames are case-insensitive
    assert not names.is_matrix_nickname("Jane")
    assert not names.is_matrix_nickname("matrix")
    assert not names.is_matrix_nickname("Jane_matrix")
    assert not names.is_matrix_nickname("Jane-matrixx")


# --- the registration -------------------------------------------------------------------------------


def test_registration() -> None:
    assert registration(matrix_settings(), "http://gischat:8000/") == {
        "id": "gischat",
        "url": "http://gischat:8000",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "gischat_bot",
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": True, "regex": r"@gischat_.*:example\.org"}],
            "aliases": [{"exclusive": True, "regex": r"#gischat_.*:example\.org"}],
            "rooms": [],
        },
    }


def test_registration_namespaces_are_escaped() -> None:
    settings = matrix_settings(matrix_server_name="matrix.example.org:8448", matrix_prefix="gis.chat_")
    data = registration(settings, "https://chat.example.org")
    namespaces = data["namespaces"]
    assert isinstance(namespaces, dict)
    users = namespaces["users"][0]["regex"]
    aliases = namespaces["aliases"][0]["regex"]
    assert users == r"@gis\.chat_.*:matrix\.example\.org:8448"
    assert aliases == r"#gis\.chat_.*:matrix\.example\.org:8448"
    assert re.fullmatch(users, settings.puppet("Alice"))
    assert re.fullmatch(users, settings.bot)
    assert re.fullmatch(aliases, settings.alias("Field and mobile"))
    assert not re.fullmatch(users, "@gis.chat_alice:matrixXexample.org:8448")
    assert not re.fullmatch(users, "@gisXchat_alice:matrix.example.org:8448")
    assert not re.fullmatch(users, "@jane:matrix.example.org:8448")


def test_registration_yaml_round_trips() -> None:
    settings = matrix_settings(matrix_server_name="matrix.example.org:8448")
    text = registration_yaml(settings, "http://gischat:8000")
    assert yaml.safe_load(text) == registration(settings, "http://gischat:8000")
    assert text.startswith("id: gischat\n")


# --- `gischat matrix-registration` -------------------------------------------------------------------


def env_file(directory: Path, **variables: str) -> Path:
    path = directory / "gischat.env"
    path.write_text("".join(f'{name}="{value}"\n' for name, value in variables.items()))
    return path


BRIDGE_ENV = {
    "ROOMS": "QGIS,Field and mobile",
    "MATRIX_HOMESERVER_URL": HOMESERVER,
    "MATRIX_SERVER_NAME": SERVER,
    "MATRIX_AS_TOKEN": AS_TOKEN,
    "MATRIX_HS_TOKEN": HS_TOKEN,
}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(text: str) -> str:
    assert text.endswith("\n"), repr(text)
    assert text.count("\n") == 1, repr(text)
    return text


def test_cli_prints_the_registration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = env_file(tmp_path, **BRIDGE_ENV)
    code, out, err = run_cli(
        capsys, "--env-file", str(path), "matrix-registration", "--url", "http://gischat:8000"
    )
    assert (code, err) == (0, "")
    expected = registration(
        project(MatrixSettings, load_settings(_env_file=str(path))), "http://gischat:8000"
    )
    assert yaml.safe_load(out) == expected
    assert expected["as_token"] == AS_TOKEN
    assert expected["hs_token"] == HS_TOKEN


def test_cli_reads_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --env-file: the environment (and ./.env), as the server itself reads them."""
    for name, value in BRIDGE_ENV.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(capsys, "matrix-registration", "--url", "https://gischat.example.org/")
    assert (code, err) == (0, "")
    assert yaml.safe_load(out)["url"] == "https://gischat.example.org"


def test_cli_without_the_bridge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = env_file(tmp_path, ROOMS="QGIS")
    code, out, err = run_cli(
        capsys, "--env-file", str(path), "matrix-registration", "--url", "http://gischat:8000"
    )
    assert code == 2
    assert out == ""
    assert "MATRIX_HOMESERVER_URL" in one_line(err)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://gischat:8000",
        "gischat:8000",
        "gischat",
        "http://",
        "http://gischat:8000/?token=x",
        "http://gischat:8000/#x",
    ],
)
def test_cli_refuses_a_bad_url(tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    path = env_file(tmp_path, **BRIDGE_ENV)
    code, out, err = run_cli(capsys, "--env-file", str(path), "matrix-registration", "--url", url)
    assert code == 2
    assert out == ""
    assert "--url" in one_line(err)
    assert AS_TOKEN not in err
    assert HS_TOKEN not in err


@pytest.mark.parametrize("url", ["http://[::1", "http://gischat:port", "http://gischat:99999"])
def test_cli_refuses_a_url_that_does_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    path = env_file(tmp_path, **BRIDGE_ENV)
    code, out, err = run_cli(capsys, "--env-file", str(path), "matrix-registration", "--url", url)
    assert code == 2
    assert out == ""
    assert "--url" in one_line(err)


SECRET = "SuperSecretValueNobodyMustSee"


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"MATRIX_AS_TOKEN": SECRET}, "MATRIX_AS_TOKEN"),  # too short
        ({"MATRIX_HS_TOKEN": SECRET}, "MATRIX_HS_TOKEN"),
        ({"MATRIX_AS_TOKEN": SECRET + " " + SECRET}, "MATRIX_AS_TOKEN"),  # white space
        ({"MATRIX_AS_TOKEN": SECRET * 2, "MATRIX_HS_TOKEN": SECRET * 2}, "MATRIX_HS_TOKEN"),  # identical
        ({"MATRIX_HOMESERVER_URL": f"http://bridge:{SECRET}@synapse:8008"}, "MATRIX_HOMESERVER_URL"),
        ({"MATRIX_HOMESERVER_URL": f"http://synapse:8008/?access_token={SECRET}"}, "MATRIX_HOMESERVER_URL"),
        ({"MATRIX_SERVER_NAME": ""}, "MATRIX_SERVER_NAME"),  # missing
        ({"MATRIX_PREFIX": "Gischat"}, "MATRIX_PREFIX"),
        ({"MATRIX_ROOMS": "Attic"}, "MATRIX_ROOMS"),
        ({"MATRIX_ROOM_IDS": "QGIS"}, "MATRIX_ROOM_IDS"),
    ],
)
def test_cli_refuses_bad_matrix_settings_without_echoing_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], variables: dict[str, str], named: str
) -> None:
    path = env_file(tmp_path, **{**BRIDGE_ENV, **variables})
    code, out, err = run_cli(
        capsys, "--env-file", str(path), "matrix-registration", "--url", "http://gischat:8000"
    )
    assert code == 2
    assert out == ""
    assert named in one_line(err)
    for secret in (SECRET, AS_TOKEN, HS_TOKEN):
        assert secret not in err


# --- the MATRIX_* settings ---------------------------------------------------------------------------


def test_no_bridge_by_default() -> None:
    settings = load_settings(_env_file=None)
    assert settings.matrix_enabled is False
    assert settings.matrix_prefix == "gischat_"
    assert settings.matrix_rooms == []
    assert settings.matrix_room_ids == {}
    assert settings.matrix_queue_size == 1000
    # The optional ones alone do not start a bridge, nor require the rest.
    assert load_settings(_env_file=None, matrix_rooms="QGIS", matrix_prefix="gc.").matrix_enabled is False


def test_the_bridge_settings() -> None:
    settings = settings_of(matrix_homeserver_url="https://matrix.example.org:8448/")
    assert settings.matrix_enabled is True
    assert settings.matrix_homeserver_url == "https://matrix.example.org:8448"  # no trailing slash
    assert settings.matrix_as_token is not None
    assert settings.matrix_as_token.get_secret_value() == AS_TOKEN
    assert AS_TOKEN not in repr(settings)
    assert HS_TOKEN not in repr(settings)


def test_the_bridge_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMS", ",".join(ROOMS))
    for name, value in bridge().items():
        monkeypatch.setenv(name.upper(), value)
    monkeypatch.setenv("MATRIX_ROOMS", "qgis, living ROOM")
    monkeypatch.setenv("MATRIX_ROOM_IDS", "Field and mobile=!abc:example.org")
    monkeypatch.setenv("MATRIX_QUEUE_SIZE", "50")
    settings = load_settings()
    assert settings.matrix_enabled
    assert settings.matrix_rooms == ["QGIS", "Living room"]  # as ROOMS names them
    assert settings.matrix_room_ids == {"Field and mobile": "!abc:example.org"}
    assert settings.matrix_queue_size == 50


@pytest.mark.parametrize(
    "missing", ["matrix_homeserver_url", "matrix_server_name", "matrix_as_token", "matrix_hs_token"]
)
def test_partial_bridge_settings_are_refused(missing: str) -> None:
    message = settings_error(**bridge(**{missing: None}))
    assert missing.upper() in message
    assert "required" in message
    assert AS_TOKEN not in message
    assert HS_TOKEN not in message


def test_an_empty_setting_is_a_missing_one() -> None:
    assert "MATRIX_SERVER_NAME" in settings_error(**bridge(matrix_server_name=""))
    assert "MATRIX_HS_TOKEN" in settings_error(**bridge(matrix_hs_token=""))


@pytest.mark.parametrize("variable", ["matrix_as_token", "matrix_hs_token"])
@pytest.mark.parametrize(
    "value",
    ["x" * 31, "short", "a" * 20 + " " + "a" * 20, "a" * 40 + "\t"],
    ids=["31", "short", "space", "tab"],
)
def test_weak_tokens_are_refused_unechoed(variable: str, value: str) -> None:
    message = settings_error(**bridge(**{variable: value}))
    assert variable.upper() in message
    assert "32" in message
    assert value.strip() not in message


def test_a_token_of_32_characters_is_enough() -> None:
    assert settings_of(matrix_as_token="a" * 32, matrix_hs_token="b" * 32).matrix_enabled


def test_identical_tokens_are_refused() -> None:
    message = settings_error(**bridge(matrix_hs_token=AS_TOKEN))
    assert "MATRIX_AS_TOKEN" in message
    assert "MATRIX_HS_TOKEN" in message
    assert AS_TOKEN not in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("matrix_rooms", "QGIS,Attic"),
        ("matrix_room_ids", "QGIS=!a:example.org,Attic=!b:example.org"),
    ],
)
def test_bridged_rooms_must_be_rooms(variable: str, value: str) -> None:
    message = settings_error(**bridge(**{variable: value}))
    assert variable.upper() in message
    assert "Attic" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("QGIS=!abc:example.org", {"QGIS": "!abc:example.org"}),
        (
            "Field and mobile=!abc:example.org,Living room=!x:y",
            {"Field and mobile": "!abc:example.org", "Living room": "!x:y"},
        ),
        (" qgis = !abc:example.org , , ", {"QGIS": "!abc:example.org"}),  # names as ROOMS has them
        ("QGIS=!abc:matrix.example.org:8448", {"QGIS": "!abc:matrix.example.org:8448"}),
        ("QGIS=!Xj4Ff9mRkqLwZoA0", {"QGIS": "!Xj4Ff9mRkqLwZoA0"}),  # room version 12: no server part
        ("", {}),
    ],
)
def test_matrix_room_ids(value: str, expected: dict[str, str]) -> None:
    assert settings_of(matrix_room_ids=value).matrix_room_ids == expected


@pytest.mark.parametrize(
    ("value", "entry"),
    [
        ("QGIS", 1),  # no `=`
        ("QGIS=abc:example.org", 1),  # not a room id
        ("QGIS=!", 1),  # an empty id
        ("=!abc:example.org", 1),  # no room
        ("QGIS=!a b:example.org", 1),
        ("QGIS=!abc:example.org,Living room", 2),
    ],
)
def test_matrix_room_ids_errors(value: str, entry: int) -> None:
    message = settings_error(**bridge(matrix_room_ids=value))
    assert "MATRIX_ROOM_IDS" in message
    assert f"entry {entry}" in message


def test_bridged_rooms_in_rooms_order() -> None:
    assert matrix_settings().bridged == ROOMS  # nothing chosen: every room
    chosen = matrix_settings(matrix_rooms="Living room", matrix_room_ids="QGIS=!abc:example.org")
    assert chosen.bridged == ["QGIS", "Living room"]


@pytest.mark.parametrize("rooms", [["Living room", "Living-room"], ["日本", "中国"]])
def test_rooms_sharing_a_portal_alias_are_refused(rooms: list[str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(_env_file=None, rooms=rooms, **bridge())


@pytest.mark.parametrize(
    "url",
    [
        "http://user:password@synapse:8008",
        "http://token@synapse:8008",
        "http://synapse:8008/?access_token=x",
        "http://synapse:8008/#x",
        "ftp://synapse",
        "synapse:8008",
        "http://",
        "http://synapse:port",
    ],
)
def test_homeserver_url_errors(url: str) -> None:
    message = settings_error(**bridge(matrix_homeserver_url=url))
    assert "MATRIX_HOMESERVER_URL" in message
    assert "password" not in message
    assert "access_token" not in message


@pytest.mark.parametrize("prefix", ["gischat_", "gc.", "a=b-c_", "x", "a" * 32])
def test_matrix_prefix(prefix: str) -> None:
    settings = settings_of(matrix_prefix=prefix)
    assert settings.matrix_prefix == prefix
    assert project(MatrixSettings, settings).bot == f"@{prefix}bot:{SERVER}"


@pytest.mark.parametrize("prefix", ["", "Gischat_", "gis chat", "gis@", "gis/chat", "a" * 33, "é"])
def test_matrix_prefix_errors(prefix: str) -> None:
    assert "MATRIX_PREFIX" in settings_error(**bridge(matrix_prefix=prefix))


@pytest.mark.parametrize(
    "name", ["example.org", "matrix.example.org:8448", "localhost", "[::1]:8448", "10.0.0.1"]
)
def test_matrix_server_name(name: str) -> None:
    assert settings_of(matrix_server_name=name).matrix_server_name == name


@pytest.mark.parametrize("name", ["exa mple.org", "example.org/x", "https://example.org", "example.org:port"])
def test_matrix_server_name_errors(name: str) -> None:
    assert "MATRIX_SERVER_NAME" in settings_error(**bridge(matrix_server_name=name))


@pytest.mark.parametrize("size", ["0", "-1", "1000001"])
def test_matrix_queue_size_errors(size: str) -> None:
    assert "MATRIX_QUEUE_SIZE" in settings_error(**bridge(matrix_queue_size=size))


# --- posts as Matrix events ----------------------------------------------------------------------------

LAMBERT = {"crs_wkt": 'PROJCRS["RGF93 v1 / Lambert-93",BASEGEOGCRS["RGF93 v1"]]', "crs_authid": "EPSG:2154"}
WGS84 = {"crs_wkt": 'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984"]]', "crs_authid": "EPSG:4326"}
POINT = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
    "properties": {"n": 1},
}
QML = '<!DOCTYPE qgis>\n<qgis version="3.34" styleCategories="Symbology">\n  <renderer-v2 type="singleSymbol"/>\n</qgis>'


def post(model: type[models.WireMessage], **fields: Any) -> Post:
    """A post as the server accepts it: validated by the wire model, its body written once."""
    return Post.of(model.model_validate({"author": "alice", "avatar": None, **fields}, context=LIMITS))


def event_of(accepted: Post) -> MatrixMessage:
    message = message_event(accepted.kind, accepted.body, accepted.style)
    assert message is not None
    assert message.event_type == "m.room.message"
    return message


@pytest.mark.parametrize("said", ["hello", "**not markdown** <b>nor html</b>", "héllo wörld 🌍\nsecond line"])
def test_text(said: str) -> None:
    message = event_of(post(models.TextMessage, text=said))
    assert message.content == {"msgtype": "m.text", "body": said}  # never a formatted_body
    assert message.upload is None
    assert message.text == said


def test_crs() -> None:
    message = event_of(post(models.CrsMessage, **LAMBERT))
    assert message.content == {
        "msgtype": "m.emote",
        "body": "shares a CRS: EPSG:2154 (RGF93 v1 / Lambert-93)",
    }
    assert message.upload is None
    assert message.text is None


@pytest.mark.parametrize(
    ("crs", "label"),
    [
        ({"crs_wkt": "", "crs_authid": "EPSG:3857"}, "EPSG:3857"),
        ({"crs_wkt": 'GEOGCRS["WGS 84"]', "crs_authid": ""}, "WGS 84"),
        ({"crs_wkt": "garbage", "crs_authid": " "}, "unnamed CRS"),
    ],
)
def test_crs_labels(crs: dict[str, str], label: str) -> None:
    assert event_of(post(models.CrsMessage, **crs)).content["body"] == f"shares a CRS: {label}"


def test_bbox() -> None:
    message = event_of(post(models.BboxMessage, **WGS84, xmin=1.0, ymin=2.0, xmax=3.5, ymax=4.25))
    assert message.content == {
        "msgtype": "m.emote",
        "body": "shares an extent: 1, 2 to 3.5, 4.25 (EPSG:4326 (WGS 84))",
    }


@pytest.mark.parametrize("authid", ["EPSG:4326", "OGC:CRS84", "epsg:4326"])
def test_position_in_wgs84_is_a_location(authid: str) -> None:
    message = event_of(post(PositionMessage, crs_wkt=WGS84["crs_wkt"], crs_authid=authid, x=2.35, y=48.85))
    assert message.content == {
        "msgtype": "m.location",
        "body": "Position geo:48.85,2.35",
        "geo_uri": "geo:48.85,2.35",  # latitude first
    }


def test_position_in_another_crs_is_text() -> None:
    message = event_of(post(PositionMessage, **LAMBERT, x=652000.0, y=6862000.5))
    assert message.content == {
        "msgtype": "m.emote",
        "body": "is at 652000, 6862000.5 (EPSG:2154 (RGF93 v1 / Lambert-93))",
    }


def test_position_out_of_range_is_text() -> None:
    message = event_of(post(PositionMessage, **WGS84, x=200.0, y=48.85))
    assert message.content["msgtype"] == "m.emote"
    assert message.content["body"] == "is at 200, 48.85 (EPSG:4326 (WGS 84))"


def picture(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 80, 40)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mimetype", "name"),
    [
        ("PNG", "image/png", "image.png"),
        ("JPEG", "image/jpeg", "image.jpg"),
        ("GIF", "image/gif", "image.gif"),
    ],
)
def test_image(fmt: str, mimetype: str, name: str) -> None:
    data = picture(fmt)
    message = event_of(post(models.ImageMessage, image_data=base64.b64encode(data).decode()))
    assert message.content == {
        "msgtype": "m.image",
        "body": name,
        "filename": name,
        "info": {"mimetype": mimetype, "size": len(data)},
    }
    assert message.upload is not None
    assert (message.upload.data, message.upload.mimetype, message.upload.filename) == (data, mimetype, name)


def test_image_not_base64_is_nothing() -> None:
    accepted = post(models.ImageMessage, image_data="not base64 at all!")
    assert message_event(accepted.kind, accepted.body, accepted.style) is None


def layer_post(
    style: str | None, features: list[dict[str, Any]] | None = None, **members: Any
) -> tuple[Post, dict[str, Any]]:
    collection = {
        "type": "FeatureCollection",
        "features": [POINT] if features is None else features,
        **members,
    }
    return post(
        models.GeojsonMessage, layer_name="wells", **WGS84, geojson=collection, style=style
    ), collection


def test_layer_with_a_style() -> None:
    accepted, collection = layer_post(QML)
    message = event_of(accepted)
    upload = message.upload
    assert upload is not None
    assert (upload.mimetype, upload.filename) == ("application/geo+json", "wells.geojson")
    assert orjson.loads(upload.data) == {**collection, "style": QML}
    assert message.content == {
        "msgtype": "m.file",
        "body": "shares a layer: wells, 1 feature (EPSG:4326 (WGS 84))",
        "filename": "wells.geojson",
        "info": {"mimetype": "application/geo+json", "size": len(upload.data)},
    }


def test_layer_without_a_style() -> None:
    accepted, collection = layer_post(None, [POINT, POINT, POINT], name="wells of 2024")
    assert accepted.style == ',"style":null'
    message = event_of(accepted)
    assert message.upload is not None
    assert orjson.loads(message.upload.data) == collection  # foreign members kept, no `style`
    assert message.content["body"] == "shares a layer: wells, 3 features (EPSG:4326 (WGS 84))"


def test_empty_layer() -> None:
    accepted, collection = layer_post(QML, [])
    message = event_of(accepted)
    assert message.upload is not None
    assert orjson.loads(message.upload.data) == {**collection, "style": QML}
    assert message.content["body"] == "shares a layer: wells, 0 features (EPSG:4326 (WGS 84))"


def test_large_layer_summary_counts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gischat.matrix.convert, "COUNT_FEATURES_BELOW", 10)
    accepted, collection = layer_post(QML, [POINT, POINT])
    message = event_of(accepted)
    assert message.content["body"] == "shares a layer: wells (EPSG:4326 (WGS 84))"
    assert message.upload is not None
    assert orjson.loads(message.upload.data) == {**collection, "style": QML}


def test_model() -> None:
    xml = '<!DOCTYPE model><Option type="Map"><Option name="model_name" value="buffer"/></Option>'
    message = event_of(post(ModelMessage, model_name="buffer", raw_xml=xml))
    assert message.upload is not None
    assert (message.upload.data, message.upload.mimetype, message.upload.filename) == (
        xml.encode(),
        "application/xml",
        "buffer.model3",
    )
    assert message.content == {
        "msgtype": "m.file",
        "body": "shares a Processing model: buffer.model3",
        "filename": "buffer.model3",
        "info": {"mimetype": "application/xml", "size": len(xml.encode())},
    }


def test_script() -> None:
    code = "from qgis.core import QgsProcessingAlgorithm\nprint('héllo')\n"
    message = event_of(post(ScriptMessage, name="hello", raw_pycode=code))
    assert message.upload is not None
    assert (message.upload.data, message.upload.filename) == (code.encode(), "hello.py")
    assert message.content["msgtype"] == "m.file"
    assert message.content["body"] == "shares a Processing script: hello.py"
    assert message.content["filename"] == "hello.py"
    assert message.content["info"]["size"] == len(code.encode())


def test_what_is_not_shown() -> None:
    for accepted in (dialects.newcomer("alice"), dialects.exiter("alice"), dialects.nb_users(3)):
        assert message_event(accepted.kind, accepted.body, accepted.style) is None


def test_said_key() -> None:
    key = said_key("QGIS", "Alice", "hello")
    assert re.fullmatch(r"said:[0-9a-f]{32}", key)
    assert said_key("QGIS", "Alice", "hello") == key  # stable
    assert said_key("QGIS", "alice", "hello") == key  # the author is case-insensitive
    assert said_key("QGIS", "ALICE", "hello") == key
    assert said_key("QGIS", "Alice", "Hello") != key  # the text is not
    assert said_key("Living room", "Alice", "hello") != key
    assert said_key("QGIS", "Bob", "hello") != key


def test_reaction() -> None:
    assert reaction("$event") == {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": "$event", "key": LIKE_REACTION}
    }
    assert LIKE_REACTION == "👍"


# --- posts as the bridge's jobs --------------------------------------------------------------------------


def text_post(author: str, said: str = "hello") -> Post:
    return Post.of(models.TextMessage(author=author, text=said))


def like_post(liker: str, liked: str = "bob", message: str = "hello") -> Post:
    return Post.of(models.LikeMessage(liker_author=liker, liked_author=liked, message=message))


def test_jobs_of_arrivals_and_departures() -> None:
    assert job_of("QGIS", dialects.newcomer("alice"), None) == Job(Action.JOIN, "QGIS", "alice")
    assert job_of("QGIS", dialects.exiter("alice"), None) == Job(Action.LEAVE, "QGIS", "alice")


def test_jobs_of_what_is_said() -> None:
    said = text_post("Alice", "héllo")
    assert job_of("QGIS", said, None) == Job(Action.SAY, "QGIS", "Alice", said)
    shared = [
        post(models.CrsMessage, **LAMBERT),
        post(PositionMessage, **WGS84, x=1.0, y=2.0),
        layer_post(QML)[0],
        post(ScriptMessage, name="hello", raw_pycode="x = 1"),
    ]
    for accepted in shared:
        assert job_of("QGIS", accepted, None) == Job(Action.SAY, "QGIS", "alice", accepted)


def test_job_of_a_like() -> None:
    liked = like_post("alice", "bob", "nice map")
    assert job_of("QGIS", liked, "bob") == Job(
        Action.LIKE, "QGIS", "alice", liked, target="bob", text="nice map"
    )
    # Of a Matrix user's message: their text was remembered under their nickname.
    liked = like_post("alice", "Jane-matrix", "hi")
    job = job_of("QGIS", liked, "Jane-matrix")
    assert job is not None
    assert (job.action, job.target, job.text) == (Action.LIKE, "Jane-matrix", "hi")


@pytest.mark.parametrize(
    ("build", "to"),
    [
        (lambda: dialects.newcomer("Jane-matrix"), None),  # what the bridge brought in is never echoed
        (lambda: dialects.exiter("Jane-matrix"), None),
        (lambda: text_post("Jane-matrix"), None),
        (lambda: text_post("Jane2-MATRIX"), None),
        (lambda: like_post("Jane-matrix", "bob"), "bob"),
        (lambda: dialects.nb_users(4), None),  # the server's own messages are not said by anyone
        (lambda: dialects.uncompliant("text: too long"), None),
        (lambda: like_post("alice", "bob"), None),  # a like goes to someone
    ],
)
def test_no_job(build: Callable[[], Post], to: str | None) -> None:
    assert job_of("QGIS", build(), to) is None


# --- the work queue ------------------------------------------------------------------------------------

QUICK = 2.0  # the longest a queue test waits for its queue to drain


@pytest.fixture
def tiny_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gischat.matrix.queue, "FIRST_PAUSE", 0.001)
    monkeypatch.setattr(gischat.matrix.queue, "LONGEST_PAUSE", 0.004)


@pytest.fixture
async def queues() -> AsyncIterator[list[WorkQueue[Any]]]:
    """Queues a test started; their tasks are stopped at the end."""
    started: list[WorkQueue[Any]] = []
    yield started
    for queue in started:
        await queue.stop()


def link(queue: WorkQueue[Any]) -> Link:
    """The queue's link now (a call, so that a type checker does not narrow it between reads)."""
    return queue.link


@pytest.mark.anyio
async def test_queue_keeps_order(queues: list[WorkQueue[Any]]) -> None:
    done: list[int] = []

    async def work(job: int) -> None:
        await asyncio.sleep(0)
        done.append(job)

    queue: WorkQueue[int] = WorkQueue("test", 100, work)
    queues.append(queue)
    for job in range(10):
        assert queue.put(job)
    assert queue.waiting == 10
    queue.start()
    await asyncio.wait_for(queue.drained(), QUICK)
    for job in range(10, 20):  # and what comes while it works
        assert queue.put(job)
    await asyncio.wait_for(queue.drained(), QUICK)
    assert done == list(range(20))
    assert (queue.stats.done, queue.stats.failed, queue.stats.overflowed) == (20, 0, 0)
    assert queue.link is Link.UP
    assert (queue.waiting, queue.lag) == (0, 0.0)
    await queue.stop()


@pytest.mark.anyio
async def test_queue_overflow_is_counted_and_refused_without_blocking(queues: list[WorkQueue[Any]]) -> None:
    release = asyncio.Event()
    done: list[str] = []

    async def work(job: str) -> None:
        await release.wait()
        done.append(job)

    queue: WorkQueue[str] = WorkQueue("test", 2, work)
    queues.append(queue)
    queue.start()
    assert queue.put("a")
    assert queue.put("b")
    assert queue.put("c") is False  # returns at once: the caller never waits
    assert queue.put("d") is False
    assert queue.stats.overflowed == 2
    assert queue.waiting == 2
    assert queue.lag >= 0.0
    release.set()
    await asyncio.wait_for(queue.drained(), QUICK)
    assert done == ["a", "b"]
    assert queue.put("e")  # room again
    await asyncio.wait_for(queue.drained(), QUICK)
    assert done == ["a", "b", "e"]
    assert queue.stats.overflowed == 2


@pytest.mark.anyio
async def test_queue_bounds_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gischat.matrix.queue, "MAX_QUEUE_CHARS", 10)

    async def work(job: str) -> None:
        pass

    queue: WorkQueue[str] = WorkQueue("test", 100, work)
    assert queue.put("a", 6)
    assert queue.put("b", 6) is False
    assert queue.put("c", 4)
    assert queue.stats.overflowed == 1


@pytest.mark.anyio
@pytest.mark.usefixtures("tiny_pauses")
async def test_queue_retries_a_transient_error_in_order(queues: list[WorkQueue[Any]]) -> None:
    seen: list[tuple[str, Link]] = []
    failures = 3

    async def work(job: str) -> None:
        nonlocal failures
        seen.append((job, queue.link))
        if job == "a" and failures:
            failures -= 1
            raise aiohttp.ClientConnectionError("connection refused")

    queue: WorkQueue[str] = WorkQueue("test", 10, work)
    queues.append(queue)
    queue.put("a")
    queue.put("b")  # waits behind "a"
    queue.start()
    await asyncio.wait_for(queue.drained(), QUICK)
    assert seen == [
        ("a", Link.STARTING),
        ("a", Link.DOWN),
        ("a", Link.DOWN),
        ("a", Link.DOWN),
        ("b", Link.UP),
    ]
    assert queue.link is Link.UP
    assert (queue.stats.done, queue.stats.failed) == (2, 0)
    assert queue.stats.last_error == "ClientConnectionError"


@pytest.mark.anyio
@pytest.mark.usefixtures("tiny_pauses")
async def test_queue_link_goes_down_then_up(queues: list[WorkQueue[Any]]) -> None:
    """The homeserver answers, goes away (the link is down while the queue waits), answers again."""
    healthy = True
    failures = 0
    retried = asyncio.Event()  # set once a job has failed a few times in a row

    async def work(job: str) -> None:
        nonlocal failures
        if not healthy:
            failures += 1
            if failures >= 3:
                retried.set()
            raise MUnknown(502, "bad gateway")

    queue: WorkQueue[str] = WorkQueue("test", 10, work)
    queues.append(queue)
    queue.start()
    queue.put("a")
    await asyncio.wait_for(queue.drained(), QUICK)
    assert link(queue) is Link.UP
    healthy = False
    queue.put("b")
    await asyncio.wait_for(retried.wait(), QUICK)
    assert link(queue) is Link.DOWN
    assert queue.waiting == 1  # "b" waits, it is not dropped
    assert (queue.stats.done, queue.stats.failed) == (1, 0)
    assert queue.stats.last_error == "MUnknown 502 M_UNKNOWN"
    healthy = True
    await asyncio.wait_for(queue.drained(), QUICK)
    assert link(queue) is Link.UP
    assert queue.stats.done == 2


@pytest.mark.anyio
async def test_queue_drops_a_refused_job(
    queues: list[WorkQueue[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def work(job: str) -> None:
        seen.append(job)
        if job == "a":
            raise MForbidden(403, "you are banned: secret reason")

    queue: WorkQueue[str] = WorkQueue("test", 10, work)
    queues.append(queue)
    queue.put("a")
    queue.put("b")
    with caplog.at_level("WARNING", logger="gischat.matrix"):
        queue.start()
        await asyncio.wait_for(queue.drained(), QUICK)
    assert seen == ["a", "b"]  # tried once, not again
    assert (queue.stats.done, queue.stats.failed) == (1, 1)
    assert queue.stats.last_error == "MForbidden 403 M_FORBIDDEN"
    assert "secret reason" not in caplog.text  # the homeserver's payload is never logged
    assert "M_FORBIDDEN" in caplog.text


@pytest.mark.anyio
async def test_queue_drained_at_once_when_empty() -> None:
    async def work(job: str) -> None:
        pass

    queue: WorkQueue[str] = WorkQueue("test", 10, work)
    await asyncio.wait_for(queue.drained(), QUICK)  # nothing put: nothing to wait for
    queue.put("a")
    assert not queue._idle.is_set()  # something to do now
    queue.start()
    await asyncio.wait_for(queue.drained(), QUICK)
    await queue.stop()
    await queue.stop()  # twice is harmless


def intent_error(cause: BaseException) -> IntentError:
    error = IntentError("failed to act")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (aiohttp.ClientConnectionError("refused"), True),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (MUnknown(500, "oops"), True),
        (MUnknown(502, "bad gateway"), True),
        (MLimitExceeded(429, "slow down"), True),
        (MatrixUnknownRequestError(429, "slow down"), True),
        (MatrixUnknownRequestError(502, "<html>bad gateway</html>"), True),  # a proxy's page
        (intent_error(MUnknown(503, "unavailable")), True),
        (MForbidden(403, "no"), False),
        (MNotFound(404, "no such room"), False),
        (MatrixUnknownRequestError(400, "bad"), False),
        (intent_error(MForbidden(403, "no")), False),
        (ValueError("a bug"), False),
    ],
)
def test_transient(error: BaseException, expected: bool) -> None:
    assert transient(error) is expected


def test_describe_is_one_short_line_without_payload() -> None:
    assert describe(MForbidden(403, "payload text")) == "MForbidden 403 M_FORBIDDEN"
    assert describe(intent_error(MLimitExceeded(429, "payload"))) == "MLimitExceeded 429 M_LIMIT_EXCEEDED"
    assert describe(aiohttp.ClientConnectionError("payload")) == "ClientConnectionError"


# --- the application service routes ----------------------------------------------------------------------

APP = "/_matrix/app/v1"
BEARER = {"Authorization": f"Bearer {HS_TOKEN}"}


@pytest.fixture
def appservice() -> Iterator[TestClient]:
    """An app with the bridge, started (its lifespan runs): its homeserver is unreachable."""
    settings = make_settings(
        **bridge(matrix_homeserver_url="http://127.0.0.1:9", matrix_server_name="gischat.test")
    )
    with TestClient(create_app(settings)) as client:
        yield client


def matrix_error(response: Any, status: int, errcode: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errcode", "error"}, body  # the spec's error, not FastAPI's `detail`
    assert body["errcode"] == errcode
    assert isinstance(body["error"], str)
    assert body["error"]


CALLS: list[tuple[str, str, Any]] = [
    ("PUT", f"{APP}/transactions/1", {"events": []}),
    ("GET", f"{APP}/users/@gischat_alice:gischat.test", None),
    ("GET", f"{APP}/rooms/%23gischat_qgis:gischat.test", None),
    ("POST", f"{APP}/ping", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), CALLS)
def test_appservice_without_a_token(appservice: TestClient, method: str, path: str, body: Any) -> None:
    matrix_error(appservice.request(method, path, json=body), 401, "M_UNAUTHORIZED")
    basic = {"Authorization": f"Basic {HS_TOKEN}"}
    matrix_error(appservice.request(method, path, json=body, headers=basic), 401, "M_UNAUTHORIZED")
    matrix_error(
        appservice.request(method, path, json=body, headers={"Authorization": "Bearer "}),
        401,
        "M_UNAUTHORIZED",
    )


@pytest.mark.parametrize(("method", "path", "body"), CALLS)
def test_appservice_with_a_wrong_token(appservice: TestClient, method: str, path: str, body: Any) -> None:
    for token in ("wrong", AS_TOKEN, HS_TOKEN[:-1], HS_TOKEN + "x"):  # gischat's own token is not it
        headers = {"Authorization": f"Bearer {token}"}
        matrix_error(appservice.request(method, path, json=body, headers=headers), 403, "M_FORBIDDEN")
    matrix_error(
        appservice.request(method, path, json=body, params={"access_token": "wrong"}), 403, "M_FORBIDDEN"
    )


def test_appservice_transaction(appservice: TestClient) -> None:
    response = appservice.put(f"{APP}/transactions/txn-1", json={"events": []}, headers=BEARER)
    assert (response.status_code, response.json()) == (200, {})
    # Retried: the same answer.
    response = appservice.put(f"{APP}/transactions/txn-1", json={"events": []}, headers=BEARER)
    assert (response.status_code, response.json()) == (200, {})
    # Events of no portal, and junk, are accepted and ignored.
    events = [
        {"type": "m.room.message", "room_id": "!elsewhere:gischat.test", "sender": "@jane:gischat.test"},
        "not an event",
        {"type": 3},
    ]
    response = appservice.put(f"{APP}/transactions/txn-2", json={"events": events}, headers=BEARER)
    assert (response.status_code, response.json()) == (200, {})


def test_appservice_token_in_the_query(appservice: TestClient) -> None:
    """The spec's older way: `?access_token=`."""
    response = appservice.put(
        f"{APP}/transactions/q-1", json={"events": []}, params={"access_token": HS_TOKEN}
    )
    assert (response.status_code, response.json()) == (200, {})


@pytest.mark.parametrize(
    "content",
    [b"not json", b"", b'{"events": [', b"[]", b'"events"', b"{}", b'{"events": {}}', b'{"events": null}'],
)
def test_appservice_bad_transactions(appservice: TestClient, content: bytes) -> None:
    headers = {**BEARER, "Content-Type": "application/json"}
    response = appservice.put(f"{APP}/transactions/bad", content=content, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert "detail" not in body
    assert set(body) == {"errcode", "error"}
    assert body["errcode"] in ("M_NOT_JSON", "M_BAD_JSON")


def test_appservice_token_before_body(appservice: TestClient) -> None:
    response = appservice.put(
        f"{APP}/transactions/bad", content=b"not json", headers={"Authorization": "Bearer x"}
    )
    matrix_error(response, 403, "M_FORBIDDEN")


def test_appservice_ping(appservice: TestClient) -> None:
    response = appservice.post(f"{APP}/ping", json={"transaction_id": "p"}, headers=BEARER)
    assert (response.status_code, response.json()) == (200, {})


def test_appservice_queries(appservice: TestClient) -> None:
    matrix_error(
        appservice.get(f"{APP}/users/@gischat_alice:gischat.test", headers=BEARER), 404, "M_NOT_FOUND"
    )
    # An alias that is no portal's: no homeserver call, no such room.
    matrix_error(
        appservice.get(f"{APP}/rooms/%23gischat_attic:gischat.test", headers=BEARER), 404, "M_NOT_FOUND"
    )
    matrix_error(appservice.get(f"{APP}/rooms/%23qgis:elsewhere.org", headers=BEARER), 404, "M_NOT_FOUND")


def test_status_tells_of_the_bridge(appservice: TestClient) -> None:
    status = appservice.get("/status").json()
    matrix = status["matrix"]
    assert set(matrix) == {"homeserver", "portals", "queued", "lag_seconds", "dropped"}
    assert matrix["homeserver"] in ("starting", "down")  # nothing answers at 127.0.0.1:9
    assert (matrix["portals"], matrix["queued"], matrix["dropped"]) == (0, 0, 0)


def test_no_bridge_no_routes() -> None:
    with TestClient(create_app(make_settings())) as client:
        for method, path, body in CALLS:
            assert client.request(method, path, json=body, headers=BEARER).status_code == 404
        assert "matrix" not in client.get("/status").json()


def test_a_server_name_leaves_room_for_every_virtual_user() -> None:
    """The longest server name accepted still gives the longest localpart an id within 255."""
    longest = "s" * 164 + ":8448"
    settings = project(MatrixSettings, load_settings(_env_file=None, rooms=list(ROOMS), **bridge(
        matrix_server_name=longest, matrix_prefix="p" * 32)))  # fmt: skip
    assert len(settings.puppet("日" * 32)) <= 255
    assert "MATRIX_SERVER_NAME" in settings_error(**bridge(matrix_server_name="s" * 165 + ":8448"))
