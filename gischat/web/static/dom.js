// A tiny element builder. Children that are strings become text nodes: nothing that comes
// from a message is ever parsed as HTML.

export function el(tag, properties = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(properties)) {
    node[name] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function $(selector) {
  const node = document.querySelector(selector);
  if (!node) throw new Error(`missing element ${selector}`);
  return node;
}

// A stable colour per nickname, so a name reads the same in the log and the user list.
export function colorFor(name) {
  let hash = 0;
  for (const char of String(name).toLowerCase()) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 60% 35%)`;
}

export function clockTime(date = new Date()) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A server timestamp (integer seconds since the epoch) as a Date; now when it is missing or
// not a number (a frame from a server that gives none).
export function serverDate(timestamp) {
  const seconds = Number(timestamp);
  if (timestamp === null || timestamp === undefined || !Number.isFinite(seconds)) return new Date();
  const date = new Date(seconds * 1000);
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

// A <time> element: the local time (with the day when it is not today), the full date in its
// tooltip, the machine-readable instant in `datetime`.
export function timeElement(date) {
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  const shown = sameDay
    ? clockTime(date)
    : `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${clockTime(date)}`;
  const node = el("time", { dateTime: date.toISOString() }, shown);
  node.title = date.toLocaleString([], { dateStyle: "full", timeStyle: "medium" });
  return node;
}
