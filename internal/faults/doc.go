// Package faults is a Jepsen-style fault-injection suite for leadercron;
// it holds only tests.
//
// Each scenario runs a fleet of sidecars (the race-enabled binary, or
// in-process electors and schedulers for clock skew) against a real
// Consul, each sidecar with its own recording app. Every request the apps
// get and every change of the lock key's holder goes into one shared
// history. The scenario injects one kind of fault (process kill, pause,
// partition, connection resets, Consul errors, Consul leader loss or full
// restart, app trouble, clock skew), and a checker then verifies over the
// history: no (job, slot) triggered twice; every trigger arrived while its
// sender held the lock as Consul showed it; fencing tokens never went
// backwards in arrival order; every slot that was due either fired or fell
// in a window with no possible leader; and a graceful handover lost
// nothing beyond its drain. It prints one line per scenario and a summary.
//
// Timing comes from a seed, printed at the start and replayable with
// LEADERCRON_FAULT_SEED. The default is a short run sized for CI (about
// five minutes on two cores); LEADERCRON_SOAK=<duration> (e.g. 1h, with a
// matching go test -timeout) repeats each scenario's faults for its share
// of that duration.
//
// What it does not prove: anything about a Consul cluster rebuilt without
// its data (fencing tokens then restart), real wall-clock steps of a host
// (the binary cannot be given a fake clock, so skew is tested in-process),
// or about more than one job state per slot of the app itself.
package faults
