// Room calls in the page: the browser's own WebRTC through the call's Janus VideoRoom,
// every encoded frame sealed and opened with SFrame in sframe-worker.js.
//
// The app (calls_bridge.py) runs the call: its MLS group, the grant, the Janus session.
// It asks the page for descriptions ("publish", "subscribe" notices, answered with
// call_sdp) and hands the worker each epoch's per-track keys ("keys"). The page never
// talks to Janus and never holds the call's MLS state.
import { $, h, reconcile, show } from "./dom.js";

const WORKER_URL = "/static/sframe-worker.js";
// The worker is the one script URL the page makes; nothing else gets through.
const workerPolicy = window.trustedTypes
  ? window.trustedTypes.createPolicy("sottovoce-worker", {
    createScriptURL: (url) => {
      if (url !== WORKER_URL) throw new Error("not the call worker");
      return url;
    },
  })
  : null;
const SECTIONS = [["audio", "audio"], ["video", "video"], ["screen", "video"]];
const SCRIPT_TRANSFORM = "RTCRtpScriptTransform" in window;
const PC_CONFIG = { iceServers: [], bundlePolicy: "max-bundle",
  ...(SCRIPT_TRANSFORM ? {} : { encodedInsertableStreams: true }) };

let rpc = null;
let openRoom = null;  // the room the page shows
let call = null;      // the call the page is in

export function initCalls(theRpc) {
  rpc = theRpc;
  $("call-button").addEventListener("click", () => { join().catch(failed); });
  $("call-view").append(
    h("div", { class: "call-head" },
      h("h2", { id: "call-title" }, "Call"),
      h("span", { id: "call-e2ee", class: "badge e2ee", role: "status" }, ""),
      h("span", { id: "call-rec", class: "badge rec", title: "This call is being recorded" },
        "REC")),
    h("p", { id: "call-note", class: "note", "aria-live": "polite" }),
    h("div", { id: "call-asked", class: "row" }),
    h("div", { id: "call-grid", class: "call-grid", "aria-label": "Participants" }),
    h("div", { id: "call-controls", class: "row call-controls" },
      h("button", { id: "call-mute", type: "button" }, "Mute"),
      h("button", { id: "call-camera", type: "button" }, "Camera off"),
      h("button", { id: "call-screen", type: "button" }, "Share screen"),
      h("button", { id: "call-leave", type: "button", class: "danger" }, "Leave call")),
    h("p", { id: "call-error", class: "error", role: "alert" }));
  $("call-mute").addEventListener("click", () => toggle("audio"));
  $("call-camera").addEventListener("click", () => toggle("camera"));
  $("call-screen").addEventListener("click", () => { shareScreen().catch(failed); });
  $("call-leave").addEventListener("click", () => { leave("You left the call."); });
  show($("call-rec"), false);
  show($("call-controls"), false);
  window.sottovoceCall = { stats };  // what the tests and bench/app_calls.py read
}

// The room shown in the chat pane (null for a chat): the Call button goes with it.
export function callRoom(room) {
  openRoom = room;
  show($("call-button"), room !== null);
}

function failed(err) {
  show($("call-view"), true);
  $("call-error").textContent = err && err.message ? err.message : String(err);
}

// --- joining and leaving -------------------------------------------------------------

async function join() {
  if (call || !openRoom) return;
  $("call-error").textContent = "";
  const room = openRoom;
  let local;
  try {
    local = await navigator.mediaDevices.getUserMedia({
      audio: true, video: { width: 640, height: 480, frameRate: 30 } });
  } catch (err) {
    throw new Error(err && err.name === "NotAllowedError"
      ? "Camera or microphone access was denied: allow them for this page to join the call."
      : `No camera or microphone could be opened (${err && err.name}).`);
  }
  const worker = new Worker(workerPolicy ? workerPolicy.createScriptURL(WORKER_URL) : WORKER_URL,
    { type: "module", name: "sframe" });
  call = { room, worker, local, pub: null, subs: new Map(), screen: null, epoch: null,
    audioMuted: false, cameraOn: true, screenOn: false, participants: [], peers: new Map(),
    me: null, statsWaiting: new Map(), nextRef: 1 };
  worker.onmessage = workerMessage;
  show($("call-view"), true);
  show($("call-controls"), true);
  $("call-note").textContent = "Joining…";
  drawState();
  try {
    const { seen } = await rpc.call("call_state", { room });
    const joined = await rpc.call("call_join", { room, start: !seen });
    if (call) call.me = joined.me;
    drawGrid();
  } catch (err) {
    teardown();
    throw err;
  }
}

