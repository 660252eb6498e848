"""Settings: defaults, environment and .env, one-line errors, and when they are read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

import gischat.app
from gischat.app import create_app
from gischat.settings import DEFAULT_ROOMS, Settings, SettingsError, load_settings

from conftest import TIMEOUT, ServerFactory, make_settings

ENV_NAMES = {name.upper() for name in Settings.model_fields} | {"MAIN_LANG", "MAIN_LANGUAGE"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting in the environment (whatever its case) and no .env in the working directory."""
    for name in list(os.environ):
        if name.upper() in ENV_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message
    assert "\n" not in message, message
    return message


# --- values --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.rooms == ["QGIS", "Field and mobile", "GIS tribe", "Living room", "Kitchen", "Garden"]
    assert settings.rooms == list(DEFAULT_ROOMS)
    assert settings.rules == "Be kind and nice to this wonderful world"
    assert settings.main_lang == "en"
    assert settings.environment == "production"
    assert settings.min_author_length == 3
    assert settings.max_author_length == 32
    assert settings.max_message_length == 255
    assert settings.max_image_size == 800
    assert settings.max_geojson_features == 500
    assert settings.broker_url == "memory://"
    assert settings.workers == 1
    assert settings.map_tile_url == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    assert "OpenStreetMap" in settings.map_tile_attribution


@pytest.mark.usefixtures("clean_env")
def test_defaults_are_not_shared_between_instances() -> None:
    first = Settings(_env_file=None)
    first.rooms.append("Attic")
    assert Settings(_env_file=None).rooms == list(DEFAULT_ROOMS)


@pytest.mark.usefixtures("clean_env")
def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_MESSAGE_LENGTH", "100")
    monkeypatch.setenv("RULES", "No spam")
    monkeypatch.setenv("ROOMS", "Alpha, Beta room ,Gamma")
    monkeypatch.setenv("ENVIRONMENT", "development")
    settings = load_settings()
    assert settings.max_message_length == 100
    assert settings.rules == "No spam"
    assert settings.rooms == ["Alpha", "Beta room", "Gamma"]
    assert settings.environment == "development"


@pytest.mark.usefixtures("clean_env")
def test_environment_variables_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("max_author_length", "20")
    assert load_settings().max_author_length == 20


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("variable", ["MAIN_LANG", "MAIN_LANGUAGE"])
def test_main_lang_aliases(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "fr")
    assert load_settings().main_lang == "fr"


