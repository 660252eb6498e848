"""The Lua scripts every node runs in Redis (the events they publish: `events.py`).

Each script checks and writes the shared state and publishes the matching event in one atomic
step, so every node sees one order: a claim's `newcomer` after everything published before it,
an `exiter` always before the next claim of the same nickname.
"""

from __future__ import annotations

from gischat.broker.redis.connection import Client

# The events they publish, and how a node reads them: `events.py`.

# Shared by EMIT and ROOM_ORDER: an event logged in the room's recent events (a stream, its bytes
# counted beside it) for the nodes that were not listening (`routes.py`): at most `count` of them,
# none older than `window` ms, `limit` bytes in all.
RECENT = """
local function remember(stream, bytes, event, count, window, limit)
  if count <= 0 or window <= 0 or #event > limit then return end
  local t = redis.call('TIME')
  local oldest = t[1] * 1000 + math.floor(t[2] / 1000) - window
  redis.call('XADD', stream, '*', 'e', event)
  local total = redis.call('INCRBY', bytes, #event)
  -- Oldest first, until the stream is within its count, its age and its bytes.
  while true do
    local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if head == nil then break end
    local at = tonumber(string.match(head[1], '^(%d+)'))
    if at >= oldest and total <= limit and redis.call('XLEN', stream) <= count then break end
    redis.call('XDEL', stream, head[1])
    total = redis.call('DECRBY', bytes, #head[2][2])
  end
  redis.call('PEXPIRE', stream, window)
  redis.call('PEXPIRE', bytes, window)
end
"""

# A message: into the room's history when it is kept (at most ARGV[3] messages of up to ARGV[4]
# bytes each), published, and logged in the room's recent events (KEYS[4], its bytes in KEYS[5]:
# at most ARGV[5] of them, none older than ARGV[6] ms, ARGV[4] bytes in all).
EMIT = (
    RECENT
    + """
if ARGV[7] ~= '' then
  -- A message that may be here already (ARGV[7]: its id): nothing to do if the room's last
  -- recent events hold it (or its deletion).
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 2000)) do
    if string.find(entry[2][2], ARGV[7], 1, true) then return 0 end
  end
end
local keep = tonumber(ARGV[3])
if keep > 0 and #ARGV[2] <= tonumber(ARGV[4]) then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('LTRIM', KEYS[3], -keep, -1)
end
local seq = redis.call('INCR', KEYS[1])
local event = seq .. ' ' .. ARGV[1] .. '\\n' .. ARGV[2]
redis.call('PUBLISH', KEYS[2], event)
remember(KEYS[4], KEYS[5], event, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[4]))
return seq
"""
)

# A nickname claimed: its `newcomer` event's sequence number (> 0); 0 another holds it, -1 this
# node is not registered (reaped), -2 this node holds it already.
CLAIM = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
local mine = ARGV[1] .. '\\0' .. ARGV[4]
local owner = redis.call('HGET', KEYS[4], ARGV[3])
if owner then
  if owner == mine then return -2 end
  return 0
end
redis.call('HSET', KEYS[4], ARGV[3], mine)
redis.call('HSET', KEYS[5], ARGV[2] .. '\\0' .. ARGV[3], ARGV[4] .. '\\0' .. ARGV[7])
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], seq .. ' ' .. ARGV[5] .. '\\n' .. ARGV[6])
return seq
"""

# A nickname freed: its `exiter` event's sequence number; 0 this node did not hold it.
RELEASE = """
if redis.call('HGET', KEYS[3], ARGV[3]) ~= ARGV[1] .. '\\0' .. ARGV[4] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[2] .. '\\0' .. ARGV[3])
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', KEYS[2], seq .. ' ' .. ARGV[5] .. '\\n' .. ARGV[6])
return seq
"""

COUNTS = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], seq .. ' ' .. ARGV[2] .. '\\n')
return 1
"""

