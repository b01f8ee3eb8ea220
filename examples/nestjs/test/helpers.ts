// Test helpers: a Nest app built around LeadercronModule with controllable
// jobs, and a recorder of every request the app receives.
import 'reflect-metadata';
import { EventEmitter, once } from 'node:events';
import { Injectable, Module, type INestApplication, type DynamicModule } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { LeadercronJob, LeadercronJobs, LeadercronModule, type LeadercronModuleOptions, type LeadercronRun } from '../src/leadercron/index.js';

/** One request the app received and what it answered. */
export interface Recorded {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
  status?: number;
  answer?: unknown;
  at: number; // Date.now() when the answer was sent
}

/** A gate a job waits on until the test opens it. */
export class Gate {
  private open!: () => void;
  readonly opened = new Promise<void>((resolve) => (this.open = resolve));
  release(): void {
    this.open();
  }
}

/**
 * The jobs of the test app. Each emits events on `events`:
 * 'start' (job, run) when it starts and 'end' (job, run, error?) when it ends.
 */
@Injectable()
export class TestJobs {
  readonly events = new EventEmitter();
  readonly runs: LeadercronRun[] = [];
  /** Set by a test: the next 'block' / 'bg' runs wait on it (or their signal). */
  gate = new Gate();
  /** How long 'slow' runs, in ms. */
  slowMs = 3_000;

  private async track(job: string, run: LeadercronRun, body: () => Promise<void> | void): Promise<void> {
    this.runs.push(run);
    this.events.emit('start', job, run);
    try {
      await body();
      this.events.emit('end', job, run);
    } catch (err) {
      this.events.emit('end', job, run, err);
      throw err;
    }
  }

  @LeadercronJob('ok')
  ok(run: LeadercronRun): Promise<void> {
    return this.track('ok', run, () => undefined);
  }

  @LeadercronJob('fail')
  fail(run: LeadercronRun): Promise<void> {
    return this.track('fail', run, () => {
      throw new Error('boom');
    });
  }

  /** Waits for the gate or its signal, whichever comes first. */
  @LeadercronJob('block')
  block(run: LeadercronRun): Promise<void> {
    return this.track('block', run, () => waitFor(this.gate.opened, run.signal));
  }

  @LeadercronJob('bg', { async: true })
  bg(run: LeadercronRun): Promise<void> {
    return this.track('bg', run, () => waitFor(this.gate.opened, run.signal));
  }

  /** For the end-to-end test: a quick synchronous job. */
  @LeadercronJob('tick')
  tick(run: LeadercronRun): Promise<void> {
    return this.track('tick', run, () => undefined);
  }

  /** For the end-to-end test: a background job of slowMs. */
  @LeadercronJob('slow', { async: true })
  slow(run: LeadercronRun): Promise<void> {
    return this.track('slow', run, () => waitFor(new Promise((r) => setTimeout(r, this.slowMs)), run.signal));
  }
}

function waitFor(p: Promise<unknown>, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
    p.then(() => resolve());
  });
}

export interface TestApp {
  app: INestApplication;
  url: string;
  jobs: TestJobs;
  registry: LeadercronJobs;
  requests: Recorded[];
  close(): Promise<void>;
}

/** Starts the test app on a free loopback port. */
export async function startApp(options: LeadercronModuleOptions = {}): Promise<TestApp> {
  @Module({ providers: [TestJobs] })
  class TestAppModule {
    static with(opts: LeadercronModuleOptions): DynamicModule {
      return { module: TestAppModule, imports: [LeadercronModule.forRoot(opts)] };
    }
  }
  const app = await NestFactory.create(TestAppModule.with({ logger: silent, ...options }), { logger: false });
  const requests: Recorded[] = [];
  app.use((req: any, res: any, next: () => void) => {
    const rec: Recorded = { method: req.method, path: req.path, headers: { ...req.headers }, body: undefined, at: 0 };
    const json = res.json.bind(res);
    res.json = (answer: unknown) => {
      rec.answer = answer;
      return json(answer);
    };
    res.on('finish', () => {
      rec.body = req.body;
      rec.status = res.statusCode;
      rec.at = Date.now();
      requests.push(rec);
    });
    next();
  });
  await app.listen(0, '127.0.0.1');
  const url = (await app.getUrl()).replace('[::1]', '127.0.0.1');
  return {
    app,
    url,
    jobs: app.get(TestJobs),
    registry: app.get(LeadercronJobs),
    requests,
    close: () => app.close(),
  };
}

const silent = { log() {}, warn() {}, error() {} };

/** The next event `name` on em whose first argument is job. */
export async function nextEvent(em: EventEmitter, name: 'start' | 'end', job: string): Promise<LeadercronRun> {
  for (;;) {
    const [j, run] = (await once(em, name)) as [string, LeadercronRun];
    if (j === job) {
      return run;
    }
  }
}

/** A trigger as the sidecar sends it, with overrides. */
export function trigger(job: string, o: { slot?: Date; token?: bigint; deadline?: Date; key?: string } = {}) {
  const slot = (o.slot ?? new Date(Math.floor(Date.now() / 1000) * 1000)).toISOString().replace('.000Z', 'Z');
  const deadline = (o.deadline ?? new Date(Date.now() + 60_000)).toISOString();
  const token = (o.token ?? 7n).toString();
  const key = o.key ?? `${job}@${slot}`;
  return {
    headers: {
      'content-type': 'application/json',
      'leadercron-job': job,
      'leadercron-slot': slot,
      'leadercron-fencing-token': token,
      'leadercron-deadline': deadline,
      'idempotency-key': key,
      'leadercron-id': 'test',
    },
    body: { job, slot, fencing_token: Number(token), deadline, idempotency_key: key, attempt: 1 },
  };
}

/** POSTs a trigger and returns status and JSON answer. */
export async function post(url: string, job: string, t = trigger(job), signal?: AbortSignal): Promise<{ status: number; json: any }> {
  const res = await fetch(`${url}/jobs/${job}`, { method: 'POST', headers: t.headers, body: JSON.stringify(t.body), signal });
  return { status: res.status, json: await res.json() };
}
