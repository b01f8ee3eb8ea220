// The module's answers to the sidecar, over real HTTP against an in-process
// Nest app. Each case states the answer examples/go/jobs gives too.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BadTriggerError, parseTrigger } from '@leadercron/nestjs';
import { Gate, nextEvent, post, send, startApp, trigger, type TestApp } from './helpers.js';

const second = (offset: number) => new Date((Math.floor(Date.now() / 1000) + offset) * 1000);

describe('LeadercronModule answers', () => {
  let t: TestApp;
  before(async () => {
    t = await startApp();
  });
  after(async () => {
    await t.close();
  });

  it('runs a registered job once per idempotency key (200, then 409 duplicate)', async () => {
    const tr = trigger('ok', { slot: second(-100) });
    const first = await post(t.url, 'ok', tr);
    assert.equal(first.status, 200);
    assert.equal(first.json.status, 'succeeded');
    const again = await post(t.url, 'ok', tr);
    assert.equal(again.status, 409);
    assert.equal(again.json.code, 'duplicate');
    const next = await post(t.url, 'ok', trigger('ok', { slot: second(-99) }));
    assert.equal(next.status, 200);
    const run = t.jobs.runs.find((r) => r.idempotencyKey === tr.headers['idempotency-key']);
    assert.ok(run, 'the job saw its run');
    assert.equal(run.fencingToken, 7n);
    assert.equal(run.sidecarId, 'test');
    assert.equal(t.jobs.runs.filter((r) => r.idempotencyKey === tr.headers['idempotency-key']).length, 1);
  });

  it('answers 404 for an unknown job', async () => {
    const res = await post(t.url, 'nope', trigger('nope'));
    assert.equal(res.status, 404);
    assert.equal(res.json.code, 'unknown_job');
  });

  it('refuses a fencing token lower than the highest seen (409 stale), accepts an equal one', async () => {
    assert.equal((await post(t.url, 'ok', trigger('ok', { slot: second(-90), token: 20n }))).status, 200);
    const stale = await post(t.url, 'ok', trigger('ok', { slot: second(-89), token: 19n }));
    assert.equal(stale.status, 409);
    assert.equal(stale.json.code, 'stale_fencing_token');
    assert.equal(t.jobs.runs.some((r) => r.fencingToken === 19n), false, 'the stale run did not start');
    assert.equal((await post(t.url, 'ok', trigger('ok', { slot: second(-88), token: 20n }))).status, 200);
    assert.equal(t.registry.highestFencingToken, 20n);
  });

  it('answers 504 when the deadline has passed, without running the job', async () => {
    const before = t.jobs.runs.length;
    const res = await post(t.url, 'ok', trigger('ok', { slot: second(-80), token: 20n, deadline: new Date(Date.now() - 1) }));
    assert.equal(res.status, 504);
    assert.equal(res.json.code, 'deadline_passed');
    assert.equal(t.jobs.runs.length, before);
  });

  it('answers 500 when the job throws, and lets the same key be retried', async () => {
    const tr = trigger('fail', { slot: second(-70), token: 20n });
    const res = await post(t.url, 'fail', tr);
    assert.equal(res.status, 500);
    assert.equal(res.json.code, 'job_failed');
    assert.match(res.json.error, /boom/);
    assert.equal((await post(t.url, 'fail', tr)).status, 500, 'a failed key is not remembered, so it runs again');
  });

  it('answers 400 when a header disagrees with the body, or the slot is missing', async () => {
    const tr = trigger('ok', { slot: second(-60), token: 20n });
    tr.headers['leadercron-fencing-token'] = '21';
    const res = await post(t.url, 'ok', tr);
    assert.equal(res.status, 400);
    assert.equal(res.json.code, 'bad_request');
    const noSlot = trigger('ok', { slot: second(-59), token: 20n });
    delete (noSlot.body as Record<string, unknown>).slot;
    delete (noSlot.headers as Record<string, string>)['leadercron-slot'];
    assert.equal((await post(t.url, 'ok', noSlot)).status, 400);
  });

  it('answers 400 to a body that is not JSON, and to an attempt header that disagrees with the body', async () => {
    const tr = trigger('ok', { slot: second(-58), token: 20n });
    const notJSON = await send(t.url, '/jobs/ok', { headers: tr.headers, body: '{"job": "ok",' });
    assert.equal(notJSON.status, 400);
    assert.equal(notJSON.json.code, 'bad_request');
    assert.match(notJSON.json.error, /invalid JSON body/);
    tr.headers['leadercron-attempt'] = '2';
    const attempt = await post(t.url, 'ok', tr);
    assert.equal(attempt.status, 400);
    assert.match(attempt.json.error, /leadercron-attempt/);
  });

  it('answers 404 to other paths and 405 to other methods on the trigger listener', async () => {
    assert.equal((await send(t.url, '/jobs', trigger('ok'))).status, 404);
    assert.equal((await send(t.url, '/jobs/ok/more', trigger('ok'))).status, 404);
    assert.equal((await send(t.url, '/healthz', trigger('ok'))).status, 404);
    const get = await fetch(`${t.url}/drain`);
    assert.equal(get.status, 405);
    assert.equal(get.headers.get('allow'), 'POST');
    assert.equal(t.registry.isDraining, false);
  });

  it('answers 409 already_running while the same job runs, and counts it in flight', async () => {
    t.jobs.gate = new Gate();
    const started = nextEvent(t.jobs.events, 'start', 'block');
    const first = post(t.url, 'block', trigger('block', { slot: second(-50), token: 20n }));
    await started;
    assert.equal(t.registry.running, 1);
    const second2 = await post(t.url, 'block', trigger('block', { slot: second(-49), token: 20n }));
    assert.equal(second2.status, 409);
    assert.equal(second2.json.code, 'already_running');
    t.jobs.gate.release();
    assert.equal((await first).status, 200);
    assert.equal(t.registry.running, 0);
  });

  it('aborts the run signal at the deadline', async () => {
    t.jobs.gate = new Gate(); // never released
    const ended = nextEvent(t.jobs.events, 'end', 'block');
    const res = await post(t.url, 'block', trigger('block', { slot: second(-40), token: 20n, deadline: new Date(Date.now() + 300) }));
    const run = await ended;
    assert.equal(run.signal.aborted, true);
    assert.equal(res.status, 500, 'a run that ends by its deadline failed');
  });

  it('aborts the run signal when the sidecar hangs up (sync mode)', async () => {
    t.jobs.gate = new Gate(); // never released
    const started = nextEvent(t.jobs.events, 'start', 'block');
    const ended = nextEvent(t.jobs.events, 'end', 'block');
    const hangup = new AbortController();
    const req = post(t.url, 'block', trigger('block', { slot: second(-30), token: 20n }), hangup.signal);
    const run = await started;
    hangup.abort();
    await assert.rejects(req);
    await ended;
    assert.equal(run.signal.aborted, true);
    assert.equal(t.registry.running, 0);
  });

  it('answers 202 for an async job and counts it until it settles', async () => {
    t.jobs.gate = new Gate();
    const ended = nextEvent(t.jobs.events, 'end', 'bg');
    const res = await post(t.url, 'bg', trigger('bg', { slot: second(-20), token: 20n }));
    assert.equal(res.status, 202);
    assert.equal(res.json.status, 'accepted');
    assert.equal(t.registry.running, 1);
    t.jobs.gate.release();
    await ended;
    assert.equal(t.registry.running, 0);
  });
});

