"""The Redis engine: any number of gischat processes (nodes) serving one set of rooms.

What travels, and in which order
    Messages (and kicks and deletions) travel on a channel per room, `{prefix:room}:events`,
    which a node reads only while it has sockets in the room (and `REDIS_ROOM_LINGER` seconds
    after): a node pays for the rooms it serves, not for every room's traffic (`routes.py`).
    Everything else (nickname claims and releases, socket counts, nodes gone, bans) travels on
    the node-wide channel, `{prefix}:events`, which every node reads. A node never delivers its
    own messages directly: every node sees one order per room, the order in which Redis ran the
    scripts that published them. A message carries how far its sender's node had read the
    node-wide channel, and waits until the receiving node has read as far (`barrier.py`): a
    `newcomer` comes before the newcomer's first message. A node sends everything through one
    ordered outgoing queue, drained by a single task that pipelines the commands: one sender's
    messages, and a `newcomer` after what its socket said before it, keep their order.

Keys under two hash tags
    The node-wide keys share the tag `{prefix}`, each room's the tag `{prefix:room}` (`keys.py`):
    every script touches one tag's keys only. On a Redis Cluster (`redis+cluster://`) a room lives
    on one shard, its channel is a sharded channel there (SPUBLISH, SSUBSCRIBE), and the node
    holds a connection per shard it reads (`bus.py`); on one Redis the braces are only names.

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
    counts, user lists and likes never wait on Redis. Every node-wide event carries a sequence
    number from `{prefix}:seq` (a room's events, one from the room's own); the snapshot carries
    the number it was taken at, so an event is applied once, whether it arrived before or after
    the snapshot.

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
    is at each connection, and starts over as soon as they announce a new one. On a cluster, a
    shard lost (or a slot moved away from where the node reads it) is the same.

`broker.py` holds the node's side of the `Broker` interface; `session.py` the node's life on Redis
(connect, register, snapshot, heartbeat, degraded mode, resync) and the events it reads; `routes.py`
which rooms' messages it reads; `bus.py` the connections that read the channels; `barrier.py` the
messages waiting for the node-wide events their sender had read; `outbox.py` the ordered command
queue; `keys.py` the names of everything in Redis; `scripts.py` the Lua scripts; `events.py` the events
they publish; `commands.py` the calls of those scripts; `mirror.py` the other nodes as this one knows
them; `orders.py` moderators' orders across nodes; `connection.py` the client (one Redis, the
primary Sentinel names, or a cluster) and what of the URL may be shown.
"""
