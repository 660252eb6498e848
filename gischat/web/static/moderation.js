// The moderator's view (shown when the server has ADMIN_TOKENS): sign in with a secret, then
// kick, ban, lift bans, delete messages and announce through the /admin REST routes.
// The secret lives in this module's variable only: never in a cookie, Web Storage or a URL.
// Closing or reloading the tab forgets it, and so does "Sign out".

import { $, el, timeElement } from "./dom.js";

let secret = null;

class ModerationError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function detailOf(data, status) {
  const detail = data?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((item) => item?.msg ?? JSON.stringify(item)).join("; ");
  return `HTTP ${status}`;
}

// One /admin call with the secret as a bearer token; the JSON answer, or a ModerationError
// carrying the server's detail.
async function call(method, path, body) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${secret}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ModerationError(response.status, detailOf(data, response.status));
  return data;
}

// A time from the server: ISO text or seconds since the epoch.
function asDate(value) {
  return typeof value === "number" ? new Date(value * 1000) : new Date(String(value));
}

function small(label, onClick, className = "") {
  const button = el("button", { type: "button", className: `small mod-action ${className}`.trim() }, label);
  button.addEventListener("click", onClick);
  return button;
}

export class Moderation {
  // page: room() -> the room in view, log (the ChatLog), changed() -> redraw what depends on
  // `active` (the people list)
  constructor(page) {
    this.page = page;
    this.pending = null; // the kick or ban the action dialog is about
  }

  get active() {
    return secret !== null;
  }

  roomPath(suffix) {
    return `admin/rooms/${encodeURIComponent(this.page.room())}/${suffix}`;
  }

  // The server offers moderation: show the entry and wire the moderator's controls.
  enable() {
    const entry = $("#moderate");
    entry.hidden = false;
    entry.addEventListener("click", () => (this.active ? this.signOut() : this.openSignIn()));
    $("#signin-form").addEventListener("submit", (event) => this.signIn(event));
    $("#signin-cancel").addEventListener("click", () => $("#signin-dialog").close());
    $("#signin-dialog").addEventListener("close", () => {
      $("#admin-secret").value = "";
    });
    $("#action-form").addEventListener("submit", (event) => this.confirmAction(event));
    $("#action-cancel").addEventListener("click", () => $("#action-dialog").close());
    $("#announce-form").addEventListener("submit", (event) => this.announce(event));
    $("#bans-refresh").addEventListener("click", () => this.refreshBans());
    $("#connections-refresh").addEventListener("click", () => this.showConnections());
  }

  openSignIn() {
    $("#signin-error").textContent = "";
    $("#signin-dialog").showModal();
    $("#admin-secret").focus();
  }

  async signIn(event) {
    event.preventDefault();
    const input = $("#admin-secret");
    const candidate = input.value.trim();
    const error = $("#signin-error");
    if (!candidate) {
      error.textContent = "Paste a moderator secret.";
      return;
    }
    const button = $("#signin-button");
    button.disabled = true;
    secret = candidate;
    try {
      this.renderBans(await call("GET", "admin/bans"));
    } catch (failure) {
      secret = null;
      error.textContent = failure.status === 404 ? "This server has no moderation." : failure.message;
      input.select();
      return;
    } finally {
      button.disabled = false;
    }
    $("#signin-dialog").close();
    this.setActive(true);
    this.page.log.notice("Signed in as a moderator.", "ok");
  }

  signOut(reason = null) {
    secret = null;
    for (const dialog of [$("#signin-dialog"), $("#action-dialog")]) if (dialog.open) dialog.close();
    $("#ban-list").replaceChildren();
    $("#connection-list").replaceChildren();
    this.setActive(false);
    this.page.log.notice(reason ? `Signed out as a moderator: ${reason}` : "Signed out as a moderator.", reason ? "warn" : "info");
  }

  setActive(active) {
    const entry = $("#moderate");
    entry.textContent = active ? "Sign out" : "Moderate";
    entry.title = active ? "Stop moderating: this tab forgets the secret" : "Sign in as a moderator";
    entry.classList.toggle("signed-in", active);
    document.body.classList.toggle("moderating", active);
    $("#moderation").hidden = !active;
    if (active) $("#moderation").open = true;
    this.page.log.setModerator(active ? (item) => this.deleteButton(item) : null);
    this.page.changed();
  }

  // Runs a moderation call; a refused secret (401) signs the tab out. Returns the answer,
  // or throws the error for the caller to show.
  async run(method, path, body) {
    try {
      return await call(method, path, body);
    } catch (failure) {
      if (failure.status === 401) this.signOut(failure.message);
      throw failure;
    }
  }

  // A failed action that has no dialog to show it: a line in the conversation.
  failed(what, failure) {
    this.page.log.notice(`${what}: ${failure.message}`, "refused");
  }

  // --- People ------------------------------------------------------------------------------

  // Kick and ban buttons for a name of the people list (none for oneself, none signed out).
  userActions(name, isMe) {
    if (!this.active || isMe) return [];
    return [
      small("Kick", () => this.openAction({ kind: "kick", nickname: name })),
      small("Ban", () => this.openAction({ kind: "ban", nickname: name })),
    ];
  }