function leave(note) {
  if (!call) return;
  rpc.call("call_leave").catch(() => {});
  teardown();
  $("call-note").textContent = note;
}

function teardown() {
  if (!call) return;
  const c = call;
  call = null;
  for (const sub of c.subs.values()) sub.pc.close();
  if (c.pub) c.pub.close();
  for (const t of c.local.getTracks()) t.stop();
  if (c.screen) for (const t of c.screen.getTracks()) t.stop();
  c.worker.postMessage({ type: "wipe" });
  c.worker.terminate();
  $("call-grid").replaceChildren();
  $("call-asked").replaceChildren();
  show($("call-rec"), false);
  show($("call-controls"), false);
  $("call-e2ee").textContent = "";
  show($("call-view"), true);
}

// --- notices from the app --------------------------------------------------------------

export function callNotice(n) {
  if (!call || n.room !== call.room) {
    if (n.ref) rpc.call("call_sdp", { ref: n.ref, error: "not in that call" }).catch(() => {});
    return;
  }
  const handlers = {
    keys: () => { call.worker.postMessage({ type: "keys", epoch: n.epoch, ownLeaf: n.ownLeaf,
      roster: n.roster, keys: n.keys }); },
    revoke: () => call.worker.postMessage({ type: "revoke", device: n.device }),
    wipe: () => call.worker.postMessage({ type: "wipe" }),
    publish: () => publish(n.ref).catch((err) => answerError(n.ref, err)),
    published: () => call.pub.setRemoteDescription({ type: "answer", sdp: n.sdp }).catch(failed),
    subscribe: () => subscribe(n).catch((err) => answerError(n.ref, err)),
    unsubscribe: () => dropSub(n.device),
    participants: () => {
      const gone = call.participants.filter((d) => d !== call.me && !n.participants.includes(d));
      call.participants = n.participants;
      call.epoch = n.epoch;
      drawState();
      if (gone.length) $("call-note").textContent = n.participants.length > 1
        ? `${gone.join(", ")} left the call.`
        : `${gone.join(", ")} left the call. Waiting for others to join…`;
    },
    peer_media: () => { call.peers.set(n.device, n); drawGrid(); },
    recording: () => { call.recording = n.on; drawState(); },
    recording_asked: () => askRecording(n.by),
    recording_refused: () => { $("call-note").textContent = "Recording was refused."; },
    problem: () => { $("call-error").textContent = n.error; },
    refused: () => { teardown(); $("call-error").textContent = `Could not join: ${n.error}`; },
    left: () => { teardown();
      $("call-note").textContent = n.removed ? "You were removed from the call." : "The call ended."; },
    media_closed: () => {},
  };
  const handler = handlers[n.kind];
  if (handler) handler();
}

function answerError(ref, err) {
  failed(err);
  rpc.call("call_sdp", { ref, error: err && err.message ? err.message : String(err) })
    .catch(() => {});
}

// --- media -------------------------------------------------------------------------

function transform(target, options) {
  if (SCRIPT_TRANSFORM) {
    target.transform = new RTCRtpScriptTransform(call.worker, options);
    return;
  }
  const { readable, writable } = target.createEncodedStreams();
  call.worker.postMessage({ type: "streams", readable, writable, options }, [readable, writable]);
}

function prefer(transceiver, kind) {
  const caps = RTCRtpReceiver.getCapabilities(kind);
  const name = kind === "audio" ? "audio/opus" : "video/vp8";
  const codecs = caps.codecs.filter((c) => c.mimeType.toLowerCase() === name);
  if (codecs.length && transceiver.setCodecPreferences) transceiver.setCodecPreferences(codecs);
}

async function gathered(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);  // what was gathered by then is enough on a LAN
  });
}