def test_dotenv_file_is_read(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text(
        "ROOMS=Kitchen,Garden shed\nMAX_MESSAGE_LENGTH=42\nMAIN_LANGUAGE=de\nRULES=From the file\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert settings.rooms == ["Kitchen", "Garden shed"]
    assert settings.max_message_length == 42
    assert settings.main_lang == "de"
    assert settings.rules == "From the file"

    # The environment wins over the file.
    monkeypatch.setenv("MAX_MESSAGE_LENGTH", "77")
    assert load_settings().max_message_length == 77


def test_dotenv_file_errors_are_reported(clean_env: Path) -> None:
    (clean_env / ".env").write_text("MAX_IMAGE_SIZE=huge\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="MAX_IMAGE_SIZE"):
        load_settings()


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_error_min_author_above_max(monkeypatch: pytest.MonkeyPatch) -> None:
    message = load_error(monkeypatch, MIN_AUTHOR_LENGTH="40", MAX_AUTHOR_LENGTH="32")
    assert "MIN_AUTHOR_LENGTH" in message
    assert "MAX_AUTHOR_LENGTH" in message


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", [" , , ", "", ","])
def test_error_rooms_empty(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    assert "ROOMS" in load_error(monkeypatch, ROOMS=value)


@pytest.mark.usefixtures("clean_env")
def test_error_not_an_integer(monkeypatch: pytest.MonkeyPatch) -> None:
    message = load_error(monkeypatch, MAX_MESSAGE_LENGTH="abc")
    assert "MAX_MESSAGE_LENGTH" in message
    assert "abc" in message


@pytest.mark.usefixtures("clean_env")
def test_error_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "MAX_IMAGE_SIZE" in load_error(monkeypatch, MAX_IMAGE_SIZE="5")


@pytest.mark.usefixtures("clean_env")
def test_error_workers_with_memory_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "WORKERS" in load_error(monkeypatch, WORKERS="2")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "url",
    [
        "amqp://user:secret@host",
        "redis://:secret@host:port/0",
        "rediss://user:secret@/0",
        "redis://user:secret@host/db",
    ],
)
def test_error_unsupported_broker_hides_password(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    message = load_error(monkeypatch, BROKER_URL=url)
    assert "BROKER_URL" in message
    assert "secret" not in message


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("rooms", ["QGIS,Kitchen,QGIS", "QGIS,Kitchen,qgis"])
def test_error_duplicate_rooms(monkeypatch: pytest.MonkeyPatch, rooms: str) -> None:
    message = load_error(monkeypatch, ROOMS=rooms)
    assert "ROOMS" in message
    assert "QGIS" in message or "qgis" in message


@pytest.mark.usefixtures("clean_env")
def test_error_room_with_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "ROOMS" in load_error(monkeypatch, ROOMS="QGIS,Field/mobile")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("tile.example.org/{z}/{x}/{y}.png", "http(s) URL"),
        ("javascript:alert(1)//{z}/{x}/{y}", "http(s) URL"),
        ("https://tile.example.org/{z}/{x}.png", "missing {y}"),
    ],
)
def test_error_tile_url(monkeypatch: pytest.MonkeyPatch, url: str, problem: str) -> None:
    message = load_error(monkeypatch, MAP_TILE_URL=url)
    assert "MAP_TILE_URL" in message
    assert problem in message


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_tile_url_means_no_basemap(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MAP_TILE_URL", value)
    assert load_settings().map_tile_url == ""


# --- when settings are read ----------------------------------------------------------------------


def run_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.upper() not in ENV_NAMES}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_reads_no_setting(tmp_path: Path) -> None:
    code = "import gischat.app\nfrom gischat.app import create_app\nprint('imported')"
    result = run_python(code, {"MAX_MESSAGE_LENGTH": "abc", "ROOMS": " , "}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_module_app_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    result = run_python("from gischat.app import app", {"MAX_MESSAGE_LENGTH": "abc"}, tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "MAX_MESSAGE_LENGTH" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.usefixtures("clean_env")
def test_create_app_reads_settings_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gischat.app.create_app is create_app
    monkeypatch.setenv("MAX_MESSAGE_LENGTH", "abc")
    with pytest.raises(SettingsError, match="MAX_MESSAGE_LENGTH"):
        create_app()


@pytest.mark.usefixtures("clean_env")
def test_create_app_uses_current_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMS", "X,Y")
    with TestClient(create_app()) as client:
        assert client.get("/rooms").json() == ["X", "Y"]
    monkeypatch.setenv("ROOMS", "Z")
    monkeypatch.setenv("RULES", "Later rules")
    with TestClient(create_app()) as client:
        assert client.get("/rooms").json() == ["Z"]
        assert client.get("/rules").json()["rules"] == "Later rules"


def test_two_apps_in_one_process() -> None:
    first = create_app(make_settings(rules="First rules", max_message_length=10))
    second = create_app(make_settings(rules="Second rules", rooms=["Solo"]))
    with TestClient(first) as a, TestClient(second) as b:
        assert a.get("/rules").json()["rules"] == "First rules"
        assert b.get("/rules").json()["rules"] == "Second rules"
        assert a.get("/rules").json()["max_message_length"] == 10
        assert b.get("/rules").json()["max_message_length"] == 255
        assert b.get("/rooms").json() == ["Solo"]
        # Each app enforces its own limits.
        body = {"type": "text", "author": "bot_1", "text": "x" * 20}
        assert a.put("/room/QGIS/text", json=body).status_code == 422
        assert b.put("/room/Solo/text", json=body).status_code == 200
        assert b.put("/room/QGIS/text", json=body).status_code == 404


def test_two_live_servers_in_one_process(server_factory: ServerFactory) -> None:
    first = server_factory(rules="Rules of the first", main_lang="fr")
    second = server_factory(rules="Rules of the second", max_author_length=12)
    one = httpx.get(f"{first.http_url}/rules", timeout=TIMEOUT).json()
    two = httpx.get(f"{second.http_url}/rules", timeout=TIMEOUT).json()
    assert one != two
    assert (one["rules"], one["main_lang"], one["max_author_length"]) == ("Rules of the first", "fr", 32)
    assert (two["rules"], two["main_lang"], two["max_author_length"]) == ("Rules of the second", "en", 12)