HEARTBEAT = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return 1
"""

# Shared by REAP and SYNC: free one entry of a node's nickname index if the node still holds it.
FREE = """
local function free(prefix, node, field, value, quiet, seqkey, channel)
  local at = string.find(field, '\\0', 1, true)
  local room, key = string.sub(field, 1, at - 1), string.sub(field, at + 1)
  local sep = string.find(value, '\\0', 1, true)
  local nickname, exiter = string.sub(value, 1, sep - 1), string.sub(value, sep + 1)
  local nicks = prefix .. ':nicks:' .. room
  if redis.call('HGET', nicks, key) == node .. '\\0' .. nickname then
    redis.call('HDEL', nicks, key)
    local seq = redis.call('INCR', seqkey)
    local head = cjson.encode({'r', room, node, 0, key, nickname, quiet, tonumber(redis.call('TIME')[1])})
    redis.call('PUBLISH', channel, seq .. ' ' .. head .. '\\n' .. exiter)
  end
end
"""

REAP = (
    FREE
    + """
local dead
if ARGV[3] ~= '' then
  dead = {ARGV[3]}
else
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
end
for _, node in ipairs(dead) do
  redis.call('ZREM', KEYS[1], node)
  local index = ARGV[1] .. ':nodenicks:' .. node
  local entries = redis.call('HGETALL', index)
  for i = 1, #entries, 2 do free(ARGV[1], node, entries[i], entries[i + 1], 0, KEYS[2], KEYS[3]) end
  redis.call('DEL', index, ARGV[1] .. ':counts:' .. node)
  local seq = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', KEYS[3], seq .. ' ' .. cjson.encode({'g', '', node, 0}) .. '\\n')
end
return #dead
"""
)

SYNC = (
    FREE
    + """
local prefix, node = ARGV[1], ARGV[2]
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), node)
redis.call('DEL', KEYS[4])
local rooms = tonumber(ARGV[4])
for i = 0, rooms - 1 do redis.call('HSET', KEYS[4], ARGV[5 + 2 * i], ARGV[6 + 2 * i]) end
local first = 5 + 2 * rooms
local here = {}
for i = first, #ARGV, 6 do here[ARGV[i] .. '\\0' .. ARGV[i + 1]] = true end
local entries = redis.call('HGETALL', KEYS[5])
for i = 1, #entries, 2 do
  if not here[entries[i]] then
    free(prefix, node, entries[i], entries[i + 1], 1, KEYS[2], KEYS[3])
    redis.call('HDEL', KEYS[5], entries[i])
  end
