"""Layer styles: `style` on `geojson`, as QTribu 1.2 and QChat send and require it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import ServerFactory, ws_client
from wire import GEOJSON_ORDER, WIRE_KEYS, next_frame, parse_strict, refused

pytestmark = pytest.mark.anyio

QML = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.40.0-Bratislava" styleCategories="Symbology">
  <renderer-v2 type="singleSymbol" symbollevels="0">
    <symbols><symbol name="0" type="marker" alpha="1"><layer class="SimpleMarker">
      <Option type="Map"><Option name="color" value="227,26,28,255" type="QString"/>
      <Option name="name" value="circle" type="QString"/></Option>
    </layer></symbol></symbols>
  </renderer-v2>
  <labeling><text fieldName="nom" fontFamily="Open Sans">Étiquette "quotée" \\ ✓</text></labeling>
</qgis>
"""


def layer(style: Any = ..., author: str = "mapper") -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "geojson",
        "author": author,
        "avatar": None,
        "layer_name": "wells",
        "crs_wkt": 'GEOGCRS["WGS 84"]',
        "crs_authid": "EPSG:4326",
        "geojson": {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                    "properties": {},
                }
            ],
        },
    }
    if style is not ...:
        message["style"] = style
    return message


async def relayed(server_factory: ServerFactory, message: dict[str, Any], **settings: Any) -> str:
    server = server_factory(**settings)
    async with ws_client(server) as sender, ws_client(server) as receiver:
        await sender.send(json.dumps(message, ensure_ascii=False))
        while True:
            raw = await receiver.recv_raw()
            if parse_strict(raw)["type"] == "geojson":
                return raw


@pytest.mark.parametrize("padding", [0, 300_000], ids=["small frame", "large frame, parsed in a worker"])
async def test_a_qml_style_round_trips_byte_for_byte(server_factory: ServerFactory, padding: int) -> None:
    style = QML + "<!--" + "p" * padding + "-->"
    raw = await relayed(server_factory, layer(style))
    received = parse_strict(raw)
    assert list(received) == GEOJSON_ORDER
    assert received["style"] == style
    assert json.dumps(style, ensure_ascii=False) in raw


@pytest.mark.parametrize("sent", [..., None], ids=["absent", "null"])
async def test_style_is_null_when_the_sender_gave_none(server_factory: ServerFactory, sent: Any) -> None:
    received = parse_strict(await relayed(server_factory, layer(sent)))
    assert set(received) == WIRE_KEYS["geojson"]
    assert received["style"] is None


@pytest.mark.parametrize("padding", [0, 300_000], ids=["small frame", "large frame, parsed in a worker"])
async def test_style_can_be_left_out_for_old_clients(server_factory: ServerFactory, padding: int) -> None:
    """GEOJSON_STYLE=false: QTribu 1.1.x builds its dataclass without `style` and refuses the key."""
    received = parse_strict(await relayed(server_factory, layer(QML + " " * padding), geojson_style=False))
    assert list(received) == ["type", "author", "avatar", "layer_name", "crs_wkt", "crs_authid", "geojson"]


async def test_style_size_and_type_are_checked(server_factory: ServerFactory) -> None:
    server = server_factory(max_style_length=1000)
    async with ws_client(server) as client:
        assert await refused(client, layer("x" * 1001)) == "style: too long (1001 characters, max 1000)"
        assert await refused(client, layer(42)) == "style: must be a string"
        await client.send(layer("x" * 1000))
        assert (await next_frame(client))["style"] == "x" * 1000
