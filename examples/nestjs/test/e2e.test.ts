// End to end: the NestJS app with LeadercronModule next to the real sidecar
// binary in standalone mode (LEADERCRON_LOCK=none). The binary comes from
// $LEADERCRON_BIN (scripts/test-examples.sh builds it). Without it the test
// is skipped locally and fails under CI=true. Both share one secret, from
// one file (LEADERCRON_TRIGGER_SECRET_FILE): the sidecar signs every
// request, the app's trigger listener (not its public port) verifies them.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { keyId, LeadercronModule, loadTriggerSecrets, type LeadercronRun } from '@leadercron/nestjs';
import { nextEvent, silent, startApp, startAppWith, type Recorded, type TestApp } from './helpers.js';

const bin = process.env.LEADERCRON_BIN;
if (!bin && process.env.CI === 'true') {
  throw new Error('LEADERCRON_BIN is not set; under CI=true the end-to-end test must run (use scripts/test-examples.sh)');
}

async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as { port: number };
  srv.close();
  await once(srv, 'close');
  return port;
}

/** Polls fn until it returns a truthy value or ms pass (for an external process). */
async function poll<T>(what: string, ms: number, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) {
        return v;
      }
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}

const rfc3339Second = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;

describe('NestJS app next to the sidecar (standalone)', { skip: bin ? false : 'LEADERCRON_BIN not set (scripts/test-examples.sh sets it)' }, () => {
  let t: TestApp;
  let sidecar: ChildProcess;
  let sidecarLog = '';
  let admin = '';
  const sidecarId = 'nestjs-e2e-1';
  const secret = randomBytes(32).toString('hex');
  let secretDir = '';
  let secretFile = '';

  before(async () => {
    secretDir = mkdtempSync(join(tmpdir(), 'leadercron-e2e-'));
    secretFile = join(secretDir, 'trigger-secret');
    writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 }); // one trailing newline, trimmed by both
    t = await startApp({ secrets: loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET_FILE: secretFile }) });
    t.jobs.slowMs = 3_000;
    admin = `127.0.0.1:${await freePort()}`;
    sidecar = spawn(bin!, [], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        LEADERCRON_LOCK: 'none',
        LEADERCRON_SERVICE: 'nestjs-e2e',
        LEADERCRON_ID: sidecarId,
        LEADERCRON_APP_URL: t.url, // the private trigger listener
        LEADERCRON_TRIGGER_SECRET_FILE: secretFile,
        LEADERCRON_LISTEN: admin,
        LEADERCRON_LOG_FORMAT: 'json',
        LEADERCRON_DRAIN_INTERVAL: '200ms',
        LEADERCRON_DRAIN_TIMEOUT: '20s',
        LEADERCRON_JOB_TICK: '* * * * * *',
        LEADERCRON_JOB_SLOW: '*/2 * * * * * timeout=30s',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    sidecar.stdout!.on('data', (d) => (sidecarLog += d));
    sidecar.stderr!.on('data', (d) => (sidecarLog += d));
  });

  after(async () => {
    if (sidecar && sidecar.exitCode === null && sidecar.signalCode === null) {
      sidecar.kill('SIGKILL');
      await once(sidecar, 'exit');
    }
    await t?.close();
    if (secretDir) {
      rmSync(secretDir, { recursive: true, force: true });
    }
  });

  it('triggers jobs with the contract headers, then drains a running job before exiting 0', async (ctx) => {
    ctx.diagnostic(`sidecar admin ${admin}, app ${t.url}`);
    const exited = once(sidecar, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    try {
      // The sidecar is up and leads.
      const status = await poll('the sidecar /status', 10_000, async () => {
        const res = await fetch(`http://${admin}/status`);
        return res.ok ? ((await res.json()) as { leader: boolean; id: string; jobs: { name: string }[] }) : undefined;
      });
      assert.equal(status.leader, true);
      assert.equal(status.id, sidecarId);
      assert.deepEqual(status.jobs.map((j) => j.name).sort(), ['slow', 'tick']);

      // The first trigger passed the signature check (a sidecar that does
      // not sign gets 401 for every request: fail now, not at the timeout).
      const first = await poll('the first trigger', 10_000, async () => t.requests.find((r) => r.path.startsWith('/jobs/')));
      assert.notEqual(first.status, 401,
        `the app refused the sidecar's trigger: ${JSON.stringify(first.answer)}; does this sidecar sign with LEADERCRON_TRIGGER_SECRET_FILE?`);

      // Two ticks, then a slow (background) run that has just started.
      await nextEvent(t.jobs.events, 'end', 'tick');
      await nextEvent(t.jobs.events, 'end', 'tick');
      const slowRun: LeadercronRun = await nextEvent(t.jobs.events, 'start', 'slow');
      const slowEnded = nextEvent(t.jobs.events, 'end', 'slow').then(() => Date.now());
      assert.equal(t.registry.running >= 1, true, 'the slow run is in flight');

      // Stop the sidecar while the slow run is in flight.
      const termAt = Date.now();
      sidecar.kill('SIGTERM');
      const [code, signal] = await exited;
      const exitAt = Date.now();
      const slowEndAt = await slowEnded;
      ctx.diagnostic(`SIGTERM to exit: ${exitAt - termAt} ms; slow run ended ${slowEndAt - termAt} ms after SIGTERM`);

      assert.equal(signal, null);
      assert.equal(code, 0, 'the sidecar exits 0 after a drain');

      // Headers and body of every trigger follow the contract.
      const triggers = t.requests.filter((r) => r.path.startsWith('/jobs/'));
      assert.ok(triggers.length >= 3, `at least 3 triggers, got ${triggers.length}`);
      const tokens = new Set<string>();
      const kid = keyId(secret);
      for (const r of triggers) {
        const job = r.path.slice('/jobs/'.length);
        const h = r.headers as Record<string, string>;
        assert.equal(h['leadercron-job'], job);
        assert.match(h['leadercron-slot'], rfc3339Second);
        assert.equal(h['idempotency-key'], `${job}@${h['leadercron-slot']}`);
        assert.match(h['leadercron-fencing-token'], /^\d+$/);
        assert.ok(Date.parse(h['leadercron-deadline']) > Date.parse(h['leadercron-slot']), 'deadline after the slot');
        assert.equal(h['leadercron-id'], sidecarId);
        assert.equal(h['leadercron-attempt'], '1');
        assert.match(h['leadercron-signature'], new RegExp(`^t=\\d+,kid=${kid},v1=[0-9a-f]{64}$`));
        assert.match(h['content-type'], /^application\/json/);
        assert.deepEqual(r.body, {
          job,
          slot: h['leadercron-slot'],
          fencing_token: Number(h['leadercron-fencing-token']),
          deadline: h['leadercron-deadline'],
          idempotency_key: h['idempotency-key'],
          attempt: 1,
        });
        tokens.add(h['leadercron-fencing-token']);
      }
      assert.equal(tokens.size, 1, 'one leadership, one fencing token');
      assert.equal(t.registry.highestFencingToken.toString(), [...tokens][0]);

      // The module's bookkeeping: every tick run has its own slot, and every
      // trigger was answered 200 (tick), 202 (slow) or 409 (slow still running).
      const tickSlots = t.jobs.runs.filter((r) => r.job === 'tick').map((r) => r.slot.getTime());
      assert.equal(new Set(tickSlots).size, tickSlots.length, 'no tick slot ran twice');
      for (const r of triggers) {
        const job = r.path.slice('/jobs/'.length);
        assert.ok(job === 'tick' ? r.status === 200 : [202, 409].includes(r.status!), `${r.path} answered ${r.status}`);
      }
      assert.equal(slowRun.job, 'slow');

      // The drain: first poll saw the slow run, the last saw none, and the
      // sidecar exited only after that, with no trigger after the first poll.
      const drains = t.requests.filter((r: Recorded) => r.path === '/drain');
      assert.ok(drains.length >= 2, `at least 2 drain polls, got ${drains.length}`);
      assert.ok(drains.every((d) => d.status === 200));
      assert.ok(drains.every((d) => new RegExp(`^t=\\d+,kid=${kid},v1=`).test(String(d.headers['leadercron-signature']))), 'the drains are signed');
      assert.ok((drains[0]!.answer as { running: number }).running > 0, `first drain reported ${JSON.stringify(drains[0]!.answer)}`);
      const last = drains[drains.length - 1]!;
      assert.deepEqual(last.answer, { running: 0 });
      assert.ok(slowEndAt <= last.at, 'the slow run ended before the drain reported 0');
      assert.ok(last.at <= exitAt, 'the sidecar exited after the drain');
      assert.ok(triggers.every((r) => r.at <= drains[0]!.at), 'no trigger after the drain began');
      assert.equal(t.registry.running, 0);
    } catch (err) {
      ctx.diagnostic(`sidecar log:\n${sidecarLog}`);
      throw err;
    }
  });
});

