import { Injectable, Logger } from '@nestjs/common';
import { formatTime, LeadercronJob, type LeadercronRun } from '@leadercron/nestjs';

/** Resolves after ms, or rejects when signal aborts first. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The demo's jobs. With @nestjs/schedule they would read
 * `@Cron('0 9 * * MON-FRI') sendReport() {...}`; with leadercron the method
 * keeps its code, the decorator only names the job, and the schedule moves to
 * the sidecar: LEADERCRON_JOB_SEND_REPORT="0 9 * * MON-FRI".
 */
@Injectable()
export class ReportsService {
  private readonly log = new Logger(ReportsService.name);

  @LeadercronJob('hello')
  hello(run: LeadercronRun): void {
    this.log.log({ msg: 'hello from the NestJS demo app', slot: formatTime(run.slot), fencing_token: run.fencingToken.toString() });
  }

  @LeadercronJob('send-report')
  async sendReport(run: LeadercronRun): Promise<void> {
    this.log.log({ msg: 'building report', slot: formatTime(run.slot) });
    await sleep(2_000, run.signal);
    this.log.log({ msg: 'report sent', slot: formatTime(run.slot) });
  }

  /** Runs in the background: the sidecar gets 202 at once. */
  @LeadercronJob('reindex', { async: true })
  async reindex(run: LeadercronRun): Promise<void> {
    this.log.log({ msg: 'reindex started', slot: formatTime(run.slot) });
    await sleep(5_000, run.signal);
    this.log.log({ msg: 'reindex done', slot: formatTime(run.slot) });
  }
}