describe('the trigger listener', () => {
  it('is not the public port: the app\'s own port does not answer the contract', async () => {
    const t = await startApp();
    try {
      assert.notEqual(t.url, t.publicUrl);
      for (const [path, req] of [['/jobs/ok', trigger('ok', { token: 99n })], ['/drain', { headers: {}, body: '' }]] as const) {
        const res = await fetch(`${t.publicUrl}${path}`, { method: 'POST', headers: req.headers, body: typeof req.body === 'string' ? req.body : JSON.stringify(req.body) });
        assert.equal(res.status, 404, `public POST ${path}`);
      }
      assert.equal(t.jobs.runs.length, 0);
      assert.equal(t.registry.isDraining, false);
      assert.equal(t.registry.highestFencingToken, 0n);
      assert.equal((await post(t.url, 'ok', trigger('ok'))).status, 200, 'the listener does');
    } finally {
      await t.close();
    }
  });

  it('answers POST /drain during shutdown until the runs finish, then closes', async () => {
    const t = await startApp();
    t.jobs.gate = new Gate();
    const ended = nextEvent(t.jobs.events, 'end', 'bg');
    assert.equal((await post(t.url, 'bg', trigger('bg'))).status, 202);
    const closing = t.close();
    await new Promise((r) => setTimeout(r, 50));
    const during = await fetch(`${t.url}/drain`, { method: 'POST' });
    assert.deepEqual(await during.json(), { running: 1 }, 'the sidecar\'s drain polls are answered while the run is in flight');
    t.jobs.gate.release();
    await ended;
    await closing;
    await assert.rejects(fetch(`${t.url}/drain`, { method: 'POST' }), 'closed after shutdown: the sidecar sees the connection refused (drained)');
  });
});

