// The conversation: one list item per message or event, built from text nodes only.

import { clockTime, colorFor, el } from "./dom.js";

const MENTION = /@[\p{L}\p{N}_-]+/gu;
const MAX_ENTRIES = 500;

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

export class ChatLog {
  // options: me() -> nickname, maxMessage, like(message, summary), zoom(entry), enlarge(src, alt)
  constructor(list, options) {
    this.list = list;
    this.options = options;
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

  // A message with an author: avatar letter, name, time, body, and a like button on others'.
  authored(message, body, summary) {
    const author = String(message.author);
    const mine = sameNickname(author, this.options.me());
    const avatar = el("span", { className: "avatar" }, author.slice(0, 1).toUpperCase());
    avatar.style.backgroundColor = colorFor(author);
    avatar.setAttribute("aria-hidden", "true");
    const name = el("span", { className: "author" }, author);
    name.style.color = colorFor(author);
    const meta = el("div", { className: "meta" }, name, el("time", {}, clockTime()));
    const item = el("li", { className: mine ? "msg mine" : "msg" }, avatar, meta, body);
    item.dataset.author = author;
    item.dataset.summary = summary;
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
      item.append(like);
    }
    return this.add(item);
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

  mapButton(entry) {
    if (!entry.layer) return el("span", { className: "muted" }, " (not drawn on this map)");
    const button = el("button", { type: "button", className: "small" }, "Show on map");
    button.addEventListener("click", () => this.options.zoom(entry));
    return button;
  }

  notice(text, kind = "info") {
    return this.add(el("li", { className: `notice ${kind}` }, text));
  }

  newcomer(nickname) {
    const mine = sameNickname(nickname, this.options.me());
    this.notice(mine ? `You joined as ${nickname}` : `${nickname} joined`, "arrival");
  }

  exiter(nickname) {
    this.notice(`${nickname} left`, "departure");
  }

  likeReceived(message) {
    const liker = String(message.liker_author);
    const text = String(message.message);
    this.notice(`♥ ${liker} liked your message: “${text}”`, "liked");
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

  refusal(reason) {
    this.notice(`Not delivered: ${reason}`, "refused");
  }

  truncate(text) {
    const max = this.options.maxMessage;
    const chars = [...text];
    return chars.length <= max ? text : `${chars.slice(0, max - 1).join("")}…`;
  }
}
