"""How long a 12 MB layer over the vertex budget takes to be refused, timed from its send.

`python bench/layer_refusal.py` starts `gischat` with its defaults on a free port, registers one
socket, and sends the 2-million-point MultiPoint of `bench/hostile.py`'s first attack a few
times, a few seconds apart (so that the byte budget refills). Each line is the time from the
send returning to the `uncompliant` answer; the first send also starts the worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import orjson
from attacks import multipoint_collection
from websockets.asyncio.client import connect

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("gischat did not start") from None
            await asyncio.sleep(0.1)


def layer_frame() -> str:
    prefix = b'{"type":"geojson","author":"bench","avatar":null,"layer_name":"points",'
    crs = b'"crs_wkt":"GEOGCS[\\"WGS 84\\"]","crs_authid":"EPSG:4326","geojson":'
    return (prefix + crs + multipoint_collection() + b"}").decode()


async def measure(port: int, sends: int, pause: float) -> None:
    text = layer_frame()
    async with connect(f"ws://127.0.0.1:{port}/room/QGIS/ws", max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "newcomer", "newcomer": "bench"}).decode())
        for number in range(1, sends + 1):
            await ws.send(text)
            sent = time.perf_counter()
            while True:
                message = orjson.loads(await ws.recv())
                if message.get("type") == "uncompliant":
                    elapsed = (time.perf_counter() - sent) * 1000
                    print(f"send {number}: refused after {elapsed:.0f} ms: {message.get('reason')}")
                    break
            await asyncio.sleep(pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=6)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between sends")
    args = parser.parse_args()
    port = free_port()
    env = dict(os.environ, HOST="127.0.0.1", PORT=str(port))
    server = subprocess.Popen(
        [sys.executable, "-m", "gischat"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        asyncio.run(wait_listening(port))
        asyncio.run(measure(port, args.sends, args.pause))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
