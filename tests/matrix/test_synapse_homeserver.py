"""The Synapse harness itself (tests/synapse_homeserver.py), and what Synapse sends an application service.

What Synapse 1.163.2 sends the AS, as observed here through the relay (the facts the bridge is built on):

- Transactions: `PUT /_matrix/app/v1/transactions/{txnId}` where txnId is a decimal integer counting
  up from 1 per AS for the life of the database (not per AS process). Headers: `Authorization:
  Bearer <hs_token>` (no `access_token` query parameter unless `use_appservice_legacy_authorization`),
  `Content-Type: application/json`, `Accept: application/json`, `Accept-Encoding: gzip`,
  `User-Agent: Synapse/1.163.2`; HTTP/1.1 over a pooled keep-alive connection. Body: exactly
  `{"events": [...]}` unless the registration says `receive_ephemeral: true`, which adds
  `"ephemeral": [...]` (m.typing, m.receipt, m.presence, in transactions of their own when there is no
  room event) and `"de.sorunome.msc2409.to_device": [...]`. Each event is the client format plus the
  deprecated top-level `user_id` (= sender) and `age`; invites carry `invite_room_state` (and
  `unsigned.invite_room_state`), state changes `prev_content`/`replaces_state`. Rooms are version 12:
  room ids have no `:server` part (`!opaque`).
- Which events: those whose sender or member state_key is in the user namespace (invites of
  `@gischat_bot`, the AS's own messages echo back), and every event of a room where one of the AS's
  users has joined (merely invited is not enough). One transaction in flight per AS at a time; one
  event per transaction when they trickle in, about 20-40 ms after the client's send returns.
- Queries: `GET /_matrix/app/v1/rooms/{alias}` (alias percent-encoded: `%23gischat_x%3Agischat.test`)
  when a client resolves or joins an unknown alias in the namespace (a 404 makes the client's lookup
  404 M_NOT_FOUND); `GET /_matrix/app/v1/users/{userId}` (`%40...%3A...`) before pushing an event that
  concerns an unregistered user of the namespace (an invite of `@gischat_ghost` succeeds either way).
  No body; same Bearer header.
- Ping: `POST /_matrix/client/v1/appservice/gischat/ping` with the as_token makes Synapse `POST
  /_matrix/app/v1/ping` with `{"transaction_id": <given or null>}`; a non-200 answer gives the caller
  502 M_BAD_STATUS, a connection closed unanswered 504 M_CONNECTION_TIMEOUT at once. A 200 also ends
  any backoff at once (below).
- A transaction counts as delivered only on a 2xx whose body is JSON: `{}` does; an empty body or
  `ok` is a failure (JSONDecodeError) and the transaction is retried forever.
- Failure (non-2xx, refused or closed connection, bad JSON): Synapse marks the AS down and holds the
  transaction in its database. It retries the oldest held transaction (same txnId, same events
  re-serialised: only `age` differs) 2 s after the failure, then after 4, 8, 16, 32 s... doubling up
  to 512 s; measured: attempts at 0, 2.0, 6.1, 14.1, 30.1, 62.1 s, alike for a 500 and for a closed
  connection. While down, new events are stored as new transactions but not sent: they wait for the
  next retry, which then sends every held transaction in order, one PUT each, and marks the AS up.
  Once up, the next failure starts over at 2 s (measured three times in a row); a failure of a held
  transaction right after a success within one retry run waits 4 s. A ping answered 200 retries at
  once. A closed connection shows in Synapse's log as "RequestTimedOutError 504", immediately.
- An AS that accepts the connection and never answers holds the (single) sender for 60 s, after which
  Synapse counts a failure (RequestTimedOutError 504) and backs off as above.
- The AS's sender `@gischat_bot:gischat.test` is usable with the as_token at once (`whoami` answers)
  but has no profile row until it sets one (`GET /profile` 404s); users of the namespace cannot be
  registered with the shared secret, nor aliases of it created by others (400 M_EXCLUSIVE).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from synapse_homeserver import (
    AS_TOKEN,
    HS_TOKEN,
    START_TIMEOUT,
    AppServiceRelay,
    JsonDict,
    MatrixError,
    MatrixUser,
    MatrixUserFactory,
    SynapseServer,
)

from conftest import wait_for

pytestmark = pytest.mark.anyio

TRANSACTIONS = "/_matrix/app/v1/transactions/"


@dataclass
class Seen:
    """One request that reached the fake application service."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival

    @property
    def event_ids(self) -> list[str]:
        if not isinstance(self.body, dict):
            return []
        return [event["event_id"] for event in self.body.get("events", [])]


