// The map: a basemap from the instance's settings, every shared layer, extent and position, and
// the layer list beside it. Names, authors and feature properties are inserted as text only.

import { crsKind, normaliseAuthid, toLatLng, viewAsBbox } from "./geo.js";
import { clockTime, colorFor, el, serverDate } from "./dom.js";

const PALETTE = ["#d7263d", "#1b7f9b", "#e07a00", "#6a3d9a", "#2e8b57", "#c2185b", "#3b5bdb", "#8d6e00"];
const FIT_OPTIONS = { padding: [24, 24], maxZoom: 17 };

export class GisMap {
  constructor(container, list, config) {
    this.list = list;
    this.entries = [];
    this.count = 0;
    this.userMoved = false;
    this.map = L.map(container, { worldCopyJump: true, zoomControl: true, keyboard: true });
    this.map.attributionControl.setPrefix(false);
    if (config.tile_url) {
      L.tileLayer(config.tile_url, { attribution: config.tile_attribution || "", maxZoom: 19 }).addTo(this.map);
    }
    this.map.setView([30, 0], 2);
    // Until the person pans or zooms, each layer or extent drawn is brought into view.
    this.map.on("dragstart zoomstart", () => {
      if (!this.fitting) this.userMoved = true;
    });
  }

  // The map's container was shown or resized (the phone layout hides it behind the chat).
  refresh() {
    this.map.invalidateSize();
    if (this.pendingZoom) {
      const entry = this.pendingZoom;
      this.pendingZoom = null;
      if (this.entries.includes(entry)) this.zoomTo(entry);
    }
  }

  currentBbox() {
    return viewAsBbox(this.map.getBounds());
  }

  nextColor() {
    return PALETTE[this.count++ % PALETTE.length];
  }

  // A `geojson` message: draw it when its CRS allows, list it either way.
  addLayer(message) {
    const features = Array.isArray(message.geojson?.features) ? message.geojson.features : [];
    const entry = {
      kind: "layer",
      title: String(message.layer_name || "unnamed layer"),
      author: String(message.author),
      authid: normaliseAuthid(message.crs_authid) || "no CRS (WGS 84 assumed)",
      detail: `${features.length} feature${features.length === 1 ? "" : "s"}`,
      color: this.nextColor(),
      layer: null,
    };
    const kind = crsKind(message.crs_authid);
    if (kind) {
      entry.layer = this.drawFeatures(message.geojson, kind, entry);
    } else {
      entry.notDrawn = `not drawn: the browser map draws EPSG:4326 and EPSG:3857 only`;
    }
    this.register(entry);
    return entry;
  }

  drawFeatures(geojson, kind, entry) {
    const style = { color: entry.color, weight: 2, fillOpacity: 0.25, className: "gc-feature" };
    const layer = L.geoJSON(null, {
      ...style,
      style: () => style,
      coordsToLatLng: (coords) => toLatLng(kind, coords[0], coords[1]),
      pointToLayer: (_feature, latlng) =>
        L.circleMarker(latlng, { ...style, radius: 6, fillOpacity: 0.7, className: "gc-feature" }),
      onEachFeature: (feature, drawn) => {
        drawn.bindPopup(() => featurePopup(entry, feature), { maxWidth: 320 });
      },
    });
    for (const feature of geojson.features) {
      try {
        layer.addData(feature);
      } catch (error) {
        // A feature Leaflet cannot draw (a null geometry, say) must not hide the others.
        entry.skipped = (entry.skipped || 0) + 1;
      }
    }
    return layer;
  }

  // A `bbox` message: a dashed rectangle, listed with the layers.
  addBbox(message) {
    const entry = {
      kind: "bbox",
      title: "extent",
      author: String(message.author),
      authid: normaliseAuthid(message.crs_authid) || "no CRS",
      detail: [message.xmin, message.ymin, message.xmax, message.ymax].map(formatNumber).join(", "),
      color: this.nextColor(),
      layer: null,
    };
    const kind = crsKind(message.crs_authid);
    if (kind) {
      const bounds = L.latLngBounds(
        toLatLng(kind, message.xmin, message.ymin),
        toLatLng(kind, message.xmax, message.ymax),
      );
      entry.layer = L.rectangle(bounds, {
        color: entry.color,
        weight: 2,
        dashArray: "6 4",
        fillOpacity: 0.08,
        className: "gc-bbox",
      });
      // An element, not a string: Leaflet would parse a string tooltip as HTML.
      entry.layer.bindTooltip(el("span", {}, `extent shared by ${entry.author}`), { sticky: true });
    } else {
      entry.notDrawn = `not drawn: the browser map draws EPSG:4326 and EPSG:3857 only`;
    }
    this.register(entry);
    return entry;
  }

