"""What the document says to humans about each message type and each field.

The models' schemas say what a message may hold; only people can say what it is for and who
receives it. Those words live here, once for every type of either dialect (the channel-only
types, `position`, `model` and `script`, included), so both sockets describe a type alike and a
reviewer finds every sentence of the catalogue in one place.

A type missing from `TYPE_NOTES` still gets a message, titled by its type and described by its
model's docstring; a field missing from `FIELD_NOTES` keeps whatever description its model gives.
"""

from __future__ import annotations

from collections.abc import Mapping

from gischat.protocol.dialects import Dialect
from gischat.protocol.messages import WireMessage

# Written into the notes of every field that names a file a client saves.
FILE_NAME_NOTE = "clients save the file under it: no '/', '\\', control character, not '.' or '..'"

# One line per type: title and what it is for, `{room}` standing for the socket's noun (room or
# channel), so the same sentence serves both sockets.
TYPE_NOTES: dict[str, tuple[str, str]] = {
    "text": ("Text", "A chat line. Client → server, then broadcast to the whole {room}, sender included."),
    "image": (
        "Image",
        "A picture as base64 (PNG, JPEG, GIF, WebP or BMP). Client → server, then broadcast to the whole "
        "{room}, fitted within MAX_IMAGE_SIZE pixels and stripped of its metadata (JPEG stays JPEG, "
        "everything else becomes PNG).",
    ),
    "geojson": (
        "GeoJSON layer",
        "A vector layer as a GeoJSON FeatureCollection. Client → server, then broadcast to the whole {room} "
        "with every member the client sent.",
    ),
    "crs": ("Coordinate reference system", "A CRS. Client → server, then broadcast to the whole {room}."),
    "bbox": (
        "Bounding box",
        "An extent in a CRS. Client → server, then broadcast to the whole {room}.",
    ),
    "newcomer": (
        "Nickname registration",
        "Registers the socket's nickname in its {room}, first come first served (compared after Unicode "
        "NFKC normalisation and case folding); a taken nickname or a second registration on the same "
        "socket is refused. Client → server, then broadcast to the whole {room}.",
    ),
    "like": (
        "Like",
        "A like of someone's message. Client → server, then delivered only to the socket registered as "
        "`liked_author` in the {room}; dropped without a word when there is none.",
    ),
    "nb_users": (
        "Number of users",
        "Server → whole {room}: the number of open websockets in the {room}, on joins and leaves (bursts "
        "coalesced to one per NB_USERS_INTERVAL).",
    ),
    "exiter": ("Exiter", "Server → whole {room}, when a socket with a registered nickname leaves."),
    "uncompliant": (
        "Refusal",
        "Server → the sender only: the answer to a refused message, naming the field and the problem. "
        "The socket stays open.",
    ),
    # The channel-only types.
    "position": (
        "Position",
        "Where the author stands (QField's GNSS position), in a CRS. Client → server, then broadcast to "
        "the channel sockets of the conversation, sender included; room sockets never see it.",
    ),
    "model": (
        "Processing model",
        "A QGIS Processing graphical model (a `.model3` XML document). Client → server, then broadcast to "
        "the channel sockets of the conversation, sender included; room sockets never see it.",
    ),
    "script": (
        "Processing script",
        "A QGIS Processing Python script: code the receiving QGIS saves among its scripts and may run, so "
        "refused unless the instance sets ALLOW_SCRIPTS. Client → server, then broadcast to the channel "
        "sockets of the conversation, sender included; room sockets never see it.",
    ),
}

# One line per field, whatever model it is in.
FIELD_NOTES: dict[str, str] = {
    "type": "The message type; every frame carries it.",
    "author": "The sender's nickname.",
    "avatar": "The name of a QGIS icon shown next to the message, or null.",
    "text": "The message.",
    "image_data": "The image file, base64-encoded.",
    "layer_name": f"The layer's name ({FILE_NAME_NOTE}).",
    "crs_wkt": "The CRS as WKT.",
    "crs_authid": "The CRS's authority identifier, e.g. EPSG:4326.",
    "geojson": "A GeoJSON FeatureCollection (RFC 7946).",
    "xmin": "Smallest x, in the CRS's units.",
    "xmax": "Largest x, in the CRS's units.",
    "ymin": "Smallest y, in the CRS's units.",
    "ymax": "Largest y, in the CRS's units.",
    "newcomer": "The nickname to register.",
    "liker_author": "Who likes the message: the sender's nickname.",
    "liked_author": "The nickname of the message's author, the only recipient.",
    "message": "The liked message's text.",
    "nb_users": "Open websockets in the conversation, room and channel sockets alike.",
    "exiter": "The nickname that left.",
    "reason": "What was wrong: the field, then the problem.",
    # The channel-only types' fields.
    "x": "The x coordinate (easting or longitude), in the CRS's units.",
    "y": "The y coordinate (northing or latitude), in the CRS's units.",
    "model_name": f"The model's name ({FILE_NAME_NOTE}).",
    "model_group": "The model's group in the Processing toolbox, or null.",
    "raw_xml": "The model, as the `.model3` XML document QGIS saves.",
    "name": f"The script's name ({FILE_NAME_NOTE}).",
    "raw_pycode": "The script's Python source.",
}

# Keys whose meaning on a channel frame (3.x envelope) is more precise than in the model's schema.
SERVER_FIELD_NOTES: dict[str, str] = {
    "style": "The layer's QGIS style (a QML document), relayed byte for byte; always present, null when none.",
    "model_group": "The model's group in the Processing toolbox; always present, null when none.",
}


def type_notes(kind: str, model: type[WireMessage], dialect: Dialect) -> tuple[str, str]:
    """Title and description of `kind` on the socket of `dialect`."""
    title, description = TYPE_NOTES.get(kind, (kind, model.__doc__ or kind))
    return title, description.replace("{room}", str(dialect))


def descriptions(models: Mapping[str, type[WireMessage]], dialect: Dialect) -> dict[str, str]:
    """Each type's description on the socket of `dialect`, for the sockets' schemas."""
    return {kind: type_notes(kind, model, dialect)[1] for kind, model in models.items()}
