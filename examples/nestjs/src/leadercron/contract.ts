// The wire side of the leadercron app contract: header names, refusal codes,
// and the parsing of one trigger into a LeadercronRun. Framework-free, so it
// can be tested without Nest.

/**
 * Header names sent by the leadercron sidecar (lowercase, as Node.js gives
 * them). The first six mirror a body field; runNow and sidecarId are signed
 * but not interpreted; signature authenticates the request.
 */
export const Headers = {
  job: 'leadercron-job',
  slot: 'leadercron-slot',
  fencingToken: 'leadercron-fencing-token',
  deadline: 'leadercron-deadline',
  idempotencyKey: 'idempotency-key',
  attempt: 'leadercron-attempt',
  runNow: 'leadercron-run-now',
  sidecarId: 'leadercron-id',
  signature: 'leadercron-signature',
} as const;

/** Codes found in the `code` field of refusal bodies (same as examples/go/jobs). */
export const Codes = {
  badRequest: 'bad_request',
  unknownJob: 'unknown_job',
  draining: 'draining',
  staleFencingToken: 'stale_fencing_token',
  deadlinePassed: 'deadline_passed',
  duplicate: 'duplicate',
  alreadyRunning: 'already_running',
  jobFailed: 'job_failed',
  /** 401: missing or malformed signature, unknown key id, or a signature that does not match. */
  badSignature: 'bad_signature',
  /** 401: a valid signature whose time is more than 30 s away from the app's clock. */
  staleSignature: 'stale_signature',
  /** 403: no secret is configured and the peer is not a loopback address. */
  notLoopback: 'not_loopback',
  /** 413: a body larger than 64 KiB. */
  bodyTooLarge: 'body_too_large',
  /** 404: a path other than /jobs/{name} and /drain on the trigger listener. */
  notFound: 'not_found',
  /** 405: a method other than POST. */
  methodNotAllowed: 'method_not_allowed',
  /** 500: the module itself failed (not the job). */
  internalError: 'internal_error',
} as const;

export type Code = (typeof Codes)[keyof typeof Codes];

/** One triggered run of a job, as the job's method receives it. */
export interface LeadercronRun {
  /** The job name, as registered. */
  readonly job: string;
  /** The scheduled instant (UTC). */
  readonly slot: Date;
  /** The leader's fencing token; strictly grows with each new leadership. */
  readonly fencingToken: bigint;
  /** The sidecar stops waiting then; `signal` aborts then too. */
  readonly deadline: Date;
  /** `<job>@<slot>` unless the sidecar sent another. */
  readonly idempotencyKey: string;
  /** 1 for the first try. */
  readonly attempt: number;
  /** The triggering sidecar's LEADERCRON_ID, when sent. */
  readonly sidecarId?: string;
  /**
   * Aborts at the deadline; in synchronous mode also when the sidecar hangs
   * up. A job should stop promptly once it aborts.
   */
  readonly signal: AbortSignal;
}

/** The parsed trigger, before it gets its abort signal. */
export type Trigger = Omit<LeadercronRun, 'signal'>;

/** Thrown by parseTrigger; its message says what is wrong. */
export class BadTriggerError extends Error {
  override name = 'BadTriggerError';
}

type HeaderBag = Record<string, string | string[] | undefined>;

const rfc3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

function parseTime(s: string): number {
  const ms = rfc3339.test(s) ? Date.parse(s) : NaN;
  if (Number.isNaN(ms)) {
    throw new Error('not an RFC 3339 time');
  }
  return ms;
}

function parseToken(s: string): bigint {
  if (!/^\d{1,20}$/.test(s)) {
    throw new Error('not a decimal unsigned integer');
  }
  const v = BigInt(s);
  if (v >= 1n << 64n) {
    throw new Error('out of range');
  }
  return v;
}

function parseString(s: string): string {
  return s;
}

function parseAttempt(s: string): number {
  if (!/^[1-9]\d{0,14}$/.test(s)) {
    throw new Error('not a positive integer');
  }
  return Number(s);
}

/** RFC 3339 in UTC, without fractional seconds when they are zero (as Go prints it). */
export function formatTime(d: Date): string {
  return d.toISOString().replace('.000Z', 'Z');
}

/**
 * Reads one field from the body and/or its header. Both, when present, must
 * parse and agree (compare gives the equality); the body wins. Returns
 * undefined when neither is set.
 */
