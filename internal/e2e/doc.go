// Package e2e holds end-to-end tests that run the built leadercron binary
// against a real Consul agent and recording apps. It has no non-test code
// besides this comment.
//
// What the tests prove: exactly one sidecar of a fleet triggers; SIGTERM on
// the leader drains its app while the lock is still held and then hands the
// lock over; SIGKILL on the leader lets a standby take over only after the
// lock-delay; no slot is ever triggered twice; bad configuration exits 2
// and a drain that times out exits 3 without releasing the lock.
// GET /metrics agrees with Consul (the fencing token is the lock key's
// ModifyIndex) and with what the apps received.
//
// The harness (event history, recording apps, lock watcher, sidecar
// processes) is internal/testkit, shared with internal/faults and
// tools/bench; harness_test.go only names it and builds the binary. With
// go test -short the binary is not built and every test that runs it
// skips.
package e2e
