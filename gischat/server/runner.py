"""The process runner: the only code that starts uvicorn, and the home of process-wide side effects.

It binds the listening socket (with TCP_USER_TIMEOUT), raises the file-descriptor limit, sets the
interpreter's switch interval and the log flood filter, builds gischat's guarded protocols for
uvicorn's `http=`/`ws=` options, and runs one process or WORKERS of them. The app itself
(`gischat.web`) knows nothing of any of this.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import sys
import uuid
from functools import partial
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from gischat.observability.logs import install_flood_filter
from gischat.server.descriptors import RESERVED_FDS, effective_max_connections, raise_nofile_limit
from gischat.server.guard import GuardSettings
from gischat.server.http import GuardedHttpProtocol
from gischat.server.registry import GuardSpec
from gischat.server.websocket import GuardedWebSocketProtocol
from gischat.settings import Settings, project
from gischat.work.heap import keep_heap_warm

# The loop shares the GIL with the threads that hand work to the worker processes (and pickle
# what goes there); a 1 ms switch interval keeps other rooms' round trips short.
SWITCH_INTERVAL = 0.001


# Where an app built by the runner is told that gischat's guarded protocols serve it.
GUARDED_STATE = "transport_guarded"


def guarded(app: Any) -> Any:
    """Mark an app as served by gischat's guarded protocols (its lifespan warns when it is not)."""
    setattr(app.state, GUARDED_STATE, True)
    return app


# Middle-generation collections between two full ones (CPython's default is 10).
FULL_COLLECTION_EVERY = 100


def prepare_process(settings: Settings) -> None:
    """Process-wide settings of a server process, set once logging is configured, before it serves."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    install_flood_filter(settings.log_rate)
    # Modules, the app, its routes and schemas live as long as the process. Frozen, they are left
    # out of every later collection.
    gc.collect()
    gc.freeze()
    # A socket's objects live as long as it does, so a full collection mostly walks sockets that
    # are still open, and a crowd joining paid for it many times over (docs/benchmarks.md, joins).
    # Full collections come after FULL_COLLECTION_EVERY younger ones (CPython: 10)
    # and once the old generation grew by a quarter; cyclic garbage that reached it (a closed
    # socket's) waits a little longer to be freed.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    keep_heap_warm()


# Used when LOG_CONFIG names no file: one line per event, timestamps first.
DEFAULT_LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "access": {
            "()": "uvicorn.logging.AccessFormatter",
            "fmt": '%(asctime)s %(levelname)s access: %(client_addr)s "%(request_line)s" %(status_code)s',
        },
    },
    "handlers": {
        "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        "gischat": {"handlers": ["default"], "level": "INFO", "propagate": False},
        # `websockets` notes every closed connection at INFO: only its warnings matter here.
        "gischat.transport.wire": {"level": "WARNING"},
    },
}

# LOG_FORMAT=json: the same handlers and loggers, every line one JSON object (gischat.logs).
JSON_LOG_CONFIG: dict[str, Any] = {
    **DEFAULT_LOG_CONFIG,
    "formatters": {
        "default": {"()": "gischat.observability.logs.JsonFormatter"},
        "access": {"()": "gischat.observability.logs.JsonFormatter"},
    },
}


def log_config(settings: Settings) -> dict[str, Any] | str:
    """A logging config file when LOG_CONFIG names one, else the built-in config LOG_FORMAT picks."""
    if settings.log_config:
        return settings.log_config
    return JSON_LOG_CONFIG if settings.log_format == "json" else DEFAULT_LOG_CONFIG


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Translate settings into uvicorn's keyword arguments."""
    # The server's guard: one per process, built on the first connection from this spec (which
    # pickles cheaply to worker processes with the rest of the config).
    spec = GuardSpec(project(GuardSettings, settings), uuid.uuid4().hex)
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        # uvicorn's httptools and sans-I/O websockets protocols (no task per connection of its
        # own, pings on timers), with the connection caps and limits of gischat.server.
        "http": partial(GuardedHttpProtocol, guard_spec=spec),
        "ws": GuardedWebSocketProtocol,
        "ws_max_size": settings.max_frame_size,
        "ws_ping_interval": settings.ws_ping_interval or None,
        "ws_ping_timeout": settings.ws_ping_timeout,
        # Compression is per recipient: it would undo serialise-once fan-out and cost zlib state
        # on every socket (docs/settings.md). The QGIS client does not ask for it anyway.
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "log_config": log_config(settings),
        "server_header": False,
        # SIGTERM: sockets are closed with 1012 at once; what is left after this is cancelled.
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }


