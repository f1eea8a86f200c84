// sottovoce app: unlock, the conversation list, and one chat or room at a time.
// Everything shown is read back from the SDK over the socket; notices only say when.
import { $, fileLink, h, reconcile, show } from "./dom.js";
import { Rpc } from "./rpc.js";
import { FULL, VList } from "./vlist.js";
import { callNotice, callRoom, initCalls } from "./call.js";
import { initP2p, p2pNotice, p2pPeer } from "./p2p.js";

const REACTIONS = ["👍", "❤️", "😂"];
const state = {
  me: null, chat: null, composing: null, known: [], older: null, listCache: new Map(),
  unlocked: false, poll: null,
};

const rpc = new Rpc({ onNotice: notice, onState: socketState });
initCalls(rpc);
initP2p(rpc);

// The account views (settings, devices, safety numbers, audit, drag and drop) are built
// after the first list is drawn: nothing of theirs is in the way of the first paint.
// Their modules (which do nothing when loaded) and the clock's locale data are loaded
// while the unlock form waits for the passphrase, when the page has nothing else to do,
// not in the frames right after the list is drawn.
let account = null;
let accountModule = null;
function importAccount() {
  if (!accountModule) {
    accountModule = import("./account.js").catch((e) => { accountModule = null; throw e; });
  }
  return accountModule;
}
function loadAccount() {
  if (!account) {
    account = importAccount().then((m) => {
      m.accountReady(rpc, () => state.chat);
      return m;
    });
  }
}
function whileIdle(run) {
  if (window.requestIdleCallback) requestIdleCallback(run); else setTimeout(run, 0);
}

function socketState(up) {
  if (up) { rpc.call("status").then(status, () => {}); return; }
  $("status").textContent = "The app is not answering; retrying…";
}

function status(s) {
  state.unlocked = s.unlocked;
  show($("unlock-view"), !s.unlocked);
  show($("app-view"), s.unlocked);
  if (!s.unlocked) {
    $("status").textContent = "";
    $("passphrase").focus();
    whileIdle(() => { importAccount().catch(() => {}); clockFormatter(); });
    return;
  }
  state.me = s.username;
  $("me").textContent = s.username;
  // Until a first attempt failed the SDK is still connecting: no alarm for that.
  $("status").textContent = s.connected ? ""
    : s.problem ? `Server unreachable (${s.problem}); retrying…` : "Connecting…";
  clearTimeout(state.poll);  // one poll at a time, however many notices came
  if (!s.connected) state.poll = setTimeout(() => rpc.call("status").then(status, () => {}), 3000);
  if (s.list) drawList(s.list); else refreshList();
}

let pending = null;
function notice(n) {
  if (n.event === "status") { status(n); return; }
  if (n.event === "upload") { uploadNotice(n); return; }
  if (n.event === "link") { if (account) account.then((m) => m.accountNotice(n)); return; }
  if (n.event === "call") { callNotice(n); return; }
  if (n.event === "p2p") { p2pNotice(n); return; }
  if (n.event === "changed" && state.unlocked) {
    clearTimeout(pending);  // a burst of events is one refresh
    pending = setTimeout(() => { refreshList(); if (state.chat) refreshChat(); }, 60);
  }
}

function fail(where) { return (e) => { $(where).textContent = e.message; }; }

// --- unlock -------------------------------------------------------------------------

$("unlock-form").addEventListener("submit", (e) => {
  e.preventDefault();
  performance.mark("sv-unlock-submitted");  // bench/app.py: unlock starts here
  const field = $("passphrase");
  const passphrase = field.value;
  field.value = "";
  $("unlock-error").textContent = "Unlocking…";
  rpc.call("unlock", { passphrase }).then((s) => {
    performance.mark("sv-unlock-answered");  // bench/app.py: page-ready starts here
    $("unlock-error").textContent = "";
    status(s);
  }, fail("unlock-error"));
});

