// Package sidecar is the running leadercron sidecar: the campaign around
// the elector, the scheduler while leading, the run-now watch, the slot
// history writer, the app health gate, POST /handover and /status, and the
// lifecycle that orders them (lifecycle.go).
//
// The lock backend is behind two interfaces declared here, Elector and
// Ledger; the Consul implementation (packages leader and ledger) is wired
// in by package cli, and standalone mode has an Elector and no Ledger.
//
// Guarantees:
//
//   - Shutdown order: on the stop signal the scheduler stops claiming,
//     the sidecar waits for triggers in flight and drains the app
//     (POST /drain until nothing runs) while the elector still renews the
//     lock, all within LEADERCRON_DRAIN_TIMEOUT counted from the signal;
//     only then does the lead function return, and the elector releases
//     the lock. A drain that times out returns an error wrapping
//     appclient.ErrDrainTimeout, and the elector then leaves the lock to
//     expire.
//   - A leadership that ends by loss (the lease ran out, the key shows
//     another session) is not drained: the sidecar stops triggering at
//     once and campaigns again.
//   - POST /handover does the graceful half of the shutdown (stop, wait,
//     drain, release) and keeps the sidecar out of every later election.
//     It answers released, lost, standby, failed or already.
//   - The app health gate keeps the sidecar out of the election until the
//     app's health URL answers, and hands leadership over when it fails
//     LEADERCRON_APP_HEALTH_FAILURES times in a row.
//   - A run-now request is taken under the lock, at most once fleet-wide,
//     and never used up without firing or a history entry saying why.
//
// Not guaranteed: a clean shutdown after a second signal, which exits at
// once (see main); that every history entry reaches the ledger (the queue
// drops entries rather than block the scheduler, with a warning).
package sidecar
