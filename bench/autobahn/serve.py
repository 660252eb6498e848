"""Serve bench/autobahn/echo_app.py with uvicorn's stock websocket protocol or with gischat's.

    python -m bench.autobahn.serve --impl stock --port 9001     # from the repository root
    python -m bench.autobahn.serve --impl gischat --port 9002

`stock` is uvicorn's sans-I/O protocol, the same as
`uvicorn bench.autobahn.echo_app:app --ws websockets-sansio --ws-max-size 16777216`.
`gischat` passes gischat's websocket protocol class (imported by path, `--ws-class`, by default
gischat.server.websocket:GuardedWebSocketProtocol) as uvicorn's `ws=`. Everything else is the
same for both: uvicorn's stock httptools HTTP protocol (not gischat's guarded one, which needs a
guard spec from gischat's runner), a 16 MiB message limit, uvicorn's default ping settings.
`--gischat-src DIR` imports the class from DIR/gischat (e.g. an exported older commit) instead
of the working tree.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from typing import Any

import uvicorn

from .echo_app import MAX_MESSAGE_SIZE, app

GISCHAT_WS_CLASS = "gischat.server.websocket:GuardedWebSocketProtocol"


def load_class(path: str) -> type[Any]:
    """Import `module:Name` (or `module.Name`) and return the attribute."""
    module_name, sep, name = path.partition(":")
    if not sep:
        module_name, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    if not isinstance(cls, type):
        raise TypeError(f"{path} is not a class")
    return cls


def build_config(impl: str, host: str, port: int, ws_class: str, log_level: str) -> uvicorn.Config:
    """The uvicorn config of one implementation; only `ws=` differs between them."""
    ws: str | type[Any] = "websockets-sansio" if impl == "stock" else load_class(ws_class)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        ws=ws,  # a protocol name or class
        ws_max_size=MAX_MESSAGE_SIZE,
        lifespan="on",
        log_level=log_level,
        access_log=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--impl", choices=["stock", "gischat"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ws-class", default=GISCHAT_WS_CLASS, help="module:Class for --impl gischat")
    parser.add_argument(
        "--gischat-src", help="directory holding the gischat package to import the class from"
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if args.gischat_src:
        sys.path.insert(0, args.gischat_src)
    config = build_config(args.impl, args.host, args.port, args.ws_class, args.log_level)
    if isinstance(config.ws, str):
        ws = config.ws
    else:
        ws = f"{config.ws.__module__}.{config.ws.__qualname__} from {inspect.getsourcefile(config.ws)}"
    print(f"serving echo_app on ws://{args.host}:{args.port} impl={args.impl} ws={ws}", flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
