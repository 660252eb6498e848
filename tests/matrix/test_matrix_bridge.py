"""The Matrix bridge against a real Synapse: Matrix users and gischat sockets of both dialects,
on two gischat nodes sharing a real Redis, hold one conversation.

Synapse pushes the portals' events to node A (the registration's URL is the session's relay, which
this module points at node A); node B hears Matrix through Redis, and relays what its own sockets
say to Matrix itself. Every wait is on an event: a frame, a Matrix timeline event, a status.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image
from redis_nodes import Cluster, GischatNode, RedisServer
from synapse_homeserver import HS_TOKEN, AppServiceRelay, MatrixUser, MatrixUserFactory, SynapseServer
from test_dialects import CRS, layer, position
from websockets.asyncio.client import connect

from conftest import TIMEOUT, Client, ServerFactory, channel_client, text, wait_for
from wire import wait_channel_type, wait_type

pytestmark = pytest.mark.anyio

MATRIX_TIMEOUT = 20.0


def photo(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Bridged:
    """Two bridged gischat nodes on one Redis, node A behind the homeserver's relay."""

    a: GischatNode
    b: GischatNode
    synapse: SynapseServer

    def alias(self, room: str) -> str:
        slug = room.lower().replace(" ", "-")
        return f"#gischat_{slug}:{self.synapse.server_name}"


def bridge_env(synapse: SynapseServer) -> dict[str, Any]:
    return {
        "MATRIX_HOMESERVER_URL": synapse.url,
        "MATRIX_SERVER_NAME": synapse.server_name,
        "MATRIX_AS_TOKEN": synapse.as_token,
        "MATRIX_HS_TOKEN": synapse.hs_token,
        "MAX_STORED_MESSAGES": "20",
        "ADMIN_TOKENS": "ops:" + "s" * 40,
    }


@pytest.fixture(scope="module")
def bridged(
    synapse: SynapseServer, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridged]:
    cluster = Cluster(redis_server, tmp_path_factory.mktemp("bridged"), f"m{uuid.uuid4().hex[:8]}")
    env = bridge_env(synapse)
    try:
        a, b = cluster.node(**env), cluster.node(**env)
        synapse.serve_appservice_at(a.port)
        yield Bridged(a, b, synapse)
    finally:
        synapse.serve_appservice_at(None)
        cluster.stop()


@asynccontextmanager
async def registered(url: str, nickname: str) -> AsyncIterator[Client]:
    async with connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        client = Client(ws)
        await client.register(nickname)
        yield client


def channel(node: GischatNode, nickname: str, room: str = "QGIS") -> AbstractAsyncContextManager[Client]:
    """A 3.x socket (QChat, QField) registered as `nickname`."""
    return registered(node.channel_url(room), nickname)


def qtribu(node: GischatNode, nickname: str, room: str = "QGIS") -> AbstractAsyncContextManager[Client]:
    """A 2.x socket (QTribu) registered as `nickname`."""
    return registered(node.ws_url(room), nickname)


async def join_portal(user: MatrixUser, bridged: Bridged, room: str = "QGIS") -> str:
    return await user.join(bridged.alias(room))


def nickname_of(user: MatrixUser, display: str) -> str:
    return f"{display}-matrix"