function pick<T>(
  field: string,
  fromBody: unknown,
  headers: HeaderBag,
  header: string,
  parse: (s: string) => T,
  same: (a: T, b: T) => boolean = (a, b) => a === b,
): T | undefined {
  let b: T | undefined;
  let h: T | undefined;
  if (fromBody !== undefined && fromBody !== null) {
    if (typeof fromBody !== 'string') {
      throw new BadTriggerError(`bad ${field} in body: not a string`);
    }
    try {
      b = parse(fromBody);
    } catch (err) {
      throw new BadTriggerError(`bad ${field} ${JSON.stringify(fromBody)} in body: ${(err as Error).message}`);
    }
  }
  const raw = headers[header];
  if (Array.isArray(raw)) {
    throw new BadTriggerError(`header ${header} given ${raw.length} times`);
  }
  if (raw !== undefined) {
    try {
      h = parse(raw);
    } catch (err) {
      throw new BadTriggerError(`bad header ${header} ${JSON.stringify(raw)}: ${(err as Error).message}`);
    }
  }
  if (b !== undefined && h !== undefined && !same(b, h)) {
    throw new BadTriggerError(`header ${header} ${JSON.stringify(raw)} disagrees with body ${field}`);
  }
  return b ?? h;
}

/**
 * Parses a trigger for job `name` from its headers and (already JSON-decoded)
 * body. The body is authoritative; a value present in both must agree (times
 * as instants). A field missing from the body, or a missing body, is taken
 * from its header. Slot, fencing token and deadline are required. Throws
 * BadTriggerError.
 */
export function parseTrigger(name: string, headers: HeaderBag, body: unknown): Trigger {
  if (body === undefined || body === null) {
    body = {};
  }
  if (typeof body !== 'object' || Array.isArray(body)) {
    throw new BadTriggerError('body is not a JSON object');
  }
  const b = body as Record<string, unknown>;

  const job = pick('job', b.job, headers, Headers.job, parseString);
  if (job !== undefined && job !== name) {
    throw new BadTriggerError(`job ${JSON.stringify(job)} does not match the path's job ${JSON.stringify(name)}`);
  }
  const slot = pick('slot', b.slot, headers, Headers.slot, parseTime);
  if (slot === undefined) {
    throw new BadTriggerError('missing slot');
  }

  // JSON numbers above 2^53 lose precision in JSON.parse: such a body token
  // cannot be trusted, so the header (a string) decides then.
  let bodyToken: string | undefined;
  if (b.fencing_token !== undefined && b.fencing_token !== null) {
    if (typeof b.fencing_token !== 'number' || !Number.isInteger(b.fencing_token) || b.fencing_token < 0) {
      throw new BadTriggerError('bad fencing_token in body: not an unsigned integer');
    }
    if (Number.isSafeInteger(b.fencing_token) || headers[Headers.fencingToken] === undefined) {
      bodyToken = BigInt(b.fencing_token).toString();
    }
  }
  const fencingToken = pick('fencing_token', bodyToken, headers, Headers.fencingToken, parseToken);
  if (fencingToken === undefined) {
    throw new BadTriggerError('missing fencing_token');
  }
  const deadline = pick('deadline', b.deadline, headers, Headers.deadline, parseTime);
  if (deadline === undefined) {
    throw new BadTriggerError('missing deadline');
  }
  const key = pick('idempotency_key', b.idempotency_key, headers, Headers.idempotencyKey, parseString);

  let bodyAttempt: string | undefined;
  if (b.attempt !== undefined && b.attempt !== null) {
    if (typeof b.attempt !== 'number' || !Number.isSafeInteger(b.attempt) || b.attempt < 1) {
      throw new BadTriggerError(`attempt ${JSON.stringify(b.attempt)} in body is not a positive integer`);
    }
    bodyAttempt = String(b.attempt);
  }
  const attempt = pick('attempt', bodyAttempt, headers, Headers.attempt, parseAttempt) ?? 1;
  const sidecarId = headers[Headers.sidecarId];
  const slotDate = new Date(slot);
  return {
    job: name,
    slot: slotDate,
    fencingToken,
    deadline: new Date(deadline),
    idempotencyKey: key ? key : `${name}@${formatTime(slotDate)}`,
    attempt,
    ...(typeof sidecarId === 'string' ? { sidecarId } : {}),
  };
}

/**
 * A LeadercronRun built by hand, for calling a @LeadercronJob method
 * directly: from a unit test, or from code of your own (an admin "run
 * now" endpoint). A decorated method is a normal method; only the trigger
 * listener calls it for the sidecar. Defaults: slot = now (whole second),
 * fencingToken 0n, deadline = slot + 10 minutes, idempotencyKey
 * `<job>@<slot>`, attempt 1, and a signal that never aborts unless given.
 */
export function leadercronRun(job: string, fields: Partial<Omit<LeadercronRun, 'job'>> = {}): LeadercronRun {
  const slot = fields.slot ?? new Date(Math.floor(Date.now() / 1000) * 1000);
  return {
    job,
    slot,
    fencingToken: fields.fencingToken ?? 0n,
    deadline: fields.deadline ?? new Date(slot.getTime() + 10 * 60_000),
    idempotencyKey: fields.idempotencyKey ?? `${job}@${formatTime(slot)}`,
    attempt: fields.attempt ?? 1,
    sidecarId: fields.sidecarId,
    signal: fields.signal ?? new AbortController().signal,
  };
}
