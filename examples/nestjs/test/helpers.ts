// Test helpers: a Nest app built around LeadercronModule with controllable
// jobs, and a recorder of every request its trigger listener receives.
import 'reflect-metadata';
import { EventEmitter, once } from 'node:events';
import { request as httpRequest } from 'node:http';
import { Injectable, Module, type INestApplication, type DynamicModule } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  LeadercronJob,
  LeadercronJobs,
  LeadercronListener,
  LeadercronModule,
  signTrigger,
  wirePath,
  type LeadercronModuleOptions,
  type LeadercronRun,
} from '@leadercron/nestjs';

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

  /** For the signature's test vector (POST /jobs/report). */
  @LeadercronJob('report')
  report(run: LeadercronRun): Promise<void> {
    return this.track('report', run, () => undefined);
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
  /** The module's trigger listener (where the sidecar sends triggers). */
  url: string;
  /** The app's own (public) port. */
  publicUrl: string;
  jobs: TestJobs;
  registry: LeadercronJobs;
  listener: LeadercronListener;
  /** Every request the trigger listener answered. */
  requests: Recorded[];
  close(): Promise<void>;
}

/**
 * Starts the test app: its public port and the module's trigger listener,
 * both on free loopback ports. Unless options say otherwise, no secret
 * (whatever the environment) and a silent logger.
 */
export async function startApp(options: LeadercronModuleOptions = {}): Promise<TestApp> {
  return startAppWith(LeadercronModule.forRoot({ logger: silent, listen: '127.0.0.1:0', secrets: [], ...options }));
}

/**
 * Starts the test app (TestJobs and its public port on a free loopback
 * port) around the given LeadercronModule import, e.g. a forRootAsync one.
 */
export async function startAppWith(leadercron: DynamicModule): Promise<TestApp> {
  @Module({ providers: [TestJobs] })
  class TestAppModule {
    static with(imported: DynamicModule): DynamicModule {
      return { module: TestAppModule, imports: [imported] };
    }
  }
  const app = await NestFactory.create(TestAppModule.with(leadercron), { logger: false });
  await app.listen(0, '127.0.0.1');
  const listener = app.get(LeadercronListener);
  const requests = record(listener);
  return {
    app,
    url: listener.url!,
    publicUrl: (await app.getUrl()).replace('[::1]', '127.0.0.1'),
    jobs: app.get(TestJobs),
    registry: app.get(LeadercronJobs),
    listener,
    requests,
    close: () => app.close(),
  };
}

/** Records every request the listener answers: it taps the request before the module's handler sees it. */
function record(listener: LeadercronListener): Recorded[] {
  const requests: Recorded[] = [];
  listener.httpServer!.prependListener('request', (req, res) => {
    const rec: Recorded = { method: req.method ?? '', path: wirePath(req.url), headers: { ...req.headers }, body: undefined, at: 0 };
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    const end = res.end.bind(res) as (...args: unknown[]) => typeof res;
    res.end = ((...args: unknown[]) => {
      if (typeof args[0] === 'string') {
        rec.answer = JSON.parse(args[0]);
      }
      return end(...args);
    }) as typeof res.end;
    res.on('finish', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      try {
        rec.body = text === '' ? undefined : JSON.parse(text);
      } catch {
        rec.body = text;
      }
      rec.status = res.statusCode;
      rec.at = Date.now();
      requests.push(rec);
    });
  });
  return requests;
}

export const silent = { log() {}, warn() {}, error() {} };

/** The next event `name` on em whose first argument is job. */
export async function nextEvent(em: EventEmitter, name: 'start' | 'end', job: string): Promise<LeadercronRun> {
  for (;;) {
    const [j, run] = (await once(em, name)) as [string, LeadercronRun];
    if (j === job) {
      return run;
    }
  }
}

/** A request to the trigger listener: headers and the exact body text. */
export interface TriggerRequest {
  headers: Record<string, string>;
  /** An object is sent as JSON.stringify(body). */
  body: Record<string, unknown> | string;
}

/** The body bytes that post sends for t. */
export function bodyText(t: TriggerRequest): string {
  return typeof t.body === 'string' ? t.body : JSON.stringify(t.body);
}

/** A trigger as the sidecar sends it (unsigned), with overrides. */
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
      'leadercron-attempt': '1',
      'leadercron-id': 'test',
    } as Record<string, string>,
    body: { job, slot, fencing_token: Number(token), deadline, idempotency_key: key, attempt: 1 } as Record<string, unknown>,
  };
}

/**
 * t with a Leadercron-Signature by secret for POST path, at unixSeconds
 * (default now), as the sidecar signs it.
 */
export function signed<T extends TriggerRequest>(t: T, path: string, secret: string, unixSeconds = Date.now() / 1000): T {
  const sig = signTrigger(secret, { method: 'POST', path, headers: t.headers, body: Buffer.from(bodyText(t)) }, unixSeconds);
  return { ...t, headers: { ...t.headers, 'leadercron-signature': sig } };
}

/** An empty POST /drain, as the sidecar sends it, signed when secret is given. */
export function drainRequest(secret?: string, unixSeconds?: number): TriggerRequest {
  const t: TriggerRequest = { headers: { 'leadercron-id': 'test' }, body: '' };
  return secret ? signed(t, '/drain', secret, unixSeconds) : t;
}

/** POSTs t to url + path and returns status and JSON answer. */
export async function send(url: string, path: string, t: TriggerRequest, signal?: AbortSignal): Promise<{ status: number; json: any }> {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: t.headers, body: bodyText(t), signal });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : undefined };
}

/** POSTs a trigger to /jobs/{job} and returns status and JSON answer. */
export async function post(url: string, job: string, t: TriggerRequest = trigger(job), signal?: AbortSignal): Promise<{ status: number; json: any }> {
  return send(url, `/jobs/${job}`, t, signal);
}

/**
 * A raw HTTP/1.1 POST through node:http, for what fetch does not send:
 * repeated headers (rawHeaders as [name, value, name, value, ...]) and
 * chunked bodies (body given as several chunks).
 */
export function rawPost(url: string, path: string, rawHeaders: string[], chunks: Array<string | Buffer>): Promise<{ status: number; json: any }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    // With an array of headers Node.js adds no Host header; HTTP/1.1 servers require one.
    const headers = ['Host', u.host, ...rawHeaders];
    const req = httpRequest({ host: u.hostname, port: u.port, method: 'POST', path, headers: headers as unknown as Record<string, string> });
    req.on('error', reject);
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8');
        resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined });
      });
      res.on('error', reject);
    });
    for (const c of chunks) {
      req.write(c);
    }
    req.end();
  });
}