  openAction(action) {
    this.pending = action;
    const target = action.nickname ?? action.address;
    $("#action-title").textContent = action.kind === "kick" ? `Kick ${target}` : `Ban ${target}`;
    $("#action-hint").textContent =
      action.kind === "kick"
        ? "Their connection is closed with this reason; they may come back."
        : "Their connections are closed; they cannot come back until the ban ends or is lifted.";
    $("#ban-fields").hidden = action.kind !== "ban";
    $("#action-submit").textContent = action.kind === "kick" ? "Kick" : "Ban";
    $("#action-reason").value = "";
    $("#ban-minutes").value = "60";
    document.querySelector('input[name="ban-scope"][value="room"]').checked = true;
    $("#action-error").textContent = "";
    $("#action-dialog").showModal();
    $("#action-reason").focus();
  }

  async confirmAction(event) {
    event.preventDefault();
    const action = this.pending;
    const reason = $("#action-reason").value.trim();
    const error = $("#action-error");
    if (!action) return;
    if (!reason) {
      error.textContent = "Give a reason: the person is told.";
      return;
    }
    const minutes = Number($("#ban-minutes").value);
    if (action.kind === "ban" && !(Number.isInteger(minutes) && minutes > 0)) {
      error.textContent = "Minutes: a whole number above 0.";
      return;
    }
    const everyRoom = document.querySelector('input[name="ban-scope"]:checked')?.value === "all";
    const submit = $("#action-submit");
    submit.disabled = true;
    try {
      if (action.kind === "kick") {
        await this.run("POST", this.roomPath("kick"), { nickname: action.nickname, reason });
        this.page.log.notice(`You kicked ${action.nickname}: ${reason}`, "ok");
      } else {
        const room = everyRoom ? null : this.page.room();
        const body = { nickname: action.nickname ?? null, address: action.address ?? null, room, minutes, reason };
        await this.run("POST", "admin/bans", body);
        const where = room === null ? "every room" : room;
        this.page.log.notice(`You banned ${action.nickname ?? action.address} from ${where} for ${minutes} min: ${reason}`, "ok");
        this.refreshBans();
      }
      $("#action-dialog").close();
      if ($("#connection-list").childElementCount) this.showConnections(); // keep a shown list current
    } catch (failure) {
      if (this.active) error.textContent = failure.message;
    } finally {
      submit.disabled = false;
    }
  }

  // --- Messages ----------------------------------------------------------------------------

  // "Delete" on a message with an id; a first click arms it, a second one deletes.
  deleteButton(item) {
    const button = small("Delete", async () => {
      if (!button.classList.contains("armed")) {
        button.classList.add("armed");
        button.textContent = "Delete for everyone?";
        return;
      }
      button.disabled = true;
      try {
        await this.run("DELETE", this.roomPath(`messages/${encodeURIComponent(item.dataset.id)}`));
        item.remove();
        this.page.log.notice(`You deleted a message from ${item.dataset.author}.`, "ok");
      } catch (failure) {
        button.disabled = false;
        if (this.active) this.failed("Not deleted", failure);
      }
    }, "delete");
    button.setAttribute("aria-label", `Delete ${item.dataset.author}'s message`);
    button.addEventListener("blur", () => {
      button.classList.remove("armed");
      button.textContent = "Delete";
    });
    return button;
  }

  // --- The room ----------------------------------------------------------------------------

  async announce(event) {
    event.preventDefault();
    const input = $("#announce-text");
    const text = input.value.trim();
    if (!text) return;
    try {
      await this.run("POST", this.roomPath("announce"), { text });
      input.value = "";
    } catch (failure) {
      if (this.active) this.failed("Not announced", failure);
    }
  }

  async refreshBans() {
    try {
      this.renderBans(await this.run("GET", "admin/bans"));
    } catch (failure) {
      if (this.active) this.failed("Could not list the bans", failure);
    }
  }

  renderBans({ bans }) {
    $("#bans-empty").hidden = bans.length > 0;
    $("#ban-list").replaceChildren(
      ...bans.map((ban) => {
        const target = ban.nickname ?? ban.address;
        const lift = small("Lift", () => this.lift(ban, lift));
        lift.setAttribute("aria-label", `Lift the ban on ${target}`);
        return el(
          "li",
          { className: "ban" },
          el("strong", {}, String(target)),
          ` · ${ban.room ?? "every room"} · until `,
          timeElement(asDate(ban.until)),
          el("span", { className: "muted" }, ` · ${ban.reason} (${ban.by})`),
          lift,
        );
      }),
    );
  }

  async lift(ban, button) {
    button.disabled = true;
    try {
      await this.run("DELETE", `admin/bans/${encodeURIComponent(ban.id)}`);
      this.page.log.notice(`You lifted the ban on ${ban.nickname ?? ban.address}.`, "ok");
    } catch (failure) {
      if (this.active) this.failed("Ban not lifted", failure);
    }
    if (this.active) this.refreshBans();
  }

  async showConnections() {
    let answer;
    try {
      answer = await this.run("GET", this.roomPath("connections"));
    } catch (failure) {
      if (this.active) this.failed("Could not list the connections", failure);
      return;
    }
    $("#connection-list").replaceChildren(
      ...answer.connections.map((connection) => {
        const address = String(connection.address);
        const ban = small("Ban address", () => this.openAction({ kind: "ban", address }));
        ban.setAttribute("aria-label", `Ban the address ${address}`);
        return el(
          "li",
          { className: "connection-entry" },
          el("strong", {}, connection.nickname === null ? "(no nickname)" : String(connection.nickname)),
          ` · ${address} · ${connection.dialect} · since `,
          timeElement(asDate(connection.connected_since)),
          ` · ${Number(connection.messages_sent)} sent · ${connection.node}`,
          ban,
        );
      }),
    );
  }
}
