"""The document's `channels` and `operations`: each socket's address and what happens on it.

A channel object is the socket as a client meets it: its address, its parameter (the room's
name), what the instance does on connection, its limits and history, and the messages it carries
(references to `components.messages`, from each socket's `Part`s). This instance's settings are
written into the descriptions, so a client reads the rules of the server it talks to.

Operations are written from the server's side, as AsyncAPI 3 describes one application: it
*receives* what clients send (`receiveClientMessage`, whose `reply` is the `uncompliant` answer
to a refused message) and *sends* what clients receive (`sendToRoom`, `sendLike`,
`sendUncompliant`); the same on the channel with `Channel` in the names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gischat.protocol.asyncapi.rules import DocumentSettings
from gischat.protocol.asyncapi.schemas import CLIENT, SERVER
from gischat.protocol.asyncapi.sockets import CHANNEL, ROOM, Part, message_key
from gischat.protocol.dialects import CHANNEL_ONLY_TYPES, CHANNEL_TYPES, CLIENT_TYPES, IGNORED_TYPES, Dialect
from gischat.protocol.messages import SERVER_ONLY_TYPES

ADDRESSES: dict[Dialect, str] = {Dialect.ROOM: "/room/{room}/ws", Dialect.CHANNEL: "/channel/{channel}/ws"}
# Who gets each type when the server sends it; any other type goes to the whole conversation.
TO_LIKED_AUTHOR = "like"
TO_SENDER = "uncompliant"


def room_object(settings: DocumentSettings, parts: list[Part]) -> dict[str, Any]:
    """`/room/{room}/ws`, with this instance's rooms, history and frame limit."""
    history = (
        f"Right after its first `nb_users`, a new socket receives the room's last "
        f"{settings.max_stored_messages} messages (history), oldest first, as they were broadcast."
        if settings.max_stored_messages
        else "This instance keeps no history."
    )
    return {
        "address": ADDRESSES[Dialect.ROOM],
        "title": "A chat room",
        "description": (
            f"One websocket per room. An unknown room refuses the handshake (HTTP 403). {history} A frame "
            f"above {settings.max_frame_size} bytes closes the socket (1009), a text frame that is not "
            "valid UTF-8 too (1007); every other refused frame gets an `uncompliant` answer and the "
            "socket stays open."
        ),
        "parameters": {
            ROOM: {
                "description": "The room's name, percent-encoded (`Field%20and%20mobile`).",
                "enum": list(settings.rooms),
                "default": settings.rooms[0],
            }
        },
        "messages": _messages(parts),
        "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
    }


def channel_object(settings: DocumentSettings, parts: list[Part]) -> dict[str, Any]:
    """`/channel/{channel}/ws`: the room's rules plus the 3.x envelope, replies and scripts."""
    ignored = ", ".join(f"`{kind}`" for kind in sorted(IGNORED_TYPES[Dialect.CHANNEL]))
    only = ", ".join(f"`{kind}`" for kind in CHANNEL_TYPES if kind in CHANNEL_ONLY_TYPES)
    reply = (
        "A reply (a message sent with `in_reply_to_id`) carries it as its last key (REPLY_THREADS is on)."
        if settings.reply_threads
        else "This instance sends no `in_reply_to_id` (REPLY_THREADS is off)."
    )
    scripts = (
        f"Scripts are accepted, up to {settings.max_script_length} characters of code."
        if settings.allow_scripts
        else "Scripts are refused (ALLOW_SCRIPTS is off): they run code on the receiver's machine."
    )
    history = (
        f"Right after its first `nb_users`, a new socket receives the conversation's last "
        f"{settings.max_stored_messages} messages (history), oldest first, as channel sockets received "
        "them (same ids and timestamps)."
        if settings.max_stored_messages
        else "This instance keeps no history."
    )
    return {
        "address": ADDRESSES[Dialect.CHANNEL],
        "title": "A chat channel (3.x dialect)",
        "description": (
            "One websocket per channel, for 3.x clients (QChat, the QField plugin). Channel X is room X: "
            "the same conversation, with the same sockets, nicknames, count and history; only the wire "
            "differs. An unknown channel refuses the handshake (HTTP 403).\n\n"
            "Every frame the server sends starts with `type`, `id` (the message's id, a lowercase "
            "hyphenated UUID4) and `timestamp` (integer seconds since the epoch, when the server accepted "
            f"it), then every key of its type in a fixed order, present even when null. {reply} Clients "
            f"send the 2.x shapes; an `id` or `timestamp` they add is ignored. {ignored} from a client is "
            f"dropped without an answer (QField sends it before closing). {only} exist on channels only. "
            f"{scripts}\n\n{history} A frame above {settings.max_frame_size} bytes closes the socket "
            "(1009), a text frame that is not valid UTF-8 too (1007); every other refused frame gets an "
            "`uncompliant` answer and the socket stays open."
        ),
        "parameters": {
            CHANNEL: {
                "description": "The channel's name, percent-encoded (`Field%20and%20mobile`): a room's name.",
                "enum": list(settings.rooms),
                "default": settings.rooms[0],
            }
        },
        "messages": _messages(parts),
        "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
    }


