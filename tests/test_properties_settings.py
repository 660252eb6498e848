"""Properties of reading the settings: any value of any variable is a setting or one readable line.

`load_settings` with arbitrary strings in a few environment variables (alone or together) either
returns the settings or raises `SettingsError` whose message is one line naming a variable that
was set; a secret's value (ADMIN_TOKENS, the Matrix tokens, a broker URL's password) is never in
it. Never another exception: an operator's typo must not end in a traceback.
"""

from __future__ import annotations

import os
from unittest import mock

from hypothesis import event, given
from hypothesis import strategies as st

from gischat.settings import Settings, SettingsError, load_settings

from properties_profile import examples

# What an environment variable can hold: any character but NUL (and no lone surrogate).
VALUES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)
# Values near what each variable expects, where the checks are.
LIKELY = st.sampled_from(
    [
        "",
        " ",
        "0",
        "1",
        "-1",
        "2",
        "1e3",
        "inf",
        "nan",
        "true",
        "QGIS",
        "QGIS,qgis",
        "a/b",
        ",,",
        "*",
        "https://maps.example.org",
        "http://[::1",
        "redis://",
        "redis://host:99999",
        "redis://u:SECRETPASSWORD@h:6379/x",
        "rediss://h/0",
        "memory://",
        "label:" + "s" * 31,
        "label:" + "s" * 32,
        "Room=!id",
        "QGIS=!abc:example.org",
        "10.0.0.0/8,::1",
        "10.0.0.0/33",
        "https://tile.example.org/{z}/{x}/{y}.png",
        "JSON",
        "example.org:8448",
        "https://matrix.example.org",
        "x" * 40,
    ]
)
VARIABLES = [
    "ROOMS",
    "CHANNELS",
    "ALLOWED_ORIGINS",
    "METRICS_NETWORKS",
    "ADMIN_TOKENS",
    "ADMIN_NETWORKS",
    "ANNOUNCER_NAME",
    "BROKER_URL",
    "REDIS_HOST",
    "REDIS_KEY_PREFIX",
    "MAX_FRAME_SIZE",
    "MESSAGE_RATE",
    "HEADER_TIMEOUT",
    "MIN_AUTHOR_LENGTH",
    "MAX_AUTHOR_LENGTH",
    "GEOJSON_STYLE",
    "LOG_FORMAT",
    "MAP_TILE_URL",
    "MATRIX_HOMESERVER_URL",
    "MATRIX_SERVER_NAME",
    "MATRIX_AS_TOKEN",
    "MATRIX_ROOMS",
    "MATRIX_ROOM_IDS",
    "MATRIX_PREFIX",
    "WORKERS",
    "PORT",
]
SECRETS = ("ADMIN_TOKENS", "MATRIX_AS_TOKEN", "MATRIX_HS_TOKEN", "BROKER_URL", "MATRIX_HOMESERVER_URL")
SETTING_NAMES = {name.lower() for name in Settings.model_fields} | {
    str(choice).lower()
    for field in Settings.model_fields.values()
    for choice in getattr(field.validation_alias, "choices", [])
}
ENVIRONMENT = st.dictionaries(st.sampled_from(VARIABLES), VALUES | LIKELY, min_size=1, max_size=3)


def loaded(environment: dict[str, str]) -> Settings | str:
    """The settings read from `environment` alone (no other variable, no .env), or the error line."""
    clean = {key: value for key, value in os.environ.items() if key.lower() not in SETTING_NAMES}
    with mock.patch.dict(os.environ, {**clean, **environment}, clear=True):
        try:
            return load_settings(_env_file=None)
        except SettingsError as exc:
            return str(exc)


@examples(300)
@given(environment=ENVIRONMENT)
def test_any_value_is_a_setting_or_one_line_naming_the_variable(environment: dict[str, str]) -> None:
    outcome = loaded(environment)
    if isinstance(outcome, Settings):
        event("accepted")
        return
    event(f"refused: {outcome.split(':')[0]}")
    assert "\n" not in outcome, outcome
    assert "\r" not in outcome, outcome
    assert outcome.startswith(("invalid setting ", "invalid settings: ")), outcome
    assert any(variable in outcome for variable in environment), outcome


@examples(150)
@given(
    variable=st.sampled_from(SECRETS),
    secret=st.text(st.characters(categories=("L", "N")), min_size=2, max_size=8),
    around=st.sampled_from(
        ["{}", "redis://user:{}@host:6379/0", "label:{}", "x:{}" + "9" * 40, "http://u:{}@h"]
    ),
)
def test_a_secret_never_shows_in_the_error(variable: str, secret: str, around: str) -> None:
    marker = f"Zq{secret}Xk"
    outcome = loaded({variable: around.format(marker)})
    if isinstance(outcome, str):
        assert marker not in outcome, outcome
