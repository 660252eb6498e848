// gischat's web client: pick a room and a nickname, then chat, with a map of what is shared.
// It speaks the 3.x dialect (`/channel/{name}/...`, QChat's and QField's): every message
// from the server has an id and a timestamp; positions, models and scripts exist; replies
// are threaded when the server says so. Channel X is the conversation QTribu calls room X.

import { ChatLog, firstWords, sameNickname } from "./chat.js";
import { ChannelConnection } from "./connection.js";
import { $, colorFor, el } from "./dom.js";
import { asFeatureCollection, crsOfGeojson } from "./geo.js";
import { readImage } from "./images.js";
import { GisMap } from "./map.js";
import { Moderation } from "./moderation.js";

const ROOM_REFRESH = 10000;
const REPLAY_MEMORY = 1000;
// What people say (what the server replays to a new socket): shown once per id.
const SAID_TYPES = new Set(["text", "image", "geojson", "crs", "bbox", "position", "model", "script"]);

const state = {
  rules: null,
  config: null,
  connection: null,
  room: null,
  nickname: "",
  users: new Map(), // nickname key -> nickname
  userEvents: null, // newcomer/exiter seen while the user list is being fetched
  seen: new Set(), // ids of recent messages, to skip a replay of what is on screen
  replyTo: null, // {id, author, summary} of the message the next one answers
  map: null,
};

const log = new ChatLog($("#log"), {
  me: () => state.nickname,
  maxMessage: 255,
  like: (author, summary) => send({ type: "like", liker_author: state.nickname, liked_author: author, message: summary }),
  canReply: () => Boolean(state.config?.reply_threads),
  reply: (target) => startReply(target),
  zoom: (entry) => {
    showPane("map");
    state.map.zoomTo(entry);
  },
  enlarge: (src, alt) => {
    const image = $("#image-large");
    image.src = src;
    image.alt = alt;
    $("#image-dialog").showModal();
  },
});

// The moderator's controls, wired only when the server offers moderation (ADMIN_TOKENS).
const moderation = new Moderation({
  room: () => state.room,
  log,
  changed: () => renderUsers(),
});

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// --- Joining ---------------------------------------------------------------------------------

function showRules(rules) {
  log.options.maxMessage = rules.max_message_length;
  $("#rules-text").textContent = rules.rules;
  $("#rules-list").replaceChildren(
    el("li", {}, `Main language: ${rules.main_lang}`),
    el("li", {}, `Messages up to ${rules.max_message_length} characters`),
    el("li", {}, `Images are resized to fit in ${rules.max_image_size} × ${rules.max_image_size} px`),
    el("li", {}, `Layers of up to ${rules.max_geojson_features} features`),
  );
  const hint = `${rules.min_author_length} to ${rules.max_author_length} letters, digits, “_” or “-”.`;
  $("#nickname-hint").textContent = hint;
  $("#message").maxLength = rules.max_message_length;
}

function wantedRoom() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("room");
  const checked = document.querySelector("#room-list input:checked");
  return checked ? checked.value : fromHash;
}

async function refreshRooms() {
  if (!$("#join-view").hidden) {
    try {
      // The channels (the rooms under their 3.x name) with their live counts.
      const status = await getJson("status");
      renderRooms(status.channels ?? status.rooms);
    } catch (error) {
      $("#join-error").textContent = `Could not load the rooms (${error.message}).`;
    }
  }
}

function renderRooms(rooms) {
  const wanted = wantedRoom();
  const list = $("#room-list");
  const items = rooms.map((room, index) => {
    const input = el("input", { type: "radio", name: "room", value: room.name, id: `room-${index}` });
    input.checked = room.name === wanted;
    const count = room.nb_connected_users;
    const label = el(
      "label",
      { htmlFor: input.id },
      el("span", { className: "room-name" }, room.name),
      el("span", { className: "room-count" }, `${count} connected`),
    );
    return el("li", {}, input, label);
  });
  if (items.length && !items.some((item) => item.querySelector("input").checked)) {
    items[0].querySelector("input").checked = true;
  }
  const focused = document.activeElement?.closest("#room-list") ? document.activeElement.value : null;
  list.replaceChildren(...items);
  if (focused !== null) list.querySelector(`input[value="${CSS.escape(focused)}"]`)?.focus();
}

