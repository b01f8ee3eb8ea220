package scheduler

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
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
}

// Term is the leadership the scheduler works under.
type Term interface {
	Token() uint64
	Remaining() time.Duration
	LastSlot(ctx context.Context, job string) (time.Time, error)
	Claim(ctx context.Context, job string, slot time.Time) (bool, error)
}

// Run is one trigger of a slot.
type Run struct {
	Job          string
	Slot         time.Time
	FencingToken uint64
	Deadline     time.Time
}

// Result is what became of a run, as the app answered it.
type Result struct {
	Outcome  string
	Status   int
	Duration time.Duration
	Err      error
}

// App triggers runs in the co-located app.
type App interface {
	Trigger(ctx context.Context, r Run) Result
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

// Outcome names for slots that never reached the app.
const (
	OutcomeMissed = "missed"
)

// Observer is told of every slot's fate and of every trigger; the metrics
// implement it. Calls come from many goroutines and must not block.
type Observer interface {
	// SlotDone reports a slot's final outcome (fired, failed, skipped,
	// missed) and, for the last three, its reason.
	SlotDone(job, outcome, reason string)
	// TriggerSent reports a trigger sent, delay after its slot.
	TriggerSent(job string, delay time.Duration)
	// TriggerDone reports how long the app took to answer a trigger.
	TriggerDone(job string, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) SlotDone(string, string, string)   {}
func (nopObserver) TriggerSent(string, time.Duration) {}
func (nopObserver) TriggerDone(string, time.Duration) {}

// Options tunes a Scheduler.
type Options struct {
	// Observer, if set, is told of slots and triggers.
	Observer Observer
	// LeaseMargin is the least lease that must remain to claim a slot and
	// to send its trigger.
	LeaseMargin time.Duration
	// ClaimRetry is the first pause after a claim failed with an unknown
	// outcome; it doubles up to one second.
	ClaimRetry time.Duration
}

// Scheduler fires jobs' slots under a Term.
type Scheduler struct {
	jobs  []Job
	app   App
	clock Clock
	log   hclog.Logger
	opts  Options

	mu       sync.Mutex
	inflight int           // triggers sent and not yet answered
	idle     chan struct{} // closed when inflight drops to 0
	state    map[string]*jobState
	leader   bool
}

type jobState struct {
	next time.Time
	last *LastRun
}

// LastRun is the most recent slot's fate as this sidecar saw it.
type LastRun struct {
	Slot     time.Time
	Outcome  string
	Reason   string // for missed slots
	Status   int
	Duration time.Duration
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
	for i, j := range jobs {
		st[j.Name] = &jobState{}
		if j.Location == nil {
			jobs[i].Location = time.UTC
		}
	}
	return &Scheduler{jobs: jobs, app: app, clock: clock, log: log, opts: opts, state: st}
}

// Lead fires slots under term until ctx ends, then returns without waiting
// for triggers in flight (see Wait).
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
}

// Wait waits until every trigger sent so far has finished, or ctx ends; it
// reports whether they all finished.
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
	last, ok := s.lastSlot(ctx, term, j, log)
	if !ok {
		return
	}
	from := s.clock.Now()
	if last.After(from) {
		// A peer whose clock runs ahead of ours claimed slots we have
		// not reached: never go back behind them.
		from = last
	}
	for ctx.Err() == nil {
		slot := j.Schedule.Next(from.In(j.Location))
		s.setNext(j.Name, slot)
		if !s.sleepUntil(ctx, slot) {
			return
		}
		slot = s.latestDue(log, j, slot)
		from = slot
		if rem := term.Remaining(); rem < s.opts.LeaseMargin {
			s.missed(log, j, slot, "lease_short")
			continue
		}
		won, done := s.claim(ctx, term, j, slot, log)
		if done {
			return
		}
		if !won {
			// Claimed already, by us in an earlier term or by a peer
			// whose clock is ahead: continue after the latest record.
			if last, ok := s.lastSlot(ctx, term, j, log); ok && last.After(from) {
				from = last
			}
			continue
		}
		if rem := term.Remaining(); rem < s.opts.LeaseMargin {
			// The slot is spent (at most once), but this leader may no
			// longer act on it.
			s.missed(log, j, slot, "lease_short")
			continue
		}
		s.fire(log, j, Run{Job: j.Name, Slot: slot, FencingToken: term.Token(), Deadline: s.clock.Now().Add(j.Timeout)})
	}
}