class FakeAppService:
    """A tiny HTTP/1.1 server (keep-alive, as Synapse's pool wants it) that records what it is sent.

    It answers `status` with `reply` to every request; tests change both on the fly.
    """

    def __init__(self) -> None:
        self.status = 200
        self.reply = b"{}"
        self.delay = 0.0  # seconds to think before answering: an AS busy with the request
        self.in_flight = 0  # requests arrived and not yet answered
        lock = threading.Lock()
        self.received: queue.Queue[Seen] = queue.Queue()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def answer(self) -> None:
                with lock:
                    fake.in_flight += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                seen = Seen(
                    self.command,
                    self.path,
                    dict(self.headers.items()),
                    orjson.loads(raw) if raw else None,
                    time.monotonic(),
                )
                status, reply = fake.status, fake.reply
                time.sleep(fake.delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                with lock:
                    fake.in_flight -= 1
                fake.received.put(seen)  # once answered: a test that moves on does not cut the answer

            def do_GET(self) -> None:
                self.answer()

            def do_PUT(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.answer()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.02,), name="fake-appservice", daemon=True
        )
        self.thread.start()

    async def expect(
        self, predicate: Callable[[Seen], bool] = lambda seen: True, timeout: float = 10.0
    ) -> Seen:
        """The next request for which `predicate` holds, skipping the others."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the application service was sent no such request within {timeout} s")
            try:
                seen = await asyncio.to_thread(self.received.get, True, min(remaining, 0.5))
            except queue.Empty:
                continue
            if predicate(seen):
                return seen

    async def transaction_with(self, event_id: str, timeout: float = 10.0) -> Seen:
        return await self.expect(lambda seen: event_id in seen.event_ids, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def appservice(synapse: SynapseServer) -> Iterator[FakeAppService]:
    """A fake AS behind the session's relay for one test; the relay has no target again after it."""
    fake = FakeAppService()
    synapse.relay.target = fake.port
    yield fake
    synapse.relay.target = None
    fake.close()


@pytest.fixture
async def bot(synapse: SynapseServer) -> AsyncIterator[MatrixUser]:
    """The AS's sender, `@gischat_bot`, speaking the client-server API with the as_token."""
    user = MatrixUser(synapse.homeserver, synapse.bot_user_id, synapse.as_token, device_id="")
    yield user
    await user.close()


async def joined_room_with_bot(appservice: FakeAppService, owner: MatrixUser, bot: MatrixUser) -> str:
    """A room of `owner` that the AS's bot has joined: every event in it goes to the AS from then on."""
    room_id = await owner.create_room(name="bridged", invite=[bot.user_id])
    assert await bot.join(room_id) == room_id
    await appservice.expect(lambda seen: any(e["sender"] == bot.user_id for e in _events(seen)))
    return room_id


def _events(seen: Seen) -> list[JsonDict]:
    return list(seen.body.get("events", [])) if isinstance(seen.body, dict) else []


# --- the homeserver and its users -----------------------------------------------------------------


def test_synapse_serves_the_client_api_with_the_appservice_registered(synapse: SynapseServer) -> None:
    assert synapse.homeserver.startup_seconds is not None
    assert synapse.homeserver.startup_seconds < START_TIMEOUT
    versions = httpx.get(f"{synapse.url}/_matrix/client/versions", timeout=5).json()
    assert "v1.11" in versions["versions"]
    # Synapse loaded the registration: the as_token is the bot's.
    whoami = httpx.get(
        f"{synapse.url}/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {AS_TOKEN}"},
        timeout=5,
    )
    assert whoami.json()["user_id"] == synapse.bot_user_id == f"@gischat_bot:{synapse.server_name}"
    assert len(AS_TOKEN) >= 32
    assert len(HS_TOKEN) >= 32


