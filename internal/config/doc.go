// Package config reads leadercron's configuration from an environment given
// as a map, so that it can be tested without touching the process
// environment.
//
// Guarantees: Load either returns a complete, validated Config or an error
// that lists every problem found, one per line, each naming the variable and
// the offending value. A Config is never returned half-filled. Load does no
// I/O: values that need I/O to default (the ECS task family and ARN) are
// passed in as Defaults by the caller.
//
// Not guaranteed: that Consul accepts the timings (its server-side minimum
// session TTL is only known when a session is created), or that the app is
// reachable at AppURL.
package config