// claim claims slot, retrying an unknown outcome while the lease lasts and
// the next slot is not yet due. done reports that leadership is over.
func (s *Scheduler) claim(ctx context.Context, term Term, j Job, slot time.Time, log hclog.Logger) (won, done bool) {
	wait := s.opts.ClaimRetry
	nextSlot := j.Schedule.Next(slot.In(j.Location))
	for {
		won, err := term.Claim(ctx, j.Name, slot)
		if err == nil {
			return won, false
		}
		if ctx.Err() != nil {
			return false, true
		}
		log.Warn("claim slot failed", "slot", slotString(slot), "error", err)
		if term.Remaining() < s.opts.LeaseMargin || !s.clock.Now().Add(wait).Before(nextSlot) {
			s.missed(log, j, slot, "claim_failed")
			return false, false
		}
		select {
		case <-ctx.Done():
			return false, true
		case <-s.clock.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

func (s *Scheduler) lastSlot(ctx context.Context, term Term, j Job, log hclog.Logger) (time.Time, bool) {
	wait := s.opts.ClaimRetry
	for {
		last, err := term.LastSlot(ctx, j.Name)
		if err == nil {
			return last, true
		}
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		log.Warn("read last slot failed", "error", err)
		select {
		case <-ctx.Done():
			return time.Time{}, false
		case <-s.clock.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// sleepUntil waits until the clock reaches t; it re-checks after each wake,
// so a clock that moved meanwhile is honoured.
func (s *Scheduler) sleepUntil(ctx context.Context, t time.Time) bool {
	for {
		d := t.Sub(s.clock.Now())
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

// latestDue returns the latest slot that is due now, starting from slot.
// After a late wake-up (a stall, a suspended host, a clock jump) only the
// latest overdue slot fires, once; the ones before it are recorded as
// missed rather than fired in a burst.
func (s *Scheduler) latestDue(log hclog.Logger, j Job, slot time.Time) time.Time {
	now := s.clock.Now()
	skipped := 0
	first := slot
	for {
		next := j.Schedule.Next(slot.In(j.Location))
		if next.IsZero() || next.After(now) {
			break
		}
		slot = next
		skipped++
	}
	if skipped > 0 {
		log.Warn("slots skipped after a late wake-up", "outcome", OutcomeMissed, "reason", "overslept",
			"count", skipped, "first", slotString(first), "firing", slotString(slot))
	}
	return slot
}

func (s *Scheduler) fire(log hclog.Logger, j Job, r Run) {
	s.mu.Lock()
	if s.inflight == 0 {
		s.idle = make(chan struct{})
	}
	s.inflight++
	s.mu.Unlock()
	log.Debug("trigger sent", "slot", slotString(r.Slot), "deadline", r.Deadline.UTC())
	go func() {
		defer func() {
			s.mu.Lock()
			s.inflight--
			if s.inflight == 0 {
				close(s.idle)
			}
			s.mu.Unlock()
		}()
		// The trigger is not tied to the leadership's context: it ends
		// by its own deadline, so a shutdown waits for it instead of
		// cutting the app's run in half.
		s.opts.Observer.TriggerSent(j.Name, s.clock.Now().Sub(r.Slot))
		res := s.app.Trigger(context.Background(), r)
		s.opts.Observer.TriggerDone(j.Name, res.Duration)
		s.opts.Observer.SlotDone(j.Name, res.Outcome, "")
		s.record(j.Name, LastRun{Slot: r.Slot, Outcome: res.Outcome, Status: res.Status, Duration: res.Duration})
		fields := []any{"slot", slotString(r.Slot), "outcome", res.Outcome, "http_status", res.Status, "duration", res.Duration.Round(time.Millisecond)}
		if res.Err != nil {
			log.Warn("trigger finished", append(fields, "error", res.Err)...)
			return
		}
		log.Info("trigger finished", fields...)
	}()
}

func (s *Scheduler) missed(log hclog.Logger, j Job, slot time.Time, reason string) {
	log.Warn("slot missed", "slot", slotString(slot), "outcome", OutcomeMissed, "reason", reason)
	s.record(j.Name, LastRun{Slot: slot, Outcome: OutcomeMissed, Reason: reason})
	s.opts.Observer.SlotDone(j.Name, OutcomeMissed, reason)
}

func (s *Scheduler) record(job string, r LastRun) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state[job]
	if st.last == nil || !r.Slot.Before(st.last.Slot) {
		st.last = &r
	}
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
		js := JobStatus{Name: j.Name, Spec: j.Spec, Location: j.Location.String(), NextSlot: next}
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
