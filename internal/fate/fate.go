// Package fate is leadercron's vocabulary for what becomes of a slot (one
// scheduled fire time of one job, or one run-now request): the outcome and
// the reason recorded with it. The scheduler decides them, the app client
// reports what the app answered, the history stores them and the metrics
// count them; all of them use these names, declared here once.
//
// Guarantees: the string values are the ones in the slot history, the
// /status endpoint and the leadercron_slots_total label, and they do not
// change without a release note. Not guaranteed: that a reason is set; a
// fired slot has none, and a failed one only when it says more than the
// HTTP status.
package fate

// Outcome is the fate of a slot.
type Outcome string

// The outcomes.
const (
	Fired   Outcome = "fired"   // the app answered 2xx: it ran the job, or accepted it (202)
	Failed  Outcome = "failed"  // sent, and the app answered otherwise, or not at all
	Skipped Outcome = "skipped" // not sent on purpose: overlap, group, pause, or the app's 409
	Missed  Outcome = "missed"  // not sent, though it should have been: see the reason
)

// Outcomes lists every outcome, in the order above.
func Outcomes() []Outcome { return []Outcome{Fired, Failed, Skipped, Missed} }

// Reason qualifies an outcome.
type Reason string

// The reasons.
const (
	Overlap   Reason = "overlap"   // skipped: the job's previous run was still in flight
	Group     Reason = "group"     // skipped: its group stayed busy until the deadline
	Paused    Reason = "paused"    // skipped: the job is paused fleet-wide
	NoLeader  Reason = "no_leader" // missed: fell due while no sidecar led, not caught up
	Overslept Reason = "overslept" // missed: this leader woke too late for it
	Lease     Reason = "lease_short"
	// ClaimFailed: Consul refused the claim (an ACL denial, say): the
	// slot is certainly not claimed.
	ClaimFailed Reason = "claim_failed"
	// ClaimUnknown: no answer to the claim, and none to the re-reads
	// that would resolve it, before the lease ran short or the next slot
	// fell due: the slot may be claimed, and nobody fires it.
	ClaimUnknown Reason = "claim_unknown"
	// TakeUnknown: a run-now request whose take got no answer and could
	// not be re-read: it may be used up without firing.
	TakeUnknown Reason = "take_unknown"
	Ended       Reason = "leadership_ended" // missed: leadership ended while it waited
	// Orphaned: recorded by a new leader for the last slot a previous
	// leader claimed ahead of its instant and left no fate for, its
	// leadership having ended without a graceful release (a crash, a
	// cut): the slot is spent; it may or may not have fired.
	Orphaned Reason = "claim_orphaned"
	// NoAnswer: failed: the trigger was sent and no answer came (a
	// reset, a timeout): the app may have run it, so it is not re-sent.
	NoAnswer Reason = "no_answer"
)
