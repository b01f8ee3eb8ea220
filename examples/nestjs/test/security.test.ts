// Issue 11: who may trigger. Signed triggers (Leadercron-Signature v1, the
// spec shared with the sidecar and examples/go/jobs), loopback-only without
// a secret, the 64 KiB body limit, and the private listener. Every refusal
// is checked to change no state: the highest fencing token seen, the
// draining flag, the idempotency memory, and the runs.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inspect } from 'node:util';
import { NestFactory } from '@nestjs/core';
import {
  createLeadercronHandler,
  isLoopback,
  keyId,
  LeadercronJobs,
  LeadercronModule,
  loadTriggerSecrets,
  parseListenAddress,
  resolveTriggerKeys,
  signingString,
  signTrigger,
  verifyTrigger,
  type LeadercronRun,
} from '@leadercron/nestjs';
import { bodyText, drainRequest, post, rawPost, send, signed, startApp, trigger, type TestApp, type TriggerRequest } from './helpers.js';

const SECRET = 'test-secret-0123456789abcdef-0123456789';
const OLD_SECRET = 'old-secret-0123456789abcdef-0123456789a';
const OTHER_SECRET = 'not-the-apps-secret-0123456789abcdef-xyz';
const silent = { log() {}, warn() {}, error() {} };
const second = (offset: number) => new Date((Math.floor(Date.now() / 1000) + offset) * 1000);
const MAX_U64 = 18446744073709551615n;

/** The spec's test vector (/tmp/spec/signature.md). */
const vector = {
  secret: '0123456789abcdef0123456789abcdef',
  t: 1767225600,
  path: '/jobs/report',
  headers: {
    'leadercron-job': 'report',
    'leadercron-slot': '2026-01-01T00:00:00Z',
    'leadercron-fencing-token': '42',
    'leadercron-deadline': '2026-01-01T00:00:30Z',
    'idempotency-key': 'report@2026-01-01T00:00:00Z',
    'leadercron-attempt': '1',
    'leadercron-id': 'sidecar-a',
  } as Record<string, string>,
  body: '{"job":"report"}',
  kid: '37a08647',
  v1: '9f2c9f5e07a52a5fbd55e9101c33986a767875bbe25f20e97f986eb85c7f3b34',
};

/** The state a refused request must not change. */
function state(t: { registry: LeadercronJobs; jobs?: { runs: LeadercronRun[] } }, runs: () => number) {
  return { token: t.registry.highestFencingToken, draining: t.registry.isDraining, running: t.registry.running, runs: runs() };
}

/**
 * The three attacks of issue 11, each unsigned and signed with a secret the
 * app does not have: run a job, drain the app, and push the highest fencing
 * token seen to 2^64-1 so that every real trigger would be refused as stale.
 */
async function attacks(url: string): Promise<Array<{ what: string; status: number; code: string }>> {
  const out: Array<{ what: string; status: number; code: string }> = [];
  const huge = trigger('ok', { slot: second(-300), token: MAX_U64 });
  huge.body.fencing_token = undefined; // the token in the header only (a JSON number cannot hold it)
  const cases: Array<[string, string, TriggerRequest]> = [
    ['run a job', '/jobs/ok', trigger('ok', { slot: second(-301) })],
    ['drain', '/drain', drainRequest()],
    ['raise the fencing token', '/jobs/ok', huge],
  ];
  for (const [what, path, t] of cases) {
    for (const [how, req] of [['unsigned', t], ['signed with another secret', signed(t, path, OTHER_SECRET)]] as const) {
      const res = await send(url, path, req);
      out.push({ what: `${what} (${how})`, status: res.status, code: res.json?.code });
    }
  }
  return out;
}

