"""The Redis engine: any number of gischat processes (nodes) serving one set of rooms.

What travels, and in which order
    Messages travel on a channel per room, `{prefix}:events:{room}`, which a node reads only
    while it has sockets in the room (and `REDIS_ROOM_LINGER` seconds after): a node pays for
    the rooms it serves, not for every room's traffic (`routes.py`). Everything else (nickname
    claims and releases, socket counts, nodes gone, moderators' orders) travels on the node-wide
    channel, `{prefix}:events`, which every node reads. A node never delivers its own messages
    directly: every node sees one order, the order in which Redis ran the scripts that
    published them (one subscriber connection gets its channels' events in that order, so a
    `newcomer` still comes before the newcomer's first message). A node sends everything
    through one ordered outgoing queue, drained by a single task that pipelines the commands
    on one connection: one sender's messages, and a `newcomer` after what its socket said
    before it, keep their order.

Presence, without counters that drift
    Nicknames live in one hash per room, `{prefix}:nicks:{room}`, nickname key -> owning node
    and nickname, changed only by Lua scripts that check and write in one step and publish
    the matching `newcomer`/`exiter` in that same step: a race for a nickname has exactly one
    winner, and an `exiter` precedes the next claim of the nickname. Socket counts are
    absolute (each node writes its own per-room numbers, never increments), so nothing adds
    up wrongly after a crash: a room's count is the sum over the nodes alive.

Mirror
    Each node keeps in memory what the other nodes hold (their nicknames and counts), loaded
    from a snapshot when it (re)connects and kept current from the events: identity checks,
    counts, user lists and likes never wait on Redis. Every event carries a sequence number
    from `{prefix}:seq`; the snapshot carries the number it was taken at, so an event is
    applied once, whether it arrived before or after the snapshot.

Nodes that die
    Each node refreshes its heartbeat (a score in `{prefix}:nodes`, Redis time) several times
    per `NODE_TIMEOUT`, and asks Redis to reap the nodes whose heartbeat is older. Reaping is
    one script, so exactly one caller does it: it frees the dead node's nicknames (publishing
    their `exiter`s), deletes its counts and publishes that the node is gone. A node that
    stops cleanly reaps itself.

Redis going away
    The node keeps its own sockets chatting (messages delivered locally, nicknames unique
    among its own sockets), says `healthy: false` in `/status`, and reconnects with backoff.
    Back, it runs one script that re-registers it, rewrites its counts, frees the nicknames
    its sockets gave up meanwhile and claims again those they took; a nickname another node
    holds by then stays with that node, and the local socket keeps its connection but loses
    the nickname, with an `uncompliant` saying so. With Sentinel (`redis+sentinel://`), a failover
    is Redis going away and coming back elsewhere: the node asks the sentinels where the primary
    is at each connection, and starts over as soon as they announce a new one.

`broker.py` holds the node's side of the `Broker` interface; `session.py` the node's life on Redis
(connect, register, snapshot, heartbeat, degraded mode, resync) and the events it reads; `routes.py`
which rooms' messages it reads; `outbox.py` the ordered command queue; `scripts.py` the Lua scripts,
the keys they are given and the events they publish; `commands.py` the calls of those scripts;
`mirror.py` the other nodes as this one knows them; `orders.py` moderators' orders across
nodes; `connection.py` the client (one Redis, or the primary Sentinel names) and what of the URL may
be shown.
"""