def listening_socket(settings: Settings) -> socket.socket:
    """Bind the server socket ourselves to set TCP_USER_TIMEOUT, which accepted sockets inherit.

    Through ASGI a server cannot abort a connection, and a client that stopped reading keeps
    its socket (and the data queued in the kernel for it) open after it was dropped from its
    room, since a graceful close waits for the data to drain. With TCP_USER_TIMEOUT the kernel
    aborts a connection whose peer acknowledges nothing for that long, zero-window included.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.tcp_user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(settings.tcp_user_timeout * 1000))
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    return sock


def log_connection_ceiling(log: logging.Logger, requested: int, nofile: int) -> None:
    """One line with the descriptor limit and the cap; a warning when the cap had to be lowered."""
    cap = effective_max_connections(requested, nofile)
    if cap >= requested:
        log.info("file descriptor limit %d; MAX_CONNECTIONS %d", nofile, requested)
    else:
        log.warning(
            "file descriptor limit %d; MAX_CONNECTIONS %d lowered to %d (%d descriptors kept for the "
            "server's own files): raise the limit (ulimit -n, LimitNOFILE, docker --ulimit nofile) "
            "to allow more",
            nofile,
            requested,
            cap,
            RESERVED_FDS,
        )


# How the `gischat` command hands its settings to worker processes (WORKERS above 1).
WORKER_SETTINGS = "GISCHAT_WORKER_SETTINGS"


def worker_app() -> Any:
    """The app of one worker process, built from the settings the `gischat` command read."""
    from gischat.web.app import create_app

    values = json.loads(os.environ[WORKER_SETTINGS])
    settings = Settings(_env_file=None, **values)
    prepare_process(settings)
    return guarded(create_app(settings))


def serve(settings: Settings) -> None:
    """Run the server on a socket bound with our options: one process, or WORKERS of them.

    Worker processes share the one listening socket (the kernel hands each connection to one of
    them) and each is a node of the shared broker; uvicorn's supervisor replaces a worker that
    dies. Workers are spawned, so each builds its own app from the settings.
    """
    from gischat.web.app import create_app

    options = uvicorn_options(settings)
    workers = options.pop("workers")
    sock = listening_socket(settings)
    # Before the app is built: its transport guard sizes the connection cap from this limit.
    nofile = raise_nofile_limit()
    if workers > 1:
        os.environ[WORKER_SETTINGS] = settings.model_dump_json()
        config = uvicorn.Config("gischat.server.runner:worker_app", factory=True, workers=workers, **options)
    else:
        config = uvicorn.Config(guarded(create_app(settings)), **options)  # also sets up logging
        prepare_process(settings)  # after uvicorn set up logging: the flood filter goes on its handlers
    host, port = sock.getsockname()[:2]
    log = logging.getLogger("gischat")
    log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    log_connection_ceiling(log, settings.max_connections, nofile)
    if settings.log_config and settings.log_format != "text":
        log.warning("LOG_FORMAT=%s has no effect: LOG_CONFIG sets the format", settings.log_format)
    # Ctrl+C is re-raised after the graceful shutdown; swallow it as `uvicorn.run` does.
    with contextlib.suppress(KeyboardInterrupt):
        if workers > 1:
            log.info("%d worker processes, each a node of the broker", workers)
            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