function join(event) {
  event.preventDefault();
  const room = wantedRoom();
  const nickname = $("#nickname").value.trim();
  const error = $("#join-error");
  if (!room) {
    error.textContent = "Pick a room.";
    return;
  }
  if (!nickname) {
    error.textContent = "Choose a nickname.";
    return;
  }
  error.textContent = "";
  setJoining(true);
  state.connection?.close();
  state.room = room;
  state.nickname = nickname;
  state.seen = new Set();
  cancelReply();
  log.clear();
  state.map?.clear();
  state.users.clear();
  renderUsers();
  state.connection = new ChannelConnection(room, nickname, {
    message: receive,
    joined: onJoined,
    refused: (reason) => joinFailed(reason),
    failed: (reason) => joinFailed(`Could not join ${room}: ${reason}.`),
    lost: () => {
      setStatus("offline", "connection lost");
      log.notice("Connection lost. Reconnecting…", "warn");
    },
    retrying: ({ delay, attempt, reason }) => {
      if (reason) log.notice(`Could not sign in again as ${state.nickname}: ${reason}`, "warn");
      setStatus("offline", `reconnecting in ${Math.max(1, Math.round(delay / 1000))} s (attempt ${attempt})`);
    },
  });
  state.connection.open();
}

function setJoining(joining) {
  const button = $("#join-button");
  button.disabled = joining;
  button.textContent = joining ? "Joining…" : "Join";
}

function joinFailed(reason) {
  setJoining(false);
  state.connection = null;
  $("#join-error").textContent = reason;
  $("#nickname").focus();
}

function onJoined({ again }) {
  setStatus("online", "connected");
  if (again) {
    log.notice(`Reconnected as ${state.nickname}.`, "ok");
  } else {
    setJoining(false);
    try {
      localStorage.setItem("gischat.nickname", state.nickname);
    } catch {
      // storage may be disabled; the nickname is only a convenience
    }
    history.replaceState(null, "", `#${new URLSearchParams({ room: state.room })}`);
    $("#room-name").textContent = state.room;
    document.title = `${state.room} · gischat`;
    $("#join-view").hidden = true;
    $("#chat-view").hidden = false;
    $("#leave").hidden = false;
    document.body.classList.add("in-room");
    if (!state.map) state.map = new GisMap($("#map"), $("#layers"), state.config);
    // Wide screens have room for the people list: show it open.
    if (window.matchMedia("(min-width: 48rem)").matches) $("details.users").open = true;
    showPane("chat");
    $("#message").focus();
  }
  fetchUsers();
}

function leave() {
  state.connection?.close();
  state.connection = null;
  state.nickname = "";
  cancelReply();
  $("#chat-view").hidden = true;
  $("#join-view").hidden = false;
  $("#leave").hidden = true;
  document.body.classList.remove("in-room");
  document.title = "gischat";
  setStatus("", "");
  refreshRooms();
  $("#nickname").focus();
}

function setStatus(kind, text) {
  const status = $("#connection");
  status.className = `connection ${kind}`;
  status.textContent = text;
}

// --- Incoming messages -----------------------------------------------------------------------

// Whether a message was shown already (the server replays its last messages to every new
// socket, so a reconnect brings back what is on screen); remembers it otherwise.
function alreadyShown(message) {
  if (!SAID_TYPES.has(message.type) || typeof message.id !== "string") return false;
  if (state.seen.has(message.id)) return true;
  state.seen.add(message.id);
  if (state.seen.size > REPLAY_MEMORY) state.seen.delete(state.seen.values().next().value);
  return false;
}

function receive(message, { replay }) {
  if (alreadyShown(message)) return;
  switch (message.type) {
    case "text":
      log.text(message);
      break;
    case "image":
      log.image(message);
      break;
    case "geojson":
      if (message.geojson && typeof message.geojson === "object") {
        log.layer(message, state.map.addLayer(message));
        flagMap();
      }
      break;
    case "bbox":
      log.bbox(message, state.map.addBbox(message));
      flagMap();
      break;
    case "position":
      log.position(message, state.map.addPosition(message));
      flagMap();
      break;
    case "crs":
      log.crs(message);
      break;
    case "model":
    case "script":
      log.attachment(message);
      break;
    case "newcomer":
      if (!replay) log.newcomer(message);
      userEvent("add", String(message.newcomer));
      break;
    case "exiter":
      if (!replay) log.exiter(message);
      userEvent("remove", String(message.exiter));
      break;
    case "like":
      log.likeReceived(message);
      break;
    case "nb_users":
      $("#nb-users").textContent = `${Number(message.nb_users)} connected`;
      break;
    case "uncompliant":
      log.refusal(message);
      break;
    default:
      break; // a type this client does not know yet
  }
}