describe('Leadercron-Signature v1: the spec test vector', () => {
  it('reproduces kid 37a08647 and v1 9f2c9f5e… exactly, and verifies it at t', () => {
    assert.equal(keyId(vector.secret), vector.kid);
    const req = { method: 'POST', path: vector.path, headers: vector.headers, body: Buffer.from(vector.body) };
    assert.equal(signTrigger(vector.secret, req, vector.t), `t=${vector.t},kid=${vector.kid},v1=${vector.v1}`);
    const s = signingString(req, String(vector.t)).split('\n');
    assert.equal(s.length, 13);
    assert.deepEqual(s.slice(0, 11), ['leadercron-v1', 'POST', '/jobs/report', '1767225600', 'report', '2026-01-01T00:00:00Z', '42',
      '2026-01-01T00:00:30Z', 'report@2026-01-01T00:00:00Z', '1', '']);
    const headers = { ...vector.headers, 'leadercron-signature': `t=${vector.t},kid=${vector.kid},v1=${vector.v1}` };
    const keys = resolveTriggerKeys([vector.secret]);
    assert.deepEqual(verifyTrigger(keys, { ...req, headers }, vector.t * 1000 + 30_000), { ok: true, kid: vector.kid });
    const stale = verifyTrigger(keys, { ...req, headers }, vector.t * 1000 + 31_000);
    assert.equal(stale.ok, false);
    assert.equal(!stale.ok && stale.code, 'stale_signature');
  });

  it('accepts the vector request over HTTP with an injected clock, and refuses it as stale with the real one', async () => {
    const clocked = await startApp({ secrets: [vector.secret], now: () => vector.t * 1000 + 5_000 });
    const real = await startApp({ secrets: [vector.secret] });
    try {
      const req = { headers: { ...vector.headers, 'leadercron-signature': `t=${vector.t},kid=${vector.kid},v1=${vector.v1}` }, body: vector.body };
      const res = await send(clocked.url, vector.path, req);
      // Verified, then processed: the fence saw token 42; the deadline
      // (2026-01-01T00:00:30Z) is judged on the real clock.
      assert.notEqual(res.status, 401, JSON.stringify(res.json));
      assert.equal(clocked.registry.highestFencingToken, 42n);
      if (Date.now() > Date.parse(vector.headers['leadercron-deadline']!)) {
        assert.equal(res.status, 504);
        assert.equal(res.json.code, 'deadline_passed');
      }
      const stale = await send(real.url, vector.path, req);
      assert.equal(stale.status, 401);
      assert.equal(stale.json.code, 'stale_signature');
      assert.equal(real.registry.highestFencingToken, 0n, 'a 401 changes no state');
    } finally {
      await clocked.close();
      await real.close();
    }
  });
});

