// Package testkit is test support, not product code: the leadercron
// binary never imports it. It holds the harness that the end-to-end tests
// (internal/e2e), the fault-injection suite (internal/faults) and the
// benchmark (tools/bench) share, so that each of them watches a fleet the
// same way:
//
//   - History, an ordered, shared record of Events (triggers and drains
//     the apps received, changes of the lock's holder, injected faults,
//     what sidecars logged), with WaitFor / Await / Wait, which re-check a
//     condition on every new event instead of sleeping;
//   - App, a recording co-located app answering the job contract
//     (POST /jobs/{name}, POST /drain, GET /healthz) that checks every
//     trigger's headers against its body, records it, and can be scripted
//     (answer status, run length, slow or lost answers, a drain that never
//     ends, taken down and up again);
//   - WatchLock, a blocking-query watcher that records every change of the
//     lock key's holder;
//   - Process and Sidecar, a started binary with its output, exit code and
//     signals; Sidecar runs the leadercron binary for a test;
//   - FreePorts.
//
// Functions that take a testing.TB (StartApp, StartSidecar, WaitFor, the
// Sidecar methods) fail the test on error and clean up through t.Cleanup;
// the others (NewApp, StartProcess, WatchLock, Wait, FreePorts) return
// errors and take a context, for the benchmark, which is a command.
//
// Not guaranteed: that a port FreePorts returns is still free when it is
// bound; an Event's At is when the harness recorded it, not when the
// sidecar sent it.
package testkit
