// Package app is leadercron's composition root: it parses the command
// line, loads the configuration, builds every part, and owns the lifecycle,
// including the shutdown order: stop scheduling, wait for triggers in
// flight, drain the app while the session is still renewed, and only then
// release the lock.
//
// Exit codes: 0 after a graceful shutdown (or a valid `validate`), 1 on a
// runtime failure (such as the admin port being taken), 2 on a configuration
// error (including a session TTL that Consul refuses), 3 when the app did
// not drain within LEADERCRON_DRAIN_TIMEOUT (the lock is then not released;
// it expires by TTL plus lock-delay).
//
// Not guaranteed: a clean shutdown after a second signal, which exits at
// once (see main).
package app
