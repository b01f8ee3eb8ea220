import type { LoggerService } from '@nestjs/common';

/** Injection token of the module's options. */
export const LEADERCRON_OPTIONS = Symbol('LEADERCRON_OPTIONS');

/** Options of LeadercronModule.forRoot. All are optional. */
export interface LeadercronModuleOptions {
  /**
   * Run jobs in the background and answer 202 as soon as a run is accepted,
   * instead of 200/500 once it finished. A job's own option overrides it.
   * Default false.
   */
  async?: boolean;
  /**
   * How many succeeded idempotency keys are remembered to refuse duplicates
   * (FIFO). 0 means 1024; a negative value remembers none.
   */
  rememberKeys?: number;
  /**
   * With app.enableShutdownHooks(), how long shutdown waits for runs in
   * flight after draining. Default 30000 ms.
   */
  shutdownTimeoutMs?: number;
  /** Where the module logs; default a Nest Logger with context "Leadercron". */
  logger?: LoggerService;
}