describe('with a secret', () => {
  let t: TestApp;
  before(async () => {
    t = await startApp({ secrets: [SECRET] });
  });
  after(async () => {
    await t.close();
  });

  it('refuses unsigned triggers and drains with 401 bad_signature, from a loopback peer too, and changes no state', async () => {
    const before = state(t, () => t.jobs.runs.length);
    for (const a of await attacks(t.url)) {
      assert.equal(a.status, 401, a.what);
      assert.equal(a.code, 'bad_signature', a.what);
    }
    assert.deepEqual(state(t, () => t.jobs.runs.length), before);
    assert.equal(t.registry.highestFencingToken, 0n);
    assert.equal(t.registry.isDraining, false);
    const ok = await post(t.url, 'ok', signed(trigger('ok', { slot: second(-200) }), '/jobs/ok', SECRET));
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
    assert.equal(t.registry.highestFencingToken, 7n);
  });

  it('answers 401 bad_signature to a signature by another secret, a malformed header, or a signature given twice', async () => {
    const tr = trigger('ok', { slot: second(-190) });
    const wrong = await post(t.url, 'ok', signed(tr, '/jobs/ok', OTHER_SECRET));
    assert.equal(wrong.status, 401);
    assert.equal(wrong.json.code, 'bad_signature');
    assert.match(wrong.json.error, /unknown key id/);
    const good = signed(tr, '/jobs/ok', SECRET).headers['leadercron-signature']!;
    for (const bad of [good.toUpperCase(), good.replace(',kid=', ', kid='), `${good},v2=00`, good.replace(/^t=/, 't=0'), 'v1=' + good.split('v1=')[1]]) {
      const res = await post(t.url, 'ok', { ...tr, headers: { ...tr.headers, 'leadercron-signature': bad } });
      assert.equal(res.status, 401, bad);
      assert.equal(res.json.code, 'bad_signature', bad);
    }
    // The same kid, another MAC: a secret of the same key id cannot be forged.
    const forged = good.replace(/v1=(.)/, (_, c: string) => `v1=${c === '0' ? '1' : '0'}`);
    const mismatch = await post(t.url, 'ok', { ...tr, headers: { ...tr.headers, 'leadercron-signature': forged } });
    assert.equal(mismatch.status, 401);
    assert.match(mismatch.json.error, /mismatch/);
    // Two signature headers, or a signed header given twice (joined by Node.js), are refused.
    const raw = Object.entries(signed(tr, '/jobs/ok', SECRET).headers).flat();
    const twice = await rawPost(t.url, '/jobs/ok', [...raw, 'Leadercron-Signature', good], [bodyText(tr)]);
    assert.equal(twice.status, 401);
    const tokenTwice = await rawPost(t.url, '/jobs/ok', [...raw, 'Leadercron-Fencing-Token', '7'], [bodyText(tr)]);
    assert.equal(tokenTwice.status, 401);
    assert.equal(t.jobs.runs.some((r) => r.idempotencyKey === tr.headers['idempotency-key']), false);
    assert.equal((await post(t.url, 'ok', signed(tr, '/jobs/ok', SECRET))).status, 200, 'the genuine trigger still runs');
  });

  it('answers 401 stale_signature to a signature more than 30 s old or ahead, and accepts 30 s', async () => {
    const now = Date.now() / 1000;
    for (const [offset, status] of [[-40, 401], [-31, 401], [31, 401], [3600, 401], [-29, 200], [29, 200]] as const) {
      const tr = trigger('ok', { slot: second(-180), key: `stale-test@${offset}` });
      const res = await post(t.url, 'ok', signed(tr, '/jobs/ok', SECRET, now + offset));
      assert.equal(res.status, status, `signed ${offset} s from now: ${JSON.stringify(res.json)}`);
      if (status === 401) {
        assert.equal(res.json.code, 'stale_signature');
      }
    }
  });

  it('answers 401 to a tampered body, path, fencing token or attempt, changing nothing, and the genuine trigger then runs', async () => {
    const tr = trigger('ok', { slot: second(-170), token: 8n });
    const good = signed(tr, '/jobs/ok', SECRET);
    const before = state(t, () => t.jobs.runs.length);
    const tampered: Array<[string, string, TriggerRequest]> = [
      ['body', '/jobs/ok', { ...good, body: { ...good.body, attempt: 2 } }],
      ['body bytes (same JSON, other spacing)', '/jobs/ok', { ...good, body: JSON.stringify(good.body, null, 1) }],
      ['path', '/jobs/fail', good],
      ['fencing token', '/jobs/ok', { headers: { ...good.headers, 'leadercron-fencing-token': '999' }, body: { ...good.body, fencing_token: 999 } }],
      ['attempt header', '/jobs/ok', { ...good, headers: { ...good.headers, 'leadercron-attempt': '2' } }],
      ['idempotency key', '/jobs/ok', { headers: { ...good.headers, 'idempotency-key': 'other' }, body: { ...good.body, idempotency_key: 'other' } }],
      ['run-now header added', '/jobs/ok', { ...good, headers: { ...good.headers, 'leadercron-run-now': 'x' } }],
    ];
    for (const [what, path, req] of tampered) {
      const res = await send(t.url, path, req);
      assert.equal(res.status, 401, `tampered ${what}: ${JSON.stringify(res.json)}`);
      assert.equal(res.json.code, 'bad_signature');
    }
    assert.deepEqual(state(t, () => t.jobs.runs.length), before, 'no state changed');
    const res = await post(t.url, 'ok', good);
    assert.equal(res.status, 200, 'the genuine trigger runs: its key was not remembered by the refusals');
    assert.equal(t.registry.highestFencingToken, 8n);
  });

  it('signs the path without the query', async () => {
    const tr = trigger('ok', { slot: second(-160), token: 8n });
    assert.equal((await send(t.url, '/jobs/ok?x=1', signed(tr, '/jobs/ok', SECRET))).status, 200);
    const tr2 = trigger('ok', { slot: second(-159), token: 8n });
    assert.equal((await send(t.url, '/jobs/ok?x=1', signed(tr2, '/jobs/ok?x=1', SECRET))).status, 401);
  });

  it('refuses a body over 64 KiB with 413 before verifying it, with or without Content-Length', async () => {
    const before = state(t, () => t.jobs.runs.length);
    const big = trigger('ok', { slot: second(-150), token: MAX_U64 });
    const pad = 'x'.repeat(64 * 1024);
    const bigBody = { ...big, body: { ...big.body, fencing_token: undefined, pad } };
    const res = await send(t.url, '/jobs/ok', signed(bigBody, '/jobs/ok', SECRET));
    assert.equal(res.status, 413);
    assert.equal(res.json.code, 'body_too_large');
    const unsignedDrain = await send(t.url, '/drain', { headers: {}, body: pad + 'x' });
    assert.equal(unsignedDrain.status, 413);
    const chunked = await rawPost(t.url, '/jobs/ok', ['Leadercron-Job', 'ok'], [pad.slice(0, 40_000), pad.slice(40_000), 'xx']);
    assert.equal(chunked.status, 413);
    const huge = await rawPost(t.url, '/drain', ['Content-Type', 'text/plain'], Array.from({ length: 20 }, () => pad));
    assert.equal(huge.status, 413, 'a body far over the limit (1.3 MiB, chunked)');
    // Exactly 64 KiB is read and verified (here: unsigned, so 401).
    const exact = await send(t.url, '/drain', { headers: {}, body: pad });
    assert.equal(exact.status, 401);
    assert.deepEqual(state(t, () => t.jobs.runs.length), before);
  });

  it('drains on a signed POST /drain (last: it drains the app)', async () => {
    const res = await send(t.url, '/drain', drainRequest(SECRET));
    assert.equal(res.status, 200);
    assert.deepEqual(res.json, { running: 0 });
    assert.equal(t.registry.isDraining, true);
  });
});