// --- Users -----------------------------------------------------------------------------------

function userKey(nickname) {
  return nickname.normalize("NFKC").toLowerCase();
}

function userEvent(action, nickname) {
  if (state.userEvents) {
    state.userEvents.push([action, nickname]);
    return;
  }
  applyUserEvent(action, nickname);
  renderUsers();
}

function applyUserEvent(action, nickname) {
  if (action === "add") state.users.set(userKey(nickname), nickname);
  else state.users.delete(userKey(nickname));
}

async function fetchUsers() {
  const room = state.room;
  state.userEvents = [];
  try {
    const names = await getJson(`channel/${encodeURIComponent(room)}/users`);
    if (room !== state.room) return;
    state.users = new Map(names.map((name) => [userKey(name), name]));
  } catch {
    // keep what the events told us
  }
  for (const [action, nickname] of state.userEvents ?? []) applyUserEvent(action, nickname);
  state.userEvents = null;
  renderUsers();
}

function renderUsers() {
  const names = [...state.users.values()].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
  $("#user-count").textContent = `${names.length} named`;
  $("#user-list").replaceChildren(
    ...names.map((name) => {
      const button = el("button", { type: "button", className: "user" }, name);
      button.style.color = colorFor(name);
      button.title = `Mention ${name}`;
      const isMe = sameNickname(name, state.nickname);
      if (isMe) button.classList.add("me");
      button.addEventListener("click", () => mention(name));
      return el("li", {}, button, ...moderation.userActions(name, isMe));
    }),
  );
}

function mention(name) {
  const input = $("#message");
  const prefix = input.value && !input.value.endsWith(" ") ? " " : "";
  input.value = `${input.value}${prefix}@${name} `;
  showPane("chat");
  input.focus();
}

// --- Sending ---------------------------------------------------------------------------------

function send(message) {
  if (state.connection?.send(message)) return true;
  log.notice("Not connected: nothing was sent. Wait for the connection to come back.", "warn");
  return false;
}

// A message under the person's name: the answer to the message being replied to, if any
// (`in_reply_to_id`, last, as QChat writes it).
function sendAuthored(message) {
  const reply = state.replyTo;
  const sent = send(reply ? { ...message, in_reply_to_id: reply.id } : message);
  if (sent && reply && state.replyTo === reply) cancelReply();
  return sent;
}

function sendText(event) {
  event.preventDefault();
  const input = $("#message");
  const text = input.value.trim();
  if (!text) return;
  if (sendAuthored({ type: "text", author: state.nickname, avatar: null, text })) input.value = "";
}

// --- Replies (REPLY_THREADS) -----------------------------------------------------------------

function startReply(target) {
  state.replyTo = target;
  $("#reply-author").textContent = target.author;
  $("#reply-words").textContent = ` “${firstWords(target.summary)}”`;
  $("#reply-bar").hidden = false;
  showPane("chat");
  $("#message").focus();
}

function cancelReply() {
  state.replyTo = null;
  $("#reply-bar").hidden = true;
  $("#reply-author").textContent = "";
  $("#reply-words").textContent = "";
}

async function sendImage(file) {
  try {
    const image_data = await readImage(file, state.config.max_frame_size, state.rules.max_image_size);
    sendAuthored({ type: "image", author: state.nickname, avatar: null, image_data });
  } catch (error) {
    log.notice(`Image not sent: ${error.message}`, "refused");
  }
}

async function shareLayerFile(file) {
  try {
    const data = asFeatureCollection(JSON.parse(await file.text()));
    const message = {
      type: "geojson",
      author: state.nickname,
      avatar: null,
      layer_name: file.name.replace(/\.(geo)?json$/i, "") || "layer",
      ...crsOfGeojson(data),
      geojson: data,
    };
    if (JSON.stringify(message).length > state.config.max_frame_size) {
      throw new Error(`the layer is larger than this server accepts (${state.config.max_frame_size} bytes)`);
    }
    sendAuthored(message);
  } catch (error) {
    const reason = error instanceof SyntaxError ? "the file is not valid JSON" : error.message;
    log.notice(`Layer ${file.name} not shared: ${reason}`, "refused");
  }
}

