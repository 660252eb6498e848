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
