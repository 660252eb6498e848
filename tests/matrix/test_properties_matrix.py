"""Properties of the Matrix bridge's pure parts: names (`matrix/names.py`), conversions (`matrix/convert.py`).

- `slug`: only what a room alias's localpart holds, and a slug is its own slug.
- `puppet_localpart`: a valid localpart within the room it is given, never the bot's, and one
  virtual user per nickname (injective on nicknames gischat accepts, digests included).
- `nickname_base`: any display name and user id give the start of a nickname that, with the
  suffix and any number the bridge tries, is a nickname gischat accepts within its length.
- `message_event`: every post the server writes (any accepted frame of any type) becomes a
  Matrix event or nothing, never an exception.
- What a Matrix event's content says is read as untrusted JSON (`inbound._is_geojson`, `_size`).
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any, cast

import orjson
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from gischat.matrix import names
from gischat.matrix.convert import MatrixMessage, message_event
from gischat.matrix.inbound import MAX_NICKNAME_TRIES, Inbound, _is_geojson, _size
from gischat.protocol.dialects import Dialect, Post, parse_frame
from gischat.protocol.messages import Limits, check_nickname
from gischat.protocol.refusals import Uncompliant
from gischat.settings import SettingsError, load_settings

from properties_profile import examples
from strategies import JSON, NICKNAMES, TEXT, VALID_FRAMES

PREFIXES = st.from_regex(r"[a-z0-9._=-]{1,32}", fullmatch=True)
LOCALPART = re.compile(r"[a-z0-9._=-]+")
# Room for a localpart: what MAX_USER_ID_LENGTH leaves beside a server name of up to 150
# characters, down to the least a digest needs.
ROOMS = st.integers(names.MAX_USER_ID_LENGTH - 152, names.MAX_USER_ID_LENGTH) | st.just(74)


def decoded(encoded: str) -> str:
    """A puppet localpart (its prefix removed) back to the nickname: `_x` X, `__` _, `=hh` a byte."""
    out, at = bytearray(), 0
    if encoded.startswith("=bot"):
        encoded = encoded[1:]
    while at < len(encoded):
        char = encoded[at]
        if char == "_":
            following = encoded[at + 1]
            out += b"_" if following == "_" else following.upper().encode()
            at += 2
        elif char == "=":
            out.append(int(encoded[at + 1 : at + 3], 16))
            at += 3
        else:
            out += char.encode()
            at += 1
    return out.decode()


@examples(300)
@given(room=TEXT | st.text())
def test_a_slug_holds_only_what_an_alias_may(room: str) -> None:
    slug = names.slug(room)
    assert slug == "" or LOCALPART.fullmatch(slug)
    assert names.slug(slug) == slug


@examples(300)
@given(prefix=PREFIXES, nickname=NICKNAMES | TEXT.filter(bool), room=ROOMS)
def test_a_puppet_localpart_is_valid_and_fits(prefix: str, nickname: str, room: int) -> None:
    localpart = names.puppet_localpart(prefix, nickname, room)
    assert localpart.startswith(prefix)
    assert LOCALPART.fullmatch(localpart), localpart
    assert len(localpart) <= room
    assert localpart != names.bot_localpart(prefix)
    encoded = localpart.removeprefix(prefix)
    if encoded.startswith("=="):
        event("digest")
        assert re.fullmatch(r"==[0-9a-f]{40}", encoded)
    else:
        assert decoded(encoded) == nickname


@examples(300)
@given(prefix=PREFIXES, first=NICKNAMES, second=NICKNAMES | NICKNAMES.map(str.swapcase), room=ROOMS)
def test_one_virtual_user_per_nickname(prefix: str, first: str, second: str, room: int) -> None:
    assume(first != second)
    assert names.puppet_localpart(prefix, first, room) != names.puppet_localpart(prefix, second, room)


@examples(300)
@given(
    display=st.none() | TEXT | st.text(),
    mxid=st.builds(lambda local, server: f"@{local}:{server}", TEXT, TEXT) | TEXT,
    max_length=st.integers(len(names.MATRIX_SUFFIX) + 3, 256),  # the least the settings allow
)
def test_a_nickname_base_makes_nicknames_gischat_accepts(
    display: str | None, mxid: str, max_length: int
) -> None:
    base = names.nickname_base(display, mxid, max_length)
    assert base
    limits = Limits(max_author_length=max_length)
    for number in (1, 2, 9, MAX_NICKNAME_TRIES):
        nickname = names.matrix_nickname(base, number)
        assert check_nickname(nickname, limits, "author") == nickname
        assert names.is_matrix_nickname(nickname)


@examples(300)
@given(frame=VALID_FRAMES)
def test_every_post_the_server_writes_converts(frame: dict[str, Any]) -> None:
    try:
        message = parse_frame(orjson.dumps(frame).decode(), Limits(allow_scripts=True), Dialect.CHANNEL)
        post = Post.of(message)
    except Uncompliant:
        return
    converted = message_event(post.kind, post.body, post.style)
    event(f"{post.kind}: {'nothing' if converted is None else 'event'}")
    assert converted is None or isinstance(converted, MatrixMessage)
    if converted is not None:
        assert isinstance(converted.content.get("body"), str)
        if converted.upload is not None:
            assert converted.content["info"]["size"] == len(converted.upload.data)


@examples(300)
@given(
    content=JSON | st.fixed_dictionaries({"info": st.fixed_dictionaries({"mimetype": JSON, "size": JSON})})
)
def test_event_contents_are_read_as_untrusted_json(content: Any) -> None:
    """A Matrix client may put anything in an event's content: no member is trusted to be a str."""
    if isinstance(content, dict):
        assert isinstance(_is_geojson(content), bool)
    assert _size({"content": content}) >= 0