function watchConnection(pc, who) {
  pc.addEventListener("connectionstatechange", () => {
    if (call && pc.connectionState === "failed") {
      $("call-error").textContent = `The media connection ${who} failed.`;
    }
  });
}

async function publish(ref) {
  const pc = new RTCPeerConnection(PC_CONFIG);
  call.pub = pc;
  watchConnection(pc, "to the media server");
  const tracks = { audio: call.local.getAudioTracks()[0] || null,
    video: call.local.getVideoTracks()[0] || null, screen: null };
  call.senders = {};
  for (const [name, kind] of SECTIONS) {
    const t = pc.addTransceiver(kind, { direction: "sendonly" });
    prefer(t, kind);
    // The transform before the track: Chromium skips a sender's transform set after
    // replaceTrack, and its frames would leave unsealed.
    transform(t.sender, { side: "send", kind: name, codec: kind === "audio" ? "opus" : "vp8" });
    await t.sender.replaceTrack(tracks[name]);
    call.senders[name] = t.sender;
  }
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  await rpc.call("call_sdp", { ref, sdp: pc.localDescription.sdp });
  $("call-note").textContent = "";
}

async function subscribe(n) {
  dropSub(n.device);
  const pc = new RTCPeerConnection(PC_CONFIG);
  const sub = { pc, device: n.device, stream: new MediaStream(), screen: new MediaStream() };
  call.subs.set(n.device, sub);
  watchConnection(pc, `from ${n.device}`);
  pc.addEventListener("track", (e) => {
    const kind = n.tracks[e.transceiver.mid];
    (kind === "screen" ? sub.screen : sub.stream).addTrack(e.track);
    drawGrid();
  });
  await pc.setRemoteDescription({ type: "offer", sdp: n.sdp });
  for (const t of pc.getTransceivers()) {
    const kind = n.tracks[t.mid];
    if (!kind) { t.direction = "inactive"; continue; }
    transform(t.receiver, { side: "recv", kind, sender: n.device,
      codec: kind === "audio" ? "opus" : "vp8" });
  }
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered(pc);
  await rpc.call("call_sdp", { ref: n.ref, sdp: pc.localDescription.sdp });
  drawGrid();
}

function dropSub(device) {
  const sub = call && call.subs.get(device);
  if (!sub) return;
  sub.pc.close();
  call.subs.delete(device);
  drawState();
}

function sendMedia() {
  rpc.call("call_media", { audioMuted: call.audioMuted, cameraOn: call.cameraOn,
    screenOn: call.screenOn }).catch(failed);
  drawState();
}

function toggle(what) {
  if (!call) return;
  if (what === "audio") {
    call.audioMuted = !call.audioMuted;  // a muted track sends silence (still sealed)
    for (const t of call.local.getAudioTracks()) t.enabled = !call.audioMuted;
  } else {
    call.cameraOn = !call.cameraOn;  // off: nothing is sent at all
    if (call.senders) {
      call.senders.video.replaceTrack(call.cameraOn ? call.local.getVideoTracks()[0] : null)
        .catch(failed);
    }
  }
  sendMedia();
  drawGrid();
}

async function shareScreen() {
  if (!call || !call.senders) return;
  if (call.screen) {
    for (const t of call.screen.getTracks()) t.stop();
    call.screen = null;
    call.screenOn = false;
    await call.senders.screen.replaceTrack(null);
    sendMedia();
    return;
  }
  const screen = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  const track = screen.getVideoTracks()[0];
  call.screen = screen;
  call.screenOn = true;
  track.addEventListener("ended", () => { if (call && call.screen === screen) shareScreen(); });
  await call.senders.screen.replaceTrack(track);
  sendMedia();
}

function askRecording(by) {
  const box = $("call-asked");
  const answer = (grant) => {
    box.replaceChildren();
    rpc.call("call_recording", { grant }).catch(failed);
  };
  const yes = h("button", { type: "button" }, "Allow");
  const no = h("button", { type: "button" }, "Refuse");
  yes.addEventListener("click", () => answer(true));
  no.addEventListener("click", () => answer(false));
  box.replaceChildren(h("span", {}, `${by} asks to record this call.`), yes, no);
}

// --- drawing ---------------------------------------------------------------------------

