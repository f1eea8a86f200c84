// 1:1 calls in the page: the SDK rings, signals (end-to-end encrypted) and binds the
// DTLS fingerprints (p2p_bridge.py); the page makes each connection's description when
// asked ("offer", "answer"), applies the peer's ("apply", "candidates"), and says when
// its connection is up or failed. Media are DTLS-SRTP between the two devices.
import { $, h, show } from "./dom.js";

let rpc = null;
let openPeer = null;  // the 1:1 chat shown
let call = null;      // {peer, local, pcs: Map generation -> pc, remote, audioMuted, cameraOn}

export function initP2p(theRpc) {
  rpc = theRpc;
  $("p2p-call-button").addEventListener("click", () => { dial().catch(failed); });
  $("p2p-view").append(
    h("div", { class: "call-head" }, h("h2", { id: "p2p-title" }, "Call"),
      h("span", { id: "p2p-state", class: "badge e2ee", role: "status" })),
    h("p", { id: "p2p-note", class: "note", "aria-live": "polite" }),
    h("div", { id: "p2p-ring", class: "row" }),
    h("div", { id: "p2p-grid", class: "call-grid" }),
    h("div", { id: "p2p-controls", class: "row call-controls" },
      h("button", { id: "p2p-mute", type: "button" }, "Mute"),
      h("button", { id: "p2p-camera", type: "button" }, "Camera off"),
      h("button", { id: "p2p-hangup", type: "button", class: "danger" }, "Hang up")),
    h("p", { id: "p2p-error", class: "error", role: "alert" }));
  $("p2p-hangup").addEventListener("click", () => rpc.call("p2p_hangup").catch(failed));
  $("p2p-mute").addEventListener("click", () => toggle("audio"));
  $("p2p-camera").addEventListener("click", () => toggle("camera"));
  show($("p2p-controls"), false);
  window.sottovoceP2p = { stats };
}

export function p2pPeer(peer) {
  openPeer = peer;
  show($("p2p-call-button"), peer !== null);
}

function failed(err) {
  show($("p2p-view"), true);
  $("p2p-error").textContent = err && err.message ? err.message : String(err);
}

async function media(video) {
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: true, video: video ? { width: 640, height: 480, frameRate: 30 } : false });
  } catch (err) {
    throw new Error(err && err.name === "NotAllowedError"
      ? "Camera or microphone access was denied: allow them for this page to call."
      : `No camera or microphone could be opened (${err && err.name}).`);
  }
}

function begin(peer, local) {
  call = { peer, local, pcs: new Map(), remote: new MediaStream(), audioMuted: false,
    cameraOn: local.getVideoTracks().length > 0 };
  const remote = document.createElement("video");
  remote.autoplay = true;
  remote.playsInline = true;
  remote.srcObject = call.remote;
  const mine = document.createElement("video");
  mine.autoplay = true;
  mine.muted = true;
  mine.srcObject = local;
  $("p2p-grid").replaceChildren(h("figure", { class: "tile" }, remote, h("figcaption", {}, peer)),
    h("figure", { class: "tile" }, mine, h("figcaption", {}, "you")));
  $("p2p-error").textContent = "";
  show($("p2p-view"), true);
  show($("p2p-controls"), true);
}

function end(note) {
  if (call) {
    for (const pc of call.pcs.values()) pc.close();
    for (const t of call.local.getTracks()) t.stop();
  }
  call = null;
  $("p2p-grid").replaceChildren();
  $("p2p-ring").replaceChildren();
  show($("p2p-controls"), false);
  $("p2p-state").textContent = "";
  $("p2p-note").textContent = note;
}

async function dial() {
  if (call || !openPeer) return;
  const peer = openPeer;
  begin(peer, await media(true));
  $("p2p-note").textContent = `Calling ${peer}…`;
  try {
    await rpc.call("p2p_call", { user: peer, video: true });
  } catch (err) {
    end("");
    throw err;
  }
}

function ringing(n) {
  const box = $("p2p-ring");
  const accept = h("button", { type: "button" }, "Accept");
  const decline = h("button", { type: "button", class: "danger" }, "Decline");
  accept.addEventListener("click", async () => {
    box.replaceChildren();
    try {
      begin(n.peer, await media(n.video));
      await rpc.call("p2p_answer");
    } catch (err) {
      rpc.call("p2p_decline").catch(() => {});
      end("");
      failed(err);
    }
  });
  decline.addEventListener("click", () => { box.replaceChildren(); rpc.call("p2p_decline"); });
  box.replaceChildren(h("span", {}, `${n.peer} is calling${n.video ? " (video)" : ""}.`),
    accept, decline);
  show($("p2p-view"), true);
}

// --- notices from the app ------------------------------------------------------------

export function p2pNotice(n) {
  if (n.kind === "state") { stateNotice(n); return; }
  if (!call || n.peer !== call.peer) {
    if (n.ref) rpc.call("p2p_sdp", { ref: n.ref, error: "not in that call" }).catch(() => {});
    return;
  }
  const handlers = {
    offer: () => describe(n, null),
    answer: () => describe(n, n.sdp),
    apply: () => pcOf(n).setRemoteDescription({ type: "answer", sdp: n.sdp }).catch(failed),
    candidates: () => addCandidates(n).catch(failed),
    closed: () => {},
    peer_media: () => { $("p2p-note").textContent = n.audioMuted ? `${call.peer} is muted` : ""; },
    problem: () => { $("p2p-error").textContent = n.error; },
  };
  const handler = handlers[n.kind];
  if (handler) handler();
}

