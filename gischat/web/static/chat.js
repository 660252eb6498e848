// The conversation: one list item per message or event, built from text nodes only.

import { colorFor, el, serverDate, timeElement } from "./dom.js";

const MENTION = /@[\p{L}\p{N}_-]+/gu;
const MAX_ENTRIES = 500;
const QUOTE_LENGTH = 60; // characters of a replied-to message shown above the reply
const CODE_PREVIEW = 20000; // characters of a script shown inline (the download has all of it)
const SCRIPT_WARNING =
  "Python code: running it (in QGIS or elsewhere) runs it on your computer with your rights. " +
  "Read it first, and run it only if you trust its author. This page never runs it.";

export function sameNickname(a, b) {
  return String(a).normalize("NFKC").toLowerCase() === String(b).normalize("NFKC").toLowerCase();
}

// "data:" URL of a base64 image, its type read from the first bytes (the server sends PNG or JPEG).
export function imageSource(base64) {
  const data = String(base64);
  let type = "image/png";
  if (data.startsWith("/9j/")) type = "image/jpeg";
  else if (data.startsWith("R0lGOD")) type = "image/gif";
  else if (data.startsWith("UklGR")) type = "image/webp";
  else if (data.startsWith("Qk")) type = "image/bmp";
  return `data:${type};base64,${data}`;
}

// The first words of a message, for a quote: at most QUOTE_LENGTH characters.
export function firstWords(text) {
  const chars = [...String(text).replace(/\s+/g, " ").trim()];
  return chars.length <= QUOTE_LENGTH ? chars.join("") : `${chars.slice(0, QUOTE_LENGTH - 1).join("")}…`;
}

// `name` with `extension` appended unless it already ends with it.
export function withExtension(name, extension) {
  const text = String(name);
  return text.toLowerCase().endsWith(extension) ? text : `${text}${extension}`;
}

function formatBytes(count) {
  if (count < 1024) return `${count} bytes`;
  if (count < 1024 * 1024) return `${(count / 1024).toFixed(1)} kB`;
  return `${(count / 1024 / 1024).toFixed(1)} MB`;
}

// Save `text` as a file: a Blob behind a temporary download link. Nothing is opened or run.
export function saveFile(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name });
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has started from the Blob; give the browser time to read it before freeing it.
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

export class ChatLog {
  // options: me() -> nickname, maxMessage, like(author, summary), zoom(entry), enlarge(src, alt),
  // canReply() -> whether the server threads replies, reply({id, author, summary})
  constructor(list, options) {
    this.list = list;
    this.options = options;
    this.moderator = null; // (item) -> a moderator's button for a message with an id
  }

  // Give every message with an id a moderator's button built by `moderator(item)`, now and as
  // they arrive; `null` takes them all away.
  setModerator(moderator) {
    this.moderator = moderator;
    for (const button of this.list.querySelectorAll(".msg-actions .mod-action")) button.remove();
    for (const item of this.list.querySelectorAll("li.msg")) {
      let actions = item.querySelector(".msg-actions");
      if (moderator && item.dataset.id) {
        if (!actions) actions = item.appendChild(el("div", { className: "msg-actions" }));
        actions.append(moderator(item));
      } else if (actions && !actions.childElementCount) {
        actions.remove();
      }
    }
  }

  clear() {
    this.list.replaceChildren();
  }

  add(item) {
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    list.append(item);
    while (list.childElementCount > MAX_ENTRIES) list.firstElementChild.remove();
    if (atBottom || item.classList.contains("mine")) list.scrollTop = list.scrollHeight;
    return item;
  }

  // The entry of the message with this id, if it is still in the log.
  findMessage(id) {
    for (const item of this.list.children) {
      if (item.dataset.id === id) return item;
    }
    return null;
  }