describe('POST /drain', () => {
  it('reports runs in flight, then refuses new runs with 503', async () => {
    const t = await startApp();
    try {
      t.jobs.gate = new Gate();
      const ended = nextEvent(t.jobs.events, 'end', 'bg');
      assert.equal((await post(t.url, 'bg', trigger('bg'))).status, 202);

      const drain = await fetch(`${t.url}/drain`, { method: 'POST' });
      assert.equal(drain.status, 200);
      assert.deepEqual(await drain.json(), { running: 1 });

      const refused = await post(t.url, 'ok', trigger('ok'));
      assert.equal(refused.status, 503);
      assert.equal(refused.json.code, 'draining');

      t.jobs.gate.release();
      await ended;
      const again = await fetch(`${t.url}/drain`, { method: 'POST' });
      assert.deepEqual(await again.json(), { running: 0 });
    } finally {
      await t.close();
    }
  });

  it('app.close() (the shutdown hook) waits for runs in flight', async () => {
    const t = await startApp();
    t.jobs.gate = new Gate();
    const ended = nextEvent(t.jobs.events, 'end', 'bg');
    assert.equal((await post(t.url, 'bg', trigger('bg'))).status, 202);
    let closed = false;
    const closing = t.close().then(() => (closed = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(t.registry.isDraining, true);
    assert.equal(closed, false, 'close waits while a run is in flight');
    t.jobs.gate.release();
    await ended;
    await closing;
    assert.equal(closed, true);
  });
});

describe('parseTrigger', () => {
  const hdr = { 'leadercron-slot': '2026-11-22T03:00:00Z', 'leadercron-fencing-token': '9007199254740993', 'leadercron-deadline': '2026-11-22T03:10:00.123456789Z' };

  it('takes missing body fields from the headers, keeps big tokens exact, and builds the key', () => {
    const tr = parseTrigger('report', hdr, undefined);
    assert.equal(tr.fencingToken, 9007199254740993n);
    assert.equal(tr.idempotencyKey, 'report@2026-11-22T03:00:00Z');
    assert.equal(tr.slot.toISOString(), '2026-11-22T03:00:00.000Z');
    assert.equal(tr.attempt, 1);
  });

  it('compares times as instants', () => {
    const tr = parseTrigger('report', hdr, { slot: '2026-11-22T12:00:00+09:00' });
    assert.equal(tr.slot.getTime(), Date.parse('2026-11-22T03:00:00Z'));
    assert.throws(() => parseTrigger('report', hdr, { slot: '2026-11-22T03:00:01Z' }), BadTriggerError);
  });

  it('refuses a job name that does not match the path, and a non-RFC 3339 time', () => {
    assert.throws(() => parseTrigger('report', hdr, { job: 'other' }), /does not match/);
    assert.throws(() => parseTrigger('report', { ...hdr, 'leadercron-slot': 'yesterday' }, {}), /RFC 3339/);
    assert.throws(() => parseTrigger('report', hdr, { attempt: 0 }), /attempt/);
  });
});