async def test_a_portal_per_room_named_with_the_rules(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    user = await matrix_users("portal", "Porter")
    room_id = await join_portal(user, bridged, "Field and mobile")
    assert bridged.alias("Field and mobile") == "#gischat_field-and-mobile:gischat.test"
    answer = await user.request("GET", f"/_matrix/client/v3/rooms/{room_id}/state")
    state = answer["body"] if isinstance(answer, dict) else answer
    assert isinstance(state, list)
    by_type = {event["type"]: event["content"] for event in state if event.get("state_key") == ""}
    assert by_type["m.room.name"]["name"] == "Field and mobile"
    assert by_type["m.room.topic"]["topic"] == "Be kind and nice to this wonderful world"
    assert by_type["m.room.join_rules"]["join_rule"] == "public"


async def test_text_both_ways_across_nodes_and_dialects(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    tag = uuid.uuid4().hex[:8]  # the session's homeserver keeps every test's messages
    jane = await matrix_users("jane", "Jane Doe")
    room_id = await join_portal(jane, bridged)
    async with channel(bridged.a, "alice") as alice, qtribu(bridged.b, "bob") as bob:
        # The virtual users join the portal as their sockets register (two nodes: either first).
        joining = {"@gischat_alice:gischat.test", "@gischat_bob:gischat.test"}
        while joining:
            event = await jane.wait_for(
                room_id, lambda e: any(_member(e, user, "join") for user in joining), MATRIX_TIMEOUT
            )
            joining.discard(event["state_key"])
        await alice.send(text("alice", f"hello from QChat {tag}"))
        await bob.send(text("bob", f"hello from QTribu {tag}"))
        wanted = {
            f"hello from QChat {tag}": "alice",
            f"hello from QTribu {tag}": "bob",
        }  # two nodes: either first
        while wanted:
            event = await jane.wait_for(room_id, lambda e: _body(e) in wanted, MATRIX_TIMEOUT)
            body = event["content"]["body"]
            assert event["sender"] == f"@gischat_{wanted.pop(body)}:gischat.test"
            assert event["content"] == {"msgtype": "m.text", "body": body}
        members = await jane.members(room_id)
        assert members["@gischat_alice:gischat.test"] == "alice"

        await jane.send_text(room_id, f"hello from Matrix {tag}")
        on_a = await wait_channel_type(alice, "text", text=f"hello from Matrix {tag}")
        on_b = await wait_type(bob, "text", text=f"hello from Matrix {tag}")
        assert on_a["author"] == on_b["author"] == "Jane_Doe-matrix"
        assert on_a["avatar"] is None
        # Exactly once, everywhere: a marker behind, and nothing twice before it.
        await jane.send_text(room_id, f"marker one {tag}")
        for client in (alice, bob):
            seen = await _texts_until(client, f"marker one {tag}")
            assert f"hello from Matrix {tag}" not in seen
        events = await jane.messages(room_id)
        bodies = [_body(e) for e in events]
        assert bodies.count(f"hello from QChat {tag}") == 1
        assert bodies.count(f"hello from QTribu {tag}") == 1
        assert bodies.count(f"hello from Matrix {tag}") == 1


async def _texts_until(client: Client, marker: str) -> list[str]:
    seen: list[str] = []
    while True:
        message = await client.recv(MATRIX_TIMEOUT)
        if message.get("type") == "text":
            if message["text"] == marker:
                return seen
            seen.append(message["text"])


def _body(event: dict[str, Any]) -> str | None:
    content = event.get("content") or {}
    body = content.get("body")
    return body if event.get("type") == "m.room.message" and isinstance(body, str) else None


def _member(event: dict[str, Any], user_id: str, membership: str) -> bool:
    return (
        event.get("type") == "m.room.member"
        and event.get("state_key") == user_id
        and (event.get("content") or {}).get("membership") == membership
    )


async def test_every_type_from_gischat_reaches_matrix(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    watcher = await matrix_users("watcher", "Watcher")
    room_id = await join_portal(watcher, bridged)
    async with channel(bridged.b, "carto") as carto:
        image = base64.b64encode(photo()).decode()
        await carto.send({"type": "image", "author": "carto", "avatar": None, "image_data": image})
        shown = await watcher.wait_for(room_id, lambda e: _msgtype(e) == "m.image", MATRIX_TIMEOUT)
        assert shown["sender"] == "@gischat_carto:gischat.test"
        assert shown["content"]["info"]["mimetype"] == "image/png"
        data = await watcher.download(shown["content"]["url"])
        assert Image.open(io.BytesIO(data)).size == (64, 48)

        await carto.send(layer("carto", style="<qgis>style</qgis>"))
        shared = await watcher.wait_for(room_id, lambda e: _msgtype(e) == "m.file", MATRIX_TIMEOUT)
        content = shared["content"]
        assert content["info"]["mimetype"] == "application/geo+json"
        assert content["filename"].endswith(".geojson")
        assert "1 feature" in content["body"]
        assert "EPSG:4326" in content["body"]
        collection = orjson.loads(await watcher.download(content["url"]))
        assert collection["type"] == "FeatureCollection"
        assert collection["style"] == "<qgis>style</qgis>"
        assert len(collection["features"]) == 1

        await carto.send(position("carto"))
        located = await watcher.wait_for(room_id, lambda e: _msgtype(e) == "m.location", MATRIX_TIMEOUT)
        assert located["content"]["geo_uri"] == "geo:48.85,2.35"

        await carto.send({"type": "crs", "author": "carto", "avatar": None, **CRS})
        crs = await watcher.wait_for(room_id, lambda e: "shares a CRS" in (_body(e) or ""), MATRIX_TIMEOUT)
        assert crs["content"]["msgtype"] == "m.emote"
        assert CRS["crs_authid"] in crs["content"]["body"]
        bbox = {
            "type": "bbox",
            "author": "carto",
            "avatar": None,
            **CRS,
            "xmin": 1,
            "xmax": 2,
            "ymin": 3,
            "ymax": 4,
        }
        await carto.send(bbox)
        extent = await watcher.wait_for(
            room_id, lambda e: "shares an extent" in (_body(e) or ""), MATRIX_TIMEOUT
        )
        assert "1, 3 to 2, 4" in extent["content"]["body"]


async def test_every_type_from_matrix_reaches_gischat(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    mapper = await matrix_users("mapper", "Mapper")
    room_id = await join_portal(mapper, bridged)
    async with channel(bridged.a, "qfield") as qfield, qtribu(bridged.b, "tribu") as tribu:
        await mapper.send_notice(room_id, "a notice")
        await mapper.send_emote(room_id, "waves")
        for body in ("a notice", "waves"):
            await wait_channel_type(qfield, "text", text=body, author="Mapper-matrix")
            await wait_type(tribu, "text", text=body, author="Mapper-matrix")

        mxc = await mapper.upload(photo((1600, 1200)), "image/png", "big.png")
        await mapper.send(room_id, "m.room.message", {"msgtype": "m.image", "body": "big.png", "url": mxc})
        on_channel = await wait_channel_type(qfield, "image", author="Mapper-matrix")
        resized = Image.open(io.BytesIO(base64.b64decode(on_channel["image_data"])))
        assert max(resized.size) == 800, "resized by the same worker path as any image"
        await wait_type(tribu, "image", author="Mapper-matrix")

        geo = {"type": "FeatureCollection", "features": [_feature(1.0, 2.0), _feature(3.0, 4.0)]}
        mxc = await mapper.upload(orjson.dumps(geo), "application/geo+json", "trees.geojson")
        content = {
            "msgtype": "m.file",
            "body": "trees.geojson",
            "filename": "trees.geojson",
            "url": mxc,
            "info": {"mimetype": "application/geo+json"},
        }
        await mapper.send(room_id, "m.room.message", content)
        layer_frame = await wait_channel_type(qfield, "geojson", author="Mapper-matrix")
        assert layer_frame["layer_name"] == "trees"
        assert layer_frame["crs_authid"] == "EPSG:4326"
        assert layer_frame["geojson"]["features"] == geo["features"]
        await wait_type(tribu, "geojson", author="Mapper-matrix")

        await mapper.send(
            room_id,
            "m.room.message",
            {"msgtype": "m.location", "body": "here", "geo_uri": "geo:45.5,6.25;u=10"},
        )
        where = await wait_channel_type(qfield, "position", author="Mapper-matrix")
        assert (where["x"], where["y"], where["crs_authid"]) == (6.25, 45.5, "EPSG:4326")
        # The 2.x dialect has no position: the room socket sees the next text, nothing before it.
        await mapper.send_text(room_id, "after the position")
        assert "position" not in [m["type"] for m in await _frames_until(tribu, "after the position")]


async def _frames_until(client: Client, marker: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        message = await client.recv(MATRIX_TIMEOUT)
        if message.get("type") == "text" and message.get("text") == marker:
            return frames
        frames.append(message)


def _feature(x: float, y: float) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"name": "tree"},
        "geometry": {"type": "Point", "coordinates": [x, y]},
    }


def _msgtype(event: dict[str, Any]) -> str | None:
    content = event.get("content") or {}
    return content.get("msgtype") if event.get("type") == "m.room.message" else None


async def test_likes_and_reactions(bridged: Bridged, matrix_users: MatrixUserFactory) -> None:
    reader = await matrix_users("reader", "Reader")
    room_id = await join_portal(reader, bridged)
    async with channel(bridged.a, "writer") as writer, qtribu(bridged.b, "fan") as fan:
        await writer.send(text("writer", "like this please"))
        said = await reader.wait_for(room_id, lambda e: _body(e) == "like this please", MATRIX_TIMEOUT)
        await wait_type(fan, "text", text="like this please")
        # A gischat like becomes the liker's reaction on the liked message.
        await fan.send(
            {"type": "like", "liker_author": "fan", "liked_author": "writer", "message": "like this please"}
        )
        reaction = await reader.wait_for(room_id, lambda e: e.get("type") == "m.reaction", MATRIX_TIMEOUT)
        assert reaction["sender"] == "@gischat_fan:gischat.test"
        assert reaction["content"]["m.relates_to"] == {
            "rel_type": "m.annotation",
            "event_id": said["event_id"],
            "key": "👍",
        }
        # A Matrix reaction on a gischat message is a like for its author alone.
        relates = {"m.relates_to": {"rel_type": "m.annotation", "event_id": said["event_id"], "key": "🎉"}}
        await reader.send(room_id, "m.reaction", relates)
        liked = await wait_channel_type(writer, "like", liker_author="Reader-matrix")
        assert liked["liked_author"] == "writer"
        assert liked["message"] == "like this please"


async def test_redaction_removes_from_history_on_every_node(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    author = await matrix_users("regret", "Regret")
    room_id = await join_portal(author, bridged, "Living room")
    async with channel(bridged.a, "keeper", "Living room") as keeper:
        event_id = await author.send_text(room_id, "I take this back")
        said = await wait_channel_type(keeper, "text", text="I take this back")
        async with httpx.AsyncClient() as http:
            for node in (bridged.a, bridged.b):
                last = (await http.get(f"{node.http_url}/channel/Living room/last")).json()
                assert said["id"] in [m["id"] for m in last]
            await author.redact(room_id, event_id)

            async def gone() -> bool:
                for node in (bridged.a, bridged.b):
                    last = (await http.get(f"{node.http_url}/channel/Living room/last")).json()
                    if said["id"] in [m["id"] for m in last]:
                        return False
                return True

            await wait_for(gone, MATRIX_TIMEOUT)


async def test_leaving_gischat_leaves_the_portal(bridged: Bridged, matrix_users: MatrixUserFactory) -> None:
    host = await matrix_users("host", "Host")
    room_id = await join_portal(host, bridged)
    async with channel(bridged.b, "passerby"):
        await host.wait_for(
            room_id, lambda e: _member(e, "@gischat_passerby:gischat.test", "join"), MATRIX_TIMEOUT
        )
    await host.wait_for(
        room_id, lambda e: _member(e, "@gischat_passerby:gischat.test", "leave"), MATRIX_TIMEOUT
    )


async def test_a_retried_transaction_is_delivered_once_whichever_node_gets_it(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    talker = await matrix_users("talker", "Talker")
    room_id = await join_portal(talker, bridged)
    txn = f"retry-{uuid.uuid4().hex}"
    event = {
        "type": "m.room.message",
        "room_id": room_id,
        "sender": talker.user_id,
        "event_id": f"$retry{uuid.uuid4().hex}",
        "content": {"msgtype": "m.text", "body": "said once"},
    }
    async with channel(bridged.a, "listener") as listener, httpx.AsyncClient() as http:
        for node in (bridged.a, bridged.b, bridged.a):
            response = await http.put(
                f"{node.http_url}/_matrix/app/v1/transactions/{txn}",
                json={"events": [event]},
                headers={"Authorization": f"Bearer {HS_TOKEN}"},
            )
            assert (response.status_code, response.json()) == (200, {})
        await talker.send_text(room_id, "marker two")
        seen = await _texts_until(listener, "marker two")
        assert seen.count("said once") == 1


async def test_the_appservice_api_wants_the_homeserver_token(bridged: Bridged) -> None:
    async with httpx.AsyncClient(base_url=bridged.a.http_url) as http:
        path = "/_matrix/app/v1/transactions/t1"
        missing = await http.put(path, json={"events": []})
        assert (missing.status_code, missing.json()["errcode"]) == (401, "M_UNAUTHORIZED")
        wrong = await http.put(path, json={"events": []}, headers={"Authorization": "Bearer " + "x" * 50})
        assert (wrong.status_code, wrong.json()["errcode"]) == (403, "M_FORBIDDEN")
        for method, other in (
            ("GET", "/_matrix/app/v1/users/@gischat_x:gischat.test"),
            ("POST", "/_matrix/app/v1/ping"),
        ):
            answer = await http.request(method, other)
            assert answer.status_code == 401
        unknown = await http.get(
            "/_matrix/app/v1/rooms/%23elsewhere:gischat.test", headers={"Authorization": f"Bearer {HS_TOKEN}"}
        )
        assert (unknown.status_code, unknown.json()["errcode"]) == (404, "M_NOT_FOUND")


async def test_bans_apply_to_matrix_users_and_they_are_told(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    rowdy = await matrix_users("rowdy", "Rowdy")
    room_id = await join_portal(rowdy, bridged)
    async with channel(bridged.a, "calm") as calm, httpx.AsyncClient() as http:
        await rowdy.send_text(room_id, "first words")
        await wait_channel_type(calm, "text", text="first words", author="Rowdy-matrix")
        ban = await http.post(
            f"{bridged.a.http_url}/admin/bans",
            json={"nickname": "Rowdy-matrix", "room": "QGIS", "reason": "spam", "minutes": 10},
            headers={"Authorization": "Bearer " + "s" * 40},
        )
        assert ban.status_code in (200, 201), ban.text
        event_id = await rowdy.send_text(room_id, "banned words")
        notice = await rowdy.wait_for(
            room_id,
            lambda e: _msgtype(e) == "m.notice" and e["sender"] == bridged.synapse.bot_user_id,
            MATRIX_TIMEOUT,
        )
        assert notice["content"]["body"].startswith("Not relayed to gischat: author:")
        assert notice["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
        await rowdy.send_text(room_id, "marker three")
        # Nothing of the banned user reaches the room; the marker is refused too, so use another.
        polite = await matrix_users("polite", "Polite")
        await join_portal(polite, bridged)
        await polite.send_text(room_id, "marker four")
        assert "banned words" not in await _texts_until(calm, "marker four")


async def test_two_matrix_users_of_one_name_get_two_nicknames(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    first, second = await matrix_users("twin", "Twin"), await matrix_users("twin", "Twin")
    room_id = await join_portal(first, bridged)
    await join_portal(second, bridged)
    async with channel(bridged.b, "observer") as observer:
        await first.send_text(room_id, "from the first")
        await second.send_text(room_id, "from the second")
        one = await wait_channel_type(observer, "text", text="from the first")
        two = await wait_channel_type(observer, "text", text="from the second")
        assert one["author"] == "Twin-matrix"
        assert two["author"] == "Twin2-matrix"
        await first.send_text(room_id, "again")
        assert (await wait_channel_type(observer, "text", text="again"))["author"] == "Twin-matrix"
    # Nobody on gischat may take a Matrix nickname: not a socket, not a bot over HTTP.
    async with connect(bridged.a.channel_url("QGIS"), open_timeout=TIMEOUT) as ws:
        impostor = Client(ws)
        await impostor.send({"type": "newcomer", "newcomer": "Twin-matrix"})
        refusal = await wait_channel_type(impostor, "uncompliant")
        assert refusal["reason"] == "newcomer: nicknames ending in '-matrix' are Matrix users'"
    async with httpx.AsyncClient() as http:
        answer = await http.put(f"{bridged.b.http_url}/room/QGIS/text", json=text("Twin-matrix", "impostor"))
        assert answer.status_code == 409


async def test_the_chat_goes_on_while_the_homeserver_is_away(
    synapse: SynapseServer, matrix_users: MatrixUserFactory, server_factory: ServerFactory
) -> None:
    """Homeserver unreachable: the room does not notice; what is said waits in a bounded queue
    (what overflows is counted) and reaches Matrix in order when the homeserver answers again."""
    door = AppServiceRelay().start()  # between gischat and the homeserver, to shut at will
    door.target = int(synapse.url.rsplit(":", 1)[1])
    try:
        server = server_factory(
            matrix_homeserver_url=door.url,
            matrix_server_name=synapse.server_name,
            matrix_as_token=synapse.as_token,
            matrix_hs_token=synapse.hs_token,
            matrix_rooms=["Living room"],
            matrix_queue_size=4,
        )
        witness = await matrix_users("witness", "Witness")
        room_id = await witness.join("#gischat_living-room:gischat.test")
        async with httpx.AsyncClient(base_url=server.http_url) as http:

            async def matrix_status() -> dict[str, Any]:
                status = (await http.get("/status")).json()["matrix"]
                assert isinstance(status, dict)
                return status

            await wait_for(lambda: _is(matrix_status(), homeserver="up"), MATRIX_TIMEOUT)
            door.target = None
            async with (
                channel_client(server, "Living room") as speaker,
                channel_client(server, "Living room") as listener,
            ):
                await speaker.register("offline")
                for number in range(1, 6):
                    await speaker.send(text("offline", f"while away {number}"))
                    # The room hears it at once, whatever the homeserver.
                    await wait_channel_type(listener, "text", text=f"while away {number}")
                await wait_for(
                    lambda: _is(matrix_status(), homeserver="down", queued=4, dropped=2), MATRIX_TIMEOUT
                )
                metrics = (await http.get("/metrics")).text
                assert 'gischat_matrix_dropped_total{cause="overflow",direction="to_matrix"} 2.0' in metrics
                assert "gischat_matrix_up 0.0" in metrics
                door.target = int(synapse.url.rsplit(":", 1)[1])
                await witness.wait_for(room_id, lambda e: _body(e) == "while away 3", MATRIX_TIMEOUT)
                await wait_for(lambda: _is(matrix_status(), homeserver="up", queued=0), MATRIX_TIMEOUT)
        bodies = [_body(event) for event in await witness.messages(room_id)]
        relayed = [body for body in bodies if body is not None and body.startswith("while away")]
        assert sorted(relayed) == ["while away 1", "while away 2", "while away 3"]
        assert relayed in (sorted(relayed), sorted(relayed, reverse=True)), "in the order they were said"
    finally:
        door.close()


async def _is(status: Any, **expected: Any) -> bool:
    got = await status
    return all(got.get(key) == value for key, value in expected.items())


async def test_a_moderators_delete_redacts_the_message_in_matrix(
    bridged: Bridged, matrix_users: MatrixUserFactory
) -> None:
    reader = await matrix_users("moderated", "Moderated")
    room_id = await join_portal(reader, bridged)
    async with channel(bridged.b, "oops") as oops, httpx.AsyncClient() as http:
        await oops.send(text("oops", "should not have said that"))
        said = await wait_channel_type(oops, "text", text="should not have said that")
        event = await reader.wait_for(
            room_id, lambda e: _body(e) == "should not have said that", MATRIX_TIMEOUT
        )
        answer = await http.delete(
            f"{bridged.a.http_url}/admin/rooms/QGIS/messages/{said['id']}",
            headers={"Authorization": "Bearer " + "s" * 40},
        )
        assert answer.status_code == 200, answer.text
        redaction = await reader.wait_for(
            room_id, lambda e: e.get("type") == "m.room.redaction", MATRIX_TIMEOUT
        )
        assert redaction["sender"] == bridged.synapse.bot_user_id
        assert event["event_id"] in (redaction.get("redacts"), redaction["content"].get("redacts"))


async def test_a_killed_nodes_users_leave_the_portal(
    synapse: SynapseServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    matrix_users: MatrixUserFactory,
    bridged: Bridged,
) -> None:
    """kill -9: nobody hears its users go; a sweep of the portal's members against the room's
    nicknames makes their virtual users leave. (A prefix of its own, inside the registration's
    namespace, keeps this instance's portal apart from the module's.)"""
    cluster = Cluster(redis_server, tmp_path_factory.mktemp("sweep"), f"s{uuid.uuid4().hex[:8]}")
    env = {
        **bridge_env(synapse),
        "MATRIX_PREFIX": "gischat_sw_",
        "MATRIX_SWEEP_INTERVAL": "1",
        "MATRIX_ROOMS": "QGIS",
    }
    try:
        survivor, doomed = cluster.node(**env), cluster.node(**env)
        watcher = await matrix_users("sweepwatch", "Sweep Watch")
        room_id = await watcher.join("#gischat_sw_qgis:gischat.test")
        ghost = "@gischat_sw_ghost:gischat.test"
        async with channel(doomed, "ghost"):
            await watcher.wait_for(room_id, lambda e: _member(e, ghost, "join"), MATRIX_TIMEOUT)
            doomed.kill()
            await watcher.wait_for(room_id, lambda e: _member(e, ghost, "leave"), MATRIX_TIMEOUT)
        assert survivor.status() is not None
    finally:
        cluster.stop()


async def test_a_room_bridged_onto_an_existing_matrix_room(
    synapse: SynapseServer, matrix_users: MatrixUserFactory, server_factory: ServerFactory, bridged: Bridged
) -> None:
    """MATRIX_ROOM_IDS: the community's own (private) room; the bot joins when invited, and the
    virtual users join through it."""
    owner = await matrix_users("owner", "Owner")
    room_id = await owner.create_room(name="Community room", public=False)
    server = server_factory(
        matrix_homeserver_url=synapse.url,
        matrix_server_name=synapse.server_name,
        matrix_as_token=synapse.as_token,
        matrix_hs_token=synapse.hs_token,
        matrix_rooms=["Field and mobile"],
        matrix_room_ids={"Field and mobile": room_id},
        matrix_prefix="gischat_ex_",
    )
    synapse.serve_appservice_at(server.port)
    try:
        await owner.invite(room_id, "@gischat_ex_bot:gischat.test")
        await owner.wait_for(
            room_id, lambda e: _member(e, "@gischat_ex_bot:gischat.test", "join"), MATRIX_TIMEOUT
        )
        async with channel_client(server, "Field and mobile") as field:
            await field.register("surveyor")
            await field.send(text("surveyor", "from the field"))
            said = await owner.wait_for(room_id, lambda e: _body(e) == "from the field", MATRIX_TIMEOUT)
            assert said["sender"] == "@gischat_ex_surveyor:gischat.test"
            await owner.send_text(room_id, "from the community")
            heard = await wait_channel_type(field, "text", text="from the community")
            assert heard["author"] == "Owner-matrix"
    finally:
        synapse.serve_appservice_at(bridged.a.port)
