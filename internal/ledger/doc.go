// Package ledger keeps the fleet-wide operator state of leadercron in
// Consul KV: pauses, run-now requests and each job's slot history, and reads
// it all back for `leadercron status`.
//
// The keys and the records are kvlayout's; this package reads and writes
// P/jobs/<job>/paused, P/requests/<job>, P/history/<job> and, in
// jobtable.go, P/fleet/ (the leader's job table and every sidecar's member
// record), and reads the rest for Snapshot.
//
// Guarantees:
//
//   - AppendAll (and Append) loses no entry to a concurrent writer: each
//     job's list is written by a check-and-set at the ModifyIndex this
//     Store last read or wrote, many jobs in one Txn; a list that changed
//     meanwhile fails its op, is read again and retried alone, and the
//     other lists of the Txn are sent again as they are. The list is kept
//     sorted by slot, newest first, and cut to MaxHistory entries; the
//     oldest slots are dropped. An entry equal to one already stored (same
//     slot, outcome, at and id) is not added twice, so a call whose
//     outcome was unknown (a timeout) may be repeated.
//   - At most one run-now request per job is pending: RequestRun creates it
//     only if the key is absent (CAS at index 0) and otherwise returns the
//     pending one. The leader consumes it with one Txn (check-session on
//     the lock key, then check-index and delete-cas at its ModifyIndex; see
//     leader.Term.TakeRequest), so at most once, and only while it holds the
//     lock.
//   - Pause never overwrites an existing pause (the first one's by, at and
//     reason stay), and Resume deletes only the pause it read.
//
// Not guaranteed: that a paused job is not triggered or that a request is
// fired; that is the leader's side (it reads P/jobs/<job>/ in its claim
// Txn). Snapshot is one consistent read of the KV tree plus one read of the
// leader's session, not a single atomic view of both. History is a record
// for people, written after the fact: a leader that dies between a trigger
// and its Append leaves no entry for that slot. Every call is bounded only
// by its context.
package ledger