  // A message with an author: avatar letter, name, the server's time, what it replies to, its
  // body, a like button on others' and a reply button when the server threads replies.
  authored(message, body, summary) {
    const author = String(message.author);
    const mine = sameNickname(author, this.options.me());
    const avatar = el("span", { className: "avatar" }, author.slice(0, 1).toUpperCase());
    avatar.style.backgroundColor = colorFor(author);
    avatar.setAttribute("aria-hidden", "true");
    const name = el("span", { className: "author" }, author);
    name.style.color = colorFor(author);
    const meta = el("div", { className: "meta" }, name);
    // A Matrix user, relayed by the instance's bridge: only the bridge may use its suffix.
    const suffix = this.options.matrixSuffix;
    if (suffix && author.toLowerCase().endsWith(suffix)) {
      meta.append(el("span", { className: "badge matrix", title: "writes from Matrix, through this instance's bridge" }, "Matrix"));
    }
    meta.append(timeElement(serverDate(message.timestamp)));
    const item = el("li", { className: mine ? "msg mine" : "msg" }, avatar, meta);
    if (typeof message.in_reply_to_id === "string") {
      item.append(this.replyQuote(message.in_reply_to_id));
      item.classList.add("reply");
    }
    item.append(body);
    item.dataset.author = author;
    item.dataset.summary = summary;
    const id = typeof message.id === "string" ? message.id : null;
    if (id !== null) item.dataset.id = id;
    const actions = el("div", { className: "msg-actions" });
    if (id !== null && this.options.canReply()) {
      const reply = el("button", { type: "button", className: "reply-button" }, "↩ Reply");
      reply.setAttribute("aria-label", `Reply to ${author}'s message`);
      reply.addEventListener("click", () => this.options.reply({ id, author, summary }));
      actions.append(reply);
    }
    if (!mine) {
      const like = el("button", { type: "button", className: "like" }, "♥ Like");
      like.setAttribute("aria-label", `Like ${author}'s message`);
      like.setAttribute("aria-pressed", "false");
      like.addEventListener("click", () => {
        if (like.getAttribute("aria-pressed") === "true") return;
        if (this.options.like(author, summary)) {
          like.setAttribute("aria-pressed", "true");
          like.textContent = "♥ Liked";
        }
      });
      actions.append(like);
    }
    if (id !== null && this.moderator) actions.append(this.moderator(item));
    if (actions.childElementCount) item.append(actions);
    return this.add(item);
  }

  // What a reply answers: the author and first words of the target when it is in the log (a
  // click brings it into view), a plain note otherwise.
  replyQuote(id) {
    const target = this.findMessage(id);
    if (!target) return el("p", { className: "reply-quote missing" }, "↪ Reply to an earlier message");
    const author = target.dataset.author;
    const quote = el(
      "button",
      { type: "button", className: "reply-quote" },
      "↪ ",
      el("span", { className: "reply-author" }, author),
      ` “${firstWords(target.dataset.summary)}”`,
    );
    quote.setAttribute("aria-label", `Show the message from ${author} this replies to`);
    quote.addEventListener("click", () => {
      target.scrollIntoView({ block: "center", behavior: "smooth" });
      target.classList.remove("flash");
      void target.offsetWidth; // restart the animation
      target.classList.add("flash");
    });
    return quote;
  }

  text(message) {
    const text = String(message.text);
    const body = el("div", { className: "body" });
    const me = this.options.me();
    let last = 0;
    let mentionsMe = false;
    for (const match of text.matchAll(MENTION)) {
      body.append(text.slice(last, match.index));
      const target = sameNickname(match[0].slice(1), me);
      mentionsMe ||= target;
      body.append(el("mark", { className: target ? "mention me" : "mention" }, match[0]));
      last = match.index + match[0].length;
    }
    body.append(text.slice(last));
    const item = this.authored(message, body, this.truncate(text));
    if (mentionsMe && !item.classList.contains("mine")) item.classList.add("mentions-me");
  }

  image(message) {
    const author = String(message.author);
    const image = el("img", { src: imageSource(message.image_data), alt: `Image from ${author}`, loading: "lazy" });
    const open = el("button", { type: "button", className: "thumb" }, image);
    open.setAttribute("aria-label", `Enlarge the image from ${author}`);
    open.addEventListener("click", () => this.options.enlarge(image.src, image.alt));
    this.authored(message, el("div", { className: "body" }, open), "image");
  }

  layer(message, entry) {
    const body = el(
      "div",
      { className: "body shared" },
      el("span", { className: "tag" }, "layer"),
      " ",
      el("strong", { className: "layer-title" }, entry.title),
      ` · ${entry.detail} · ${entry.authid}`,
    );
    body.append(this.mapButton(entry));
    this.authored(message, body, this.truncate(`layer ${entry.title}`));
  }

  bbox(message, entry) {
    const body = el(
      "div",
      { className: "body shared" },
      el("span", { className: "tag" }, "extent"),
      ` ${entry.detail} · ${entry.authid}`,
    );
    body.append(this.mapButton(entry));
    this.authored(message, body, "extent");
  }