// --- the list -----------------------------------------------------------------------

function refreshList() {
  rpc.call("list").then(drawList, fail("list-error"));
}

function drawList({ conversations, requests }) {
  reconcile($("requests"), requests.map((user) => h("li", { class: "request" },
    h("span", {}, `${user} wants to chat`),
    action("Accept", () => answer(user, "accept"), `Accept the request from ${user}`),
    action("Decline", () => answer(user, "decline"), `Decline the request from ${user}`),
    action("Block", () => answer(user, "block"), `Block ${user}`))));
  show($("requests-box"), requests.length > 0);
  const seen = new Map();
  const items = conversations.map((c) => {
    const current = Boolean(state.chat && state.chat.peer === c.peer);
    const key = JSON.stringify([c, current]);
    const old = state.listCache.get(c.peer);
    if (old && old.key === key) { seen.set(c.peer, old); return old.el; }
    const label = c.room ? `# ${c.label}` : c.label;
    const button = h("button", { type: "button", "aria-current": current ? "true" : null },
      h("span", {}, label),
      c.unread ? h("span", { class: "badge", "aria-label": `${c.unread} unread` },
        c.unread) : null);
    button.addEventListener("click", () => openChat(c.peer, c.room, c.label));
    const el = h("li", {}, button);
    seen.set(c.peer, { key, el });  // unchanged rows stay the same nodes: focus stays put
    return el;
  });
  state.listCache = seen;
  reconcile($("conversations"), items);
  document.title = conversations.some((c) => c.unread) ? "sottovoce (new)" : "sottovoce";
  if (!account) {
    requestAnimationFrame(() => setTimeout(() => {  // the first list is painted
      if (!performance.getEntriesByName("sv-list-shown").length) {
        performance.mark("sv-list-shown");  // bench/app.py: page-ready ends here
      }
      loadAccount();
      setTimeout(clockFormatter, 0);
    }, 0));
  }
}

function answer(user, what) {
  rpc.call("request", { user, answer: what }).then(refreshList, fail("list-error"));
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("search").value.trim();
  const list = $("search-results");
  if (!q) { show(list, false); return; }
  rpc.call("search", { q }).then((hits) => {
    const items = hits.map((hit) => {
      const b = h("button", { type: "button" }, h("span", {}, hit.text),
        h("span", { class: "meta" }, hit.room ? `# ${hit.label}` : hit.label));
      b.addEventListener("click", () => openChat(hit.peer, hit.room, hit.label));
      return h("li", {}, b);
    });
    if (!items.length) items.push(h("li", { class: "meta" }, "No messages found"));
    reconcile(list, items);
    show(list, true);
  }, fail("list-error"));
});

$("new-chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("new-chat").value.trim().replace(/^@/, "");
  if (!name) return;
  $("new-chat").value = "";
  openChat(name, false, name);
});

$("new-room-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("new-room").value.trim();
  if (!name) return;
  rpc.call("room_create", { name }).then((r) => {
    $("new-room").value = "";
    refreshList();
    openChat(r.peer, true, r.label);
  }, fail("list-error"));
});

// --- one chat -----------------------------------------------------------------------

function openChat(peer, room, label) {
  state.chat = { peer, room, label };
  state.known = [];
  state.older = null;
  setComposing(null);
  $("chat-title").textContent = room ? `# ${label}` : label;
  $("chat-error").textContent = "";
  show($("chat-pane"), true);
  show($("room-panel"), room);
  callRoom(room ? peer : null);
  p2pPeer(room ? null : peer);
  $("app-view").classList.add("chatting");
  if (account) account.then((m) => m.chatOpened());
  vlist.set([]);
  refreshChat().then(() => { $("text").focus(); refreshList(); });
}

$("back").addEventListener("click", () => {
  state.chat = null;
  $("app-view").classList.remove("chatting");
  show($("chat-pane"), false);
  refreshList();
});

