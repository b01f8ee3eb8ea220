// Leadercron-Signature, v1: the HMAC the sidecar puts on every request it
// sends to the app, and its verification. The spec is shared with the
// sidecar (internal/appclient) and examples/go/jobs, which must agree byte
// for byte:
//
//   v1 = hex(HMAC-SHA256(secret, S)), S = these 13 lines joined by "\n":
//     leadercron-v1
//     the method                     POST
//     the path as sent on the wire   /jobs/send-report (raw, without the query)
//     t                              the header's t=, as sent
//     Leadercron-Job, Leadercron-Slot, Leadercron-Fencing-Token,
//     Leadercron-Deadline, Idempotency-Key, Leadercron-Attempt,
//     Leadercron-Run-Now, Leadercron-Id   (each "" when absent)
//     lowercase hex SHA-256 of the body bytes
//
//   Leadercron-Signature: t=<unix seconds>,kid=<8 hex>,v1=<64 hex>
//   kid = first 8 hex of SHA-256("leadercron-kid\n" + secret)
//
// Framework-free; secrets never leave this file's objects in any printable
// form.
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { inspect } from 'node:util';
import { type Code, Codes, Headers } from './contract.js';

/** The shortest secret accepted: 32 bytes, an HMAC-SHA256 key as strong as the hash. */
export const MIN_SECRET_BYTES = 32;

/** How far (in seconds, either direction) a signature's t= may be from the app's clock. */
export const SIGNATURE_TOLERANCE_SECONDS = 30;

/** The largest body read from a request; a larger one is refused with 413. */
export const MAX_BODY_BYTES = 64 * 1024;

/** The headers whose values are lines 5 to 12 of the signed string, in order. */
export const SIGNED_HEADERS = [
  Headers.job,
  Headers.slot,
  Headers.fencingToken,
  Headers.deadline,
  Headers.idempotencyKey,
  Headers.attempt,
  Headers.runNow,
  Headers.sidecarId,
] as const;

/**
 * One secret the app accepts, with its key id. It never prints its secret:
 * toString, toJSON and util.inspect (so console.log and loggers) show the
 * key id only.
 */
export class TriggerKey {
  /** The key id: the first 8 hex characters of SHA-256("leadercron-kid\n" + secret). Not secret. */
  readonly kid: string;
  readonly #secret: Buffer;

  /**
   * Throws an Error naming `name` (never the secret) if secret is shorter
   * than MIN_SECRET_BYTES. A string is taken as its UTF-8 bytes.
   */
  constructor(secret: string | Uint8Array, name = 'secret') {
    const bytes = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : Buffer.from(secret);
    if (bytes.length < MIN_SECRET_BYTES) {
      throw new Error(
        `leadercron: ${name} has ${bytes.length} bytes, want at least ${MIN_SECRET_BYTES} (generate one with: openssl rand -hex 32)`,
      );
    }
    this.#secret = bytes;
    this.kid = keyId(bytes);
  }

