// Package faults is a Jepsen-style fault-injection suite for leadercron;
// it holds only tests.
//
// Each scenario runs a fleet of sidecars (the race-enabled binary, or
// in-process electors and schedulers for clock skew) against a real
// Consul, each sidecar with its own recording app. Every request the apps
// get, every change of the lock key's holder, and what the sidecars log
// about their slots (missed, skipped or failed, with the reason) and their
// leadership (acquired with a fencing token and session, lease ended and
// when) go into one shared history. The scenario injects one kind of fault
// (process kill, pause, partition, connection resets, Consul errors,
// Consul leader loss or full restart, app trouble such as answers lost
// after the app took the trigger, clock skew), and says, per fault
// window, which reasons a sidecar may record for a slot lost in it, and
// whether a loss there may go unrecorded (only where the sidecar that
// could record it is dead or cut off).
//
// The checker then verifies over the history: no scheduled (job, slot)
// and no run-now request (by its Idempotency-Key) triggered twice, and
// every run-now made fired once; every trigger arrived while its sender
// held the lock as Consul showed it, and before its sender's own lease
// ended as it logged it; fencing tokens never went backwards in arrival
// order; every slot due fired, or failed on its way to the app, or was
// recorded with a reason that a fault injected at that time explains (a
// reason no fault explains is "misattributed"), or fell unrecorded in a
// window that excuses that; after every change of the lock's holder, the
// new holder fired the latest slot of the gap, late (catch-up); and every
// trigger the app took but left unanswered was recorded by its sender as
// failed, no_answer. It prints one line per scenario and a summary. The
// naive leader runs the same partition as a positive control: it is not
// failed for its violations, but the run fails if it shows none, since the
// fault injector is then broken. TestCheckerCatches feeds the checker a
// history breaking each rule.
//
// Timing comes from a seed, printed at the start and replayable with
// LEADERCRON_FAULT_SEED. The default is a short run sized for CI (about
// four minutes on two cores); LEADERCRON_SOAK=<duration> (e.g. 1h, with a
// matching go test -timeout) repeats each scenario's faults for its share
// of that duration. go test -short skips every scenario (and the binary
// build); only TestCheckerCatches runs.
//
// The history, the recording apps, the lock watcher and the sidecar
// processes are internal/testkit's, shared with internal/e2e and
// tools/bench; what is the suite's own here is the seeded set-up, the
// parser of the sidecars' JSON logs, the scenarios and the checker.
//
// What it does not prove: anything about a Consul cluster rebuilt without
// its data (fencing tokens then restart), real wall-clock steps of a host
// (the binary cannot be given a fake clock, so skew is tested in-process),
// or about more than one job state per slot of the app itself. A leader
// that skips catch-up is caught only when the slot after its acquire falls
// due later than catchUpTolerance after it.
package faults
