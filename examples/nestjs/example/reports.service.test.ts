// A @LeadercronJob method is a normal method: a unit test calls it
// directly, with a LeadercronRun built by leadercronRun(), no Nest app,
// listener or sidecar involved.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Logger } from '@nestjs/common';
import { leadercronRun } from '@leadercron/nestjs';
import { ReportsService } from './reports.service.js';

Logger.overrideLogger(false);

describe('ReportsService (the demo jobs, called directly)', () => {
  it('hello runs for a given slot', () => {
    assert.doesNotThrow(() => new ReportsService().hello(leadercronRun('hello', { slot: new Date('2026-01-01T09:00:00Z') })));
  });

  it('sendReport stops when its run is aborted (a deadline, a deploy)', async () => {
    const abort = new AbortController();
    abort.abort(new Error('deadline'));
    await assert.rejects(new ReportsService().sendReport(leadercronRun('send-report', { signal: abort.signal })), /deadline/);
  });
});
