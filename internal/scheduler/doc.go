// Package scheduler decides when each job's next slot is due and fires it,
// while the sidecar leads.
//
// A slot is one scheduled fire time of one job. The schedules are evaluated
// by robfig/cron's parsed schedules (config builds them); this package asks
// them for the next slot after the later of now and the last slot recorded
// in the fleet's shared state, so a new leader continues where the last one
// stopped, and a sidecar whose clock runs behind a peer's never fires a slot
// that the peer already claimed. Such a sidecar does not wait for its own
// clock to reach the last claim either (the fleet would fire nothing for
// as long as the clocks differ): for its term it schedules by the fleet's
// time, its own clock moved forward by how far ahead the last claim was.
//
// Claims ahead of the instant: a slot is claimed a claim lead before its
// instant (twice the 99th percentile of recent claim latencies, 10 ms to
// 500 ms; see lead.go), so that at the instant only the trigger remains,
// and claims due together share one Consul Txn (package leader). It is
// claimed ahead only while the lease will still have its margin at the
// instant; the lease is checked again at the instant. A claimed slot that
// may then not be sent is recorded as missed, lease_short; a stop between
// the claim and the instant still fires it (inside the drain), since it is
// spent either way.
//
// Guarantees: a slot is triggered only after the Term claimed it, and only
// while the Term's lease outlives a margin, checked before the claim, at
// the instant, before the first send and before every retry (and each Run carries what is left
// of it, SendWithin, for the App to check at the wire); each trigger carries
// an absolute deadline of dispatch time plus the job's timeout. A claim
// whose outcome is unknown is retried, and the Term resolves it; a claim
// in flight when leadership ends gets ClaimGraceAtStop to finish, and its
// slot fires inside the drain if it was won. A failure the App marks not
// retryable (a trigger that may have reached the app) is never sent again.
// Lead returns promptly when its context ends; runs already sent finish on
// their own deadline and Wait waits for them. Every slot the scheduler
// looks at gets one fate, reported to the Recorder: fired or failed (as
// the app answered, with the attempts made; no_answer when the app may
// have run it), skipped (overlap, group, paused) or missed (no_leader,
// overslept, lease_short, claim_failed, claim_unknown, leadership_ended;
// take_unknown for a run-now request through RequestLost; claim_orphaned,
// see below).
//
// Catch-up: only the latest due slot ever fires, once, and only if it is
// late by no more than the job's catch-up window (a second when catch-up
// is off). This covers a new leader after a leaderless gap (the last claim
// in Consul tells what was missed) and a leader that woke late (a stall, a
// suspended host, a clock jump); older slots are recorded as missed rather
// than fired in a burst.
//
// Overlap and groups: with overlap forbidden (the default) a slot whose
// job still has a run in flight from this sidecar is skipped (a run-now
// request waits for that run instead, until its own deadline); a run never
// starts while another job of its group runs from this sidecar, and waits
// for the group until its deadline. Retries: a failure the App marks
// retryable is sent again after the job's backoff, doubling, while the
// deadline leaves room and the lease lasts; the slot and idempotency key
// stay the same, the attempt number grows.
//
// Not guaranteed: that a slot fires (a claim that fails, or a lease that
// runs short, leaves it missed). The claim ahead opens one window: a
// leader that dies between its claim and the instant leaves the slot
// claimed and unfired; nobody fires it again. The next leader, when the
// Term says the leadership before it did not end with a graceful release,
// looks up each job's last claim made ahead of its instant in the history
// (Options.Fates) and records one without a fate as missed,
// claim_orphaned: the slot may have fired just before the crash. Overlap and group exclusion across
// sidecars (a run from a previous leader that crashed is invisible here;
// the app's 409 covers it); that retries happen after leadership ends.
package scheduler