describe('with a route prefix (forRootAsync), the sidecar keeps the base path of LEADERCRON_APP_URL', { skip: bin ? false : 'LEADERCRON_BIN not set (scripts/test-examples.sh sets it)' }, () => {
  const prefix = '/internal/leadercron';
  const secret = randomBytes(32).toString('hex');
  let t: TestApp;
  let sidecar: ChildProcess;
  let sidecarLog = '';
  let admin = '';

  before(async () => {
    t = await startAppWith(
      LeadercronModule.forRootAsync({
        useFactory: async () => ({ prefix, listen: '127.0.0.1:0', secrets: [secret], logger: silent }),
      }),
    );
    admin = `127.0.0.1:${await freePort()}`;
    sidecar = spawn(bin!, [], {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        LEADERCRON_LOCK: 'none',
        LEADERCRON_SERVICE: 'nestjs-e2e-prefix',
        LEADERCRON_ID: 'nestjs-e2e-prefix-1',
        LEADERCRON_APP_URL: t.url, // http://127.0.0.1:<port>/internal/leadercron
        LEADERCRON_TRIGGER_SECRET: secret,
        LEADERCRON_LISTEN: admin,
        LEADERCRON_LOG_FORMAT: 'json',
        LEADERCRON_DRAIN_INTERVAL: '200ms',
        LEADERCRON_DRAIN_TIMEOUT: '10s',
        LEADERCRON_JOB_TICK: '* * * * * *',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    sidecar.stdout!.on('data', (d) => (sidecarLog += d));
    sidecar.stderr!.on('data', (d) => (sidecarLog += d));
  });

  after(async () => {
    if (sidecar && sidecar.exitCode === null && sidecar.signalCode === null) {
      sidecar.kill('SIGKILL');
      await once(sidecar, 'exit');
    }
    await t?.close();
  });

  it('triggers POST /internal/leadercron/jobs/tick and drains on POST /internal/leadercron/drain, signed over the whole path', async (ctx) => {
    const exited = once(sidecar, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    try {
      assert.match(t.url, /^http:\/\/127\.0\.0\.1:\d+\/internal\/leadercron$/);
      const first = await poll('the first trigger', 10_000, async () => t.requests.find((r) => r.path.includes('/jobs/')));
      assert.equal(first.path, `${prefix}/jobs/tick`);
      assert.equal(first.status, 200, `the app answered ${first.status} ${JSON.stringify(first.answer)}`);
      await nextEvent(t.jobs.events, 'end', 'tick');
      await nextEvent(t.jobs.events, 'end', 'tick');

      sidecar.kill('SIGTERM');
      const [code, signal] = await exited;
      assert.equal(signal, null);
      assert.equal(code, 0, 'the sidecar exits 0 after a drain');

      const triggers = t.requests.filter((r) => r.path !== `${prefix}/drain`);
      assert.ok(triggers.length >= 2, `at least 2 triggers, got ${triggers.length}`);
      for (const r of triggers) {
        assert.equal(r.path, `${prefix}/jobs/tick`);
        assert.equal(r.status, 200, `${r.path} answered ${r.status} ${JSON.stringify(r.answer)}`);
        assert.match(String(r.headers['leadercron-signature']), new RegExp(`^t=\\d+,kid=${keyId(secret)},v1=[0-9a-f]{64}$`));
      }
      const drains = t.requests.filter((r) => r.path === `${prefix}/drain`);
      assert.ok(drains.length >= 1, 'the sidecar drained the app under the prefix');
      assert.deepEqual(drains[drains.length - 1]!.answer, { running: 0 });
      assert.ok(drains.every((d) => d.status === 200));
      assert.equal(t.registry.isDraining, true);
    } catch (err) {
      ctx.diagnostic(`sidecar log:\n${sidecarLog}`);
      throw err;
    }
  });
});
