import { type BeforeApplicationShutdown, Inject, Injectable, Logger, type LoggerService } from '@nestjs/common';
import {
  BadTriggerError,
  type Code,
  Codes,
  formatTime,
  type LeadercronRun,
  parseTrigger,
  type Trigger,
} from './contract.js';
import { checkModuleOptions, LEADERCRON_OPTIONS, type LeadercronModuleOptions } from './options.js';

/** The code of a job. Its result is ignored; a thrown error (or rejection) is a failure. */
export type LeadercronJobFn = (run: LeadercronRun) => unknown;

/** Per-job settings. */
export interface LeadercronJobOptions {
  /** Overrides the module's `async` for this job. */
  async?: boolean;
}

/** What to answer to one request: an HTTP status and a JSON body. */
export interface LeadercronAnswer {
  status: number;
  body: Record<string, unknown>;
}

interface Registered {
  fn: LeadercronJobFn;
  async: boolean;
}

export const DEFAULT_REMEMBER_KEYS = 1024;
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 30_000;

/**
 * The job registry and the contract's bookkeeping: which jobs and keys run,
 * which keys succeeded, the highest fencing token seen, and whether the app
 * drains. The controller is a thin HTTP shell over handleTrigger and drain.
 */
@Injectable()
export class LeadercronJobs implements BeforeApplicationShutdown {
  private readonly jobs = new Map<string, Registered>();
  private readonly activeJobs = new Set<string>();
  private readonly runningKeys = new Set<string>();
  private readonly doneKeys = new Set<string>(); // insertion order = FIFO
  private readonly rememberKeys: number;
  private readonly defaultAsync: boolean;
  private readonly shutdownTimeoutMs: number;
  private readonly log: LoggerService;
  private maxToken = 0n;
  private draining = false;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(@Inject(LEADERCRON_OPTIONS) options: LeadercronModuleOptions) {
    options = checkModuleOptions(options);
    this.defaultAsync = options.async ?? false;
    const keep = options.rememberKeys ?? DEFAULT_REMEMBER_KEYS;
    this.rememberKeys = keep === 0 ? DEFAULT_REMEMBER_KEYS : Math.max(keep, 0);
    this.shutdownTimeoutMs = options.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
    this.log = options.logger ?? new Logger('Leadercron');
  }

  /** Makes fn the job called name. Throws on an empty name, a slash, or a name registered twice. */
  register(name: string, fn: LeadercronJobFn, opts: LeadercronJobOptions = {}): void {
    if (name === '' || name.includes('/')) {
      throw new Error(`leadercron: invalid job name ${JSON.stringify(name)}`);
    }
    if (this.jobs.has(name)) {
      throw new Error(`leadercron: job ${JSON.stringify(name)} registered twice`);
    }
    this.jobs.set(name, { fn, async: opts.async ?? this.defaultAsync });
  }

  /** The registered job names. */
  names(): string[] {
    return [...this.jobs.keys()];
  }

  /** How many runs are in flight, background runs included. */
  get running(): number {
    return this.inFlight;
  }

  /** Whether drain() was called (or POST /drain received). */
  get isDraining(): boolean {
    return this.draining;
  }

  /** The highest fencing token seen on a request that reached the fence. */
  get highestFencingToken(): bigint {
    return this.maxToken;
  }

  /** Stops accepting runs (503 from now on) and returns how many still run. Idempotent. */
  drain(): number {
    if (!this.draining) {
      this.draining = true;
      this.log.log({ msg: 'draining: no new runs accepted', running: this.inFlight });
    }
    return this.inFlight;
  }

