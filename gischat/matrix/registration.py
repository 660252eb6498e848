"""The registration file a homeserver loads to know gischat as an application service.

Printed by `gischat matrix-registration --url URL` from the same settings the bridge runs with,
so the tokens and namespaces the homeserver holds are the ones gischat checks and uses.
"""

from __future__ import annotations

import re

import yaml

from gischat.matrix import names
from gischat.matrix.config import REGISTRATION_ID, MatrixSettings


def registration(settings: MatrixSettings, url: str) -> dict[str, object]:
    """The registration as data: exclusive users `@<prefix>.*` and aliases `#<prefix>.*`.

    `rate_limited` is off: gischat applies its own rates to each author before anything reaches
    Matrix, and a homeserver's per-sender limit would otherwise throttle the whole room's voice,
    which is one virtual user per person but one application service."""
    server = re.escape(settings.matrix_server_name)
    prefix = re.escape(settings.matrix_prefix)
    return {
        "id": REGISTRATION_ID,
        "url": url.rstrip("/"),
        "as_token": settings.matrix_as_token.get_secret_value(),
        "hs_token": settings.matrix_hs_token.get_secret_value(),
        "sender_localpart": names.bot_localpart(settings.matrix_prefix),
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": True, "regex": f"@{prefix}.*:{server}"}],
            "aliases": [{"exclusive": True, "regex": f"#{prefix}.*:{server}"}],
            "rooms": [],
        },
    }


def registration_yaml(settings: MatrixSettings, url: str) -> str:
    return yaml.safe_dump(registration(settings, url), sort_keys=False)
