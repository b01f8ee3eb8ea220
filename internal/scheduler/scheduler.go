package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
)

// Schedule yields a job's slots: Next returns the first slot after t.
type Schedule interface {
	Next(t time.Time) time.Time
}

// Job is one scheduled job.
type Job struct {
	Name     string
	Spec     string // the schedule as written, for status
	Schedule Schedule
	Location *time.Location
	Timeout  time.Duration

	// AllowOverlap lets a slot fire while the job's previous run is
	// still in flight; by default such a slot is skipped (overlap).
	AllowOverlap bool
	// Group names the jobs that never run at the same time; a slot that
	// finds its group busy waits for it until its deadline.
	Group string
	// Catchup is how late a slot may still fire: one that fell due while
	// no sidecar led, or while this one stalled. Zero turns catch-up off.
	Catchup time.Duration
	// Retries is how many times a failed trigger (a connection error or a
	// 5xx) is sent again, after Backoff, doubling, within its deadline.
	Retries int
	Backoff time.Duration
}

// Term is the leadership the scheduler works under.
type Term interface {
	Token() uint64
	Remaining() time.Duration
	// LastClaim is the record of job's latest claimed slot, by any
	// leader (a zero Slot when none was).
	LastClaim(ctx context.Context, job string) (kvlayout.Claim, error)
	// PreviousClean reports whether the previous leadership ended with a
	// graceful release, after which every slot it claimed has a recorded
	// fate.
	PreviousClean() bool
	// Claim claims a slot; paused reports that the job is paused, in
	// which case the slot is spent without a trigger. An error means the
	// outcome is unknown, unless it has a method NotApplied() bool that
	// reports true (the claim was certainly not applied); calling Claim
	// again for the same slot resolves an unknown outcome, reporting
	// won=true if the earlier attempt was applied.
	Claim(ctx context.Context, job string, slot time.Time) (won, paused bool, err error)
}

// NotApplied reports whether err, from Term.Claim (or a take of a run-now
// request), says the write was certainly not applied: it has a method
// NotApplied() bool that reports true. Any other error is an unknown outcome.
func NotApplied(err error) bool {
	var na interface{ NotApplied() bool }
	return errors.As(err, &na) && na.NotApplied()
}

// Run is one trigger of a slot.
type Run struct {
	Job          string
	Slot         time.Time
	FencingToken uint64
	Deadline     time.Time
	Attempt      int  // 1 for the first send, 2 for the first retry, ...
	RunNow       bool // a run-now request, not a scheduled slot
	// Request is the run-now request's id: it, not the slot, tells one
	// run-now from another and from a scheduled slot in the same second.
	Request string
	// SendWithin is how long the lease, less the margin, still ran at
	// the last check before this send: an App must not let the request
	// start on the wire later than that (a pause in between would make
	// it a trigger on stale authority), and reports such a run as missed
	// for lease_short instead.
	SendWithin time.Duration
}

// Result is what became of a run, as the app answered it.
type Result struct {
	Outcome  fate.Outcome
	Status   int
	Duration time.Duration
	Err      error
	// Reason qualifies a failure for the record, such as no_answer: the
	// trigger was sent and no answer came, so the app may have run it.
	Reason fate.Reason
	// Retryable reports a failure worth sending again: the request
	// certainly did not reach the app, or the app answered 5xx. A run
	// that timed out or lost its answer is not: the app may be running
	// it.
	Retryable bool
}

// App triggers runs in the co-located app.
type App interface {
	Trigger(ctx context.Context, r Run) Result
}

// Recorder keeps each slot's fate beyond this process (the history in
// Consul KV). Record is called once per slot, from many goroutines, and
// must not block.
type Recorder interface {
	Record(job string, r LastRun)
}

// Clock is the scheduler's view of time; tests inject a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ClaimGraceAtStop is how long a claim in flight when leadership ends may
// still take, its resolving retry included, before it is cut and the slot
// recorded as claim_unknown. It exceeds a Txn round trip to a healthy agent
// (milliseconds) many times over, and it is part of the drain timeout,
// which counts from the stop signal.
const ClaimGraceAtStop = 2 * time.Second