function drawState() {
  if (!call) return;
  $("call-title").textContent = "Call";
  $("call-e2ee").textContent = call.epoch === null ? "E2EE: keys pending"
    : `E2EE on · epoch ${call.epoch}`;
  show($("call-rec"), !!call.recording);
  $("call-mute").textContent = call.audioMuted ? "Unmute" : "Mute";
  $("call-mute").setAttribute("aria-pressed", String(call.audioMuted));
  $("call-camera").textContent = call.cameraOn ? "Camera off" : "Camera on";
  $("call-screen").textContent = call.screenOn ? "Stop sharing" : "Share screen";
  if (call.participants.length === 1 && call.me) {
    $("call-note").textContent = "Waiting for others to join…";
  } else if (call.participants.length > 1) {
    $("call-note").textContent = "";
  }
  drawGrid();
}

function tile(name, stream, muted, label) {
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.muted = muted;
  video.srcObject = stream;
  return h("figure", { class: "tile" }, video, h("figcaption", {}, label));
}

function drawGrid() {
  if (!call) return;
  const grid = $("call-grid");
  const keep = new Map([...grid.children].map((el) => [el.dataset.key, el]));
  const want = [];
  const add = (key, make) => {
    let el = keep.get(key);
    if (!el) { el = make(); el.dataset.key = key; }
    want.push(el);
    return el;
  };
  const meLabel = () => `${call.me || "you"} (you)${call.audioMuted ? " · muted" : ""}`
    + (call.cameraOn ? "" : " · camera off");
  const mine = add("me", () => tile("me", call.local, true, ""));
  mine.querySelector("figcaption").textContent = meLabel();
  mine.classList.toggle("off", !call.cameraOn);
  for (const device of call.participants) {
    if (device === call.me) continue;
    const sub = call.subs.get(device);
    const peer = call.peers.get(device);
    const state = peer ? `${peer.audioMuted ? " · muted" : ""}${peer.cameraOn ? "" : " · camera off"}`
      : "";
    const el = add(`p ${device}`, () => tile(device, sub ? sub.stream : null, false, ""));
    el.classList.toggle("off", !!peer && !peer.cameraOn);
    const video = el.querySelector("video");
    if (sub && video.srcObject !== sub.stream) video.srcObject = sub.stream;
    el.querySelector("figcaption").textContent = `${device}${sub ? "" : " · connecting"}${state}`;
    if (sub && sub.screen.getTracks().length && peer && peer.screenOn) {
      add(`s ${device}`, () => tile(device, sub.screen, true, `${device} · screen`));
    }
  }
  reconcile(grid, want);
}

// --- figures (tests and the benchmark) ---------------------------------------------------

function workerMessage(e) {
  const msg = e.data;
  if (msg.type === "stats" && call) {
    const waiter = call.statsWaiting.get(msg.ref);
    call.statsWaiting.delete(msg.ref);
    if (waiter) waiter(msg);
  } else if (msg.type === "error") {
    console.warn("call worker:", msg.error);
    failed(new Error(`Call encryption failed: ${msg.error}`));
  }
}

// {worker: counters per stream, encoder: {framesEncoded, totalEncodeTime}, decoded: {device: n}}
async function stats() {
  if (!call) return null;
  const c = call;
  const ref = c.nextRef++;
  const worker = await new Promise((resolve) => {
    c.statsWaiting.set(ref, resolve);
    c.worker.postMessage({ type: "stats", ref });
  });
  const out = { worker: worker.stats, workerEpoch: worker.epoch, sending: worker.sending,
    encoder: {}, decoded: {}, epoch: c.epoch,
    api: SCRIPT_TRANSFORM ? "script-transform" : "insertable-streams" };
  if (c.pub) {
    (await c.pub.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video" && s.framesEncoded) {
        out.encoder[s.mid] = { framesEncoded: s.framesEncoded,
          totalEncodeTime: s.totalEncodeTime, framesSent: s.framesSent,
          frameWidth: s.frameWidth, frameHeight: s.frameHeight };
      }
    });
  }
  for (const [device, sub] of c.subs) {
    let decoded = 0;
    (await sub.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") decoded += s.framesDecoded || 0;
    });
    out.decoded[device] = decoded;
  }
  return out;
}