  /** hex(HMAC-SHA256(secret, s)). */
  mac(s: string): Buffer {
    return createHmac('sha256', this.#secret).update(s, 'utf8').digest();
  }

  /** Whether other holds the same secret (constant time). */
  sameSecret(other: TriggerKey): boolean {
    return other.#secret.length === this.#secret.length && timingSafeEqual(other.#secret, this.#secret);
  }

  toString(): string {
    return `TriggerKey(kid=${this.kid})`;
  }

  toJSON(): { kid: string } {
    return { kid: this.kid };
  }

  [inspect.custom](): string {
    return this.toString();
  }
}

/** The key id of secret: the first 8 lowercase hex characters of SHA-256("leadercron-kid\n" + secret). */
export function keyId(secret: string | Uint8Array): string {
  return createHash('sha256').update('leadercron-kid\n', 'utf8').update(secret).digest('hex').slice(0, 8);
}

/** Header values as Node.js gives them (lowercase names); a string[] is a header given more than once. */
export type HeaderValues = Record<string, string | string[] | undefined>;

/** What a signature covers. */
export interface SignedRequest {
  /** The HTTP method, e.g. POST. */
  method: string;
  /** The path exactly as sent on the wire, without the query. */
  path: string;
  /** The request headers (lowercase names). */
  headers: HeaderValues;
  /** The body bytes (empty for /drain). */
  body: Uint8Array;
}

function single(v: string | string[] | undefined): string {
  return Array.isArray(v) ? v.join(', ') : v ?? '';
}

/** The signed string S of a request at t (the decimal string of the header's t=). */
export function signingString(req: SignedRequest, t: string): string {
  const lines = ['leadercron-v1', req.method, req.path, t];
  for (const h of SIGNED_HEADERS) {
    lines.push(single(req.headers[h]));
  }
  lines.push(createHash('sha256').update(req.body).digest('hex'));
  return lines.join('\n');
}

/**
 * The Leadercron-Signature header value for req, signed with secret at
 * unixSeconds, as the sidecar computes it. For tests and for callers
 * other than the sidecar; it does not check the secret's length. Header
 * names in req.headers may be in any case.
 */
export function signTrigger(secret: string | Uint8Array, req: SignedRequest, unixSeconds: number): string {
  const headers: HeaderValues = {};
  for (const [k, v] of Object.entries(req.headers)) {
    headers[k.toLowerCase()] = v;
  }
  const t = String(Math.floor(unixSeconds));
  const v1 = createHmac('sha256', typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret)
    .update(signingString({ ...req, headers }, t), 'utf8')
    .digest('hex');
  return `t=${t},kid=${keyId(secret)},v1=${v1}`;
}

/** The outcome of verifyTrigger. A refusal is always 401. */
export type Verification =
  | { ok: true; kid: string }
  | { ok: false; status: 401; code: Code; error: string };

// t without sign or leading zero (at most 19 digits), kid 8 and v1 64
// lowercase hex characters, in this order, no spaces: anything else is
// malformed.
const signatureFormat = /^t=(0|[1-9][0-9]{0,18}),kid=([0-9a-f]{8}),v1=([0-9a-f]{64})$/;

/**
 * Verifies req's Leadercron-Signature against keys at nowMs (milliseconds
 * since the epoch), in the spec's order: the header's presence and format,
 * a key whose kid matches, the HMAC (constant-time comparison), then the
 * freshness |now - t| <= 30 s. It reads and changes no state. Header values
 * must be given with duplicates as arrays (Node.js's req.headersDistinct):
 * a signature or signed header given more than once is refused.
 */
export function verifyTrigger(keys: readonly TriggerKey[], req: SignedRequest, nowMs: number): Verification {
  const bad = (error: string): Verification => ({ ok: false, status: 401, code: Codes.badSignature, error });
  let sig = req.headers[Headers.signature];
  if (Array.isArray(sig)) {
    if (sig.length > 1) {
      return bad('Leadercron-Signature header given more than once');
    }
    sig = sig[0];
  }
  if (sig === undefined || sig === '') {
    return bad('missing Leadercron-Signature header: this app requires signed triggers');
  }
  const m = signatureFormat.exec(sig);
  if (!m) {
    return bad('malformed Leadercron-Signature header, want t=<unix seconds>,kid=<8 hex>,v1=<64 hex>');
  }
  const [, t, kid, v1] = m as unknown as [string, string, string, string];
  const headers: HeaderValues = {};
  for (const h of SIGNED_HEADERS) {
    const v = req.headers[h];
    if (Array.isArray(v)) {
      if (v.length > 1) {
        return bad(`signed header ${h} given more than once`);
      }
      headers[h] = v[0];
    } else {
      headers[h] = v;
    }
  }
  const s = signingString({ ...req, headers }, t);
  const given = Buffer.from(v1, 'hex');
  let known = false;
  let valid = false;
  for (const key of keys) {
    if (key.kid !== kid) {
      continue;
    }
    known = true;
    if (timingSafeEqual(key.mac(s), given)) {
      valid = true;
      break;
    }
  }
  if (!known) {
    return bad(`unknown key id ${kid}: the sidecar's secret is not one of this app's`);
  }
  if (!valid) {
    return bad('signature mismatch: wrong secret, or the request was altered');
  }
  const skewMs = nowMs - Number(t) * 1000;
  if (!(Math.abs(skewMs) <= SIGNATURE_TOLERANCE_SECONDS * 1000)) {
    return {
      ok: false,
      status: 401,
      code: Codes.staleSignature,
      error: `signature time ${t} is more than ${SIGNATURE_TOLERANCE_SECONDS} s away from this app's clock (${Math.floor(nowMs / 1000)})`,
    };
  }
  return { ok: true, kid };
}