  /**
   * Resolves true once no run is in flight, or false if timeoutMs passes
   * first. Call it after drain(), or new runs may start right after.
   */
  async waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.inFlight === 0) {
      return true;
    }
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }

  /** Nest shutdown hook (with app.enableShutdownHooks()): drain, then wait for runs in flight. */
  async beforeApplicationShutdown(signal?: string): Promise<void> {
    const running = this.drain();
    if (running === 0) {
      return;
    }
    this.log.log({ msg: 'shutdown: waiting for runs in flight', signal, running, timeout_ms: this.shutdownTimeoutMs });
    if (!(await this.waitIdle(this.shutdownTimeoutMs))) {
      this.log.warn({ msg: 'shutdown: runs still in flight at the timeout', running: this.inFlight });
    }
  }

  /**
   * Answers one POST /jobs/{name}, already authenticated (the listener
   * verifies the signature or the peer first). body is the raw body bytes
   * (a Uint8Array: empty means no body, else it must be JSON) or an
   * already decoded JSON value. hangup, if given, aborts when the caller
   * goes away; it aborts the run's signal in synchronous mode only.
   */
  async handleTrigger(name: string, headers: Record<string, string | string[] | undefined>, body: unknown, hangup?: AbortSignal): Promise<LeadercronAnswer> {
    if (this.draining) {
      return this.refuse(503, Codes.draining, name, 'draining: not accepting new runs');
    }
    const job = this.jobs.get(name);
    if (!job) {
      return this.refuse(404, Codes.unknownJob, name, `unknown job ${JSON.stringify(name)}`);
    }
    let trigger: Trigger;
    try {
      if (body instanceof Uint8Array) {
        body = decodeJSON(body);
      }
      trigger = parseTrigger(name, headers, body);
    } catch (err) {
      if (err instanceof BadTriggerError) {
        return this.refuse(400, Codes.badRequest, name, err.message);
      }
      throw err;
    }
    const fields = {
      job: name,
      slot: formatTime(trigger.slot),
      fencing_token: trigger.fencingToken.toString(),
      attempt: trigger.attempt,
      idempotency_key: trigger.idempotencyKey,
    };

    const refusal = this.admit(trigger);
    if (refusal) {
      this.log.warn({ msg: 'run refused', ...fields, status: refusal.status, code: refusal.body.code, reason: refusal.body.error });
      return refusal;
    }

    const deadlineSignal = AbortSignal.timeout(Math.max(trigger.deadline.getTime() - Date.now(), 0));
    if (job.async) {
      const run: LeadercronRun = { ...trigger, signal: deadlineSignal };
      this.log.log({ msg: 'run accepted (async)', ...fields });
      void this.execute(job.fn, run, fields);
      return { status: 202, body: { job: name, slot: fields.slot, status: 'accepted' } };
    }

    const signal = hangup ? AbortSignal.any([deadlineSignal, hangup]) : deadlineSignal;
    const run: LeadercronRun = { ...trigger, signal };
    this.log.log({ msg: 'run started', ...fields });
    const started = performance.now();
    const err = await this.execute(job.fn, run, fields);
    if (err !== undefined) {
      return { status: 500, body: { error: errorMessage(err), code: Codes.jobFailed } };
    }
    return { status: 200, body: { job: name, slot: fields.slot, status: 'succeeded', duration_ms: Math.round(performance.now() - started) } };
  }

  /** Applies the fence, deadline and concurrency rules; records the run as in flight when admitted. */
  private admit(t: Trigger): LeadercronAnswer | undefined {
    if (t.fencingToken < this.maxToken) {
      return answer(409, Codes.staleFencingToken,
        `stale leader: fencing token ${t.fencingToken} is lower than ${this.maxToken}, already seen from a newer leader`);
    }
    this.maxToken = t.fencingToken;
    if (Date.now() >= t.deadline.getTime()) {
      return answer(504, Codes.deadlinePassed, `deadline ${t.deadline.toISOString()} passed before the run could start; not run`);
    }
    if (this.runningKeys.has(t.idempotencyKey)) {
      return answer(409, Codes.duplicate, `duplicate: idempotency key ${JSON.stringify(t.idempotencyKey)} is running`);
    }
    if (this.doneKeys.has(t.idempotencyKey)) {
      return answer(409, Codes.duplicate, `duplicate: idempotency key ${JSON.stringify(t.idempotencyKey)} already ran successfully`);
    }
    if (this.activeJobs.has(t.job)) {
      return answer(409, Codes.alreadyRunning, `job ${JSON.stringify(t.job)} is already running`);
    }
    this.activeJobs.add(t.job);
    this.runningKeys.add(t.idempotencyKey);
    this.inFlight++;
    return undefined;
  }

  /** Runs fn and releases the bookkeeping. Never rejects: returns the error, if any. */
  private async execute(fn: LeadercronJobFn, run: LeadercronRun, fields: Record<string, unknown>): Promise<unknown> {
    const started = performance.now();
    let failure: unknown;
    try {
      await fn(run);
    } catch (err) {
      failure = err ?? new Error('job threw a nullish value');
    }
    this.finish(run, failure === undefined);
    const duration_ms = Math.round(performance.now() - started);
    if (failure !== undefined) {
      this.log.error({ msg: 'run failed', ...fields, duration_ms, error: errorMessage(failure) });
    } else {
      this.log.log({ msg: 'run succeeded', ...fields, duration_ms });
    }
    return failure;
  }

  private finish(run: LeadercronRun, ok: boolean): void {
    this.activeJobs.delete(run.job);
    this.runningKeys.delete(run.idempotencyKey);
    if (ok) {
      this.remember(run.idempotencyKey);
    }
    this.inFlight--;
    if (this.inFlight === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) {
        w();
      }
    }
  }

  private remember(key: string): void {
    if (this.rememberKeys === 0 || this.doneKeys.has(key)) {
      return;
    }
    if (this.doneKeys.size >= this.rememberKeys) {
      const oldest = this.doneKeys.values().next();
      if (!oldest.done) {
        this.doneKeys.delete(oldest.value);
      }
    }
    this.doneKeys.add(key);
  }

  private refuse(status: number, code: Code, job: string, error: string): LeadercronAnswer {
    this.log.warn({ msg: 'run refused', job, status, code, reason: error });
    return answer(status, code, error);
  }
}

function answer(status: number, code: Code, error: string): LeadercronAnswer {
  return { status, body: { error, code } };
}

/** The JSON value of a body, undefined for an empty one; throws BadTriggerError. */
function decodeJSON(bytes: Uint8Array): unknown {
  if (bytes.length === 0) {
    return undefined;
  }
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as unknown;
  } catch (err) {
    throw new BadTriggerError(`invalid JSON body: ${errorMessage(err)}`);
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
