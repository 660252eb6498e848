"""Logs for operators: readable lines by default, one JSON object per line with LOG_FORMAT=json.

The scenario runs the real `gischat` command (as in test_cli.py) and reads what it writes:
uvicorn's access lines on stdout, everything else on stderr. In both formats a refused
message's contents never reach the log, only the refusal's reason.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from test_cli import clean_env
from websockets.sync.client import ClientConnection, connect

from gischat.observability.logs import ChurnLog, JsonFormatter, context
from gischat.server.runner import DEFAULT_LOG_CONFIG, JSON_LOG_CONFIG, log_config
from gischat.settings import Settings, SettingsError, load_settings

from conftest import free_port

START_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0
# Written into refused messages: it must never show up in a log line.
SECRET = "CONTENTS-THAT-MUST-NOT-BE-LOGGED-4f1c"
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: .+")


@dataclass
class Output:
    stdout: list[str]
    stderr: list[str]
    reasons: list[str]  # the `uncompliant` reasons the client received

    @property
    def lines(self) -> list[str]:
        return self.stdout + self.stderr


def recv_json(ws: ClientConnection, deadline: float) -> dict[str, Any]:
    message = orjson.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
    assert isinstance(message, dict)
    return message


def refused_messages(port: int) -> list[str]:
    """Send two messages that are refused, both carrying SECRET; return the reasons received."""
    too_long = {"type": "text", "author": "log-test", "avatar": None, "text": SECRET * 20}
    not_json = f"{SECRET} is not JSON"
    reasons = []
    with connect(f"ws://127.0.0.1:{port}/room/QGIS/ws", open_timeout=5, close_timeout=2) as ws:
        deadline = time.monotonic() + 5
        for frame in (orjson.dumps(too_long).decode(), not_json):
            ws.send(frame)
            while (message := recv_json(ws, deadline))["type"] != "uncompliant":
                pass
            reasons.append(message["reason"])
    return reasons


def run_scenario(tmp_path: Path, **variables: str) -> Output:
    """Start `gischat`, make a request and two refused websocket messages, stop it, read its output."""
    port = free_port()
    env = clean_env(PORT=str(port), HOST="127.0.0.1", PROCESSING_WORKERS="1", **variables)
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gischat"], env=env, cwd=tmp_path, stdout=stdout, stderr=stderr
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"gischat exited early:\n{err.read_text()}"
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/status", timeout=1).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"gischat did not start:\n{err.read_text()}"
                time.sleep(0.05)
        reasons = refused_messages(port)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=EXIT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT)
    return Output(
        stdout=[line for line in out.read_text().splitlines() if line],
        stderr=[line for line in err.read_text().splitlines() if line],
        reasons=reasons,
    )


def test_json_format_gives_one_object_per_line(tmp_path: Path) -> None:
    output = run_scenario(tmp_path, LOG_FORMAT="json")
    assert output.reasons == ["text: too long (740 characters, max 255)", "message is not valid JSON"]
    records = []
    for line in output.lines:
        record = orjson.loads(line)  # every line, stdout and stderr alike, is one JSON object
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "event"} <= record.keys(), line
        assert ISO_UTC_MS.fullmatch(record["time"]), line
        assert record["level"] in LEVELS, line
        records.append(record)
    assert "Traceback" not in "\n".join(output.lines)

    access = [orjson.loads(line) for line in output.stdout]
    status = [record for record in access if record.get("request") == "GET /status HTTP/1.1"]
    assert status, output.stdout
    assert status[0]["logger"] == "uvicorn.access"
    assert status[0]["status"] == 200
    assert re.fullmatch(r"127\.0\.0\.1:\d+", status[0]["peer"])

    refusals = [record for record in records if "reason" in record]
    assert [record["reason"] for record in refusals] == output.reasons
    for record in refusals:
        assert record["logger"] == "gischat.chat"
        assert record["room"] == "QGIS"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", record["peer"])
        assert record["reason"] in record["event"]
    assert any(record["event"] == "Application startup complete." for record in records)
    assert not any(SECRET in line for line in output.lines)


def test_default_format_stays_the_readable_line(tmp_path: Path) -> None:
    output = run_scenario(tmp_path)
    for line in output.lines:
        assert TEXT_LINE.fullmatch(line), line
    access = r"[\d-]+ [\d:,]+ INFO access: 127\.0\.0\.1:\d+ \"GET /status HTTP/1\.1\" 200 OK"
    assert any(re.fullmatch(access, line) for line in output.stdout), output.stdout
    for reason in output.reasons:
        refusal = rf"[\d-]+ [\d:,]+ INFO gischat\.chat: 127\.0\.0\.1:\d+ in 'QGIS': uncompliant: {re.escape(reason)}"
        assert any(re.fullmatch(refusal, line) for line in output.stderr), output.stderr
    assert not any(SECRET in line for line in output.lines)


# The formatter and the config choice, without a server.


def make_record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("gischat.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_context_and_keeps_exceptions_on_one_line() -> None:
    formatter = JsonFormatter()
    record = make_record("%s in %r: closed", "192.0.2.7:5000", "QGIS", **context("192.0.2.7:5000", "QGIS"))
    line = formatter.format(record)
    assert orjson.loads(line) == {
        "time": orjson.loads(line)["time"],
        "level": "WARNING",
        "logger": "gischat.test",
        "event": "192.0.2.7:5000 in 'QGIS': closed",
        "peer": "192.0.2.7:5000",
        "room": "QGIS",
    }
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        record = make_record("handler failed")
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line
    assert "ValueError: broken" in orjson.loads(line)["exception"]
    assert context(reason="slow down") == {"reason": "slow down"}


def test_log_format_picks_the_built_in_config() -> None:
    assert log_config(Settings(_env_file=None)) is DEFAULT_LOG_CONFIG
    assert log_config(Settings(_env_file=None, log_format="JSON")) is JSON_LOG_CONFIG
    assert JSON_LOG_CONFIG["handlers"] == DEFAULT_LOG_CONFIG["handlers"]
    assert JSON_LOG_CONFIG["loggers"] == DEFAULT_LOG_CONFIG["loggers"]
    # A config file decides everything, the format included.
    assert log_config(Settings(_env_file=None, log_config="x.yaml", log_format="json")) == "x.yaml"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        load_settings(_env_file=None, log_format="xml")


def test_comings_and_goings_beyond_the_log_rate_are_counted_not_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("gischat.test-churn")
    churn = ChurnLog(logger, rate=2.0)  # a burst of 10 lines, then 2 a second
    allowed = [churn.allows("joins") for _ in range(14)] + [churn.allows("leaves")]
    assert allowed == [True] * 10 + [False] * 5
    with caplog.at_level(logging.INFO, logger="gischat.test-churn"):
        churn.flush()
        churn.flush()  # nothing more held back: no second line
    assert [record.getMessage() for record in caplog.records] == [
        "not logged in the last 10 s: 4 joins, 1 leaves (LOG_RATE)"
    ]


def test_a_flooded_access_log_says_what_it_dropped_through_gischat_logs() -> None:
    """uvicorn's access lines take five fields: the summary of those dropped goes to gischat's own
    handler instead of failing in the access formatter (and being lost)."""
    from uvicorn.logging import AccessFormatter

    from gischat.observability.logs import FloodFilter

    access_lines, gischat_lines = LineList(), LineList()
    access = logging.Handler()
    access.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    access.emit = lambda record: access_lines.append(access.format(record))  # type: ignore[method-assign]
    mine = logging.Handler()
    mine.emit = lambda record: gischat_lines.append(record.getMessage())  # type: ignore[method-assign]
    flood = FloodFilter(0.01)
    flood.attach(access)
    access.addFilter(flood)
    summaries = logging.getLogger("gischat.logs")
    summaries.addHandler(mine)
    try:
        for _ in range(5):
            access.handle(logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                                            ("192.0.2.1:5", "PUT", "/x", "1.1", 200), None))  # fmt: skip
        flood.flush()
    finally:
        summaries.removeHandler(mine)
    assert len(access_lines) == 1
    assert gischat_lines == ["4 log lines dropped in the last 10 s (LOG_RATE)"]


class LineList(list[str]):
    """Lines a test handler wrote."""