// onTimeGrace is how late a slot may fire for a job without catch-up: a
// wake-up a little after the slot is not a missed slot.
const onTimeGrace = time.Second

// Observer is told of every slot's fate and of every trigger; the metrics
// implement it. Calls come from many goroutines and must not block.
type Observer interface {
	// SlotDone reports a slot's final outcome (fired, failed, skipped,
	// missed) and, for the last three, its reason.
	SlotDone(job string, outcome fate.Outcome, reason fate.Reason)
	// TriggerSent reports a trigger sent, delay after its slot.
	TriggerSent(job string, delay time.Duration)
	// TriggerDone reports how long the app took to answer a trigger.
	TriggerDone(job string, d time.Duration)
	// ClaimLead reports the claim lead in use (see claimLead).
	ClaimLead(d time.Duration)
}

// Fates tells whether a slot's fate is recorded (the slot history).
type Fates interface {
	Recorded(ctx context.Context, job string, slot time.Time) (bool, error)
}

type nopObserver struct{}

func (nopObserver) SlotDone(string, fate.Outcome, fate.Reason) {}
func (nopObserver) TriggerSent(string, time.Duration)          {}
func (nopObserver) TriggerDone(string, time.Duration)          {}
func (nopObserver) ClaimLead(time.Duration)                    {}

// Options tunes a Scheduler.
type Options struct {
	// Observer, if set, is told of slots and triggers.
	Observer Observer
	// Recorder, if set, keeps every slot's fate.
	Recorder Recorder
	// LeaseMargin is the least lease that must remain to claim a slot and
	// to send its trigger.
	LeaseMargin time.Duration
	// ClaimRetry is the first pause after a claim failed with an unknown
	// outcome; it doubles up to one second.
	ClaimRetry time.Duration
	// ClaimLead, if set, pins the claim lead (see claimLead) instead of
	// letting it follow the claims' latency; 0 claims at the instant.
	// For tests that step a fake clock from instant to instant.
	ClaimLead func() time.Duration
	// Fates, if set, is asked at the start of a term whether the last
	// slot an ungracefully ended leadership claimed ahead of its instant
	// has a recorded fate (see orphaned).
	Fates Fates
}

// Scheduler fires jobs' slots under a Term.
type Scheduler struct {
	jobs   []Job
	byName map[string]Job
	app    App
	clock  Clock
	log    hclog.Logger
	opts   Options
	groups map[string]chan struct{} // one token per group

	lead *claimLead

	mu       sync.Mutex
	inflight int           // runs dispatched and not yet finished
	idle     chan struct{} // closed when inflight drops to 0
	state    map[string]*jobState
	leader   bool
}

type jobState struct {
	next    time.Time
	ahead   time.Duration // see fleetNow
	running int           // runs of this job in flight
	free    chan struct{} // closed and replaced each time a run ends
	last    *LastRun
}

// LastRun is a slot's fate as this sidecar saw it.
type LastRun struct {
	Slot         time.Time
	Outcome      fate.Outcome
	Reason       fate.Reason // for skipped and missed slots
	Status       int
	Duration     time.Duration
	Attempts     int
	FencingToken uint64
	RunNow       bool
	Request      string // the run-now request's id
	// Until, for a range of missed slots recorded at once, is the last
	// slot of the range; Slot is the first.
	Until time.Time
}

// New returns a Scheduler for jobs.
func New(jobs []Job, app App, clock Clock, log hclog.Logger, opts Options) *Scheduler {
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	if opts.ClaimRetry <= 0 {
		opts.ClaimRetry = 100 * time.Millisecond
	}
	st := make(map[string]*jobState, len(jobs))
	byName := make(map[string]Job, len(jobs))
	groups := map[string]chan struct{}{}
	for i, j := range jobs {
		st[j.Name] = &jobState{}
		if j.Location == nil {
			jobs[i].Location = time.UTC
		}
		if j.Group != "" && groups[j.Group] == nil {
			groups[j.Group] = make(chan struct{}, 1)
		}
		byName[j.Name] = jobs[i]
	}
	return &Scheduler{jobs: jobs, byName: byName, app: app, clock: clock, log: log, opts: opts, state: st, groups: groups,
		lead: newClaimLead(opts.Observer, opts.ClaimLead)}
}