async def test_two_users_exchange_messages_in_a_room(matrix_users: MatrixUserFactory) -> None:
    alice = await matrix_users("alice", "Alice")
    bob = await matrix_users("bob", "Bob")
    alias_localpart = f"general_{alice.user_id[1:].split(':')[0]}"
    room_id = await alice.create_room(name="General", alias_localpart=alias_localpart)
    alias = f"#{alias_localpart}:gischat.test"
    assert await bob.resolve_alias(alias) == room_id
    assert await bob.join(alias) == room_id
    assert await alice.members(room_id) == {alice.user_id: "Alice", bob.user_id: "Bob"}

    text_id = await alice.send_text(room_id, "Bonjour Bob")
    seen = await bob.wait_for(room_id, lambda event: event["event_id"] == text_id)
    assert seen["sender"] == alice.user_id
    assert seen["content"] == {"msgtype": "m.text", "body": "Bonjour Bob"}

    # The cursor: two waits in a row see two events, in order, even once both have arrived.
    await bob.send_notice(room_id, "a notice")
    await bob.send_emote(room_id, "waves")
    first = await alice.wait_for(room_id, lambda event: event["type"] == "m.room.message")
    second = await alice.wait_for(room_id, lambda event: event["type"] == "m.room.message")
    assert [first["content"]["msgtype"], second["content"]["msgtype"]] == ["m.text", "m.notice"]
    third = await alice.wait_for(room_id, lambda event: event["type"] == "m.room.message")
    assert third["content"] == {"msgtype": "m.emote", "body": "waves"}

    redaction_id = await alice.redact(room_id, text_id, reason="typo")
    redaction = await bob.wait_for(room_id, lambda event: event["type"] == "m.room.redaction")
    assert redaction["event_id"] == redaction_id
    assert text_id in (redaction.get("redacts"), redaction["content"].get("redacts"))
    history = await bob.messages(room_id)
    assert history[0]["event_id"] == redaction_id  # newest first
    assert next(event for event in history if event["event_id"] == text_id)["content"] == {}

    # A new display name reaches the rooms as a member event, after the profile call has returned.
    await bob.set_displayname("Robert")
    renamed = await alice.wait_for(
        room_id, lambda event: event["type"] == "m.room.member" and event["state_key"] == bob.user_id
    )
    assert renamed["content"]["displayname"] == "Robert"
    assert (await alice.members(room_id))[bob.user_id] == "Robert"


async def test_an_invited_user_sees_the_invite(matrix_users: MatrixUserFactory) -> None:
    alice = await matrix_users("alice")
    carol = await matrix_users("carol")
    room_id = await alice.create_room(public=False, invite=[carol.user_id])
    assert await carol.wait_for_invite() == room_id
    assert await carol.join(room_id) == room_id
    with pytest.raises(MatrixError) as refused:
        await carol.redact(room_id, await alice.send_text(room_id, "mine"))
    assert refused.value.status == 403
    assert refused.value.errcode == "M_FORBIDDEN"


async def test_an_upload_comes_back_through_authenticated_media(matrix_users: MatrixUserFactory) -> None:
    alice = await matrix_users("alice")
    bob = await matrix_users("bob")
    data = os.urandom(1_500_000)
    mxc = await alice.upload(data, "image/png", "map.png")
    assert mxc.startswith("mxc://gischat.test/")
    assert await bob.download(mxc) == data
    # enable_authenticated_media: the legacy unauthenticated endpoint no longer serves new media.
    legacy = await bob.http.get(f"/_matrix/media/v3/download/{mxc.removeprefix('mxc://')}")
    assert legacy.status_code == 404


# --- the relay ------------------------------------------------------------------------------------