# --------------------------------------------------------------------------- found by the properties


@pytest.mark.parametrize("mimetype", [[], {}, ["application/geo+json"]], ids=repr)
def test_a_file_whose_mimetype_is_not_a_string_is_no_layer(mimetype: Any) -> None:
    """`info.mimetype` set to a list raised TypeError (unhashable, looked up in a set)."""
    assert not _is_geojson({"msgtype": "m.file", "body": "a", "info": {"mimetype": mimetype}})
    assert _is_geojson({"msgtype": "m.file", "body": "wells.geojson", "info": {"mimetype": mimetype}})


@pytest.mark.parametrize("msgtype", [[], {}, ["m.text"]], ids=repr)
def test_a_message_whose_msgtype_is_not_a_string_is_left_alone(msgtype: Any) -> None:
    """`msgtype` set to a list raised TypeError in the inbound bridge, which the portal's queue
    counted as a job the homeserver refused; it is an event the bridge has nothing to say about."""
    inbound = Inbound.__new__(Inbound)
    inbound.limits = Limits()
    event = {"type": "m.room.message", "content": {"msgtype": msgtype, "body": "hello"}}
    said = asyncio.run(cast(Any, inbound)._message("QGIS", "Jane-matrix", event))
    assert said == (None, None)


def test_an_image_body_is_uploaded_as_it_is() -> None:
    """The example the properties start from: the server's own resized PNG, as `m.image`."""
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mOwbnIDAAH/AQTX7nkhAAAAAElFTkSuQmCC"
    post = Post("image", f'"author":"Jane","avatar":null,"image_data":"{png}"')
    converted = message_event(post.kind, post.body, post.style)
    assert converted is not None
    assert converted.upload is not None
    assert converted.upload.data == base64.b64decode(png)
    assert converted.content["info"]["mimetype"] == "image/png"


def test_author_lengths_too_short_for_every_matrix_nickname_are_refused() -> None:
    """Found by the properties: MAX_AUTHOR_LENGTH=9 was accepted with the bridge on, and the 10th
    Matrix user whose display name gives one base got `x10-matrix`, one character too long."""
    bridge = {
        "matrix_homeserver_url": "http://127.0.0.1:8008",
        "matrix_server_name": "example.org",
        "matrix_as_token": "a" * 32,
        "matrix_hs_token": "h" * 32,
    }
    with pytest.raises(SettingsError, match="MAX_AUTHOR_LENGTH"):
        load_settings(_env_file=None, max_author_length=9, **bridge)
    base = names.nickname_base(None, "@x:example.org", 10)
    assert load_settings(_env_file=None, max_author_length=10, **bridge).max_author_length == 10
    assert check_nickname(
        names.matrix_nickname(base, MAX_NICKNAME_TRIES), Limits(max_author_length=10), "author"
    )
