import type { LoggerService } from '@nestjs/common';
import type { TriggerKey } from './signature.js';

/** Injection token of the module's options. */
export const LEADERCRON_OPTIONS = Symbol('LEADERCRON_OPTIONS');

/** Injection token of the resolved trigger keys (TriggerKey[]; [] = loopback peers only). */
export const LEADERCRON_KEYS = Symbol('LEADERCRON_KEYS');

/** Where the trigger listener listens when neither `listen` nor LEADERCRON_APP_LISTEN says. */
export const DEFAULT_LISTEN = '127.0.0.1:8081';

/** The environment variable read when `listen` is not given. */
export const LISTEN_ENV = 'LEADERCRON_APP_LISTEN';

/**
 * Options of LeadercronModule.forRoot (or what forRootAsync's factory
 * returns). All are optional.
 */
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
  /**
   * The address ("host:port", "[::1]:8081") of the module's own HTTP
   * listener, which serves POST /jobs/{name} and POST /drain and nothing
   * else; the app's own (public) port does not serve them. It is started
   * when the application starts (app.listen() or app.init()) and closed at
   * shutdown, after the runs in flight. Default: $LEADERCRON_APP_LISTEN,
   * else "127.0.0.1:8081": the sidecar shares the app's network namespace
   * (ECS task, Kubernetes pod) and reaches it there. Without secrets the
   * host must be a loopback address. `false`: no listener; serve
   * createLeadercronHandler(...) on a server of your own.
   */
  listen?: string | false;
  /**
   * A path prefix for the trigger listener's two endpoints:
   * "/internal/leadercron" serves POST /internal/leadercron/jobs/{name} and
   * POST /internal/leadercron/drain (and 404 on /jobs/{name}). The sidecar
   * keeps a base path, so pair it with
   * LEADERCRON_APP_URL=http://127.0.0.1:8081/internal/leadercron. It must
   * start with "/"; a trailing "/" is dropped; "" or "/" means none.
   * Signatures cover the whole path, prefix included. Default: none.
   */
  prefix?: string;
  /**
   * The secrets the sidecar may sign triggers with (its
   * LEADERCRON_TRIGGER_SECRET): usually one, two during a rotation (the new
   * one first, then the old one). Each at least 32 bytes (a string counts
   * its UTF-8 bytes). With secrets, every request must carry a valid
   * Leadercron-Signature, whatever the peer. Without any, requests are not
   * authenticated and only loopback peers are served.
   * Default (undefined): read from the environment, see loadTriggerSecrets
   * (LEADERCRON_TRIGGER_SECRET / _FILE, LEADERCRON_TRIGGER_SECRET_PREVIOUS /
   * _PREVIOUS_FILE). [] means none, whatever the environment says.
   */
  secrets?: ReadonlyArray<string | Uint8Array | TriggerKey>;
  /**
   * The clock (ms since the epoch) against which a signature's time is
   * checked. Default Date.now. Meant for tests; run deadlines always use
   * the real clock.
   */
  now?: () => number;
}

/**
 * The options as the module's providers see them: undefined or null (a
 * forRootAsync factory that returned nothing) means all defaults; anything
 * else that is not an object is refused with an Error.
 */
export function checkModuleOptions(o: unknown): LeadercronModuleOptions {
  if (o === undefined || o === null) {
    return {};
  }
  if (typeof o !== 'object' || Array.isArray(o)) {
    throw new Error(`leadercron: LeadercronModule options must be an object, got ${Array.isArray(o) ? 'an array' : typeof o}`);
  }
  return o as LeadercronModuleOptions;
}