  // A `position` message (QField's GNSS position, QChat's): a marker with the author and the
  // time, one per author (the latest position replaces the previous one).
  addPosition(message) {
    const author = String(message.author);
    const date = serverDate(message.timestamp);
    const entry = {
      kind: "position",
      title: `position of ${author}`,
      author,
      authid: normaliseAuthid(message.crs_authid) || "no CRS",
      coordinates: `${formatNumber(message.x)}, ${formatNumber(message.y)}`,
      color: colorFor(author),
      layer: null,
    };
    entry.detail = `${entry.coordinates} at ${clockTime(date)}`;
    const kind = crsKind(message.crs_authid);
    const x = Number(message.x);
    const y = Number(message.y);
    if (kind && Number.isFinite(x) && Number.isFinite(y)) {
      entry.latlng = toLatLng(kind, x, y);
      entry.layer = positionMarker(entry, date);
    } else {
      entry.notDrawn = `not drawn: the browser map draws EPSG:4326 and EPSG:3857 only`;
    }
    const key = author.normalize("NFKC").toLowerCase();
    const previous = this.entries.find((other) => other.kind === "position" && other.key === key);
    entry.key = key;
    if (previous) this.remove(previous);
    this.register(entry);
    return entry;
  }

  register(entry) {
    this.entries.push(entry);
    entry.item = this.listItem(entry);
    this.list.querySelector("ul").append(entry.item);
    this.list.classList.add("has-entries");
    this.resized();
    if (entry.layer) {
      this.show(entry);
      if (!this.userMoved) this.zoomTo(entry);
    }
  }

  // The list under the map grew or shrank, and the map with it: tell Leaflet before zooming,
  // or what it centres lands off the middle (the centre is kept).
  resized() {
    const container = this.map.getContainer();
    if (container.clientWidth && container.clientHeight) this.map.invalidateSize({ animate: false });
  }

  show(entry) {
    entry.layer.addTo(this.map);
    // Extents lie under the layers, whose features stay clickable through them.
    if (entry.kind === "bbox") entry.layer.bringToBack();
  }

  zoomTo(entry) {
    if (!entry.layer) return false;
    const bounds = entry.latlng ? L.latLngBounds(entry.latlng, entry.latlng) : entry.layer.getBounds();
    if (!bounds.isValid()) return false;
    // A position replaced by a newer one: bring its place into view, without its old marker.
    const current = this.entries.includes(entry);
    if (current && !this.map.hasLayer(entry.layer)) this.setVisible(entry, true);
    const container = this.map.getContainer();
    if (!container.clientWidth || !container.clientHeight) {
      this.pendingZoom = entry; // a hidden map cannot compute a zoom: fit it when shown
      return true;
    }
    if (this.map._animatingZoom) {
      // Leaflet drops a zoom asked for during a zoom animation: do it once that one ends.
      this.map.once("zoomend", () => this.zoomTo(entry));
      return true;
    }
    this.fitting = true;
    try {
      const southWest = bounds.getSouthWest();
      if (southWest.equals(bounds.getNorthEast())) {
        this.map.setView(southWest, Math.max(this.map.getZoom(), 14));
      } else {
        this.map.fitBounds(bounds, FIT_OPTIONS);
      }
    } finally {
      this.fitting = false;
    }
    return true;
  }

  setVisible(entry, visible) {
    if (!entry.layer) return;
    if (visible) this.show(entry);
    else entry.layer.remove();
    if (entry.checkbox) entry.checkbox.checked = visible;
  }

  remove(entry) {
    if (entry.layer) entry.layer.remove();
    entry.item.remove();
    this.entries = this.entries.filter((other) => other !== entry);
    if (!this.entries.length) this.list.classList.remove("has-entries");
    this.resized();
  }

