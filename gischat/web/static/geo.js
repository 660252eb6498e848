// Coordinate reference systems the browser can draw, and the CRS fields the client sends.
// Leaflet's map works in Web Mercator with WGS 84 longitudes and latitudes: layers in
// EPSG:4326 (longitude first, as QGIS and RFC 7946 write GeoJSON) and in EPSG:3857 can be
// drawn; anything else is listed with its CRS and left off the map.

export const WGS84_AUTHID = "EPSG:4326";

// EPSG:4326 in WKT2 (ISO 19162:2019), the form QGIS parses and writes.
export const WGS84_WKT =
  'GEOGCRS["WGS 84",' +
  'DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563,LENGTHUNIT["metre",1]]],' +
  'PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433]],' +
  "CS[ellipsoidal,2]," +
  'AXIS["geodetic latitude (Lat)",north,ORDER[1],ANGLEUNIT["degree",0.0174532925199433]],' +
  'AXIS["geodetic longitude (Lon)",east,ORDER[2],ANGLEUNIT["degree",0.0174532925199433]],' +
  'ID["EPSG",4326]]';

// EPSG:3857 in WKT2, sent with an uploaded GeoJSON file that declares Web Mercator.
export const WEB_MERCATOR_WKT =
  'PROJCRS["WGS 84 / Pseudo-Mercator",' +
  'BASEGEOGCRS["WGS 84",DATUM["World Geodetic System 1984",' +
  'ELLIPSOID["WGS 84",6378137,298.257223563,LENGTHUNIT["metre",1]]],' +
  'PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433]],ID["EPSG",4326]],' +
  'CONVERSION["Popular Visualisation Pseudo-Mercator",METHOD["Popular Visualisation Pseudo Mercator",ID["EPSG",1024]],' +
  'PARAMETER["Latitude of natural origin",0,ANGLEUNIT["degree",0.0174532925199433]],' +
  'PARAMETER["Longitude of natural origin",0,ANGLEUNIT["degree",0.0174532925199433]],' +
  'PARAMETER["False easting",0,LENGTHUNIT["metre",1]],' +
  'PARAMETER["False northing",0,LENGTHUNIT["metre",1]]],' +
  "CS[Cartesian,2]," +
  'AXIS["easting (X)",east,ORDER[1],LENGTHUNIT["metre",1]],' +
  'AXIS["northing (Y)",north,ORDER[2],LENGTHUNIT["metre",1]],' +
  'ID["EPSG",3857]]';

const LONLAT = new Set(["EPSG:4326", "OGC:CRS84", "CRS:84", "OGC:1.3:CRS84", "WGS84"]);
const MERCATOR = new Set(["EPSG:3857", "EPSG:900913", "EPSG:3785", "EPSG:102100", "ESRI:102100", "EPSG:102113"]);

// "urn:ogc:def:crs:EPSG::3857", "http://www.opengis.net/def/crs/EPSG/0/3857", "epsg:3857"
// all become "EPSG:3857"; CRS84 spellings become "OGC:CRS84".
export function normaliseAuthid(value) {
  const text = String(value ?? "").trim();
  if (!text) return "";
  const upper = text.toUpperCase();
  if (upper.endsWith("CRS84")) return "OGC:CRS84";
  let match = upper.match(/^URN:OGC:DEF:CRS:([A-Z]+):[^:]*:(\w+)$/);
  if (match) return `${match[1]}:${match[2]}`;
  match = upper.match(/\/DEF\/CRS\/([A-Z]+)\/[^/]*\/(\w+)$/);
  if (match) return `${match[1]}:${match[2]}`;
  return upper;
}

// How to turn a message's coordinates into Leaflet's latitudes and longitudes: "lonlat",
// "mercator", or null when the browser cannot draw that CRS.
export function crsKind(authid) {
  const id = normaliseAuthid(authid);
  if (id === "" || LONLAT.has(id)) return "lonlat"; // GeoJSON's own default is WGS 84
  if (MERCATOR.has(id)) return "mercator";
  return null;
}

export function toLatLng(kind, x, y) {
  if (kind === "mercator") return L.CRS.EPSG3857.unproject(L.point(x, y));
  return L.latLng(y, x);
}

// The CRS fields to send with an uploaded GeoJSON file, from its legacy `crs` member if any.
export function crsOfGeojson(geojson) {
  const name = geojson?.crs?.properties?.name;
  const id = normaliseAuthid(name);
  if (!id || crsKind(id) === "lonlat") return { crs_wkt: WGS84_WKT, crs_authid: WGS84_AUTHID };
  if (crsKind(id) === "mercator") return { crs_wkt: WEB_MERCATOR_WKT, crs_authid: "EPSG:3857" };
  return { crs_wkt: "", crs_authid: id };
}

// A parsed GeoJSON document as a FeatureCollection (a lone Feature or geometry is wrapped).
export function asFeatureCollection(data) {
  if (!data || typeof data !== "object" || Array.isArray(data)) {
    throw new Error("the file is not a GeoJSON object");
  }
  if (data.type === "FeatureCollection") {
    if (!Array.isArray(data.features)) throw new Error("the FeatureCollection has no features list");
    return data;
  }
  if (data.type === "Feature") return { type: "FeatureCollection", features: [data] };
  const geometries = ["Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"];
  if (geometries.includes(data.type)) {
    return { type: "FeatureCollection", features: [{ type: "Feature", geometry: data, properties: {} }] };
  }
  throw new Error("the file is not GeoJSON (no FeatureCollection, Feature or geometry)");
}

// The map's current view as a bbox message body in EPSG:4326, clamped to the valid range.
export function viewAsBbox(bounds) {
  const round = (value) => Math.round(value * 1e6) / 1e6;
  const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
  return {
    crs_wkt: WGS84_WKT,
    crs_authid: WGS84_AUTHID,
    xmin: round(clamp(bounds.getWest(), -180, 180)),
    xmax: round(clamp(bounds.getEast(), -180, 180)),
    ymin: round(clamp(bounds.getSouth(), -90, 90)),
    ymax: round(clamp(bounds.getNorth(), -90, 90)),
  };
}
