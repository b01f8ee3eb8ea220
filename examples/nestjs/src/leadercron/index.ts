/**
 * @packageDocumentation
 * A NestJS module that lets a Nest application receive job triggers from a
 * co-located leadercron sidecar. It is the Nest twin of the Go package
 * examples/go/jobs and answers exactly as it does.
 *
 *   POST /jobs/:name   run job `name` once (the method marked @LeadercronJob(name))
 *   POST /drain        stop accepting runs; answers 200 {"running": N}
 *
 * (under an optional path prefix, option `prefix`: /internal/leadercron/jobs/:name).
 *
 * Both are served on a listener of the module's own, not on the app's port:
 * by default 127.0.0.1:8081 (option `listen`, env LEADERCRON_APP_LISTEN),
 * which the sidecar reaches because it shares the app's network namespace.
 *
 * Authentication, before anything else, on both endpoints:
 *   - with secrets (option `secrets`, or LEADERCRON_TRIGGER_SECRET[_FILE]
 *     and LEADERCRON_TRIGGER_SECRET_PREVIOUS[_FILE]): every request must
 *     carry a valid Leadercron-Signature (HMAC-SHA256, see signature.ts),
 *     whatever the peer;
 *   - without: only loopback peers are served, others get 403 not_loopback.
 *
 *   403 not_loopback         no secret, and the peer is not a loopback address
 *   404 not_found, 405 method_not_allowed   not POST /jobs/{name} or POST /drain
 *   413 body_too_large       body larger than 64 KiB
 *   401 bad_signature        missing/malformed signature, unknown key id, mismatch
 *   401 stale_signature      signature time more than 30 s from the app's clock
 *
 * A refused request changes no state (highest fencing token seen, draining,
 * idempotency memory).
 *
 * Answers to POST /jobs/:name, in the order they are checked (refusals carry
 * {"error": "...", "code": "..."}):
 *
 *   503 draining             drain() was called or POST /drain received
 *   404 unknown_job          no job registered under that name
 *   400 bad_request          bad body, missing slot/fencing token/deadline, header and body disagree
 *   409 stale_fencing_token  token lower than the highest seen: a replaced leader
 *   504 deadline_passed      the deadline was over before the run started; it did not run
 *   409 duplicate            the idempotency key is running or already succeeded
 *   409 already_running      another run of this job is in progress
 *   200                      (sync) the method returned or its promise resolved
 *   500 job_failed           (sync) the method threw or its promise rejected
 *   202                      (async) the run was accepted and started
 *
 * Guarantees:
 *   - In-flight accounting is exact: a run counts from its admission until
 *     its method settles, in the request (sync) or in the background (async).
 *     POST /drain, `running` and waitIdle use that count.
 *   - One job name never runs twice at the same time in one process.
 *   - A run's `signal` aborts at its deadline; in sync mode also when the
 *     sidecar hangs up.
 *   - After drain no new run starts; runs already admitted continue. With
 *     app.enableShutdownHooks(), SIGTERM drains and waits for them
 *     (shutdownTimeoutMs), answering POST /drain meanwhile, before the
 *     trigger listener and the app's HTTP server close.
 *   - A request refused by the authentication (403, 413, 401) changes no
 *     state: it is refused before its body is parsed or any bookkeeping is
 *     read or written.
 *
 * Not guaranteed:
 *   - Deduplication and fencing state live in process memory: not durable,
 *     not shared between replicas, bounded (rememberKeys). Only succeeded
 *     keys are remembered; a failed run may be retried.
 *   - The fence refuses a stale leader's requests that arrive after a newer
 *     leader's; it does not stop runs already started and does not protect
 *     external systems (pass run.fencingToken to them).
 *   - In async mode the sidecar learns only that the run was accepted.
 *   - A method that ignores its signal runs past the deadline, and counts as
 *     in flight until it settles.
 *   - Signatures prove that the request comes from a holder of the secret
 *     within the last 30 s; a captured request can be replayed within that
 *     window (the idempotency key and the fence still apply to it).
 *   - Without secrets, anything that can connect from a loopback address
 *     (another process on the host or in the pod/task) can trigger.
 */
export { Codes, Headers, type LeadercronRun, BadTriggerError, parseTrigger, formatTime, leadercronRun } from './contract.js';
export { isLoopback, loadTriggerSecrets, resolveTriggerKeys, SecretEnv } from './auth.js';
export {
  keyId,
  MAX_BODY_BYTES,
  MIN_SECRET_BYTES,
  SIGNATURE_TOLERANCE_SECONDS,
  SIGNED_HEADERS,
  signingString,
  signTrigger,
  TriggerKey,
  verifyTrigger,
  type SignedRequest,
  type Verification,
} from './signature.js';
export {
  createLeadercronHandler,
  createLeadercronServer,
  LeadercronListener,
  normalizePrefix,
  parseListenAddress,
  wirePath,
  type LeadercronHandler,
  type LeadercronHandlerOptions,
} from './server.js';
export { LeadercronJob } from './job.decorator.js';
export { LeadercronJobs, type LeadercronJobFn, type LeadercronJobOptions, type LeadercronAnswer } from './leadercron.jobs.js';
export { LeadercronModule, type LeadercronModuleAsyncOptions, type LeadercronOptionsFactory } from './leadercron.module.js';
export { DEFAULT_LISTEN, LEADERCRON_KEYS, LEADERCRON_OPTIONS, LISTEN_ENV, type LeadercronModuleOptions } from './options.js';