describe('rotation', () => {
  it('accepts the new and the old secret with [new, old], and only the new one with [new]', async () => {
    const both = await startApp({ secrets: [SECRET, OLD_SECRET] });
    const onlyNew = await startApp({ secrets: [SECRET] });
    try {
      for (const [app, secret, status] of [[both, SECRET, 200], [both, OLD_SECRET, 200], [onlyNew, SECRET, 200], [onlyNew, OLD_SECRET, 401]] as const) {
        const tr = trigger('ok', { slot: second(-100), key: `rot@${secret}` });
        const res = await post(app.url, 'ok', signed(tr, '/jobs/ok', secret));
        assert.equal(res.status, status, `${app === both ? '[new, old]' : '[new]'} with the ${secret === SECRET ? 'new' : 'old'} secret`);
        if (status === 401) {
          assert.equal(res.json.code, 'bad_signature');
        }
      }
      assert.equal(onlyNew.jobs.runs.length, 1);
    } finally {
      await both.close();
      await onlyNew.close();
    }
  });
});

/** A server for handler(...) that makes every peer look like `peer`, as a request from another host would. */
async function serveAs(peer: string, handler: ReturnType<typeof createLeadercronHandler>): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    Object.defineProperty(req.socket, 'remoteAddress', { value: peer, configurable: true });
    handler(req, res);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  server.close();
  await once(server, 'close');
}

/** A LeadercronJobs with job 'ok', outside Nest; runs counts its runs. */
function bareJobs(): { registry: LeadercronJobs; runs: LeadercronRun[] } {
  const registry = new LeadercronJobs({ logger: silent });
  const runs: LeadercronRun[] = [];
  registry.register('ok', (run) => void runs.push(run));
  return { registry, runs };
}

