"""The `gischat` command: read the settings, then hand over to the process runner."""

from __future__ import annotations

import argparse
import sys

from gischat.server.runner import serve
from gischat.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gischat",
        description="Run the gischat server. Every setting comes from the environment or a .env file.",
    )
    parser.add_argument("--env-file", help="read settings from this file instead of ./.env")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(_env_file=args.env_file) if args.env_file else load_settings()
    except SettingsError as exc:
        print(f"gischat: {exc}", file=sys.stderr)
        return 2
    # Settings refuse WORKERS above 1 without a shared broker.
    try:
        serve(settings)
    except OSError as exc:  # the port is taken, the address is not ours...
        print(f"gischat: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
