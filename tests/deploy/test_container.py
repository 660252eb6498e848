"""The Docker image's start and health-check commands, run outside any container.

This reads the Dockerfile's ENV, CMD and HEALTHCHECK and runs them as the container would (same
command, same environment), on a free port: quick, and with no engine at all. tests/deploy/test_image.py
builds and runs the image itself in a real engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from gischat.server.runner import DEFAULT_LOG_CONFIG

from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def dockerfile_instruction(name: str) -> list[str]:
    """The JSON-form arguments of the last `name` instruction (continuation lines joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    matches = re.findall(rf"^{name}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])\s*$", text, flags=re.MULTILINE)
    assert matches, f"no JSON-form {name} in the Dockerfile"
    result = json.loads(matches[-1])
    assert isinstance(result, list)
    return [str(part) for part in result]


def dockerfile_env() -> dict[str, str]:
    """ENV of the final stage, with ${VAR} references resolved against the host."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    final_stage = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.*)$", final_stage, flags=re.MULTILINE):
        for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', line):
            env[key] = value.strip('"')
    return env


def test_log_config_file_matches_builtin_default() -> None:
    assert yaml.safe_load((ROOT / "log_config.yaml").read_text()) == DEFAULT_LOG_CONFIG


def test_container_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    command = dockerfile_instruction("CMD")
    healthcheck = dockerfile_instruction("HEALTHCHECK")
    image_env = dockerfile_env()
    assert image_env["HOST"] == "0.0.0.0"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k.upper() not in {"ROOMS", "WORKERS", "BROKER_URL"}}
    env.update(image_env)
    env.pop("LOG_CONFIG", None)
    env.update(PORT=str(port), HOST="127.0.0.1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable, f"{command[0]} is not installed"
    process = subprocess.Popen(
        [executable, *command[1:]], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/status", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the container command did not start serving"
                time.sleep(0.05)
        assert response.json()["healthy"] is True
        probe = subprocess.run(
            [sys.executable, *healthcheck[1:]], env=env, timeout=10, check=False, capture_output=True
        )
        assert probe.returncode == 0, probe.stderr.decode()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it stopped.
    assert process.returncode in (0, -signal.SIGTERM)
    log = output.decode()
    assert "Application startup complete" in log
    assert "Finished server process" in log
    assert "Traceback" not in log