// Lead fires slots under term until ctx ends, then returns without waiting
// for runs in flight (see Wait). It returns only when ctx ends, even with
// no jobs, or with schedules that never fire again: leading is holding the
// lock, and giving it up is the caller's decision.
func (s *Scheduler) Lead(ctx context.Context, term Term) {
	s.setLeader(true)
	defer s.setLeader(false)
	var wg sync.WaitGroup
	for _, j := range s.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runJob(ctx, term, j)
		}()
	}
	wg.Wait()
	<-ctx.Done()
}

// RunNow fires job once, outside its schedule, under term: the caller has
// taken run-now request id (exactly once fleet-wide). requested is the
// request's time; it is sent as the run's slot, and the request id tells
// the run apart from a scheduled slot of the same second. Group rules
// apply as to any slot; a job's run in flight is waited for, until the
// run-now's deadline, instead of skipping it. A request taken as leadership ends
// still fires, inside the drain, if the lease allows: it is used up
// either way. It returns an error only for an unknown job.
func (s *Scheduler) RunNow(ctx context.Context, term Term, job string, requested time.Time, id string) error {
	j, ok := s.byName[job]
	if !ok {
		return fmt.Errorf("run now: unknown job %q", job)
	}
	log := s.log.With("job", j.Name, "fencing_token", term.Token(), "run_now", true, "request", id)
	if term.Remaining() < s.opts.LeaseMargin {
		s.finish(log, j, LastRun{Slot: requested, Outcome: fate.Missed, Reason: fate.Lease, RunNow: true, Request: id, FencingToken: term.Token()})
		return nil
	}
	s.dispatch(ctx, term, log, j, requested, id)
	return nil
}

// RequestLost records run-now request id of job as missed with reason:
// the caller could not tell whether taking it used it up.
func (s *Scheduler) RequestLost(job string, requested time.Time, id string, token uint64, reason fate.Reason) {
	j, ok := s.byName[job]
	if !ok {
		return
	}
	log := s.log.With("job", j.Name, "fencing_token", token, "run_now", true, "request", id)
	s.finish(log, j, LastRun{Slot: requested, Outcome: fate.Missed, Reason: reason, RunNow: true, Request: id, FencingToken: token})
}

// Wait waits until every run dispatched so far has finished, or ctx ends;
// it reports whether they all finished.
func (s *Scheduler) Wait(ctx context.Context) bool {
	s.mu.Lock()
	if s.inflight == 0 {
		s.mu.Unlock()
		return true
	}
	idle := s.idle
	s.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Scheduler) runJob(ctx context.Context, term Term, j Job) {
	log := s.log.With("job", j.Name, "fencing_token", term.Token())
	claim, ok := s.lastClaim(ctx, term, j, log)
	if !ok {
		return
	}
	s.orphaned(ctx, term, j, claim, log)
	last := claim.Slot
	now := s.clock.Now()
	from := now
	reason := fate.Overslept
	s.setAhead(j.Name, 0)
	switch {
	case last.After(now):
		// A peer whose clock runs ahead of ours claimed slots we have
		// not reached: never go back behind them, and do not wait for
		// this clock to catch up either (the fleet would fire nothing
		// meanwhile): follow the fleet's time, as far ahead of this
		// clock as the last claim shows, for this term.
		ahead := last.Sub(now)
		s.setAhead(j.Name, ahead)
		log.Warn("the fleet's last claimed slot is ahead of this clock: following the fleet's time",
			"last_claimed", slotString(last), "ahead", ahead.Round(time.Millisecond))
		from = last
	case !last.IsZero():
		from = s.catchUpFrom(log, j, last, now)
		reason = fate.NoLeader
	}
	for ctx.Err() == nil {
		slot := j.Schedule.Next(from.In(j.Location))
		if slot.IsZero() {
			return // a schedule that never fires again
		}
		s.setNext(j.Name, slot)
		if !s.sleepUntil(ctx, j.Name, slot.Add(-s.lead.get())) {
			return
		}
		slot, ok = s.latestDue(log, j, slot, reason, term.Token())
		reason = fate.Overslept
		from = slot
		if !ok {
			continue
		}
		next, done := s.fireSlot(ctx, term, j, slot, log)
		if done {
			return
		}
		if next.After(from) {
			from = next
		}
	}
}