function chatArgs(extra = {}) { return { peer: state.chat.peer, room: state.chat.room, ...extra }; }

function refreshChat() {
  const chat = state.chat;
  return rpc.call("open", chatArgs()).then((view) => {
    if (state.chat !== chat) return;
    drawChat(view);
  }, fail("chat-error"));
}

// The chat's messages: the newest (each refresh) after the older ones fetched as the
// list is scrolled up; the list renders only what is near the viewport.
const vlist = new VList($("messages"), (m) => messageItem(m), loadOlder);

function drawChat(view) {
  const latest = view.messages;
  const known = state.known;
  const at = latest.length ? known.findIndex((m) => m.id === latest[0].id) : -1;
  if (at >= 0) {
    state.known = known.slice(0, at).concat(latest);
  } else {
    const ids = new Set(latest.map((m) => m.id));
    state.known = (state.older ? known.filter((m) => !ids.has(m.id)) : []).concat(latest);
  }
  if (state.older === null) state.older = latest.length >= FULL ? "more" : "none";
  vlist.set(state.known, "bottom");
  $("typing").textContent = view.typing.length ? `${view.typing.join(", ")} typing…` : "";
  $("timer").value = timerSetting(view.timer);
  if (state.chat.room) {
    if (view.label) $("chat-title").textContent = `# ${view.label}`;
    reconcile($("members"), view.members.map(([user, role]) =>
      h("li", {}, `${user}${user === state.me ? " (you)" : ""} — ${role}`)));
  }
}

function loadOlder() {
  const chat = state.chat;
  if (!chat || state.older !== "more" || !state.known.length) return;
  state.older = "loading";
  rpc.call("older", chatArgs({ before: state.known[0].id, count: 200 })).then((r) => {
    if (state.chat !== chat) return;
    state.older = r.more ? "more" : "none";
    state.known = r.messages.concat(state.known);
    vlist.set(state.known, "anchor");
  }, (e) => {
    if (state.chat === chat) state.older = "more";
    $("chat-error").textContent = e.message;
  });
}

function timerSetting(seconds) {
  return { 0: "off", 5: "5s", 60: "1m", 3600: "1h", 86400: "1d", 604800: "1w" }[seconds]
    || "off";
}

// One formatter for every row's time. Making one is what costs (the first in a page
// loads the locale's data: most of a 10,000-message chat's first draw, when each row
// made its own through toLocaleTimeString); it is made once, in a task of its own
// while the unlock form waits (or after the list is painted, when the page opens on an
// unlocked app), and formatting with it is cheap.
let clockFormat = null;

function clockFormatter() {
  if (!clockFormat) clockFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
  return clockFormat;
}

function clock(ms) {
  return ms ? clockFormatter().format(ms) : "";
}

function messageItem(m) {
  if (m.kind === "notice") return h("li", { class: "msg notice" }, m.text);
  const who = m.outgoing ? "you" : m.sender;
  const body = m.kind === "file"
    ? fileLink(m.id, `📎 ${m.file.name} (${size(m.file.size)}) — download`)
    : h("span", { class: "text" }, m.text);
  const reactions = Object.entries(m.reactions).map(([e, n]) => `${e} ${n}`).join("  ");
  const meta = [clock(m.atMs), m.edited ? "edited" : "", m.state,
    m.expiresAtMs ? "⏱ disappears" : ""].filter(Boolean).join(" · ");
  return h("li", { class: `msg${m.outgoing ? " mine" : ""}`, "aria-label": `from ${who}` },
    h("div", { class: "meta" }, who),
    m.quote !== null ? h("div", { class: "quote" }, m.quote) : null,
    body,
    reactions ? h("div", { class: "reactions", "aria-label": "reactions" }, reactions) : null,
    h("div", { class: "meta" }, meta),
    m.deleted ? null : actions(m));
}

function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function action(label, run, aria) {
  const b = h("button", { type: "button", "aria-label": aria || null }, label);
  b.addEventListener("click", run);
  return b;
}