  crs(message) {
    const authid = String(message.crs_authid || "a CRS without identifier");
    const body = el("div", { className: "body shared" }, el("span", { className: "tag" }, "CRS"), ` ${authid}`);
    this.authored(message, body, this.truncate(`CRS ${authid}`));
  }

  position(message, entry) {
    const body = el(
      "div",
      { className: "body shared" },
      el("span", { className: "tag" }, "position"),
      ` ${entry.coordinates} · ${entry.authid}`,
    );
    body.append(this.mapButton(entry));
    this.authored(message, body, "position");
  }

  // A `model` (a Processing model) or a `script` (Python code): listed as a file to download,
  // never opened or run here; a script carries a warning and can be read as text.
  attachment(message) {
    const script = message.type === "script";
    const fileName = script ? withExtension(message.name, ".py") : withExtension(message.model_name, ".model3");
    const content = String(script ? message.raw_pycode : message.raw_xml);
    const size = new TextEncoder().encode(content).length;
    const body = el(
      "div",
      { className: `body shared attachment ${script ? "script" : "model"}` },
      el("span", { className: "tag" }, script ? "script" : "model"),
      " ",
      el("strong", { className: "file-name" }, fileName),
      ` · ${formatBytes(size)}`,
    );
    if (!script && typeof message.model_group === "string" && message.model_group) {
      body.append(` · group ${message.model_group}`);
    }
    const download = el("button", { type: "button", className: "small download" }, "Download");
    download.setAttribute("aria-label", `Download ${fileName}`);
    const type = script ? "text/x-python;charset=utf-8" : "application/xml;charset=utf-8";
    download.addEventListener("click", () => saveFile(fileName, content, type));
    body.append(download);
    if (script) {
      const warning = el("p", { className: "code-warning" }, el("strong", {}, "⚠ This is code. "), SCRIPT_WARNING);
      warning.setAttribute("role", "note");
      const shown = content.length > CODE_PREVIEW ? `${content.slice(0, CODE_PREVIEW)}\n…` : content;
      const preview = el("details", { className: "code-preview" }, el("summary", {}, "Read the code"), el("pre", {}, shown));
      body.append(warning, preview);
    }
    this.authored(message, body, this.truncate(`${script ? "script" : "model"} ${fileName}`));
  }

  mapButton(entry) {
    if (!entry.layer) return el("span", { className: "muted" }, " (not drawn on this map)");
    const button = el("button", { type: "button", className: "small" }, "Show on map");
    button.addEventListener("click", () => this.options.zoom(entry));
    return button;
  }

  // A line of the conversation that is not a message; `message` (a server frame) dates it in
  // a tooltip.
  notice(text, kind = "info", message = null) {
    const item = el("li", { className: `notice ${kind}` }, text);
    if (message) item.title = serverDate(message.timestamp).toLocaleString([], { dateStyle: "full", timeStyle: "medium" });
    return this.add(item);
  }

  newcomer(message) {
    const nickname = String(message.newcomer);
    const mine = sameNickname(nickname, this.options.me());
    this.notice(mine ? `You joined as ${nickname}` : `${nickname} joined`, "arrival", message);
  }

  exiter(message) {
    this.notice(`${String(message.exiter)} left`, "departure", message);
  }

  likeReceived(message) {
    const liker = String(message.liker_author);
    const text = String(message.message);
    this.notice(`♥ ${liker} liked your message: “${text}”`, "liked", message);
    // Count it on the newest own message it can be matched to.
    const own = [...this.list.querySelectorAll("li.msg.mine")].reverse();
    const target = own.find((item) => item.dataset.summary === text);
    if (!target) return;
    let badge = target.querySelector(".likes");
    if (!badge) {
      badge = el("span", { className: "likes" });
      target.append(badge);
      target.dataset.likers = "";
    }
    const likers = target.dataset.likers ? target.dataset.likers.split("\n") : [];
    likers.push(liker);
    target.dataset.likers = likers.join("\n");
    badge.textContent = `♥ ${likers.length}`;
    badge.title = `Liked by ${likers.join(", ")}`;
  }

  refusal(message) {
    this.notice(`Not delivered: ${String(message.reason)}`, "refused", message);
  }

  truncate(text) {
    const max = this.options.maxMessage;
    const chars = [...text];
    return chars.length <= max ? text : `${chars.slice(0, max - 1).join("")}…`;
  }
}