function shareView() {
  sendAuthored({ type: "bbox", author: state.nickname, avatar: null, ...state.map.currentBbox() });
}

function sharePosition() {
  if (!navigator.geolocation) {
    log.notice("This browser cannot tell its position.", "warn");
    return;
  }
  navigator.geolocation.getCurrentPosition(
    (position) => {
      const { longitude, latitude, accuracy } = position.coords;
      sendAuthored({
        type: "geojson",
        author: state.nickname,
        avatar: null,
        layer_name: `position of ${state.nickname}`,
        ...crsOfGeojson({}),
        geojson: {
          type: "FeatureCollection",
          features: [
            {
              type: "Feature",
              geometry: { type: "Point", coordinates: [longitude, latitude] },
              properties: { accuracy_m: Math.round(accuracy), time: new Date(position.timestamp).toISOString() },
            },
          ],
        },
      });
    },
    (error) => log.notice(`Position not shared: ${error.message || "permission denied"}`, "warn"),
    { enableHighAccuracy: true, timeout: 20000, maximumAge: 60000 },
  );
}

function handleFiles(files) {
  for (const file of files) {
    if (file.type.startsWith("image/")) sendImage(file);
    else if (/\.(geo)?json$/i.test(file.name) || /json/.test(file.type)) shareLayerFile(file);
    else log.notice(`${file.name}: drop an image or a GeoJSON file.`, "warn");
  }
}

// --- Layout ----------------------------------------------------------------------------------

function showPane(pane) {
  document.body.dataset.pane = pane;
  $("#show-chat").setAttribute("aria-pressed", String(pane === "chat"));
  $("#show-map").setAttribute("aria-pressed", String(pane === "map"));
  if (pane === "map") {
    $("#show-map").classList.remove("has-news");
    state.map?.refresh();
  }
}

function flagMap() {
  if (document.body.dataset.pane !== "map") $("#show-map").classList.add("has-news");
}

function wire() {
  $("#join-form").addEventListener("submit", join);
  $("#composer").addEventListener("submit", sendText);
  $("#leave").addEventListener("click", leave);
  $("#show-chat").addEventListener("click", () => showPane("chat"));
  $("#show-map").addEventListener("click", () => showPane("map"));
  $("#attach-image").addEventListener("click", () => $("#image-input").click());
  $("#image-input").addEventListener("change", (event) => {
    handleFiles(event.target.files);
    event.target.value = "";
  });
  $("#add-layer").addEventListener("click", () => $("#layer-input").click());
  $("#layer-input").addEventListener("change", (event) => {
    for (const file of event.target.files) shareLayerFile(file);
    event.target.value = "";
  });
  $("#share-view").addEventListener("click", shareView);
  $("#share-position").addEventListener("click", sharePosition);
  $("#reply-cancel").addEventListener("click", () => {
    cancelReply();
    $("#message").focus();
  });
  $("#message").addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.replyTo) {
      event.preventDefault();
      cancelReply();
    }
  });
  $("#message").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files ?? [])].filter((file) => file.type.startsWith("image/"));
    if (files.length) {
      event.preventDefault();
      files.forEach(sendImage);
    }
  });
  const room = $("#chat-view");
  room.addEventListener("dragover", (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    event.preventDefault();
    room.classList.add("dropping");
  });
  room.addEventListener("dragleave", (event) => {
    if (!room.contains(event.relatedTarget)) room.classList.remove("dropping");
  });
  room.addEventListener("drop", (event) => {
    room.classList.remove("dropping");
    if (!event.dataTransfer?.files.length) return;
    event.preventDefault();
    handleFiles(event.dataTransfer.files);
  });
  const dialog = $("#image-dialog");
  $("#image-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
}

async function boot() {
  wire();
  try {
    $("#nickname").value = localStorage.getItem("gischat.nickname") ?? "";
  } catch {
    // storage disabled
  }
  try {
    [state.rules, state.config] = await Promise.all([getJson("rules"), getJson("client-config")]);
  } catch (error) {
    $("#join-error").textContent = `This server did not answer (${error.message}). Reload to try again.`;
    return;
  }
  showRules(state.rules);
  log.options.matrixSuffix = state.config.matrix_suffix || null;
  if (state.config.moderation) moderation.enable();
  await refreshRooms();
  $("#join-button").disabled = false;
  document.body.classList.add("ready");
  setInterval(refreshRooms, ROOM_REFRESH);
}

boot();