function actions(m) {
  const buttons = [action("Reply", () => setComposing({ kind: "reply", m }),
    "Reply to this message")];
  for (const emoji of REACTIONS) {
    buttons.push(action(emoji, () => call("react", { msg: m.id, emoji }), `React ${emoji}`));
  }
  if (m.outgoing && m.kind === "text") {
    buttons.push(action("Edit", () => setComposing({ kind: "edit", m }), "Edit this message"));
  }
  buttons.push(m.outgoing
    ? action("Delete", () => call("delete", { msg: m.id, everyone: true }),
      "Delete for everyone")
    : action("Delete", () => call("delete", { msg: m.id }), "Delete on this device"));
  return h("div", { class: "actions" }, ...buttons);
}

function call(op, args) {
  return rpc.call(op, chatArgs(args)).then(() => {
    $("chat-error").textContent = "";
    return refreshChat();
  }, fail("chat-error"));
}

function setComposing(what) {
  state.composing = what;
  show($("composing"), what !== null);
  if (!what) return;
  const first = what.m.text.split("\n")[0].slice(0, 60);
  $("composing-text").textContent =
    `${what.kind === "edit" ? "Editing" : "Replying to"}: ${first}`;
  if (what.kind === "edit") $("text").value = what.m.text;
  $("text").focus();
}

$("composing-cancel").addEventListener("click", () => {
  if (state.composing && state.composing.kind === "edit") $("text").value = "";
  setComposing(null);
});

$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text.trim() || !state.chat) return;
  const c = state.composing;
  const sent = c && c.kind === "edit" ? call("edit", { msg: c.m.id, text })
    : call("send", c ? { text, replyTo: c.m.id } : { text });
  $("text").value = "";
  setComposing(null);
  sent.then(refreshList);
});

// Enter sends, Shift+Enter is a new line, Escape drops a reply or an edit.
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.composing) {
    e.preventDefault();
    $("composing-cancel").click();
    return;
  }
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("send-form").requestSubmit();
  }
});

let lastTyping = 0;
$("text").addEventListener("input", () => {
  if (!state.chat || Date.now() - lastTyping < 3000) return;
  lastTyping = Date.now();
  rpc.call("typing", chatArgs()).catch(() => {});
});

$("timer").addEventListener("change", () => {
  call("timer", { setting: $("timer").value });
});

// --- rooms --------------------------------------------------------------------------

$("invite-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const user = $("invite").value.trim();
  if (!user) return;
  call("room_invite", { user }).then(() => { $("invite").value = ""; });
});

$("leave").addEventListener("click", () => {
  rpc.call("room_leave", chatArgs()).then(() => {
    $("back").click();
  }, fail("chat-error"));
});

// --- files --------------------------------------------------------------------------

$("file").addEventListener("change", async () => {
  const input = $("file");
  const file = input.files[0];
  input.value = "";
  if (!file || !state.chat) return;
  const bar = $("progress");
  try {
    const { piece } = await rpc.call("upload", chatArgs({ name: file.name, size: file.size }));
    bar.max = file.size * 2;
    bar.value = 0;
    show(bar, true);
    for (let at = 0; at < file.size; at += piece) {
      rpc.sendBytes(await file.slice(at, at + piece).arrayBuffer());
    }
    await rpc.call("upload_end");
    $("chat-error").textContent = "";
    refreshChat();
  } catch (e) {
    $("chat-error").textContent = e.message;
  } finally {
    show(bar, false);
  }
});

function uploadNotice(n) {
  const bar = $("progress");
  if (n.error) { $("chat-error").textContent = n.error; return; }
  // Reading into the app is the first half of the bar, the encrypted upload the second.
  bar.value = n.phase === "read" ? n.done : n.total + n.done;
  bar.setAttribute("aria-label", n.phase === "read" ? "Reading the file" : "Sending the file");
}