function stateNotice(n) {
  const words = { outgoing_ringing: "Ringing…", incoming_ringing: "Incoming call",
    connecting: "Connecting…", active: "Connected · DTLS-SRTP", ended: "" };
  if (n.state === "incoming_ringing") { ringing(n); return; }
  if (n.state === "ended") {
    end(n.reason ? `The call ended: ${n.reason}.` : "The call ended.");
    show($("p2p-view"), true);
    return;
  }
  $("p2p-state").textContent = words[n.state] || n.state;
  if (n.state === "active") $("p2p-note").textContent = "";
}

function pcOf(n) {
  const pc = call.pcs.get(n.generation);
  if (!pc) throw new Error("no such connection");
  return pc;
}

async function gathered(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
    setTimeout(resolve, 3000);
  });
}

// A new connection for this generation (an ICE restart makes the next), and its
// offer or answer: audio, camera, screen, in that order, as every sottovoce client.
async function describe(n, remoteOffer) {
  const c = call;
  try {
    for (const [g, old] of c.pcs) if (g !== n.generation) { old.close(); c.pcs.delete(g); }
    const pc = new RTCPeerConnection({ iceServers: n.iceServers, bundlePolicy: "max-bundle",
      iceTransportPolicy: n.relayOnly ? "relay" : "all" });
    c.pcs.set(n.generation, pc);
    pc.addEventListener("track", (e) => {
      if (e.transceiver === pc.getTransceivers()[2]) return;  // the screen: not shown yet
      c.remote.addTrack(e.track);
    });
    pc.addEventListener("connectionstatechange", () => {
      const s = pc.connectionState;
      if (s === "connected" || s === "failed" || s === "closed") {
        rpc.call("p2p_media", { generation: n.generation, state: s }).catch(() => {});
      }
    });
    const tracks = [c.local.getAudioTracks()[0] || null, c.local.getVideoTracks()[0] || null, null];
    if (remoteOffer === null) {
      for (const kind of ["audio", "video", "video"]) pc.addTransceiver(kind, { direction: "sendrecv" });
    } else {
      await pc.setRemoteDescription({ type: "offer", sdp: remoteOffer });
    }
    const transceivers = pc.getTransceivers();
    if (transceivers.length !== 3) throw new Error("the call's description has the wrong sections");
    for (let i = 0; i < 3; i++) {
      transceivers[i].direction = "sendrecv";
      await transceivers[i].sender.replaceTrack(tracks[i]);
    }
    await pc.setLocalDescription(remoteOffer === null ? await pc.createOffer()
      : await pc.createAnswer());
    await gathered(pc);
    await rpc.call("p2p_sdp", { ref: n.ref, sdp: pc.localDescription.sdp });
  } catch (err) {
    failed(err);
    rpc.call("p2p_sdp", { ref: n.ref, error: err.message || String(err) }).catch(() => {});
  }
}

async function addCandidates(n) {
  const pc = pcOf(n);
  for (const [mid, line] of n.candidates) await pc.addIceCandidate({ candidate: line, sdpMid: mid });
  if (n.complete) await pc.addIceCandidate(null).catch(() => {});
}

function toggle(what) {
  if (!call) return;
  if (what === "audio") {
    call.audioMuted = !call.audioMuted;
    for (const t of call.local.getAudioTracks()) t.enabled = !call.audioMuted;
    $("p2p-mute").textContent = call.audioMuted ? "Unmute" : "Mute";
  } else {
    call.cameraOn = !call.cameraOn;
    for (const t of call.local.getVideoTracks()) t.enabled = call.cameraOn;
    $("p2p-camera").textContent = call.cameraOn ? "Camera off" : "Camera on";
  }
  rpc.call("p2p_set", { audioMuted: call.audioMuted, cameraOn: call.cameraOn, screenOn: false })
    .catch(failed);
}

// {sent: video frames sent, decoded: video frames decoded, audioIn: audio packets received,
// state, path: [local, remote] candidate types of the selected pair} of the live connection.
async function stats() {
  if (!call || !call.pcs.size) return null;
  const pc = [...call.pcs.values()].pop();
  const out = { sent: 0, decoded: 0, audioIn: 0, state: pc.connectionState, path: null };
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") out.sent += s.framesSent || 0;
    if (s.type === "inbound-rtp" && s.kind === "video") out.decoded += s.framesDecoded || 0;
    if (s.type === "inbound-rtp" && s.kind === "audio") out.audioIn += s.packetsReceived || 0;
    // The path media take: the selected pair's candidate types (local, remote).
    const pair = s.type === "transport" && s.selectedCandidatePairId
      && report.get(s.selectedCandidatePairId);
    if (pair) {
      const local = report.get(pair.localCandidateId);
      const remote = report.get(pair.remoteCandidateId);
      out.path = [local && local.candidateType, remote && remote.candidateType];
    }
  });
  return out;
}