// fireSlot claims slot, early when the lease covers its instant (see
// claimLead), and fires it at its instant. A claimed slot is fired even if
// the leadership ends in between (a stop fires it inside the drain), as
// long as the lease has its margin at the instant; otherwise it is
// recorded as missed, lease_short. It returns where the job's loop goes
// on from (a later slot someone else claimed), and done when the
// leadership is over.
func (s *Scheduler) fireSlot(ctx context.Context, term Term, j Job, slot time.Time, log hclog.Logger) (time.Time, bool) {
	if !s.leaseCovers(term, j.Name, slot) {
		// Too little lease to claim ahead: wait for the instant, when
		// renewals may have restored it, and decide then.
		if !s.sleepUntil(ctx, j.Name, slot) {
			return time.Time{}, true
		}
		if term.Remaining() < s.opts.LeaseMargin {
			s.finish(log, j, LastRun{Slot: slot, Outcome: fate.Missed, Reason: fate.Lease, FencingToken: term.Token()})
			return time.Time{}, false
		}
	}
	won, paused, settled, done := s.claim(ctx, term, j, slot, log)
	if done {
		return time.Time{}, true
	}
	if settled {
		return time.Time{}, false // recorded as missed, with its reason
	}
	if !won {
		// Claimed already, by us in an earlier term or by a peer whose
		// clock is ahead: continue after the latest record. A record
		// still before the slot means nobody claimed it: the claim lost
		// to another writer of the record twice (Claim's two rounds),
		// so the slot is certainly not claimed, and recorded so.
		last, ok := s.lastClaim(ctx, term, j, log)
		if ok && last.Slot.Before(slot) {
			log.Warn("claim slot lost twice to another writer of the job's record", "slot", slotString(slot))
			s.finish(log, j, LastRun{Slot: slot, Outcome: fate.Missed, Reason: fate.ClaimFailed, FencingToken: term.Token()})
		}
		return last.Slot, false
	}
	if paused {
		s.finish(log, j, LastRun{Slot: slot, Outcome: fate.Skipped, Reason: fate.Paused, FencingToken: term.Token()})
		return time.Time{}, false
	}
	// The slot is spent (at most once): wait for its instant, at most
	// the claim lead, whatever happens to the leadership meanwhile.
	s.sleepUntil(context.WithoutCancel(ctx), j.Name, slot)
	if term.Remaining() < s.opts.LeaseMargin {
		// This leader may no longer act on it.
		s.finish(log, j, LastRun{Slot: slot, Outcome: fate.Missed, Reason: fate.Lease, FencingToken: term.Token()})
		return time.Time{}, false
	}
	s.dispatch(ctx, term, log, j, slot, "")
	return time.Time{}, false
}

// fatesTimeout bounds the one history read of the orphan check: a healthy
// agent answers in milliseconds, and the job's first slot of the term waits
// for it.
const fatesTimeout = 2 * time.Second

// leaseCovers reports whether the lease will still have its margin at
// slot's instant, so that the slot may be claimed ahead of it.
func (s *Scheduler) leaseCovers(term Term, job string, slot time.Time) bool {
	return term.Remaining()-max(slot.Sub(s.fleetNow(job)), 0) >= s.opts.LeaseMargin
}