async def test_the_relay_forwards_to_its_target_and_refuses_without_one() -> None:
    relay = AppServiceRelay().start()
    first, second = FakeAppService(), FakeAppService()
    try:
        async with httpx.AsyncClient(base_url=relay.url, timeout=5) as client:
            with pytest.raises(httpx.TransportError):  # no target yet: accepted, then closed at once
                await client.get("/nobody")
            assert relay.accepted == 1

            relay.target = first.port
            first.reply = b'{"which": "first"}'
            response = await client.put("/_matrix/app/v1/transactions/1", json={"events": []})
            assert response.json() == {"which": "first"}
            seen = await first.expect()
            assert (seen.method, seen.path, seen.body) == (
                "PUT",
                "/_matrix/app/v1/transactions/1",
                {"events": []},
            )

            # A new target: the kept-alive connection to the first one is retired, not reused.
            relay.target = second.port
            second.reply = b'{"which": "second"}'
            assert relay.open_connections == 0
            response = await client.get("/again")
            assert response.json() == {"which": "second"}
            assert (await second.expect()).path == "/again"

            relay.target = None
            assert relay.open_connections == 0
            with pytest.raises(httpx.TransportError):
                await client.get("/gone")
            assert relay.accepted == 4
            assert first.received.empty()
            assert second.received.empty()

            # An exchange in flight when the target changes is let finish; cut, it fails.
            relay.target = first.port
            first.delay = 0.3
            slow = asyncio.create_task(client.get("/slow"))
            await wait_for(lambda: first.in_flight == 1)
            relay.target = second.port  # returns once the answer has gone through
            assert relay.open_connections == 0
            assert (await slow).json() == {"which": "first"}
            relay.target = first.port
            slow = asyncio.create_task(client.get("/slow"))
            await wait_for(lambda: first.in_flight == 1)
            relay.retarget(second.port, graceful=False)
            with pytest.raises(httpx.TransportError):
                await slow
    finally:
        relay.close()
        first.close()
        second.close()


# --- what Synapse sends the application service ---------------------------------------------------


async def test_synapse_pushes_transactions_to_the_appservice(
    synapse: SynapseServer, appservice: FakeAppService, bot: MatrixUser, matrix_users: MatrixUserFactory
) -> None:
    alice = await matrix_users("alice", "Alice")
    room_id = await alice.create_room(name="bridged")
    await alice.invite(room_id, synapse.bot_user_id)

    invite = await appservice.expect(lambda seen: any(e["room_id"] == room_id for e in _events(seen)))
    assert invite.method == "PUT"
    assert invite.path.removeprefix(TRANSACTIONS).isdigit()
    assert invite.headers["Authorization"] == f"Bearer {HS_TOKEN}"
    assert invite.headers["Content-Type"] == "application/json"
    assert "access_token" not in invite.path
    assert set(invite.body) == {"events"}  # no `ephemeral` without receive_ephemeral
    (event,) = invite.body["events"]
    assert event["type"] == "m.room.member"
    assert event["state_key"] == synapse.bot_user_id
    assert event["content"]["membership"] == "invite"
    assert event["room_id"] == room_id
    assert event["sender"] == event["user_id"] == alice.user_id
    assert "invite_room_state" in event

    await bot.join(room_id)
    joined = await appservice.expect(lambda seen: any(e["sender"] == bot.user_id for e in _events(seen)))
    assert int(joined.path.removeprefix(TRANSACTIONS)) > int(invite.path.removeprefix(TRANSACTIONS))

    # Once the bot has joined, every event of the room goes to the AS, the bot's own included.
    sent_at = time.monotonic()
    text_id = await alice.send_text(room_id, "hello bridge")
    text = await appservice.transaction_with(text_id)
    assert text.at - sent_at < 5
    assert text.body["events"][0]["content"] == {"msgtype": "m.text", "body": "hello bridge"}
    echo_id = await bot.send_notice(room_id, "from the bridge")
    assert (await appservice.transaction_with(echo_id)).body["events"][0]["sender"] == synapse.bot_user_id


