// Package scheduler decides when each job's next slot is due and fires it,
// while the sidecar leads.
//
// A slot is one scheduled fire time of one job. The schedules are evaluated
// by robfig/cron's parsed schedules (config builds them); this package asks
// them for the next slot after the later of now and the last slot recorded
// in the fleet's shared state, so a new leader continues where the last one
// stopped, and a sidecar whose clock runs behind a peer's never fires a slot
// that the peer already claimed.
//
// Guarantees: a slot is triggered only after the Term claimed it, and only
// while the Term's lease outlives a margin, checked both before the claim
// and before the trigger is sent; each trigger carries an absolute deadline
// of slot-fire time plus the job's timeout. Lead returns promptly when its
// context ends; triggers already sent finish on their own deadline and Wait
// waits for them.
//
// After a late wake-up (a stall, a suspended host, a clock jump) only the
// latest overdue slot fires, once; the overslept ones are logged as missed
// instead of being fired in a burst.
//
// Not guaranteed: that a slot fires. A slot whose claim fails, or whose
// lease runs short, is recorded as missed; slots that fell due while no
// sidecar led are not fired late (catch-up is a later feature). Two runs of
// one job may overlap when a run outlasts the interval between slots.
package scheduler