// orphaned records, at the start of a term, the last slot of j that a
// previous leader claimed ahead of its instant if that leadership did not
// end with a graceful release and the slot has no recorded fate: the
// leader may have died between its claim and the instant. The slot is
// spent (the claim is there, so nobody fires it again); the entry, missed
// with reason claim_orphaned, says so. The old leader may have fired it
// and died before recording it: the reason says "unknown", not "lost".
func (s *Scheduler) orphaned(ctx context.Context, term Term, j Job, c kvlayout.Claim, log hclog.Logger) {
	if s.opts.Fates == nil || term.PreviousClean() || c.Slot.IsZero() || c.FencingToken == term.Token() ||
		!c.ClaimedAt.Before(c.Slot) {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, fatesTimeout)
	recorded, err := s.opts.Fates.Recorded(rctx, j.Name, c.Slot)
	cancel()
	if err != nil {
		log.Warn("read the history of the previous leader's last claim failed: recorded as orphaned", "slot", slotString(c.Slot), "error", err)
	}
	if recorded {
		return
	}
	log.Warn("the previous leader claimed a slot ahead of its instant and left no fate for it: it may not have fired",
		"slot", slotString(c.Slot), "claimed_by", c.ID, "claim_token", c.FencingToken)
	s.finish(log, j, LastRun{Slot: c.Slot, Outcome: fate.Missed, Reason: fate.Orphaned, FencingToken: term.Token()})
}

// catchUpFrom is where a new term starts looking for j's slots, given the
// last slot claimed fleet-wide. Slots after last that are already due fell
// due while no sidecar led: the ones older than the catch-up window are
// recorded as missed here; the loop then fires the latest one inside the
// window, late, and records any others inside it as missed.
func (s *Scheduler) catchUpFrom(log hclog.Logger, j Job, last, now time.Time) time.Time {
	first := j.Schedule.Next(last.In(j.Location))
	if first.IsZero() || first.After(now) {
		return now // nothing fell due since the last claim
	}
	from := now.Add(-j.Catchup)
	if from.Before(last) {
		from = last
	}
	if !first.After(from) {
		// Slots from first up to the window's start are out of reach.
		// Their exact count is not computed: a per-second job left for
		// days would take millions of steps.
		lr := LastRun{Slot: first, Outcome: fate.Missed, Reason: fate.NoLeader}
		if j.Catchup > 0 {
			lr.Until = from
		}
		log.Warn("slots missed while no sidecar led", "outcome", fate.Missed, "reason", fate.NoLeader,
			"first", slotString(first), "catchup", j.Catchup, "last_claimed", slotString(last))
		s.finish(log, j, lr)
	}
	if j.Catchup == 0 {
		return now
	}
	return from
}

