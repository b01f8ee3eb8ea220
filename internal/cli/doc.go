// Package cli is leadercron's command line and composition root: it parses
// the command, loads the configuration, checks the Consul client settings,
// builds the parts (run.go: the metrics, the app client, and the lock
// backend: Consul's elector and ledger, or standalone mode) and hands them
// to package sidecar, which owns the running lifecycle. The other commands
// are validate and healthcheck (commands.go) and the fleet commands pause,
// resume, run and status (fleet.go, status.go), which act on Consul KV only.
//
// Exit codes: 0 after a graceful shutdown (or a valid `validate`), 1 on a
// runtime failure (such as the admin port being taken), 2 on a configuration
// error (including a session TTL that Consul refuses, or a Consul TLS
// setting that cannot work), 3 when the app did not drain within
// LEADERCRON_DRAIN_TIMEOUT (the lock is then not released; it expires by
// TTL plus lock-delay).
//
// Guarantees: nothing starts half-configured: every configuration problem
// is printed, one line each naming the variable, before anything listens
// or contacts Consul. Not guaranteed: that a fleet command's view is
// current a moment later; it reads Consul once.
package cli
