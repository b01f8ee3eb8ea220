// The package's configuration surface: the route prefix (option `prefix`,
// paired with a LEADERCRON_APP_URL that has the same base path) and
// forRootAsync (ConfigurableModuleBuilder: useFactory, useClass).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Injectable, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  createLeadercronHandler,
  LeadercronJobs,
  LeadercronModule,
  normalizePrefix,
  type LeadercronModuleOptions,
  type LeadercronOptionsFactory,
} from '@leadercron/nestjs';
import { post, send, signed, silent, startApp, startAppWith, trigger } from './helpers.js';

const SECRET = 'test-secret-0123456789abcdef-0123456789';
const PREFIX = '/internal/leadercron';

/** What a refused request must not have changed. */
function untouched(registry: LeadercronJobs, runs: number, got: number): void {
  assert.equal(got, runs, 'no run started');
  assert.equal(registry.isDraining, false, 'not draining');
  assert.equal(registry.highestFencingToken, 0n, 'no fencing token recorded');
}

describe('option prefix', () => {
  it('serves /jobs/{name} and /drain under the prefix only, and the listener url carries it (the sidecar\'s LEADERCRON_APP_URL)', async () => {
    const t = await startApp({ prefix: `${PREFIX}/` }); // a trailing slash is dropped
    try {
      assert.match(t.url, /^http:\/\/127\.0\.0\.1:\d+\/internal\/leadercron$/);
      const origin = new URL(t.url).origin;
      for (const path of ['/jobs/ok', '/drain', '/internal/leadercronx/jobs/ok', `${PREFIX}/jobs/ok/more`, PREFIX, `${PREFIX}/`, '/internal/jobs/ok']) {
        const res = await send(origin, path, path.endsWith('/drain') ? { headers: {}, body: '' } : trigger('ok', { token: 5n }));
        assert.equal(res.status, 404, path);
        assert.equal(res.json.code, 'not_found', path);
        assert.match(res.json.error, /serves POST \/internal\/leadercron\/jobs\/\{name\} and POST \/internal\/leadercron\/drain/);
      }
      untouched(t.registry, 0, t.jobs.runs.length);

      const ok = await post(t.url, 'ok', trigger('ok'));
      assert.equal(ok.status, 200);
      assert.equal(t.jobs.runs.length, 1);
      const drain = await send(origin, `${PREFIX}/drain`, { headers: {}, body: '' });
      assert.equal(drain.status, 200);
      assert.deepEqual(drain.json, { running: 0 });
      assert.equal(t.registry.isDraining, true);
    } finally {
      await t.close();
    }
  });

  it('with a secret, the signature covers the whole path: signed for /jobs/ok, refused on the prefixed path; signed for it, served', async () => {
    const t = await startApp({ prefix: PREFIX, secrets: [SECRET] });
    try {
      const origin = new URL(t.url).origin;
      const path = `${PREFIX}/jobs/ok`;
      const tr = trigger('ok');
      const wrong = await send(origin, path, signed(tr, '/jobs/ok', SECRET));
      assert.equal(wrong.status, 401);
      assert.equal(wrong.json.code, 'bad_signature');
      untouched(t.registry, 0, t.jobs.runs.length);
      const right = await send(origin, path, signed(tr, path, SECRET));
      assert.equal(right.status, 200);
      assert.equal(t.jobs.runs.length, 1);
    } finally {
      await t.close();
    }
  });

  it('normalises "", "/" and a trailing slash, and refuses what is not a path prefix, naming the option', async () => {
    assert.equal(normalizePrefix(undefined, 'x'), '');
    assert.equal(normalizePrefix('', 'x'), '');
    assert.equal(normalizePrefix('/', 'x'), '');
    assert.equal(normalizePrefix('/a/b/', 'x'), '/a/b');
    assert.equal(normalizePrefix('/v1.2/_lc~x', 'x'), '/v1.2/_lc~x');
    for (const bad of ['internal', 'internal/leadercron', '//', '/a//b', '/a/../b', '/./a', '/a?b', '/a#b', '/a b', '/a\n', 'http://x/a']) {
      await assert.rejects(
        NestFactory.create(LeadercronModule.forRoot({ prefix: bad, secrets: [], listen: false, logger: silent }), { logger: false, abortOnError: false }),
        (err: Error) => err.message.startsWith(`leadercron: LeadercronModule option prefix ${JSON.stringify(bad)} is not a path prefix`),
        JSON.stringify(bad),
      );
      assert.throws(() => createLeadercronHandler(new LeadercronJobs({ logger: silent }), { prefix: bad, secrets: [], logger: silent }), /option prefix .* is not a path prefix/);
    }
  });
});

@Injectable()
class AppConfig {
  readonly prefix = '/from-config';
  readonly listen = '127.0.0.1:0';
}

@Module({ providers: [AppConfig], exports: [AppConfig] })
class AppConfigModule {}

@Injectable()
class AsyncOptions implements LeadercronOptionsFactory {
  createLeadercronOptions(): LeadercronModuleOptions {
    return { async: true, listen: '127.0.0.1:0', secrets: [], logger: silent };
  }
}

describe('forRootAsync', () => {
  it('useFactory: options from an injected provider of an imported module, returned asynchronously', async () => {
    const t = await startAppWith(
      LeadercronModule.forRootAsync({
        imports: [AppConfigModule],
        inject: [AppConfig],
        useFactory: async (config: AppConfig) => ({ prefix: config.prefix, listen: config.listen, secrets: [], logger: silent }),
      }),
    );
    try {
      assert.match(t.url, /^http:\/\/127\.0\.0\.1:\d+\/from-config$/);
      assert.ok(t.registry.names().includes('ok'), 'the @LeadercronJob methods are registered');
      const res = await post(t.url, 'ok', trigger('ok'));
      assert.equal(res.status, 200);
      assert.equal(t.jobs.runs.length, 1);
    } finally {
      await t.close();
    }
  });

  it('useClass: a LeadercronOptionsFactory (here async: true, so a run is answered 202)', async () => {
    const t = await startAppWith(LeadercronModule.forRootAsync({ useClass: AsyncOptions }));
    try {
      const res = await post(t.url, 'ok', trigger('ok'));
      assert.equal(res.status, 202);
    } finally {
      await t.close();
    }
  });

  it('refuses to start when the factory gives a bad prefix, a short secret, or something that is not an object', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ prefix: 'no-slash' }, /LeadercronModule option prefix "no-slash" is not a path prefix/],
      [{ secrets: ['short'] }, /secrets\[0\]/],
      [42, /LeadercronModule options must be an object, got number/],
    ];
    for (const [options, want] of cases) {
      await assert.rejects(
        NestFactory.create(LeadercronModule.forRootAsync({ useFactory: () => options as LeadercronModuleOptions }), { logger: false, abortOnError: false }),
        want,
      );
    }
  });
});