  clear() {
    for (const entry of [...this.entries]) this.remove(entry);
    this.userMoved = false;
    this.map.setView([30, 0], 2);
  }

  listItem(entry) {
    const swatch = el("span", { className: `swatch swatch-${entry.kind}` });
    swatch.style.borderColor = entry.color;
    if (entry.kind !== "bbox") swatch.style.backgroundColor = entry.color;
    const label = el("span", { className: "entry-title" }, entry.title);
    const title = el("label", { className: "entry-name" });
    if (entry.layer) {
      entry.checkbox = el("input", { type: "checkbox", checked: true });
      entry.checkbox.setAttribute("aria-label", `Show ${entry.title} by ${entry.author}`);
      entry.checkbox.addEventListener("change", () => this.setVisible(entry, entry.checkbox.checked));
      title.append(entry.checkbox);
    }
    title.append(swatch, label);
    const about = el("span", { className: "entry-detail" }, `by ${entry.author} · ${entry.detail} · ${entry.authid}`);
    const item = el("li", { className: entry.layer ? "entry" : "entry not-drawn" }, title, about);
    if (entry.skipped) item.append(el("span", { className: "entry-note" }, `${entry.skipped} feature(s) not drawn`));
    if (entry.notDrawn) item.append(el("span", { className: "entry-note" }, entry.notDrawn));
    const actions = el("span", { className: "entry-actions" });
    if (entry.layer) {
      const zoom = el("button", { type: "button", className: "small" }, "Zoom to");
      zoom.addEventListener("click", () => this.zoomTo(entry));
      actions.append(zoom);
    }
    const remove = el("button", { type: "button", className: "small quiet" }, "Remove");
    remove.setAttribute("aria-label", `Remove ${entry.title} by ${entry.author} from the map`);
    remove.addEventListener("click", () => this.remove(entry));
    actions.append(remove);
    item.append(actions);
    return item;
  }
}

// A dot in the author's colour with a label (author and time); details in a popup. The icon's
// content is an element, never a string: Leaflet would parse a string as HTML.
function positionMarker(entry, date) {
  const dot = el("span", { className: "gc-position-dot" });
  dot.style.backgroundColor = entry.color;
  const label = el("span", { className: "gc-position-label" }, `${entry.author} · ${clockTime(date)}`);
  const icon = L.divIcon({
    className: "gc-position",
    html: el("span", { className: "gc-position-pin" }, dot, label),
    iconSize: null,
    iconAnchor: [8, 8],
  });
  const marker = L.marker(entry.latlng, {
    icon,
    title: `${entry.author}, ${date.toLocaleString()}`,
    alt: `position of ${entry.author}`,
    riseOnHover: true,
  });
  marker.bindPopup(() => {
    const box = el("div", { className: "popup position-popup" });
    box.append(el("strong", {}, entry.title));
    const table = el("table");
    table.append(
      el("tr", {}, el("th", {}, "time"), el("td", {}, date.toLocaleString([], { dateStyle: "full", timeStyle: "medium" }))),
      el("tr", {}, el("th", {}, "x, y"), el("td", {}, entry.coordinates)),
      el("tr", {}, el("th", {}, "CRS"), el("td", {}, entry.authid)),
    );
    box.append(table);
    return box;
  });
  return marker;
}

function featurePopup(entry, feature) {
  const box = el("div", { className: "popup" });
  box.append(el("strong", {}, entry.title));
  const properties = feature && typeof feature.properties === "object" && feature.properties;
  const keys = properties ? Object.keys(properties) : [];
  if (!keys.length) {
    box.append(el("p", { className: "muted" }, "No properties"));
    return box;
  }
  const table = el("table");
  for (const key of keys.slice(0, 50)) {
    const value = properties[key];
    const shown = value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
    table.append(el("tr", {}, el("th", {}, key), el("td", {}, shown)));
  }
  box.append(table);
  if (keys.length > 50) box.append(el("p", { className: "muted" }, `and ${keys.length - 50} more`));
  return box;
}

function formatNumber(value) {
  const number = Number(value);
  if (!Number.isFinite(number)) return String(value);
  return Math.abs(number) >= 1000 ? number.toFixed(0) : String(Math.round(number * 1e5) / 1e5);
}