describe('from a non-loopback peer', () => {
  it('with a secret: the three attacks get 401 and change nothing; a signed trigger still fires', async () => {
    const j = bareJobs();
    const { url, server } = await serveAs('203.0.113.9', createLeadercronHandler(j.registry, { secrets: [SECRET], logger: silent }));
    try {
      for (const a of await attacks(url)) {
        assert.equal(a.status, 401, a.what);
        assert.equal(a.code, 'bad_signature', a.what);
      }
      assert.deepEqual(state(j, () => j.runs.length), { token: 0n, draining: false, running: 0, runs: 0 });
      const res = await post(url, 'ok', signed(trigger('ok'), '/jobs/ok', SECRET));
      assert.equal(res.status, 200);
      assert.equal(j.runs.length, 1);
    } finally {
      await closeServer(server);
    }
  });

  it('without a secret: the three attacks get 403 not_loopback and change nothing; a loopback trigger still fires', async () => {
    const j = bareJobs();
    const handler = createLeadercronHandler(j.registry, { secrets: [], logger: silent });
    const remote = await serveAs('::ffff:198.51.100.7', handler);
    const local = await serveAs('::ffff:127.0.0.1', handler);
    try {
      for (const a of await attacks(remote.url)) {
        assert.equal(a.status, 403, a.what);
        assert.equal(a.code, 'not_loopback', a.what);
      }
      const signedToo = await post(remote.url, 'ok', signed(trigger('ok'), '/jobs/ok', SECRET));
      assert.equal(signedToo.status, 403, 'without a secret, a signature does not let a remote peer in');
      assert.deepEqual(state(j, () => j.runs.length), { token: 0n, draining: false, running: 0, runs: 0 });
      const res = await post(local.url, 'ok', trigger('ok'));
      assert.equal(res.status, 200);
      assert.equal(j.runs.length, 1);
    } finally {
      await closeServer(remote.server);
      await closeServer(local.server);
    }
  });

  // The same over a real socket, from this host's own non-loopback address
  // (skipped when it has none).
  const external = Object.values(networkInterfaces()).flat().find((a) => a && !a.internal && a.family === 'IPv4')?.address;
  it(`over a real socket from ${external ?? 'a non-loopback address'}: 403 without a secret, 401 unsigned and 200 signed with one`,
    { skip: external ? false : 'no non-loopback IPv4 interface' }, async () => {
      for (const secrets of [[], [SECRET]]) {
        const j = bareJobs();
        const server = createServer(createLeadercronHandler(j.registry, { secrets, logger: silent }));
        server.listen(0, external);
        await once(server, 'listening');
        const url = `http://${external}:${(server.address() as AddressInfo).port}`;
        try {
          for (const a of await attacks(url)) {
            assert.equal(a.status, secrets.length ? 401 : 403, `${a.what} with ${secrets.length} secrets`);
          }
          assert.deepEqual(state(j, () => j.runs.length), { token: 0n, draining: false, running: 0, runs: 0 });
          if (secrets.length) {
            assert.equal((await post(url, 'ok', signed(trigger('ok'), '/jobs/ok', SECRET))).status, 200);
            assert.equal(j.runs.length, 1);
          }
        } finally {
          await closeServer(server);
        }
      }
    });
});

