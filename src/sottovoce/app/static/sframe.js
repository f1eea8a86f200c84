// SFrame (RFC 9605) on encoded media frames, with WebCrypto: the same bytes as the
// Python side (src/sottovoce/sframe/, src/sottovoce/calls/frames.py; docs/protocol.md).
//
//   encoded frame:  | clear codec bytes (n) | rest of the frame                 |
//   on the wire:    | clear codec bytes (n) | SFrame header | AEAD(rest) ‖ tag  |
//
// n: 10 for a VP8 keyframe, 3 for a VP8 delta frame, 1 for Opus; the clear bytes are
// the SFrame metadata (authenticated, RFC 9605 §4.4.3). Header §4.3 (KID, CTR minimal),
// keys §4.4.2 (HKDF with "SFrame 1.0 Secret key "/"salt " ‖ u64 KID ‖ u16 suite),
// nonce = salt XOR CTR, AAD = header ‖ metadata. Suites 4 and 5 (AES-GCM).
// Used by the encoded-transform worker (sframe-worker.js) and checked against the
// RFC's test vectors in Chromium (tests/browser/test_app_sframe.py).

export const SUITES = {
  4: { hash: "SHA-256", nk: 16, nn: 12, nt: 16 },  // AES_128_GCM_SHA256_128
  5: { hash: "SHA-512", nk: 32, nn: 12, nt: 16 },  // AES_256_GCM_SHA512_128
};
export const CALL_SUITE = 4;
export const TRACK = { chat: 0, audio: 1, video: 2, screen: 3 };
const MAX64 = (1n << 64n) - 1n;
const enc = new TextEncoder();

export class SFrameError extends Error {}

// --- header (§4.3) -------------------------------------------------------------------

const SHORT = Array.from({ length: 128 }, (_, b) => Uint8Array.of(b));

function compact(value) {
  if (value < 8n) return [Number(value), []];
  const bytes = [];
  for (let v = value; v > 0n; v >>= 8n) bytes.unshift(Number(v & 0xffn));
  return [0x08 | (bytes.length - 1), bytes];
}

export function encodeHeader(kid, ctr) {
  kid = BigInt(kid); ctr = BigInt(ctr);
  if (kid < 8n && ctr < 8n) return SHORT[Number((kid << 4n) | ctr)];
  if (kid < 0n || kid > MAX64 || ctr < 0n || ctr > MAX64) {
    throw new SFrameError("SFrame KID and CTR must fit in 64 bits");
  }
  const [k, kb] = compact(kid);
  const [c, cb] = compact(ctr);
  return Uint8Array.from([(k << 4) | c, ...kb, ...cb]);
}

function readValue(data, at, len, what) {
  if (data.length < at + len) throw new SFrameError("SFrame header truncated");
  let v = 0n;
  for (let i = 0; i < len; i++) v = (v << 8n) | BigInt(data[at + i]);
  // RFC 9605 §4.3: an appended value uses the minimum number of bytes and is >= 8.
  const least = len === 1 ? 8n : 1n << BigInt(8 * (len - 1));
  if (v < least) throw new SFrameError(`SFrame header ${what} not minimally encoded`);
  return v;
}

// {kid, ctr, length} of the header at the start of data (a Uint8Array).
export function parseHeader(data) {
  if (data.length < 1) throw new SFrameError("SFrame header truncated");
  const config = data[0];
  let at = 1;
  let kid = BigInt((config >> 4) & 0x07);
  let ctr = BigInt(config & 0x07);
  if (config & 0x80) {
    const len = ((config >> 4) & 0x07) + 1;
    kid = readValue(data, at, len, "KID");
    at += len;
  }
  if (config & 0x08) {
    const len = (config & 0x07) + 1;
    ctr = readValue(data, at, len, "CTR");
    at += len;
  }
  return { kid, ctr, length: at };
}

// --- keys (§4.4.2) -------------------------------------------------------------------