async def test_synapse_asks_the_appservice_about_unknown_aliases_and_users(
    synapse: SynapseServer, appservice: FakeAppService, matrix_users: MatrixUserFactory
) -> None:
    alice = await matrix_users("alice")
    appservice.status, appservice.reply = 404, b'{"errcode": "M_NOT_FOUND"}'
    with pytest.raises(MatrixError) as unknown:
        await alice.resolve_alias("#gischat_nowhere:gischat.test")
    assert unknown.value.errcode == "M_NOT_FOUND"
    query = await appservice.expect(lambda seen: seen.method == "GET")
    assert (query.method, query.path) == ("GET", "/_matrix/app/v1/rooms/%23gischat_nowhere%3Agischat.test")
    assert query.headers["Authorization"] == f"Bearer {HS_TOKEN}"

    appservice.status, appservice.reply = 200, b"{}"
    room_id = await alice.create_room()
    await alice.invite(room_id, "@gischat_ghost:gischat.test")
    query = await appservice.expect(lambda seen: seen.method == "GET")
    assert (query.method, query.path) == ("GET", "/_matrix/app/v1/users/%40gischat_ghost%3Agischat.test")
    invite = await appservice.expect(lambda seen: any(e["room_id"] == room_id for e in _events(seen)))
    assert invite.body["events"][0]["state_key"] == "@gischat_ghost:gischat.test"

    with pytest.raises(MatrixError) as reserved:
        await alice.create_room(alias_localpart="gischat_taken")
    assert reserved.value.errcode == "M_EXCLUSIVE"


async def test_after_an_error_synapse_retries_the_same_transaction_2_s_later(
    synapse: SynapseServer, appservice: FakeAppService, bot: MatrixUser, matrix_users: MatrixUserFactory
) -> None:
    alice = await matrix_users("alice")
    room_id = await joined_room_with_bot(appservice, alice, bot)
    appservice.status, appservice.reply = 500, b'{"errcode": "M_UNKNOWN"}'
    log = synapse.homeserver.log_position()
    first_id = await alice.send_text(room_id, "one")
    failed = await appservice.transaction_with(first_id)

    # Down, once Synapse has marked it so (an event a few ms sooner could still go): now one is held.
    await wait_for(lambda: "Scheduling retries on gischat" in synapse.homeserver.log_since(log))
    appservice.status, appservice.reply = 200, b"{}"
    second_id = await alice.send_text(room_id, "two")
    retried = await appservice.expect(lambda seen: seen.path.startswith(TRANSACTIONS))
    assert retried.path == failed.path
    assert retried.event_ids == [first_id]
    assert 1.8 < retried.at - failed.at < 2 + 3  # 2 s; the margin is for a loaded machine
    held = await appservice.transaction_with(second_id)
    assert int(held.path.removeprefix(TRANSACTIONS)) > int(failed.path.removeprefix(TRANSACTIONS))
    assert held.at - retried.at < 1  # sent with the retry, not on its own schedule

    # Up again: the next event goes at once.
    third_id = await alice.send_text(room_id, "three")
    assert (await appservice.transaction_with(third_id)).at - held.at < 2


async def test_a_ping_ends_the_backoff_of_a_down_appservice_at_once(
    synapse: SynapseServer, appservice: FakeAppService, bot: MatrixUser, matrix_users: MatrixUserFactory
) -> None:
    alice = await matrix_users("alice")
    room_id = await joined_room_with_bot(appservice, alice, bot)
    synapse.relay.target = None  # the AS is gone: each attempt is a connection closed at once
    attempts = synapse.relay.accepted
    held_id = await alice.send_text(room_id, "while down")
    await wait_for(lambda: synapse.relay.accepted >= attempts + 2, timeout=10)  # at once, then 2 s later
    second_attempt = time.monotonic()  # the next one is 4 s away
    with pytest.raises(MatrixError) as unanswered:
        await synapse.ping_appservice()
    assert (unanswered.value.status, unanswered.value.errcode) == (504, "M_CONNECTION_TIMEOUT")

    synapse.relay.target = appservice.port
    assert "duration_ms" in await synapse.ping_appservice("probe-1")
    ping = await appservice.expect(lambda seen: seen.method == "POST")
    assert (ping.method, ping.path, ping.body) == (
        "POST",
        "/_matrix/app/v1/ping",
        {"transaction_id": "probe-1"},
    )
    assert ping.headers["Authorization"] == f"Bearer {HS_TOKEN}"
    held = await appservice.transaction_with(held_id)
    assert held.at - second_attempt < 3.5

    appservice.status = 500
    with pytest.raises(MatrixError) as bad:
        await synapse.ping_appservice()
    assert (bad.value.status, bad.value.errcode) == (502, "M_BAD_STATUS")
    assert (await appservice.expect(lambda seen: seen.method == "POST")).body == {"transaction_id": None}
    appservice.status = 200
