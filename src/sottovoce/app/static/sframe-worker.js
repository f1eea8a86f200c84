// The encoded-transform worker of a room call: every outgoing encoded frame is sealed
// and every incoming one opened here (RFC 9605 SFrame, sframe.js), off the page's
// thread. Keys come from the page, which has them from the app (derived there from
// the call's MLS group): per-track base keys and their KIDs, sent again on each epoch.
//
// Receiving, a frame is dropped (never decoded) when its KID names another sender or
// track than the stream it arrived on, when no held key matches, when it fails
// authentication, or when it is a replay. Keys of the previous epoch stay for the
// senders still in the call for GRACE_MS after a new one (as the Python side).
import {
  CALL_SUITE, SFrameError, TRACK, clearBytes, frameKey, kidFields, parseHeader, sealFrame,
  unprotect,
} from "./sframe.js";

const GRACE_MS = 2000;
const epochs = new Map();   // epoch mod 16 -> {epoch, roster: Map leaf -> device, keys: Map kid -> fk, deadline}
let current = null;         // the epoch sent under
const send = new Map();     // track -> fk of this device
const stats = new Map();    // stream name -> counters
let generation = 0;         // bumped by each key change, so a late derivation is dropped

function counters(name) {
  let c = stats.get(name);
  if (!c) {
    // busyUs: wall clock from a frame's arrival to its enqueue (the wait for the
    // crypto thread included); syncUs: the worker's own time on it (its code and the
    // synchronous part of the WebCrypto call), without that wait. Seal only.
    c = { seen: 0, frames: 0, failed: 0, unkeyed: 0, misbound: 0, bytes: 0, busyUs: 0,
      syncUs: 0 };
    stats.set(name, c);
  }
  return c;
}

function b64(text) {
  return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
}

async function beginEpoch(msg) {
  const gen = ++generation;
  const roster = new Map(Object.entries(msg.roster).map(([leaf, dev]) => [Number(leaf), dev]));
  const keys = new Map();
  const mine = new Map();
  for (const [kidText, base] of Object.entries(msg.keys)) {
    const kid = BigInt(kidText);
    const raw = b64(base);
    const fk = await frameKey(kid, raw, CALL_SUITE);
    raw.fill(0);
    const f = kidFields(kid);
    if (f.leaf === msg.ownLeaf) mine.set(f.track, fk); else keys.set(kid, fk);
  }
  if (gen !== generation) return;  // a newer epoch (or a wipe) came meanwhile
  const present = new Set(roster.values());
  for (const e of epochs.values()) {
    if (e === current) e.deadline = Date.now() + GRACE_MS;
    for (const [kid, fk] of e.keys) {  // a sender the commit removed loses every key now
      if (!present.has(e.roster.get(kidFields(kid).leaf))) e.keys.delete(kid);
      void fk;
    }
  }
  const e = { epoch: msg.epoch, roster, keys, deadline: null };
  epochs.set(msg.epoch & 0xf, e);  // RFC 9605 §5.2: the epoch 16 before goes
  current = e;
  send.clear();
  for (const [track, fk] of mine) send.set(track, fk);
}

function expire() {
  const now = Date.now();
  for (const [bits, e] of epochs) {
    if (e !== current && e.deadline !== null && now > e.deadline) epochs.delete(bits);
  }
}

function revoke(device) {
  for (const e of epochs.values()) {
    for (const kid of [...e.keys.keys()]) {
      if (e.roster.get(kidFields(kid).leaf) === device) e.keys.delete(kid);
    }
  }
}

function wipe() {
  generation++;
  epochs.clear();
  send.clear();
  current = null;
}

// --- frames --------------------------------------------------------------------------

// Frames are sealed in order and sent in order, but not one at a time: each frame's
// encrypt call is made as it arrives, and its enqueue waits only for the frames
// before it (at most IN_FLIGHT at once), so a frame never waits on the transform
// stream for the previous one's trip to the crypto thread.
const IN_FLIGHT = 4;

