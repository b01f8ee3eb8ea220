// Package app is leadercron's composition root: it parses the command
// line, loads the configuration, builds every part, and owns the lifecycle,
// including the shutdown order: stop scheduling, wait for triggers in
// flight, drain the app while the session is still renewed, and only then
// release the lock. It also runs the campaign around the elector: POST
// /handover (drain, release, never campaign again), the app health gate
// (no campaign while the app is unhealthy; hand over when it turns
// unhealthy while leading), run-now requests taken under the lock, and the
// slot history written to Consul KV in the background. The fleet commands
// (pause, resume, run, status) act on Consul KV only.
//
// Exit codes: 0 after a graceful shutdown (or a valid `validate`), 1 on a
// runtime failure (such as the admin port being taken), 2 on a configuration
// error (including a session TTL that Consul refuses), 3 when the app did
// not drain within LEADERCRON_DRAIN_TIMEOUT (the lock is then not released;
// it expires by TTL plus lock-delay).
//
// Not guaranteed: a clean shutdown after a second signal, which exits at
// once (see main); that every history entry reaches Consul (the queue
// drops entries rather than block the scheduler, with a warning).
package app
