"""Several gischat nodes (separate processes) sharing rooms over a real Redis.

Most tests share two nodes started once for the module; those that kill a node or Redis start
their own, each cluster under its own key prefix so nothing leaks between tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from redis_nodes import Cluster, GischatNode, RedisServer
from websockets.asyncio.client import connect

from conftest import TIMEOUT, Client, text, wait_for
from wire import check_shape, next_frame, parse_strict, wait_type

pytestmark = pytest.mark.anyio

ROOM = "QGIS"


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(redis_server, tmp_path, f"t{uuid.uuid4().hex[:8]}")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def pair(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GischatNode, GischatNode]]:
    """Two nodes on one Redis, shared by the tests that leave them as they found them."""
    shared = Cluster(redis_server, tmp_path_factory.mktemp("pair"), f"p{uuid.uuid4().hex[:8]}")
    first = shared.node()
    second = shared.node()
    yield first, second
    shared.stop()


@asynccontextmanager
async def client(node: GischatNode, room: str = ROOM) -> AsyncIterator[Client]:
    async with connect(node.ws_url(room), open_timeout=TIMEOUT, max_size=None) as ws:
        yield Client(ws)


async def status(node: GischatNode) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http:
        body = (await http.get("/status")).json()
    assert isinstance(body, dict)
    return body


async def count(node: GischatNode, room: str = ROOM) -> int:
    body = await status(node)
    return next(int(r["nb_connected_users"]) for r in body["rooms"] if r["name"] == room)


async def users(node: GischatNode, room: str = ROOM) -> list[str]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http:
        data = (await http.get(f"/room/{room}/users")).json()
    assert isinstance(data, list)
    return data


async def counts_are(
    nodes: list[GischatNode] | tuple[GischatNode, ...], expected: int, timeout: float = TIMEOUT
) -> None:
    async def check() -> bool:
        return all([await count(node) == expected for node in nodes])

    await wait_for(check, timeout)


async def next_nb_users(c: Client, expected: int, timeout: float = TIMEOUT) -> None:
    await asyncio.wait_for(wait_type(c, "nb_users", nb_users=expected), timeout)


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


CRS = {"crs_wkt": 'GEOGCRS["WGS 84"]', "crs_authid": "EPSG:4326"}


def every_message(author: str) -> list[dict[str, Any]]:
    point = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
        "properties": {"d": 1},
    }
    return [
        text(author, "hello over Redis"),
        {"type": "image", "author": author, "avatar": "mGeoPackage.svg", "image_data": png_b64()},
        {
            "type": "geojson",
            "author": author,
            "avatar": None,
            "layer_name": "wells",
            **CRS,
            "geojson": {"type": "FeatureCollection", "features": [point]},
            "style": None,
        },
        {"type": "crs", "author": author, "avatar": None, **CRS},
        {
            "type": "bbox",
            "author": author,
            "avatar": None,
            **CRS,
            "xmin": 1.0,
            "xmax": 2.0,
            "ymin": 3.0,
            "ymax": 4.0,
        },
    ]


# --- one conversation ----------------------------------------------------------------------------


async def test_every_message_type_crosses_nodes_with_its_wire_shape(
    pair: tuple[GischatNode, GischatNode],
) -> None:
    a_node, b_node = pair
    async with client(a_node) as a, client(b_node) as b:
        await counts_are(pair, 2)
        await a.send({"type": "newcomer", "newcomer": "alice-x"})
        for c in (a, b):
            assert await next_frame(c) == {"type": "newcomer", "newcomer": "alice-x"}
        await b.send({"type": "newcomer", "newcomer": "bob-x"})
        for c in (a, b):
            assert await next_frame(c) == {"type": "newcomer", "newcomer": "bob-x"}
        for message in every_message("alice-x"):
            await a.send(message)
            seen = [await next_frame(c) for c in (a, b)]
            assert seen[0] == seen[1], "both nodes deliver the same message"
            check_shape(seen[1])
            assert seen[1]["type"] == message["type"]
            if message["type"] != "image":  # images are re-encoded, once
                assert seen[1] == message
        like = {"type": "like", "liker_author": "bob-x", "liked_author": "alice-x", "message": "nice"}
        await b.send(like)
        assert await next_frame(a) == like
        # Refusals stay with the sender's node; the marker that follows proves nothing else came.
        await a.send({"type": "text", "author": "bob-x", "avatar": None, "text": "impostor"})
        refusal = await next_frame(a)
        assert refusal["type"] == "uncompliant"
        assert "registered" in refusal["reason"]
        await a.send(text("alice-x", "marker"))
        assert await next_frame(b) == text("alice-x", "marker")
        assert await next_frame(a) == text("alice-x", "marker")
        assert sorted(await users(a_node)) == sorted(await users(b_node)) == ["alice-x", "bob-x"]
        await b.close()
        assert await next_frame(a) == {"type": "exiter", "exiter": "bob-x"}
        await next_nb_users(a, 1)
    await counts_are(pair, 0)


async def test_history_is_shared(cluster: Cluster) -> None:
    a_node = cluster.node(MAX_STORED_MESSAGES="5")
    b_node = cluster.node(MAX_STORED_MESSAGES="5")
    said = text("historian", "remember me")
    async with client(a_node, "Living room") as a:
        await a.send(said)
        assert await next_frame(a) == said
    async with httpx.AsyncClient(base_url=b_node.http_url, timeout=TIMEOUT) as http:

        async def replayed() -> bool:
            return said in (await http.get("/room/Living%20room/last")).json()

        await wait_for(replayed)
    async with client(b_node, "Living room") as b:
        frames = []
        while True:
            message = parse_strict(await b.recv_raw())
            if message["type"] != "nb_users":
                frames.append(message)
            if message == said:
                break
        assert frames[-1] == said


async def test_each_senders_order_holds_on_every_node(pair: tuple[GischatNode, GischatNode]) -> None:
    per_sender = 150
    async with AsyncExitStack() as stack:
        senders = [await stack.enter_async_context(client(node, "Field and mobile")) for node in pair]
        readers = [await stack.enter_async_context(client(node, "Field and mobile")) for node in pair]

        async def send_all(index: int, c: Client) -> None:
            for i in range(per_sender):
                await c.send(text(f"sender{index}", f"{index}:{i}"))

        async def read_all(c: Client) -> list[str]:
            got: list[str] = []
            while len(got) < 2 * per_sender:
                message = await next_frame(c)
                if message["type"] == "text":
                    got.append(message["text"])
            return got

        reading = [asyncio.ensure_future(read_all(c)) for c in (*readers, *senders)]
        await asyncio.gather(*(send_all(i, c) for i, c in enumerate(senders)))
        orders = await asyncio.wait_for(asyncio.gather(*reading), 30)
    for order in orders:
        for index in range(2):
            mine = [int(t.split(":")[1]) for t in order if t.startswith(f"{index}:")]
            assert mine == list(range(per_sender)), "one sender's messages in the order sent"
    assert all(order == orders[0] for order in orders), "every socket on every node sees one order"


async def test_nickname_race_has_exactly_one_winner(pair: tuple[GischatNode, GischatNode]) -> None:
    for round_ in range(12):
        nickname = f"racer{round_}"
        async with AsyncExitStack() as stack:
            racers = [await stack.enter_async_context(client(node)) for node in (*pair, *pair)]
            await asyncio.gather(*(c.send({"type": "newcomer", "newcomer": nickname}) for c in racers))
            # Each racer then asks for a name of its own: only the winner is told it already has one.
            for i, c in enumerate(racers):
                await c.send({"type": "newcomer", "newcomer": f"{nickname}-{i}"})
            winners = 0
            for i, c in enumerate(racers):
                while True:
                    message = await next_frame(c)
                    if message["type"] == "uncompliant" and "already registered" in message["reason"]:
                        winners += 1
                        break
                    if message == {"type": "newcomer", "newcomer": f"{nickname}-{i}"}:
                        break
            assert winners == 1, f"round {round_}: {winners} winners"
            assert (await users(pair[0])).count(nickname) == 1
        await wait_for(lambda: users_empty(pair))


async def users_empty(pair: tuple[GischatNode, GischatNode]) -> bool:
    return all([await users(node) == [] for node in pair])


async def test_likes_reach_the_liked_nickname_on_another_node(pair: tuple[GischatNode, GischatNode]) -> None:
    a_node, b_node = pair
    async with client(a_node) as liked, client(b_node) as liker, client(b_node) as bystander:
        await liked.register("liked-one")
        await liker.register("liker-one")
        like = {"type": "like", "liker_author": "liker-one", "liked_author": "liked-one", "message": "great"}
        await liker.send(like)
        assert await next_frame(liked, skip=("nb_users", "newcomer")) == like
        marker = text("liker-one", "after the like")
        await liker.send(marker)
        for c in (liked, liker, bystander):
            assert await next_frame(c, skip=("nb_users", "newcomer")) == marker


async def test_counts_users_and_put_check_are_global(pair: tuple[GischatNode, GischatNode]) -> None:
    a_node, b_node = pair
    async with AsyncExitStack() as stack:
        on_a = [await stack.enter_async_context(client(a_node, "Living room")) for _ in range(3)]
        on_b = [await stack.enter_async_context(client(b_node, "Living room")) for _ in range(2)]
        await on_a[0].register("Zoe")
        await on_b[0].register("adam")

        async def both() -> bool:
            got = [await count(node, "Living room") for node in pair]
            return got == [5, 5]

        await wait_for(both)
        for node in pair:
            assert await users(node, "Living room") == ["adam", "Zoe"]
        # Taken across nodes, case- and width-insensitively.
        await on_a[1].send({"type": "newcomer", "newcomer": "\uff21\uff24\uff21\uff2d"})
        refusal = await wait_type(on_a[1], "uncompliant")
        assert "taken" in refusal["reason"]
        async with httpx.AsyncClient(base_url=a_node.http_url, timeout=TIMEOUT) as http:
            response = await http.put(
                "/room/Living%20room/text", json={"author": "adam", "avatar": None, "text": "x"}
            )
            assert response.status_code == 409
        for c in on_b:
            await c.close()
        await wait_for(both_equal(pair, "Living room", 3))
        assert await users(a_node, "Living room") == ["Zoe"]
        for c in on_a:
            await next_nb_users(c, 3)


def both_equal(nodes: tuple[GischatNode, GischatNode], room: str, expected: int) -> Any:
    async def check() -> bool:
        return all([await count(node, room) == expected for node in nodes])

    return check


# --- nodes that die, Redis that goes away ---------------------------------------------------------


async def test_killed_node_users_are_gone_within_the_bound(cluster: Cluster) -> None:
    survivor = cluster.node()
    doomed = cluster.node()
    async with client(survivor) as watcher:
        doomed_clients = []
        async with AsyncExitStack() as stack:
            for i in range(3):
                c = await stack.enter_async_context(client(doomed))
                await c.register(f"doomed{i}")
                doomed_clients.append(c)
            await counts_are([survivor, doomed], 4)
            assert len(await users(survivor)) == 3
            killed_at = time.monotonic()
            doomed.kill()
            gone: set[str] = set()
            while len(gone) < 3:
                message = await next_frame(watcher, skip=("nb_users", "newcomer"))
                assert message["type"] == "exiter"
                gone.add(message["exiter"])
            await next_nb_users(watcher, 1)
            elapsed = time.monotonic() - killed_at
            # NODE_TIMEOUT=1 here: a heartbeat interval and the reaper's period on top.
            assert elapsed < 1 + 0.5 + 1, f"took {elapsed:.2f} s"
            assert gone == {"doomed0", "doomed1", "doomed2"}
            assert await users(survivor) == []
            assert await count(survivor) == 1
            await watcher.register("doomed1")  # free again


async def test_clean_shutdown_frees_users_at_once(cluster: Cluster) -> None:
    survivor = cluster.node(NODE_TIMEOUT="10")
    leaving = cluster.node(NODE_TIMEOUT="10")
    async with client(survivor) as watcher, client(leaving) as goer:
        await goer.register("goer")
        await counts_are([survivor], 2)
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, leaving.terminate)
        assert await next_frame(watcher, skip=("nb_users", "newcomer")) == {
            "type": "exiter",
            "exiter": "goer",
        }
        await next_nb_users(watcher, 1)
        assert time.monotonic() - started < 5, "well before NODE_TIMEOUT"
        assert await users(survivor) == []


async def test_redis_restart_keeps_local_chat_and_restores_presence(cluster: Cluster) -> None:
    redis = cluster.redis
    a_node = cluster.node()
    b_node = cluster.node()
    async with client(a_node) as a1, client(a_node) as a2, client(b_node) as b1:
        await a1.register("keeper")
        await b1.register("other")
        await counts_are([a_node, b_node], 3)
        redis.kill()
        try:

            async def unhealthy() -> bool:
                return all([not (await status(n))["healthy"] for n in (a_node, b_node)])

            await wait_for(unhealthy)
            body = await status(a_node)
            assert body["broker"]["state"] == "down"
            # Local chat continues.
            await a1.send(text("keeper", "still here"))
            assert await next_frame(a2, skip=("nb_users", "newcomer")) == text("keeper", "still here")
            # Split: both sides take the same nickname; B's claim wins when Redis is back if it
            # reconnects first... whoever wins, exactly one keeps it and the other is told.
            await a2.register("splitname")
            await b1.send(text("other", "alone on b"))
        finally:
            redis.start()

        async def healthy() -> bool:
            return all([(await status(n))["healthy"] for n in (a_node, b_node)])

        await wait_for(healthy, 10)
        await counts_are([a_node, b_node], 3)
        for node in (a_node, b_node):
            assert sorted(await users(node)) == ["keeper", "other", "splitname"]
        # Chat crosses nodes again.
        await b1.send(text("other", "back together"))
        assert await wait_type(a1, "text", text="back together")


async def test_split_nickname_goes_to_one_side(cluster: Cluster) -> None:
    redis = cluster.redis
    a_node = cluster.node()
    b_node = cluster.node()
    async with client(a_node) as a, client(b_node) as b:
        await counts_are([a_node, b_node], 2)
        redis.kill()
        try:

            async def unhealthy() -> bool:
                return all([not (await status(n))["healthy"] for n in (a_node, b_node)])

            await wait_for(unhealthy)
            await a.register("twin")
            await b.register("twin")
        finally:
            redis.start()

        async def healthy() -> bool:
            return all([(await status(n))["healthy"] for n in (a_node, b_node)])

        await wait_for(healthy, 10)
        for node in (a_node, b_node):
            assert await users(node) == ["twin"]

        # The loser is told and keeps its socket; the winner keeps speaking as "twin".
        async def told(c: Client) -> str | None:
            try:
                message = await asyncio.wait_for(wait_type(c, "uncompliant"), 2)
            except TimeoutError:
                return None
            return str(message["reason"])

        reasons = await asyncio.gather(told(a), told(b))
        lost = [r for r in reasons if r is not None]
        assert len(lost) == 1, reasons
        assert "split" in lost[0]
        loser, winner = (a, b) if reasons[0] else (b, a)
        await winner.send(text("twin", "mine"))
        assert await wait_type(loser, "text", text="mine")
        await loser.register("twin-2")
        await counts_are([a_node, b_node], 2)


async def test_redis_absent_at_start(cluster: Cluster, redis_server: RedisServer) -> None:
    late = RedisServer(redis_server.binary)
    node = cluster.node(wait_healthy=False, BROKER_URL=late.url)
    try:
        body = await status(node)
        assert body["healthy"] is False
        assert body["broker"]["state"] == "down"
        lines = [line for line in node.output().splitlines() if "broker" in line]
        assert len(lines) == 1, lines
        assert "127.0.0.1" in lines[0]
        late.start()
        await wait_for(lambda: (node.status() or {}).get("healthy"), 10)
        assert node.process is not None
        assert node.process.poll() is None
    finally:
        late.kill()


async def test_password_never_shown(cluster: Cluster, redis_server: RedisServer) -> None:
    guarded = RedisServer(redis_server.binary, password="s3cr3t-pw")
    guarded.start()
    try:
        good = cluster.node(BROKER_URL=guarded.url)
        bad = cluster.node(wait_healthy=False, BROKER_URL=guarded.url.replace("s3cr3t-pw", "wrong-pw1"))
        await wait_for(lambda: "broker" in bad.output())
        body = await status(good)
        assert body["healthy"] is True
        for node in (good, bad):
            shown = node.output() + str(await status(node))
            assert "s3cr3t-pw" not in shown
            assert "wrong-pw1" not in shown
    finally:
        guarded.kill()


async def test_two_workers_are_two_nodes(cluster: Cluster) -> None:
    group = cluster.node(WORKERS="2")
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client(group)) for _ in range(40)]

        async def all_counted() -> bool:
            body = await status(group)
            return bool(body["broker"]["nodes"] == 2 and await count(group) == 40)

        await wait_for(all_counted, 10)
        await clients[0].register("worker-user")
        await clients[0].send(text("worker-user", "to all workers"))
        for c in clients:
            await wait_type(c, "text", text="to all workers")
        for c in clients[20:]:
            await c.close()
        for c in clients[:20]:
            await wait_type(c, "nb_users", nb_users=20)


async def test_random_joins_leaves_registrations_and_kills_keep_counts_exact(cluster: Cluster) -> None:
    """Whatever happens, every node's counts and user list equal the open sockets and their nicknames."""
    rng = random.Random(20240607)
    live = [cluster.node(), cluster.node(), cluster.node()]
    sockets: list[tuple[GischatNode, Client, AsyncExitStack, str | None]] = []
    serial = 0

    async def open_one() -> None:
        node = rng.choice(live)
        stack = AsyncExitStack()
        c = await stack.enter_async_context(client(node))
        sockets.append((node, c, stack, None))

    async def check() -> None:
        expected_users = sorted((name for _, _, _, name in sockets if name), key=lambda n: (n.casefold(), n))

        async def agreed() -> bool:
            for node in live:
                if await count(node) != len(sockets) or await users(node) != expected_users:
                    return False
            return True

        await wait_for(agreed, 10)

    try:
        for step in range(60):
            action = rng.random()
            if action < 0.45 or not sockets:
                await open_one()
            elif action < 0.7:
                index = rng.randrange(len(sockets))
                node, c, stack, name = sockets[index]
                if name is None:
                    serial += 1
                    name = f"user{serial}"
                    await c.register(name)
                    sockets[index] = (node, c, stack, name)
            elif action < 0.93:
                node, c, stack, _ = sockets.pop(rng.randrange(len(sockets)))
                await stack.aclose()
            else:
                doomed = rng.choice(live)
                live.remove(doomed)
                doomed.kill()
                for entry in [s for s in sockets if s[0] is doomed]:
                    sockets.remove(entry)
                    with contextlib.suppress(Exception):
                        await entry[2].aclose()
                live.append(cluster.node())
            if step % 10 == 9:
                await check()
        await check()
    finally:
        for _, _, stack, _ in sockets:
            with contextlib.suppress(Exception):
                await stack.aclose()


async def test_join_storm_over_four_workers_is_coalesced(cluster: Cluster) -> None:
    """Hundreds of joins spread over 4 workers: a handful of nb_users per socket, the last one exact."""
    joiners = 400
    group = cluster.node(WORKERS="4", NB_USERS_INTERVAL="0.2")
    await wait_for(lambda: (group.status() or {}).get("broker", {}).get("nodes") == 4, 15)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(client(group))
        counts: list[int] = []

        async def record() -> None:
            while True:
                message = parse_strict(await first.recv_raw(timeout=30))
                if message["type"] == "nb_users":
                    counts.append(int(message["nb_users"]))
                    if counts[-1] == joiners:
                        return

        recorder = asyncio.ensure_future(record())
        started = time.monotonic()
        semaphore = asyncio.Semaphore(50)

        async def join() -> None:
            async with semaphore:
                await stack.enter_async_context(client(group))

        await asyncio.gather(*(join() for _ in range(joiners - 1)))
        await asyncio.wait_for(recorder, 15)
        elapsed = time.monotonic() - started
        assert counts[-1] == joiners
        assert len(counts) <= int(elapsed / 0.2) + 4, f"{len(counts)} nb_users in {elapsed:.2f} s"
        assert await count(group) == joiners