function u64(value) {
  const out = new Uint8Array(8);
  let v = BigInt(value);
  for (let i = 7; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n; }
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function labels(kid, suite) {
  const tail = concat(u64(kid), Uint8Array.from([suite >> 8, suite & 0xff]));
  return [concat(enc.encode("SFrame 1.0 Secret key "), tail),
    concat(enc.encode("SFrame 1.0 Secret salt "), tail)];
}

// {key: raw sframe_key bytes, salt} of §4.4.2; HKDF here is Extract("", base) + Expand.
export async function deriveKeySalt(kid, baseKey, suite = CALL_SUITE) {
  const s = SUITES[suite];
  if (!s) throw new SFrameError("unsupported SFrame cipher suite");
  if (!baseKey.length) throw new SFrameError("SFrame base_key must not be empty");
  const ikm = await crypto.subtle.importKey("raw", baseKey, "HKDF", false, ["deriveBits"]);
  const [keyLabel, saltLabel] = labels(kid, suite);
  const hkdf = (info, n) => crypto.subtle.deriveBits(
    { name: "HKDF", hash: s.hash, salt: new Uint8Array(0), info }, ikm, 8 * n);
  const [key, salt] = await Promise.all([hkdf(keyLabel, s.nk), hkdf(saltLabel, s.nn)]);
  return { key: new Uint8Array(key), salt: new Uint8Array(salt) };
}

// One KID's keyed AEAD: what protect/unprotect need (the CryptoKey is not extractable,
// imported once per KID: every frame under it reuses it). `ctr` is the next counter
// of this sender (a Number: 2^53 frames are never reached, and the seal refuses them).
export async function frameKey(kid, baseKey, suite = CALL_SUITE) {
  const { key, salt } = await deriveKeySalt(kid, baseKey, suite);
  const aead = await crypto.subtle.importKey("raw", key, "AES-GCM", false,
    ["encrypt", "decrypt"]);
  key.fill(0);
  const fk = { kid: BigInt(kid), suite, aead, salt, ctr: 0, window: new ReplayWindow(),
    sealing: null };
  return fk;
}

function nonceOf(salt, ctr) {
  const nonce = salt.slice();
  let v = ctr;
  for (let i = nonce.length - 1; v > 0n; i--) { nonce[i] ^= Number(v & 0xffn); v >>= 8n; }
  return nonce;
}

// --- frames (§4.4.3) -----------------------------------------------------------------

// header ‖ AEAD.Encrypt(key, nonce, header ‖ metadata, plaintext), with the key's next CTR.
export async function protect(fk, plaintext, metadata = new Uint8Array(0), ctr = null) {
  return sealInto(fk, plaintext, metadata, new Uint8Array(0), ctr);
}

// prefix ‖ protect(...) in one buffer. Without `ctr`, the key's next counter (the
// worker's path is sealFrame below, the same bytes without the per-call allocations).
export async function sealInto(fk, plaintext, metadata, prefix, ctr = null) {
  let c;
  if (ctr === null) {
    if (fk.ctr >= MAX_CTR) throw new SFrameError("SFrame counter exhausted");
    c = BigInt(fk.ctr++);
  } else {
    c = BigInt(ctr);
  }
  if (c < 0n || c > MAX64) throw new SFrameError("SFrame counter exhausted");
  const header = encodeHeader(fk.kid, c);
  const ct = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv: nonceOf(fk.salt, c), additionalData: concat(header, metadata),
      tagLength: 128 }, fk.aead, plaintext);
  const out = new Uint8Array(prefix.length + header.length + ct.byteLength);
  out.set(prefix, 0);
  out.set(header, prefix.length);
  out.set(new Uint8Array(ct), prefix.length + header.length);
  return out;
}

// --- the worker's seal: one encrypted frame with no per-frame garbage but the output ---

const MAX_CTR = Number.MAX_SAFE_INTEGER;  // the implicit counter's end (never reached)
const MAX_META = 16;                      // more clear bytes than a codec header: refused

// What sealFrame reuses for every frame under one key: the KID part of the header,
// the nonce and AAD scratch buffers, and the WebCrypto parameters. WebCrypto copies
// iv, additionalData and data when encrypt() is called (WebCrypto §14.3.1, "get a copy
// of the bytes"), so the scratch buffers are free again as soon as it returns.
class SealState {
  constructor(fk) {
    const kid = fk.kid;
    if (kid < 0n || kid > MAX64) throw new SFrameError("SFrame KID must fit in 64 bits");
    const [k, kb] = compact(kid);  // k: the config byte's KID bits, K flag included
    this.kidConfig = k << 4;
    this.kidBytes = Uint8Array.from(kb);
    const salt = new DataView(fk.salt.buffer, fk.salt.byteOffset, fk.salt.byteLength);
    this.salt4 = salt.getUint32(4);
    this.salt8 = salt.getUint32(8);
    this.nonce = new DataView(new ArrayBuffer(12));
    this.nonce.setUint32(0, salt.getUint32(0));  // the CTR only reaches the last 8 bytes
    this.aad = new Uint8Array(1 + 8 + 8 + MAX_META);
    this.aadViews = [];  // aad.subarray(0, n) for each length n, made once
    for (let n = 0; n <= this.aad.length; n++) this.aadViews.push(this.aad.subarray(0, n));
    this.params = { name: "AES-GCM", iv: this.nonce, additionalData: null, tagLength: 128 };
  }
}

