import pytest
from conftest import LiveServer, ws_client, text

pytestmark = pytest.mark.anyio


async def test_smoke(server: LiveServer) -> None:
    async with ws_client(server, "Field and mobile") as a, ws_client(server, "Field and mobile") as b:
        await a.expect("nb_users", nb_users=2)
        await a.register("alice")
        await a.send(text("alice", "hi"))
        m = await b.expect("text")
        assert m == {"type": "text", "author": "alice", "avatar": None, "text": "hi"}
        await b.send("garbage")
        assert (await b.expect("uncompliant"))["reason"] == "message is not valid JSON"