// claim claims slot. An unknown outcome is retried (the retry re-reads
// the record and resolves it) while the lease lasts and the next slot is
// not yet due; a slot whose claim stays unknown, or that Consul refused,
// is recorded as missed with its reason, and settled reports that. done
// reports that leadership is over.
func (s *Scheduler) claim(ctx context.Context, term Term, j Job, slot time.Time, log hclog.Logger) (won, paused, settled, done bool) {
	wait := s.opts.ClaimRetry
	nextSlot := j.Schedule.Next(slot.In(j.Location))
	// The claim is not cancelled with the leadership: a shutdown that
	// cut the request short could leave the slot claimed in Consul but
	// neither fired nor recorded. A claim that wins after the context
	// ended is still fired (the drain waits for it), unless the lease
	// says otherwise. It gets ClaimGraceAtStop after the end to finish.
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(ClaimGraceAtStop, cancel) })()
	for attempt := 1; ; attempt++ {
		start := s.clock.Now()
		won, paused, err := term.Claim(cctx, j.Name, slot)
		if err == nil {
			s.lead.observe(s.clock.Now().Sub(start))
			return won, paused, false, false
		}
		ended := ctx.Err() != nil
		missed := LastRun{Slot: slot, Outcome: fate.Missed, Reason: fate.ClaimUnknown, FencingToken: term.Token()}
		if NotApplied(err) {
			// Certainly not claimed. With the lock lost (ended), the
			// next leader fires or records the slot.
			log.Warn("claim slot refused", "slot", slotString(slot), "error", err)
			if !ended {
				missed.Reason = fate.ClaimFailed
				s.finish(log, j, missed)
			}
			return false, false, true, ended
		}
		log.Warn("claim slot outcome unknown", "slot", slotString(slot), "attempt", attempt, "error", err)
		// At shutdown one more attempt resolves the outcome, at once.
		if term.Remaining() < s.opts.LeaseMargin || !s.fleetNow(j.Name).Add(wait).Before(nextSlot) || (ended && attempt > 1) {
			s.finish(log, j, missed)
			return false, false, true, ended
		}
		if ended {
			continue
		}
		select {
		case <-ctx.Done():
		case <-s.clock.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

func (s *Scheduler) lastClaim(ctx context.Context, term Term, j Job, log hclog.Logger) (kvlayout.Claim, bool) {
	wait := s.opts.ClaimRetry
	for {
		last, err := term.LastClaim(ctx, j.Name)
		if err == nil {
			return last, true
		}
		if ctx.Err() != nil {
			return kvlayout.Claim{}, false
		}
		log.Warn("read last slot failed", "error", err)
		select {
		case <-ctx.Done():
			return kvlayout.Claim{}, false
		case <-s.clock.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// sleepUntil waits until the job's clock (see fleetNow) reaches t; it
// re-checks after each wake, so a clock that moved meanwhile is honoured.
func (s *Scheduler) sleepUntil(ctx context.Context, job string, t time.Time) bool {
	for {
		d := t.Sub(s.fleetNow(job))
		if d <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-s.clock.After(d):
		}
	}
}

// latestDue returns the latest slot that is due now, starting from slot,
// and whether it may still fire: it may if it is late by no more than the
// job's catch-up window (or a second, without catch-up). Only the latest
// due slot ever fires, once; the ones before it are recorded as missed,
// with reason, rather than fired in a burst.
func (s *Scheduler) latestDue(log hclog.Logger, j Job, slot time.Time, reason fate.Reason, token uint64) (time.Time, bool) {
	now := s.fleetNow(j.Name)
	skipped := 0
	first, prev := slot, slot
	for {
		next := j.Schedule.Next(slot.In(j.Location))
		if next.IsZero() || next.After(now) {
			break
		}
		prev, slot = slot, next
		skipped++
	}
	late := now.Sub(slot)
	fire := late <= max(j.Catchup, onTimeGrace)
	if skipped > 0 || !fire {
		lr := LastRun{Slot: first, Outcome: fate.Missed, Reason: reason, FencingToken: token}
		firing := slotString(slot)
		if fire {
			lr.Until = prev
		} else {
			lr.Until = slot
			firing = "none"
		}
		if lr.Until.Equal(lr.Slot) {
			lr.Until = time.Time{}
		}
		log.Warn("slots missed", "outcome", fate.Missed, "reason", reason, "count", skipped+boolInt(!fire),
			"first", slotString(first), "firing", firing, "late", late.Round(time.Millisecond), "catchup", j.Catchup)
		s.finish(log, j, lr)
	}
	return slot, fire
}

// dispatch starts one run of j for slot, unless the job's previous run is
// in flight and overlap is forbidden.
//
// A run-now request is not skipped that way: it was asked for once, by a
// person, and its request is used up. It waits for the job's run in flight
// to end, until its own deadline (the time a job's run may take), and only
// then is it skipped for overlap.
func (s *Scheduler) dispatch(ctx context.Context, term Term, log hclog.Logger, j Job, slot time.Time, request string) {
	runNow := request != ""
	skipped := LastRun{Slot: slot, Outcome: fate.Skipped, Reason: fate.Overlap, RunNow: runNow, Request: request, FencingToken: term.Token()}
	s.mu.Lock()
	st := s.state[j.Name]
	busy := !j.AllowOverlap && st.running > 0
	if busy && !runNow {
		s.mu.Unlock()
		s.finish(log, j, skipped)
		return
	}
	if !busy {
		st.running++
	}
	if s.inflight == 0 {
		s.idle = make(chan struct{})
	}
	s.inflight++
	s.mu.Unlock()
	r := Run{Job: j.Name, Slot: slot, FencingToken: term.Token(), Deadline: s.clock.Now().Add(j.Timeout), RunNow: runNow, Request: request}
	log.Debug("run dispatched", "slot", slotString(slot), "deadline", r.Deadline.UTC(), "waits_for_overlap", busy)
	go func() {
		started := !busy || s.waitJobFree(st, r.Deadline)
		defer s.runEnded(st, started)
		if !started {
			s.finish(log, j, skipped)
			return
		}
		s.finish(log, j, s.run(ctx, term, log, j, r))
	}()
}

// waitJobFree waits until the job has no run in flight, then counts one
// for the caller; false means the deadline came first.
func (s *Scheduler) waitJobFree(st *jobState, deadline time.Time) bool {
	for {
		s.mu.Lock()
		if st.running == 0 {
			st.running++
			s.mu.Unlock()
			return true
		}
		if st.free == nil {
			st.free = make(chan struct{})
		}
		free := st.free
		s.mu.Unlock()
		select {
		case <-free:
		case <-s.clock.After(deadline.Sub(s.clock.Now())):
			return false
		}
	}
}

// runEnded counts a dispatched run as finished; started says whether it
// counted as a run of its job.
func (s *Scheduler) runEnded(st *jobState, started bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if started {
		st.running--
		if st.free != nil {
			close(st.free)
			st.free = nil
		}
	}
	s.inflight--
	if s.inflight == 0 {
		close(s.idle)
	}
}

// run waits for j's group, then sends r, retrying as the job allows. The
// requests are not tied to ctx (the leadership): a trigger ends by its own
// deadline, so a shutdown waits for it instead of cutting the app's run in
// half. Waiting for the group or for a retry ends with the leadership.
func (s *Scheduler) run(ctx context.Context, term Term, log hclog.Logger, j Job, r Run) LastRun {
	lr := LastRun{Slot: r.Slot, RunNow: r.RunNow, Request: r.Request, FencingToken: r.FencingToken}
	if sem := s.groups[j.Group]; sem != nil {
		select {
		case sem <- struct{}{}:
		default:
			log.Info("waiting for the job's group", "group", j.Group, "slot", slotString(r.Slot))
			select {
			case sem <- struct{}{}:
			case <-s.clock.After(r.Deadline.Sub(s.clock.Now())):
				lr.Outcome, lr.Reason = fate.Skipped, fate.Group
				return lr
			case <-ctx.Done():
				lr.Outcome, lr.Reason = fate.Missed, fate.Ended
				return lr
			}
		}
		defer func() { <-sem }()
	}
	for attempt := 1; ; attempt++ {
		rem := term.Remaining()
		if rem < s.opts.LeaseMargin {
			// Only a leader with time to spare sends anything; a
			// retry after the lease ran short keeps the last answer.
			if attempt == 1 {
				lr.Outcome, lr.Reason = fate.Missed, fate.Lease
			}
			return lr
		}
		r.Attempt, r.SendWithin = attempt, rem-s.opts.LeaseMargin
		if attempt == 1 {
			// Slot delay is the first send's; retries are late by design.
			s.opts.Observer.TriggerSent(j.Name, s.fleetNow(j.Name).Sub(r.Slot))
		}
		res := s.app.Trigger(context.Background(), r)
		s.opts.Observer.TriggerDone(j.Name, res.Duration)
		lr.Outcome, lr.Status, lr.Duration, lr.Attempts = res.Outcome, res.Status, res.Duration, attempt
		lr.Reason = res.Reason
		if res.Outcome == fate.Skipped {
			lr.Reason = fate.Overlap // the app says the job already runs
		}
		if !res.Retryable || attempt > j.Retries {
			if res.Err != nil {
				log.Warn("trigger failed", "slot", slotString(r.Slot), "attempt", attempt, "http_status", res.Status, "error", res.Err)
			}
			return lr
		}
		// backoff= doubles exactly, as documented, with no jitter: one
		// sidecar retries its own app, so there is no herd to spread,
		// and the retry times stay predictable (and testable with the
		// fake clock). The Consul retries use cenkalti/backoff instead.
		wait := j.Backoff << (attempt - 1)
		if !s.clock.Now().Add(wait).Before(r.Deadline) {
			log.Warn("trigger failed, no time left to retry", "slot", slotString(r.Slot), "attempt", attempt, "http_status", res.Status, "error", res.Err)
			return lr
		}
		log.Warn("trigger failed, retrying", "slot", slotString(r.Slot), "attempt", attempt, "http_status", res.Status, "backoff", wait, "error", res.Err)
		select {
		case <-ctx.Done():
			return lr
		case <-s.clock.After(wait):
		}
	}
}

// finish records a slot's fate: in Status, in the log, for the Observer
// and for the Recorder.
func (s *Scheduler) finish(log hclog.Logger, j Job, lr LastRun) {
	s.record(j.Name, lr)
	s.opts.Observer.SlotDone(j.Name, lr.Outcome, lr.Reason)
	if s.opts.Recorder != nil {
		s.opts.Recorder.Record(j.Name, lr)
	}
	fields := []any{"slot", slotString(lr.Slot), "outcome", lr.Outcome}
	if lr.Reason != "" {
		fields = append(fields, "reason", lr.Reason)
	}
	if lr.Attempts > 0 {
		fields = append(fields, "http_status", lr.Status, "duration", lr.Duration.Round(time.Millisecond), "attempts", lr.Attempts)
	}
	switch lr.Outcome {
	case fate.Missed:
		// logged where the slots were found missed, with more detail
		if lr.Reason != fate.NoLeader && lr.Reason != fate.Overslept {
			log.Warn("slot missed", fields...)
		}
	case fate.Skipped:
		log.Info("slot skipped", fields...)
	default:
		log.Info("slot finished", fields...)
	}
}

func (s *Scheduler) record(job string, r LastRun) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state[job]
	if st.last == nil || !r.Slot.Before(st.last.Slot) {
		st.last = &r
	}
}

// fleetNow is the time job's slots are scheduled by: this clock, moved
// forward for the term by how far ahead of it the fleet's last claim was
// (zero unless a peer's clock runs ahead of this one). Deadlines sent to
// the app stay on this clock: the app shares this host's.
func (s *Scheduler) fleetNow(job string) time.Time {
	s.mu.Lock()
	ahead := s.state[job].ahead
	s.mu.Unlock()
	return s.clock.Now().Add(ahead)
}

func (s *Scheduler) setAhead(job string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state[job].ahead = d
}

func (s *Scheduler) setNext(job string, slot time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state[job].next = slot
}

func (s *Scheduler) setLeader(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leader = v
}

// JobStatus is one job as /status shows it.
type JobStatus struct {
	Name     string
	Spec     string
	Location string
	NextSlot time.Time // the slot this sidecar would fire next
	Running  int       // runs of the job in flight from this sidecar
	Last     *LastRun
}

// Status returns every job's status, sorted by name.
func (s *Scheduler) Status() []JobStatus {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]JobStatus, 0, len(s.jobs))
	for _, j := range s.jobs {
		st := s.state[j.Name]
		next := st.next
		if !s.leader || next.IsZero() {
			next = j.Schedule.Next(now.In(j.Location))
		}
		js := JobStatus{Name: j.Name, Spec: j.Spec, Location: j.Location.String(), NextSlot: next, Running: st.running}
		if st.last != nil {
			l := *st.last
			js.Last = &l
		}
		out = append(out, js)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

func slotString(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