// Seal `data` (a Uint8Array over an encoded frame) whose first `n` bytes stay clear:
// returns {out, ready}, `out` the whole frame as it goes on the wire (clear bytes ‖
// SFrame header ‖ ciphertext ‖ tag) and `ready` a promise settled when `out` holds
// the ciphertext. The encrypt call is made before this returns, so frames sealed
// one after the other are in flight together and keep their counters' order.
export function sealFrame(fk, data, n) {
  const st = fk.sealing || (fk.sealing = new SealState(fk));
  if (n > MAX_META) throw new SFrameError("too many clear bytes before the SFrame header");
  const c = fk.ctr;
  if (c >= MAX_CTR) throw new SFrameError("SFrame counter exhausted");
  fk.ctr = c + 1;
  // Header (RFC 9605 §4.3): the KID part as precomputed, the CTR in the fewest bytes.
  const aad = st.aad;
  let at = 1 + st.kidBytes.length;
  aad.set(st.kidBytes, 1);
  if (c < 8) {
    aad[0] = st.kidConfig | c;
  } else {
    let len = 0;
    for (let v = c; v > 0; v = Math.floor(v / 256)) len++;
    aad[0] = st.kidConfig | 0x08 | (len - 1);
    for (let i = len - 1, v = c; i >= 0; i--, v = Math.floor(v / 256)) aad[at + i] = v % 256;
    at += len;
  }
  const hlen = at;
  // AAD = header ‖ metadata (the clear codec bytes).
  for (let i = 0; i < n; i++) aad[hlen + i] = data[i];
  // Nonce = salt XOR CTR (the CTR in the last 8 bytes, big-endian).
  const hi = Math.floor(c / 0x100000000);
  const lo = c >>> 0;
  const nonce = st.nonce;
  nonce.setUint32(4, (st.salt4 ^ hi) >>> 0);
  nonce.setUint32(8, (st.salt8 ^ lo) >>> 0);
  st.params.additionalData = st.aadViews[hlen + n];
  const pending = crypto.subtle.encrypt(st.params, fk.aead, data.subarray(n));
  const out = new Uint8Array(data.length + hlen + 16);
  out.set(data.subarray(0, n), 0);
  out.set(aad.subarray(0, hlen), n);
  const ready = pending.then((ct) => { out.set(new Uint8Array(ct), n + hlen); return out; });
  return { out, ready };
}

// {kid, ctr, plaintext} of a frame under fk; throws SFrameError on any failure. The
// replay window is only advanced by a frame that authenticated.
export async function unprotect(fk, frame, metadata = new Uint8Array(0)) {
  const { kid, ctr, length } = parseHeader(frame);
  if (kid !== fk.kid) throw new SFrameError("frame under another key");
  if (!fk.window.fresh(ctr)) throw new SFrameError("replayed frame");
  let pt;
  try {
    pt = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: nonceOf(fk.salt, ctr),
        additionalData: concat(frame.subarray(0, length), metadata), tagLength: 128 },
      fk.aead, frame.subarray(length));
  } catch {
    throw new SFrameError("frame authentication failed");
  }
  fk.window.accept(ctr);
  return { kid, ctr, plaintext: new Uint8Array(pt) };
}

// RFC 9605 §7.5: counters within the last `size` of the highest seen, each once.
export class ReplayWindow {
  constructor(size = 128) { this.size = BigInt(size); this.top = -1n; this.seen = new Set(); }

  fresh(ctr) {
    if (this.top >= 0n && ctr + this.size <= this.top) return false;
    return !this.seen.has(ctr);
  }

  accept(ctr) {
    this.seen.add(ctr);
    if (ctr > this.top) {
      this.top = ctr;
      for (const c of this.seen) if (c + this.size <= this.top) this.seen.delete(c);
    }
  }
}

// --- the call's frame layout (calls/frames.py) -----------------------------------------

export function clearBytes(codec, frame) {
  if (!frame.length) return 0;
  const n = codec === "vp8" ? (frame[0] & 0x01 ? 3 : 10) : 1;
  return Math.min(n, frame.length);
}

// KID = sender leaf ‖ track (4 bits) ‖ epoch mod 16 (4 bits) (sframe/mls_keys.py).
export function kidFields(kid) {
  return { leaf: Number(kid >> 8n), track: Number((kid >> 4n) & 0xfn), epochBits: Number(kid & 0xfn) };
}
