"""The payloads the document's client examples start from, for every type of either dialect.

Examples are data, not code: a reviewer reads what a client sends here, apart from the machinery
that checks them (`gischat.protocol.asyncapi.examples`) and the refusals built on them
(`gischat.protocol.asyncapi.refusals`). Each payload is checked against the instance's rules when
the document is built, and left out if the instance refuses it, so an entry here may break a tight
limit without breaking the document. Fixed data keeps the document the same on every start.

This module depends on nothing else of the package.
"""

from __future__ import annotations

from typing import Any

# A client example: its name, summary and payload.
ClientExample = tuple[str, str, dict[str, Any]]

TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR42mOwbnIDAAH/AQTX7nkhAAAAAElFTkSuQmCC"
WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
)
LAMBERT93_WKT = (
    'PROJCS["RGF93 v1 / Lambert-93",GEOGCS["RGF93 v1",DATUM["Reseau_Geodesique_Francais_1993_v1",'
    'SPHEROID["GRS 1980",6378137,298.257222101]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["latitude_of_origin",46.5],'
    'PARAMETER["central_meridian",3],PARAMETER["standard_parallel_1",49],PARAMETER["standard_parallel_2",44],'
    'PARAMETER["false_easting",700000],PARAMETER["false_northing",6600000],UNIT["metre",1],'
    'AUTHORITY["EPSG","2154"]]'
)
WGS84_WKT2 = (
    'GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563]],'
    'CS[ellipsoidal,2],AXIS["latitude",north],AXIS["longitude",east],ANGLEUNIT["degree",0.0174532925199433],'
    'ID["EPSG",4326]]'
)
MODEL_XML = (
    '<!DOCTYPE model>\n<Option type="Map">\n'
    '  <Option type="QString" name="model_group" value="Field work"/>\n'
    '  <Option type="QString" name="model_name" value="buffer_wells"/>\n'
    "</Option>\n"
)
SCRIPT_CODE = (
    "from qgis.core import QgsProcessingAlgorithm\n\n\n"
    "class CountFeatures(QgsProcessingAlgorithm):\n"
    "    def name(self):\n"
    '        return "count_features"\n'
)
# What a client sends, by type: (name, summary, payload). Each one is checked against the
# instance's rules when the document is built; models may add their own through
# `json_schema_extra={"examples": [...]}`.
CLIENT_EXAMPLES: dict[str, list[ClientExample]] = {
    "text": [
        (
            "hello",
            "A greeting, with an avatar",
            {"type": "text", "author": "Jane-GIS", "avatar": "mGeoPackage.svg", "text": "Hi all!"},
        )
    ],
    "image": [
        (
            "tiny-png",
            "A one-pixel PNG",
            {"type": "image", "author": "Jane-GIS", "avatar": None, "image_data": TINY_PNG},
        )
    ],
    "geojson": [
        (
            "wells",
            "A layer with one point",
            {
                "type": "geojson",
                "author": "Jane-GIS",
                "avatar": None,
                "layer_name": "wells",
                "crs_wkt": WGS84_WKT,
                "crs_authid": "EPSG:4326",
                "geojson": {
                    "type": "FeatureCollection",
                    "features": [
                        {
                            "type": "Feature",
                            "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                            "properties": {"depth": 12},
                        }
                    ],
                },
            },
        )
    ],
    "crs": [
        (
            "lambert-93",
            "The French Lambert-93 projection",
            {
                "type": "crs",
                "author": "Jane-GIS",
                "avatar": None,
                "crs_wkt": LAMBERT93_WKT,
                "crs_authid": "EPSG:2154",
            },
        )
    ],
    "bbox": [
        (
            "paris-extent",
            "A 10 km square around Paris, in Lambert-93",
            {
                "type": "bbox",
                "author": "Jane-GIS",
                "avatar": None,
                "crs_wkt": LAMBERT93_WKT,
                "crs_authid": "EPSG:2154",
                "xmin": 650000.0,
                "xmax": 660000.0,
                "ymin": 6860000.0,
                "ymax": 6870000.0,
            },
        )
    ],
    "newcomer": [("register", "Registering a nickname", {"type": "newcomer", "newcomer": "Jane-GIS"})],
    "like": [
        (
            "like",
            "Bob likes Jane-GIS's message",
            {"type": "like", "liker_author": "Bob", "liked_author": "Jane-GIS", "message": "Hi all!"},
        )
    ],
    # The channel-only types.
    "position": [
        (
            "gnss-fix",
            "A GNSS position in WGS 84",
            {
                "type": "position",
                "author": "Jane-GIS",
                "avatar": None,
                "crs_wkt": WGS84_WKT2,
                "crs_authid": "EPSG:4326",
                "x": 2.3522,
                "y": 48.8566,
            },
        )
    ],
    "model": [
        (
            "buffer-wells",
            "A Processing model, in a group",
            {
                "type": "model",
                "author": "Jane-GIS",
                "avatar": None,
                "model_name": "buffer_wells",
                "model_group": "Field work",
                "raw_xml": MODEL_XML,
            },
        )
    ],
    "script": [
        (
            "count-features",
            "A Processing script",
            {
                "type": "script",
                "author": "Jane-GIS",
                "avatar": None,
                "name": "count_features",
                "raw_pycode": SCRIPT_CODE,
            },
        )
    ],
}
