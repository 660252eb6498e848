"""The `gischat` command: read the settings, then serve (the default) or print the Matrix registration."""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from gischat.matrix.config import MatrixSettings
from gischat.matrix.registration import registration_yaml
from gischat.server.runner import serve
from gischat.settings import Settings, SettingsError, load_settings, project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gischat",
        description="Run the gischat server. Every setting comes from the environment or a .env file.",
    )
    parser.add_argument("--env-file", help="read settings from this file instead of ./.env")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    matrix = commands.add_parser(
        "matrix-registration",
        help="print the registration YAML a Matrix homeserver loads to know gischat as an application service",
        description="Print, from the MATRIX_* settings, the application service registration a Matrix "
        "homeserver loads (Synapse: app_service_config_files). See docs/matrix.md.",
    )
    matrix.add_argument(
        "--url",
        required=True,
        help="gischat's base URL as the homeserver reaches it, e.g. http://gischat:8000",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(_env_file=args.env_file) if args.env_file else load_settings()
    except SettingsError as exc:
        print(f"gischat: {exc}", file=sys.stderr)
        return 2
    if args.command == "matrix-registration":
        return print_registration(settings, args.url)
    # Settings refuse WORKERS above 1 without a shared broker.
    try:
        serve(settings)
    except OSError as exc:  # the port is taken, the address is not ours...
        print(f"gischat: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def print_registration(settings: Settings, url: str) -> int:
    """The registration for these settings on standard output; a one-line error naming what is wrong."""
    if not settings.matrix_enabled:
        print(
            "gischat: invalid setting MATRIX_HOMESERVER_URL: the Matrix bridge needs it "
            "(and MATRIX_SERVER_NAME, MATRIX_AS_TOKEN, MATRIX_HS_TOKEN)",
            file=sys.stderr,
        )
        return 2
    if not base_url(url):
        print(
            f"gischat: invalid --url {url!r}: gischat's base URL, e.g. http://gischat:8000", file=sys.stderr
        )
        return 2
    sys.stdout.write(registration_yaml(project(MatrixSettings, settings), url))
    return 0


def base_url(url: str) -> bool:
    """Whether `url` is an http(s) base URL a homeserver can call: a host, a valid port, no
    credentials, query or fragment."""
    try:
        parsed = urlsplit(url)
        parsed.port  # noqa: B018 (raises on a port that is not a number, or out of range)
    except ValueError:
        return False
    return (
        parsed.scheme in ("http", "https")
        and bool(parsed.hostname)
        and not (parsed.username or parsed.password or parsed.query or parsed.fragment)
    )