def _messages(parts: list[Part]) -> dict[str, Any]:
    """A channel's `messages`: each one a reference, the object itself is in `components.messages`."""
    return {part.local: {"$ref": f"#/components/messages/{part.key}"} for part in parts}


def operations(dialect: Dialect) -> dict[str, Any]:
    """What the server receives and sends on the socket of `dialect`."""
    channel = str(dialect)
    channel_ref = {"$ref": f"#/channels/{channel}"}
    prefix = "" if dialect is Dialect.ROOM else "Channel"
    clients = CLIENT_TYPES[dialect]

    def refs(direction: str, kinds: Sequence[str]) -> list[dict[str, str]]:
        return [
            {"$ref": f"#/channels/{channel}/messages/{message_key(dialect, direction, k)}"} for k in kinds
        ]

    broadcasts = [kind for kind in [*clients, *SERVER_ONLY_TYPES] if kind not in (TO_LIKED_AUTHOR, TO_SENDER)]
    shape = (
        ""
        if dialect is Dialect.ROOM
        else " (in the 2.x shape; `exiter` is dropped without a word, `id` and `timestamp` are ignored)"
    )
    return {
        f"receive{prefix}ClientMessage": {
            "action": "receive",
            "channel": channel_ref,
            "title": f"{prefix} client messages".strip().capitalize(),
            "summary": "What clients send; a refused message is answered with `uncompliant`.",
            "description": (
                f"Every message a client may send{shape}. A message that breaks a rule (not JSON, not an "
                "object, a missing, unknown or server-only `type`, a binary frame, a field out of "
                "bounds, a nickname taken or not the sender's) is not relayed: the server replies "
                "to the sender only with an `uncompliant` message naming the field and the problem."
            ),
            "messages": refs(CLIENT, list(clients)),
            "reply": {"channel": channel_ref, "messages": refs(SERVER, [TO_SENDER])},
        },
        f"sendTo{channel.capitalize()}": {
            "action": "send",
            "channel": channel_ref,
            "title": f"{prefix} broadcasts".strip().capitalize(),
            "summary": f"What every socket of the {channel} receives, the sender's included.",
            "messages": refs(SERVER, broadcasts),
        },
        f"send{prefix}Like": {
            "action": "send",
            "channel": channel_ref,
            "title": f"{prefix} likes".strip().capitalize(),
            "summary": "A like, to the socket registered as `liked_author` only.",
            "messages": refs(SERVER, [TO_LIKED_AUTHOR]),
        },
        f"send{prefix}Uncompliant": {
            "action": "send",
            "channel": channel_ref,
            "title": f"{prefix} refusals".strip().capitalize(),
            "summary": "The answer to a refused message, to its sender only.",
            "messages": refs(SERVER, [TO_SENDER]),
        },
    }