function sealer(opts) {
  const c = counters(`send ${opts.kind}`);
  const codec = opts.codec;
  const track = TRACK[opts.kind];
  let tail = Promise.resolve();
  let inFlight = 0;
  function transform(frame, controller) {
    c.seen++;
    const fk = send.get(track);
    if (!fk) { c.unkeyed++; return undefined; }  // no key yet (or any more): nothing leaves unencrypted
    const t0 = performance.now();
    const data = new Uint8Array(frame.data);
    const n = clearBytes(codec, data);
    // A frame shorter than its codec header would be cut in the wrong place on the
    // other side (calls/frames.py): it is not sent at all.
    if (!data.length || (codec === "vp8" && data.length < (data[0] & 1 ? 3 : 10))) {
      c.failed++;
      return undefined;
    }
    const { out, ready } = sealFrame(fk, data, n);
    const t1 = performance.now();
    c.syncUs += (t1 - t0) * 1000;
    inFlight++;
    tail = Promise.all([tail, ready]).then(() => {
      const t2 = performance.now();
      frame.data = out.buffer;
      controller.enqueue(frame);
      const t3 = performance.now();
      c.syncUs += (t3 - t2) * 1000;
      c.busyUs += (t3 - t0) * 1000;
      c.frames++;
      c.bytes += data.length;
    }, () => { c.failed++; }).finally(() => { inFlight--; });
    return inFlight >= IN_FLIGHT ? tail : undefined;
  }
  return { transform, flush: () => tail };
}

function opener(opts) {
  const c = counters(`recv ${opts.sender} ${opts.kind}`);
  return async (frame, controller) => {
    c.seen++;
    expire();
    const t0 = performance.now();
    const data = new Uint8Array(frame.data);
    const n = clearBytes(opts.codec, data);
    const body = data.subarray(n);
    let fk;
    try {
      const { kid } = parseHeader(body);
      const f = kidFields(kid);
      const e = epochs.get(f.epochBits);
      fk = e && e.keys.get(kid);
      if (!fk) { c.unkeyed++; return; }
      if (e.roster.get(f.leaf) !== opts.sender || f.track !== TRACK[opts.kind]) {
        c.misbound++;  // the SFU handed us another sender's or track's frames
        return;
      }
    } catch (err) {
      if (!(err instanceof SFrameError)) throw err;
      c.failed++;
      return;
    }
    try {
      const { plaintext } = await unprotect(fk, body, data.subarray(0, n));
      const out = new Uint8Array(n + plaintext.length);
      out.set(data.subarray(0, n), 0);
      out.set(plaintext, n);
      frame.data = out.buffer;
    } catch (err) {
      if (!(err instanceof SFrameError)) throw err;
      c.failed++;
      return;
    }
    c.busyUs += (performance.now() - t0) * 1000;
    c.frames++;
    controller.enqueue(frame);
  };
}

function pipe(readable, writable, opts) {
  const stage = opts.side === "send" ? sealer(opts) : { transform: opener(opts) };
  readable.pipeThrough(new TransformStream(stage)).pipeTo(writable).catch((err) => {
    self.postMessage({ type: "error", error: `${opts.side} ${opts.kind}: ${err && err.message}` });
  });
}

// RTCRtpScriptTransform (Chromium, Safari, Firefox).
self.onrtctransform = (event) => {
  const t = event.transformer;
  pipe(t.readable, t.writable, t.options);
};

self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === "keys") {
    beginEpoch(msg).then(() => self.postMessage({ type: "epoch", epoch: msg.epoch }),
      (err) => self.postMessage({ type: "error", error: String(err && err.message) }));
  } else if (msg.type === "revoke") {
    revoke(msg.device);
  } else if (msg.type === "wipe") {
    wipe();
  } else if (msg.type === "streams") {  // encoded insertable streams, where there is no script transform
    pipe(msg.readable, msg.writable, msg.options);
  } else if (msg.type === "stats") {
    self.postMessage({ type: "stats", ref: msg.ref, stats: Object.fromEntries(stats),
      epoch: current && current.epoch, sending: [...send.keys()] });
  }
};