describe('without a secret', () => {
  it('isLoopback: 127.0.0.0/8, ::1 and ::ffff:127.x are loopback; nothing else is', () => {
    for (const a of ['127.0.0.1', '127.255.1.2', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', '::ffff:7f00:1']) {
      assert.equal(isLoopback(a), true, a);
    }
    for (const a of ['10.0.0.1', '192.0.2.2', '128.0.0.1', '0.0.0.0', '::', '::2', 'fe80::1', '::ffff:10.0.0.1', '::127.0.0.1', 'localhost', '', undefined]) {
      assert.equal(isLoopback(a), false, String(a));
    }
  });

  it('serves a loopback peer unsigned over HTTP', async () => {
    const t = await startApp({ secrets: [] });
    try {
      const res = await post(t.url, 'ok', trigger('ok'));
      assert.equal(res.status, 200);
      assert.equal(t.jobs.runs.length, 1);
    } finally {
      await t.close();
    }
  });

  it('logs once at start-up that triggers are unauthenticated and limited to loopback peers; with a secret, its key id only', async () => {
    const lines: string[] = [];
    const logger = { log: (m: unknown) => lines.push(JSON.stringify(m)), warn: (m: unknown) => lines.push(JSON.stringify(m)), error: (m: unknown) => lines.push(JSON.stringify(m)) };
    const t = await startApp({ secrets: [], logger });
    try {
      await post(t.url, 'ok', trigger('ok'));
      await post(t.url, 'ok', trigger('ok', { slot: second(-1) }));
      assert.equal(lines.filter((l) => /unauthenticated/.test(l) && /loopback/.test(l)).length, 1, lines.join('\n'));
    } finally {
      await t.close();
    }
    lines.length = 0;
    const s = await startApp({ secrets: [SECRET], logger });
    try {
      await post(s.url, 'ok', trigger('ok')); // refused, and logged
      assert.equal(lines.some((l) => /unauthenticated/.test(l)), false);
      assert.ok(lines.some((l) => l.includes(keyId(SECRET))), 'the key id is logged');
      assert.equal(lines.some((l) => l.includes(SECRET)), false, 'the secret is never logged');
    } finally {
      await s.close();
    }
  });
});

describe('configuration', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'leadercron-secrets-'));
  });
  after(() => {
    rmSync(dir, { recursive: true, force: true });
  });
  const file = (name: string, content: string) => {
    const p = join(dir, name);
    writeFileSync(p, content);
    return p;
  };

  it('refuses a secret shorter than 32 bytes, naming the option and never the value, and the module does not start', async () => {
    const short = 'too-short-secret-31-bytes-long!';
    assert.equal(Buffer.byteLength(short), 31);
    assert.throws(() => resolveTriggerKeys([SECRET, short]), (err: Error) => /secrets\[1\]/.test(err.message) && !err.message.includes(short));
    assert.equal(resolveTriggerKeys(['é'.repeat(16)]).length, 1, '32 bytes of UTF-8 (16 characters) is enough');
    await assert.rejects(
      NestFactory.create(LeadercronModule.forRoot({ secrets: [short], listen: false, logger: silent }), { logger: false, abortOnError: false }),
      (err: Error) => /secrets\[0\]/.test(err.message) && !err.message.includes(short),
    );
  });

  it('reads LEADERCRON_TRIGGER_SECRET(_FILE) and _PREVIOUS(_FILE) by the spec’s rules, without ever printing a secret', () => {
    const kid = keyId(SECRET);
    assert.deepEqual(loadTriggerSecrets({}), []);
    assert.deepEqual(loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET: SECRET }).map((k) => k.kid), [kid]);
    // One trailing "\n" or "\r\n" is removed, nothing else.
    assert.deepEqual(loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET_FILE: file('lf', `${SECRET}\n`) }).map((k) => k.kid), [kid]);
    assert.deepEqual(loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET_FILE: file('crlf', `${SECRET}\r\n`) }).map((k) => k.kid), [kid]);
    assert.deepEqual(loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET_FILE: file('lflf', `${SECRET}\n\n`) }).map((k) => k.kid), [keyId(`${SECRET}\n`)]);
    assert.deepEqual(loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET_FILE: file('none', SECRET) }).map((k) => k.kid), [kid]);
    // Rotation: current first, then previous.
    assert.deepEqual(
      loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET: SECRET, LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE: file('old', `${OLD_SECRET}\n`) }).map((k) => k.kid),
      [kid, keyId(OLD_SECRET)],
    );
    const refused: Array<[Record<string, string>, RegExp]> = [
      [{ LEADERCRON_TRIGGER_SECRET: SECRET, LEADERCRON_TRIGGER_SECRET_FILE: file('a', SECRET) }, /LEADERCRON_TRIGGER_SECRET and LEADERCRON_TRIGGER_SECRET_FILE are both set/],
      [{ LEADERCRON_TRIGGER_SECRET: SECRET, LEADERCRON_TRIGGER_SECRET_PREVIOUS: OLD_SECRET, LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE: file('b', OLD_SECRET) }, /LEADERCRON_TRIGGER_SECRET_PREVIOUS and LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE are both set/],
      [{ LEADERCRON_TRIGGER_SECRET: SECRET.slice(0, 31) }, /^leadercron: LEADERCRON_TRIGGER_SECRET has 31 bytes/],
      [{ LEADERCRON_TRIGGER_SECRET: '' }, /LEADERCRON_TRIGGER_SECRET is set but empty/],
      [{ LEADERCRON_TRIGGER_SECRET_FILE: file('short', `${SECRET.slice(0, 31)}\n`) }, /LEADERCRON_TRIGGER_SECRET_FILE .*has 31 bytes/],
      [{ LEADERCRON_TRIGGER_SECRET_FILE: join(dir, 'missing') }, /LEADERCRON_TRIGGER_SECRET_FILE: cannot open/],
      [{ LEADERCRON_TRIGGER_SECRET: SECRET, LEADERCRON_TRIGGER_SECRET_PREVIOUS: 'short-old' }, /LEADERCRON_TRIGGER_SECRET_PREVIOUS has 9 bytes/],
      [{ LEADERCRON_TRIGGER_SECRET_PREVIOUS: OLD_SECRET }, /LEADERCRON_TRIGGER_SECRET_PREVIOUS is set but LEADERCRON_TRIGGER_SECRET is not/],
    ];
    for (const [env, want] of refused) {
      assert.throws(() => loadTriggerSecrets(env), (err: Error) => {
        assert.match(err.message, want);
        for (const v of [SECRET, SECRET.slice(0, 31), OLD_SECRET, 'short-old']) {
          assert.equal(err.message.includes(v), false, `${err.message} shows a secret`);
        }
        return true;
      });
    }
    // A key prints its id, never its secret.
    const [key] = loadTriggerSecrets({ LEADERCRON_TRIGGER_SECRET: SECRET });
    for (const shown of [String(key), JSON.stringify(key), inspect(key, { showHidden: true, depth: 5 })]) {
      assert.equal(shown.includes(SECRET), false, shown);
      assert.ok(shown.includes(kid), shown);
    }
  });

  it('refuses a listen address that is not host:port, or not loopback without a secret', async () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:8081', 'x'), { host: '127.0.0.1', port: 8081 });
    assert.deepEqual(parseListenAddress('[::1]:0', 'x'), { host: '::1', port: 0 });
    assert.deepEqual(parseListenAddress(':8081', 'x'), { host: '', port: 8081 });
    for (const bad of ['8081', '127.0.0.1', '127.0.0.1:99999', 'http://127.0.0.1:8081', '::1:8081']) {
      assert.throws(() => parseListenAddress(bad, 'LEADERCRON_APP_LISTEN'), /LEADERCRON_APP_LISTEN .* is not host:port/, bad);
    }
    for (const listen of ['0.0.0.0:0', ':0', '[::]:0', '192.0.2.1:8081']) {
      await assert.rejects(
        NestFactory.create(LeadercronModule.forRoot({ secrets: [], listen, logger: silent }), { logger: false, abortOnError: false }),
        /refusing to serve unauthenticated triggers .*not a loopback address/,
        listen,
      );
    }
    const withSecret = await startApp({ secrets: [SECRET], listen: '0.0.0.0:0' });
    try {
      assert.match(withSecret.url, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal((await send(withSecret.url, '/drain', drainRequest())).status, 401);
    } finally {
      await withSecret.close();
    }
  });
});
