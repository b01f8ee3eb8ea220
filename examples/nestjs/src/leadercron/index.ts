/**
 * @packageDocumentation
 * A NestJS module that lets a Nest application receive job triggers from a
 * co-located leadercron sidecar. It is the Nest twin of the Go package
 * examples/go/jobs and answers exactly as it does.
 *
 *   POST /jobs/:name   run job `name` once (the method marked @LeadercronJob(name))
 *   POST /drain        stop accepting runs; answers 200 {"running": N}
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
 *     (shutdownTimeoutMs) before the HTTP server closes.
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
 *   - A body that is not valid JSON is refused by Nest's body parser (400)
 *     before it reaches the module.
 */
export { Codes, Headers, type LeadercronRun, BadTriggerError, parseTrigger, formatTime } from './contract.js';
export { LeadercronJob } from './job.decorator.js';
export { LeadercronJobs, type LeadercronJobFn, type LeadercronJobOptions, type LeadercronAnswer } from './leadercron.jobs.js';
export { LeadercronModule } from './leadercron.module.js';
export { LEADERCRON_OPTIONS, type LeadercronModuleOptions } from './options.js';