end
local results = {}
for i = first, #ARGV, 6 do
  local room, key, nickname = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nicks = prefix .. ':nicks:' .. room
  local mine = node .. '\\0' .. nickname
  local owner = redis.call('HGET', nicks, key)
  local field = room .. '\\0' .. key
  if owner == mine then
    redis.call('HSET', KEYS[5], field, nickname .. '\\0' .. ARGV[i + 5])
    results[#results + 1] = 2
  elseif owner then
    redis.call('HDEL', KEYS[5], field)
    results[#results + 1] = 0
  else
    redis.call('HSET', nicks, key, mine)
    redis.call('HSET', KEYS[5], field, nickname .. '\\0' .. ARGV[i + 5])
    local seq = redis.call('INCR', KEYS[2])
    redis.call('PUBLISH', KEYS[3], seq .. ' ' .. ARGV[i + 3] .. '\\n' .. ARGV[i + 4])
    results[#results + 1] = 1
  end
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], seq .. ' ' .. ARGV[3] .. '\\n')
results[#results + 1] = seq
return results
"""
)

# The other nodes as of a sequence number: who is alive, their counts, every room's nicknames.
SNAPSHOT = """
local nodes = redis.call('ZRANGE', KEYS[2], 0, -1)
local counts, nicks = {}, {}
for i, node in ipairs(nodes) do counts[i] = redis.call('HGETALL', ARGV[1] .. ':counts:' .. node) end
for i = 2, #ARGV do nicks[i - 1] = redis.call('HGETALL', ARGV[1] .. ':nicks:' .. ARGV[i]) end
return {redis.call('GET', KEYS[1]) or '0', nodes, counts, nicks}
"""

# One room as of a sequence number, for a node that starts reading it (`routes.py`): its history
# and its recent events (each as published).
# ARGV[1] 'ids': only the post ids of the recent events (a node with nobody in the room notes them,
# it has nothing to deliver: the payloads would cross the network for nothing).
FOLLOW = """
local events, ids = {}, ARGV[1] == 'ids'
for i, entry in ipairs(redis.call('XRANGE', KEYS[3], '-', '+')) do
  if ids then
    events[i] = string.match(entry[2][2], '\\n%S+ (%S+)') or ''
  else
    events[i] = entry[2][2]
  end
end
return {redis.call('GET', KEYS[1]) or '0', redis.call('LRANGE', KEYS[2], 0, -1), events}
"""

# A moderator's order about the whole instance, with what it changes in the shared state: a ban
# kept (or lifted) in the bans hash, then the event every node carries out.
ORDER = """
local kind = ARGV[3]
if kind == 'ban' then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
elseif kind == 'lift' then
  redis.call('HDEL', KEYS[3], ARGV[4])
end
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', KEYS[2], seq .. ' ' .. ARGV[1] .. '\\n' .. ARGV[2])
return seq
"""

# A moderator's order about a room's messages or sockets (a deletion, a kick), on the room's
# channel, in the room's order: after what came before it, wherever the nodes stand. A deletion
# (ARGV[3], the message's id) takes the message out of the room's history first (entries are
# `Post.encode()` text, whose first line starts "<type> <id> "), and the deletion is logged in the
# room's recent events (KEYS[4], KEYS[5]; ARGV[4..6] as EMIT's ARGV[5], [6], [4]): a node that was
# not listening carries it out on its return too.
ROOM_ORDER = (
    RECENT
    + """
if ARGV[3] ~= '' then
  for _, item in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if string.match(item, '^%S+ (%S+) ') == ARGV[3] then redis.call('LREM', KEYS[3], 1, item) end
  end
end
local seq = redis.call('INCR', KEYS[1])
local event = seq .. ' ' .. ARGV[1] .. '\\n' .. ARGV[2]
redis.call('PUBLISH', KEYS[2], event)
if ARGV[3] ~= '' then
  remember(KEYS[4], KEYS[5], event, tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
end
return seq
"""
)

# An event with nothing kept: a question to every node about a room's sockets, or an answer.
SAY = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', KEYS[2], seq .. ' ' .. ARGV[1] .. '\\n' .. ARGV[2])
return seq
"""

# Keys in pairs (former name, name now): each renamed if it exists and its new name does not. Run
# once per session on one Redis only (a cluster holds nothing written under the former names).
CARRY_OVER = """
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
  end
end
return 0
"""

SCRIPTS = {
    "order": ORDER,
    "room_order": ROOM_ORDER,
    "say": SAY,
    "emit": EMIT,
    "claim": CLAIM,
    "release": RELEASE,
    "counts": COUNTS,
    "heartbeat": HEARTBEAT,
    "reap": REAP,
    "sync": SYNC,
    "snapshot": SNAPSHOT,
    "follow": FOLLOW,
}


def scripts(sharded: bool) -> dict[str, str]:
    """The scripts as a node loads them: on a Redis Cluster they publish with SPUBLISH, whose
    channel lives on the shard of its hash slot (the room's keys' shard), where PUBLISH would
    be relayed to every node of the cluster."""
    if not sharded:
        return dict(SCRIPTS)
    return {name: source.replace("'PUBLISH'", "'SPUBLISH'") for name, source in SCRIPTS.items()}


async def load_scripts(client: Client, sharded: bool) -> dict[str, str]:
    """Load the scripts; on a cluster, on every primary (a script runs on the shard of its keys)."""
    sha: dict[str, str] = {}
    for name, source in scripts(sharded).items():
        loaded = await client.script_load(source)  # a cluster client sends it to every primary
        sha[name] = next(iter(loaded.values())) if isinstance(loaded, dict) else loaded
    return sha
