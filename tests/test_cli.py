"""The `gischat` command, run as a real process: what the Docker image's CMD runs.

Each test gets a clean environment (no gischat variable inherited from the caller) and
runs in an empty temporary directory, so no stray `.env` is read. Servers are waited for
by polling with a deadline, and stopped with a signal as a process manager would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from gischat.settings import Settings

from conftest import free_port

START_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0
# A process that refuses its settings exits before serving anything; this is generous.
QUICK_EXIT = 5.0


def clean_env(**variables: str) -> dict[str, str]:
    """The current environment minus every gischat setting, plus `variables`."""
    settings_names = {name.upper() for name in Settings.model_fields} | {"MAIN_LANGUAGE"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings_names}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(variables)
    return env


def gischat_entry_point() -> str:
    executable = shutil.which("gischat", path=os.path.dirname(sys.executable)) or shutil.which("gischat")
    assert executable, "the gischat console script is not installed"
    return executable


LAUNCHERS = {
    "python -m gischat": [sys.executable, "-m", "gischat"],
    "gischat": [gischat_entry_point()],
}


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running(command: list[str], env: dict[str, str], cwd: Path) -> Iterator[Running]:
    """Start a server process; kill it on the way out if the test did not stop it."""
    log = cwd / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield Running(process, int(env["PORT"]), log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=EXIT_TIMEOUT)


def wait_until_serving(server: Running) -> httpx.Response:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert server.process.poll() is None, f"the server exited early:\n{server.output()}"
        try:
            return httpx.get(f"{server.url}/rooms", timeout=1)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"the server did not start serving:\n{server.output()}"
            time.sleep(0.05)


def check_websocket(server: Running, room: str) -> None:
    with connect(f"ws://127.0.0.1:{server.port}/room/{room}/ws", open_timeout=5, close_timeout=2) as ws:
        ws.send(orjson.dumps({"type": "newcomer", "newcomer": "cli-test"}).decode())
        deadline = time.monotonic() + 5
        while True:
            message = orjson.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message["type"] == "newcomer":
                assert message == {"type": "newcomer", "newcomer": "cli-test"}
                return


def stop(server: Running, sig: signal.Signals) -> int:
    server.process.send_signal(sig)
    return server.process.wait(timeout=EXIT_TIMEOUT)


def assert_clean_exit(server: Running, returncode: int, sig: signal.Signals) -> None:
    log = server.output()
    # After a graceful shutdown uvicorn re-raises the signal it caught, so that the exit
    # status tells why it stopped: SIGTERM (default action) ends the process "by SIGTERM";
    # SIGINT becomes a KeyboardInterrupt that uvicorn.run swallows, hence 0.
    accepted = (0, -signal.SIGTERM) if sig == signal.SIGTERM else (0,)
    assert returncode in accepted, f"exit status {returncode}:\n{log}"
    assert "Application shutdown complete" in log
    assert "Finished server process" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("launcher", "sig"),
    [("python -m gischat", signal.SIGTERM), ("gischat", signal.SIGINT)],
    ids=["python-m-gischat-SIGTERM", "gischat-SIGINT"],
)
def test_command_serves_rooms_from_the_environment(
    tmp_path: Path, launcher: str, sig: signal.Signals
) -> None:
    env = clean_env(PORT=str(free_port()), HOST="127.0.0.1", ROOMS="A, B ,,C")
    with running(LAUNCHERS[launcher], env, tmp_path) as server:
        response = wait_until_serving(server)
        assert response.status_code == 200
        assert response.json() == ["A", "B", "C"]
        check_websocket(server, "B")
        returncode = stop(server, sig)
    assert_clean_exit(server, returncode, sig)


def test_env_file_option(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ROOMS=Decoy\n")  # ./.env: must be ignored for --env-file
    config = tmp_path / "conf"
    config.mkdir()
    env_file = config / "gischat.env"
    env_file.write_text("ROOMS=X,Y\nMAX_AUTHOR_LENGTH=20\n")
    env = clean_env(PORT=str(free_port()), HOST="127.0.0.1")
    with running([*LAUNCHERS["gischat"], "--env-file", str(env_file)], env, tmp_path) as server:
        assert wait_until_serving(server).json() == ["X", "Y"]
        assert httpx.get(f"{server.url}/rules", timeout=5).json()["max_author_length"] == 20
        returncode = stop(server, signal.SIGTERM)
    assert_clean_exit(server, returncode, signal.SIGTERM)


def run_to_exit(
    command: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    try:
        result = subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=QUICK_EXIT * 2
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"still running after {exc.timeout} s: it should have refused its settings"
        ) from None
    return result, time.monotonic() - started


INVALID = [
    pytest.param({"MAX_AUTHOR_LENGTH": "abc"}, "MAX_AUTHOR_LENGTH", id="not-an-integer"),
    pytest.param(
        {"MIN_AUTHOR_LENGTH": "40", "MAX_AUTHOR_LENGTH": "32"}, "MIN_AUTHOR_LENGTH", id="min-above-max"
    ),
    pytest.param({"ROOMS": " , "}, "ROOMS", id="no-room"),
    pytest.param({"WORKERS": "2"}, "WORKERS", id="workers-with-memory-broker"),
]


@pytest.mark.parametrize(("variables", "named"), INVALID)
def test_invalid_settings_exit_with_one_line(tmp_path: Path, variables: dict[str, str], named: str) -> None:
    env = clean_env(PORT=str(free_port()), HOST="127.0.0.1", **variables)
    result, elapsed = run_to_exit(LAUNCHERS["python -m gischat"], env, tmp_path)
    assert result.returncode != 0
    assert elapsed < QUICK_EXIT, f"took {elapsed:.2f} s to refuse"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert named in lines[0]
    assert "Traceback" not in result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr


def test_invalid_settings_through_the_entry_point(tmp_path: Path) -> None:
    env = clean_env(PORT=str(free_port()), HOST="127.0.0.1", MAX_AUTHOR_LENGTH="abc")
    result, _ = run_to_exit(LAUNCHERS["gischat"], env, tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("gischat: ")
    assert "MAX_AUTHOR_LENGTH" in result.stderr


def test_uvicorn_with_invalid_settings_names_the_variable(tmp_path: Path) -> None:
    env = clean_env(MAX_AUTHOR_LENGTH="abc")
    command = [sys.executable, "-m", "uvicorn", "gischat.app:app", "--port", str(free_port())]
    result, elapsed = run_to_exit(command, env, tmp_path)
    assert result.returncode != 0
    assert elapsed < QUICK_EXIT
    assert "MAX_AUTHOR_LENGTH" in result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr


def test_plain_uvicorn_says_it_runs_without_the_guards(tmp_path: Path) -> None:
    """`uvicorn gischat.app:app` works, and says in one line what it lacks and what to run instead."""
    port = free_port()
    env = clean_env(PORT=str(port))
    command = [sys.executable, "-m", "uvicorn", "gischat.app:app", "--port", str(port)]
    with running(command, env, tmp_path) as server:
        wait_until_serving(server)
        check_websocket(server, "QGIS")
        lines = [line for line in server.output().splitlines() if "transport guards" in line]
        assert len(lines) == 1, server.output()
        assert "`gischat` command" in lines[0]


def test_the_gischat_command_runs_guarded(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(PORT=str(port))
    with running(LAUNCHERS["gischat"], env, tmp_path) as server:
        wait_until_serving(server)
        assert "transport guards" not in server.output()
