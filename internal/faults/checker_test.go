package faults

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/leadercron/leadercron/internal/testkit"
)

// startTolerance is how long before the lock watcher saw a sidecar take
// the lock one of its triggers may arrive at an app and still count as
// sent under that lock. A trigger needs, after the acquiring write, a
// claim (a second Raft write) and an HTTP round trip, so it cannot truly
// come first; the watcher, though, learns of the acquire through a
// blocking query whose answer is scheduled like any goroutine of this
// process, which under -race on a loaded two-core machine has been seen
// to lag by tens of milliseconds. 250 ms covers that lag with room, and is
// still far below anything a stale leader produces (a cut-off leader's
// lease outlives Consul's view by about TTL + lock-delay, seconds). The end
// of a holding interval needs no tolerance: a sidecar sends only with
// TTL/5 of lease left, its lease ends at least a TTL before Consul can
// free the key, and a graceful release waits for triggers in flight, so a
// legitimate trigger always arrives before the watcher sees the lock go.
const startTolerance = 250 * time.Millisecond

// ownLeaseTolerance is how long after its sender's lease ended (as the
// sender logged it: "leadership lease ended", ended_at) a trigger may
// still be recorded by the app. A sidecar sends only with TTL/5 (400 ms
// here) of lease left, so a trigger sent in time arrives after ended_at
// only when the loss was learnt early (the session found gone, the key
// found taken) while the trigger was on its way: it must exceed the time
// from the send to the app's record, a loopback round trip plus the
// scheduling lag of this process under -race (tens of milliseconds, as for
// startTolerance). A trigger sent after the lease ran out (a paused or
// cut-off leader acting on a lease it no longer has) arrives seconds late.
const ownLeaseTolerance = 250 * time.Millisecond

// catchUpTolerance is how long after a new holder took the lock a slot may
// fall due and still be the one it fires first in place of the latest slot
// of the gap. The new holder's scheduler reads the clock after the acquire
// answer reached it and after one Consul read (the last claimed slot): up
// to 60 ms each where the scenario slows Consul, plus scheduling lag under
// -race (tens of milliseconds); a slot due in between is the latest due
// when it looks, and the gap's last slot is then recorded as missed. 500
// ms covers that with room. It must stay well under the jobs' period (1
// s): a leader that does not catch up fires the first slot after it took
// the lock, which passes only when that slot falls inside this tolerance.
const catchUpTolerance = 500 * time.Millisecond

// catchUpWindow is the jobs' catch-up window (LEADERCRON_JOB_*_CATCHUP
// unset): a slot that fell due in a leaderless gap no longer than this
// before the new holder took the lock must be fired by it, late.
const catchUpWindow = time.Minute

// leaderlessBound is how long the lock key may stay free, outside every
// fault window, before a standby must have taken it: the lock-delay (the
// key is not acquirable that long after a session was invalidated), plus
// the elector's longest pause between attempts after failed requests (5
// s), plus a second of scheduling room. A fault window already runs past
// its fault by the takeover bound, so a free key beyond that is a fleet
// that stopped campaigning.
const leaderlessBound = lockDelay + 5*time.Second + time.Second

// slotLatency is how long after its instant a slot's trigger may still be
// on its way to the app at the end of a run; slots later than the run's
// end minus this are not expected.
const slotLatency = 1500 * time.Millisecond

// Reasons a sidecar records for a slot it missed or skipped (see
// internal/scheduler), and "failed": a trigger that did not reach the app
// (refused, reset before it was read), recorded as outcome failed.
const (
	reasonOverlap   = "overlap"
	reasonNoLeader  = "no_leader"
	reasonOverslept = "overslept"
	reasonLease     = "lease_short"
	reasonClaim     = "claim_failed"
	reasonUnknown   = "claim_unknown"
	reasonEnded     = "leadership_ended"
	reasonOrphaned  = "claim_orphaned" // recorded by the next leader: claimed ahead by a leader that then died
	reasonNoAnswer  = "no_answer"      // outcome failed: the app got the trigger, its answer was lost
	labelFailed     = "failed"         // a window reason: slots whose trigger failed (outcome failed) are explained
)

// Reason sets for windows, by the fault that may produce them.
var (
	// reasonsLeaseLoss: a leader cut from Consul, or a Consul that fails,
	// loses its lease or its claims (and may not know whether a claim
	// was applied); the next leader records the gap as no_leader beyond
	// what it catches up.
	reasonsLeaseLoss = []string{reasonLease, reasonClaim, reasonUnknown, reasonEnded, reasonNoLeader, reasonOrphaned}
	// reasonsPaused: a paused leader wakes with its lease gone or too
	// late for its slots; the next leader records the gap.
	reasonsPaused = []string{reasonLease, reasonOverslept, reasonNoLeader, reasonEnded, reasonOrphaned}
	// reasonsCrash: a dead leader records nothing; the next one records
	// the gap as no_leader beyond what it catches up, and the dead
	// leader's last claim made ahead of its instant as claim_orphaned
	// when that slot has no recorded fate.
	reasonsCrash = []string{reasonNoLeader, reasonOrphaned}
)

// window is a span of time in which a fault was in effect (with its
// takeover bound), what it was, and what it may legitimately cost.
type window struct {
	from, to time.Time
	why      string
	// reasons are the reasons a sidecar may record (log) for a slot it
	// missed or skipped inside this window ("lease_short",
	// "claim_unknown", "no_leader", ...; "failed" for a trigger recorded
	// as outcome failed that the app never got): a recorded miss counts
	// as explained only if it lies in a window whose reasons include its
	// reason.
	reasons []string
	// mustRecord: every slot lost in this window must be recorded with
	// one of reasons. Without it, a slot that is neither fired nor
	// recorded is excused here ("in fault window (unrecorded)"): the
	// scenario says the loss is expected and may be unrecordable (a
	// killed leader records nothing; a cut-off leader may not know).
	mustRecord bool
}

// allows reports whether w explains a slot at s recorded as label.
func (w window) allows(s time.Time, label string) bool {
	return w.contains(s) && slices.Contains(w.reasons, label)
}

func (w window) contains(s time.Time) bool {
	return !s.Before(w.from.Add(-faultReach)) && !s.After(w.to)
}

// faultReach is how long before a fault was injected a slot may have
// fallen due and still be caught by it: a sidecar handles a slot (claim,
// lease check, send) in the milliseconds after its instant, and under
// -race on two loaded cores that has been seen to take tens of
// milliseconds, so a SIGSTOP injected 5 ms after a slot found its claim in
// flight and the slot was recorded lease_short after SIGCONT. 250 ms, as
// startTolerance, covers that lag with room and stays far below the
// jobs' period (1 s), so no earlier, untouched slot is excused by it.
const faultReach = 250 * time.Millisecond

// checkSpec says what to check over one scenario's history.
type checkSpec struct {
	jobs     map[string]string // job -> cron spec with seconds
	from, to time.Time         // slots in (from, to] are expected
	excused  []window          // the scenario's faults, and what each may cost
	faultAt  time.Time         // takeover is measured from here; zero: none
	naive    bool              // baseline: report, do not fail (but see positiveControl)
	// strict: a lock-free span explains nothing; only the windows do (a
	// graceful handover loses nothing it did not say).
	strict bool
	// runNows is how many run-now requests the scenario made: each must
	// fire exactly once (counted by distinct Idempotency-Key).
	runNows int
	// noCatchUp skips the catch-up rule (a scenario whose handovers
	// cannot leave a slot to catch up, or whose sidecars have none).
	noCatchUp bool
}

// verdict is the outcome of checking one scenario.
type verdict struct {
	Name                  string
	Expected, Fired, Dups int
	// Failed: slots whose trigger never reached the app and that the
	// sender recorded as failed, inside a window that allows it.
	Failed int
	// Missed = MissedExcused + MissedRecorded + Unexplained.
	Missed         int
	MissedExcused  int      // neither fired nor recorded, inside a window that excuses that
	MissedRecorded int      // recorded by a sidecar with a reason a window (or a lock-free span) allows
	Unexplained    int      // violations: unrecorded outside an excusing window, or misattributed
	Recorded       []string // the recorded ones, for the log
	Stale          int      // triggers outside the sender's lock (Consul's view) or lease (its own)
	CatchUps       int      // gaps after a change of holder whose latest slot the new holder had to fire
	TwoLeaders     time.Duration
	Takeover       time.Duration // -1: no takeover
	Violations     []string
	Naive          bool
	Note           string
}

var parser = cron.NewParser(cron.Second | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

func slotKey(job string, s time.Time) string { return job + "@" + s.UTC().Format(time.RFC3339) }

func hms(t time.Time) string   { return t.UTC().Format("15:04:05") }
func hmsms(t time.Time) string { return t.Format("15:04:05.000") }

// hold is one session's holding of the lock key, as the watcher saw it.
type hold struct {
	from, to time.Time
	id       string // the holder's sidecar id
	session  string
}

// check runs every check over evs.
func check(t *testing.T, name string, evs []event, c checkSpec) verdict {
	t.Helper()
	v := verdict{Name: name, Takeover: -1, Naive: c.naive}
	var triggers, locks, records []event
	acquiredBy := map[string]event{} // sidecar/token -> its "leadership acquired" line
	acquiredIn := map[string]event{} // session -> the same line
	ended := map[string]event{}      // session -> its "leadership lease ended" line
	for _, e := range evs {
		switch e.Kind {
		case "trigger":
			triggers = append(triggers, e)
		case "lock":
			locks = append(locks, e)
		case "record":
			records = append(records, e)
		case "acquired":
			acquiredBy[fmt.Sprintf("%s/%d", e.Sidecar, e.Token)] = e
			acquiredIn[e.Session] = e
		case "lease-ended":
			ended[e.Session] = e
		}
	}
	violate := func(format string, args ...any) {
		v.Violations = append(v.Violations, fmt.Sprintf(format, args...))
	}

	// 1. No slot fired twice: a scheduled trigger is one (job, slot); a
	// run-now trigger is one run-now request, by its Idempotency-Key,
	// and is no scheduled slot. No key is sent twice either way.
	seen := map[string]event{}    // scheduled: job@slot
	seenKey := map[string]event{} // every trigger's key (run-now: the request id if no key)
	for _, e := range triggers {
		var first event
		dup := false
		if e.RunNow == "" {
			k := slotKey(e.Job, e.Slot)
			if f, ok := seen[k]; ok {
				first, dup = f, true
			} else {
				seen[k] = e
			}
		}
		if k := dedupKey(e); k != "" {
			if f, ok := seenKey[k]; ok {
				if !dup {
					first, dup = f, true
				}
			} else {
				seenKey[k] = e
			}
		}
		if dup {
			v.Dups++
			violate("duplicate: %s (key %q) triggered by %s (token %d) at %s and by %s (token %d) at %s", triggerName(e), e.Key,
				first.Sidecar, first.Token, hmsms(first.At), e.Sidecar, e.Token, hmsms(e.At))
		}
	}
	runNows := map[string]bool{}
	for _, e := range triggers {
		if e.RunNow != "" {
			runNows[dedupKey(e)] = true
		}
	}
	switch {
	case len(runNows) < c.runNows:
		violate("run-now lost: %d run-now requests made, %d fired", c.runNows, len(runNows))
	case len(runNows) > c.runNows:
		violate("run-now unexpected: %d run-now requests made, %d distinct ones fired", c.runNows, len(runNows))
	}

	// 2. Every trigger arrived while its sender held the lock in Consul,
	// and before its sender's own lease ended (as it logged it).
	var holds []hold
	for i, l := range locks {
		if l.Session == "" {
			continue
		}
		end := time.Unix(1<<40, 0)
		if i+1 < len(locks) {
			end = locks[i+1].At
		}
		holds = append(holds, hold{l.At, end, l.Sidecar, l.Session})
	}
	for _, e := range triggers {
		ok := false
		for _, h := range holds {
			if h.id == e.Sidecar && !e.At.Before(h.from.Add(-startTolerance)) && !e.At.After(h.to) {
				ok = true
				break
			}
		}
		if !ok {
			v.Stale++
			violate("stale: %s from %s (token %d) arrived at %s, outside its holding of the lock", triggerName(e), e.Sidecar, e.Token, hmsms(e.At))
			continue
		}
		a, ok := acquiredBy[fmt.Sprintf("%s/%d", e.Sidecar, e.Token)]
		if !ok {
			continue // the sender's acquire was not logged: nothing to judge by
		}
		if end, ok := ended[a.Session]; ok && e.At.After(end.Until.Add(ownLeaseTolerance)) {
			v.Stale++
			violate("stale (own lease): %s from %s (token %d) arrived at %s, %s after its lease ended (%s, %s)", triggerName(e), e.Sidecar, e.Token,
				hmsms(e.At), e.At.Sub(end.Until).Round(time.Millisecond), hmsms(end.Until), end.Note)
		}
	}

	// 3. Fencing tokens never go backwards in arrival order.
	var top uint64
	for _, e := range triggers {
		if e.Token < top {
			violate("fencing: token %d from %s (%s) arrived at %s after token %d", e.Token, e.Sidecar, triggerName(e), hmsms(e.At), top)
		}
		top = max(top, e.Token)
	}

	// 4. Every slot due fired, or failed on its way to the app, or was
	// recorded missed or skipped with a reason that a fault injected at
	// that time explains, or fell (unrecorded) inside a window that says
	// such a loss is expected.
	var free []window // lock-free spans: a no_leader record there is explained
	for i, l := range locks {
		if l.Session != "" {
			continue
		}
		to := time.Unix(1<<40, 0)
		if i+1 < len(locks) {
			to = locks[i+1].At.Add(catchUpTolerance)
		}
		free = append(free, window{from: l.At.Add(-startTolerance), to: to, why: "lock free", reasons: []string{reasonNoLeader}})
	}
	explains := func(s time.Time, label string) (string, bool) {
		for _, w := range c.excused {
			if w.allows(s, label) {
				return w.why, true
			}
		}
		if !c.strict {
			for _, w := range free {
				if w.allows(s, label) {
					return w.why, true
				}
			}
		}
		return "", false
	}
	scheds := map[string]cron.Schedule{}
	jobNames := make([]string, 0, len(c.jobs))
	for job, spec := range c.jobs {
		sched, err := parser.Parse(spec)
		if err != nil {
			t.Fatalf("job %s: %v", job, err)
		}
		scheds[job] = sched
		jobNames = append(jobNames, job)
	}
	sort.Strings(jobNames)
	for _, job := range jobNames {
		sched := scheds[job]
		for s := sched.Next(c.from); !s.After(c.to); s = sched.Next(s) {
			v.Expected++
			if _, ok := seen[slotKey(job, s)]; ok {
				v.Fired++
				continue
			}
			recs := recordsOf(records, job, s)
			if len(recs) > 0 {
				explained := false
				for _, r := range recs {
					if why, ok := explains(s, recordLabel(r)); ok {
						explained = true
						if recordLabel(r) == labelFailed {
							v.Failed++
						} else {
							v.Missed++
							v.MissedRecorded++
						}
						v.Recorded = append(v.Recorded, fmt.Sprintf("%s@%s by %s: %s (%s)", job, hms(s), r.Sidecar, recordLabel(r), why))
						break
					}
				}
				if r := recs[0]; !explained && r.Reason == reasonOverlap && catchUpInFlight(triggers, job, r, s) {
					// A new holder fires the gap's latest slot late, at
					// about the time the next one falls due: under the
					// job's overlap policy that next slot is skipped.
					explained = true
					v.Missed++
					v.MissedRecorded++
					v.Recorded = append(v.Recorded, fmt.Sprintf("%s@%s by %s: %s (catch-up run in flight)", job, hms(s), r.Sidecar, recordLabel(r)))
				}
				if !explained {
					v.Missed++
					v.Unexplained++
					var got []string
					for _, r := range recs {
						got = append(got, fmt.Sprintf("%s by %s", r.Outcome+" "+r.Reason, r.Sidecar))
					}
					violate("misattributed: %s@%s recorded as %s, which no fault injected then explains", job, hms(s), strings.Join(got, ", "))
				}
				continue
			}
			v.Missed++
			excused := false
			for _, w := range c.excused {
				if w.contains(s) && !w.mustRecord {
					excused = true
					break
				}
			}
			if excused {
				v.MissedExcused++
				continue
			}
			v.Unexplained++
			violate("missed: %s@%s did not fire and no sidecar recorded why, outside any window that excuses an unrecorded loss", job, hms(s))
		}
	}

	// 5. Catch-up: after every change of the lock's holder, the latest
	// slot of each job that fell due in the gap (after the last one
	// fired, or possibly claimed, before the new holder, and at or before
	// its acquire) and is inside the catch-up window must be fired by the
	// new holder, late, with its own slot.
	if !c.noCatchUp {
		for i := 1; i < len(holds); i++ {
			h := holds[i]
			if h.session == holds[i-1].session {
				continue
			}
			acq := h.from
			a, logged := acquiredIn[h.session]
			if !logged && len(acquiredIn) > 0 {
				// The sidecars log their acquires, and this one did
				// not: its acquire answer was lost, it held the key
				// without knowing and could not act; the next holder's
				// gap covers this one.
				continue
			}
			if logged && a.At.After(acq) {
				acq = a.At // the holder's own log line: when it knew
			}
			if !acq.After(c.from) || acq.After(c.to) || h.to.Sub(h.from) < catchUpTolerance {
				continue
			}
			// The new holder's triggers: its logged token, or what it
			// sent from its acquire on.
			mine := func(e event) bool {
				if e.Sidecar != h.id {
					return false
				}
				if logged {
					return e.Token == a.Token
				}
				return !e.At.Before(h.from.Add(-startTolerance)) && !e.At.After(h.to)
			}
			for _, job := range jobNames {
				sched := scheds[job]
				var last time.Time // the last slot fired, or possibly claimed, before this holder
				for _, e := range triggers {
					if e.Job == job && e.RunNow == "" && !mine(e) && e.At.Before(acq) && e.Slot.After(last) {
						last = e.Slot
					}
				}
				for _, r := range records {
					if r.Job == job && r.RunNow == "" && r.Sidecar != h.id && r.At.Before(acq) && mayBeClaimed(r) && r.Until.After(last) && !r.Until.After(acq) {
						last = r.Until
					}
				}
				var due time.Time
				for s := sched.Next(maxTimeOf(last, c.from)); !s.After(acq); s = sched.Next(s) {
					due = s
				}
				if due.IsZero() || due.Before(acq.Add(-catchUpWindow)) || due.After(c.to) {
					continue
				}
				v.CatchUps++
				var first time.Time // the first slot the new holder fired
				for _, e := range triggers {
					if e.Job == job && e.RunNow == "" && mine(e) && (first.IsZero() || e.Slot.Before(first)) {
						first = e.Slot
					}
				}
				switch {
				case first.Equal(due):
				case first.After(due) && !first.After(acq.Add(catchUpTolerance)):
					// It looked after a later slot fell due (see
					// catchUpTolerance); the gap's slot is judged as a
					// missed one by rule 4.
				case triedToFire(records, h.id, job, due, explains):
				default:
					fired := "nothing"
					if !first.IsZero() {
						fired = "first " + hms(first)
					}
					violate("catch-up missing: %s@%s fell due in the gap before %s took the lock at %s (last slot fired or claimed before: %s); it fired %s",
						job, hms(due), h.id, hmsms(acq), hms(last), fired)
				}
			}
		}
	}

	// 7. Liveness: outside the fault windows, a free key is taken within
	// leaderlessBound (a lock-free span explains no_leader records, but
	// not a fleet that stopped campaigning).
	if !c.to.IsZero() {
		for i, l := range locks {
			if l.Session != "" {
				continue
			}
			end := c.to
			if i+1 < len(locks) && locks[i+1].At.Before(end) {
				end = locks[i+1].At
			}
			for _, gap := range uncovered(maxTimeOf(l.At, c.from), end, c.excused) {
				if d := gap[1].Sub(gap[0]); d > leaderlessBound {
					violate("leaderless: the lock was free from %s to %s, %s of it outside every fault window, and no sidecar took it (bound %s)",
						hmsms(l.At), hmsms(end), d.Round(10*time.Millisecond), leaderlessBound)
				}
			}
		}
	}

	// 6. A trigger the app took but did not answer (it reset the
	// connection, or answered too late) must be recorded by its sender
	// as failed, no_answer: sent once, its fate unknown.
	for _, e := range triggers {
		if !e.Unanswered {
			continue
		}
		found := false
		for _, r := range records {
			if r.Sidecar == e.Sidecar && r.Job == e.Job && r.Slot.Equal(e.Slot) && r.Outcome == labelFailed && r.Reason == reasonNoAnswer {
				found = true
				break
			}
		}
		if !found {
			violate("no_answer not recorded: %s from %s (token %d) got no answer from the app at %s, and its sender did not record it as failed %s",
				triggerName(e), e.Sidecar, e.Token, hmsms(e.At), reasonNoAnswer)
		}
	}

	// Longest time two sidecars acted as leader: the overlap of the spans
	// [first, last trigger] of each (sidecar, token).
	type span struct {
		id         string
		first, end time.Time
	}
	spans := map[string]*span{}
	for _, e := range triggers {
		k := fmt.Sprintf("%s/%d", e.Sidecar, e.Token)
		if s, ok := spans[k]; ok {
			s.end = e.At
		} else {
			spans[k] = &span{e.Sidecar, e.At, e.At}
		}
	}
	for _, a := range spans {
		for _, b := range spans {
			if a.id >= b.id {
				continue
			}
			end, first := a.end, a.first
			if b.end.Before(end) {
				end = b.end
			}
			if b.first.After(first) {
				first = b.first
			}
			if o := end.Sub(first); o > v.TwoLeaders {
				v.TwoLeaders = o
			}
		}
	}

	// Takeover: from the fault to the first trigger under a new token.
	if !c.faultAt.IsZero() {
		var before uint64
		for _, e := range triggers {
			if e.At.Before(c.faultAt) {
				before = e.Token
				continue
			}
			if e.Token != before {
				v.Takeover = e.At.Sub(c.faultAt)
				break
			}
		}
	}
	return v
}

func maxTimeOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// uncovered returns the parts of [from, to] that no window covers, in
// order.
func uncovered(from, to time.Time, ws []window) [][2]time.Time {
	ws = slices.Clone(ws)
	sort.Slice(ws, func(i, j int) bool { return ws[i].from.Before(ws[j].from) })
	var out [][2]time.Time
	at := from
	for _, w := range ws {
		if !at.Before(to) {
			break
		}
		if w.to.Before(at) {
			continue
		}
		if w.from.After(at) {
			out = append(out, [2]time.Time{at, minTimeOf(w.from, to)})
		}
		at = maxTimeOf(at, w.to)
	}
	if at.Before(to) {
		out = append(out, [2]time.Time{at, to})
	}
	return out
}

func minTimeOf(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// triedToFire reports whether sidecar id recorded job's slot s with a
// reason that says it tried to fire it and a fault stopped it (its claim
// or trigger failed), not that it passed it over (no_leader, overslept).
func triedToFire(records []event, id, job string, s time.Time, explains func(time.Time, string) (string, bool)) bool {
	for _, r := range recordsOf(records, job, s) {
		if r.Sidecar != id || r.Reason == reasonNoLeader || r.Reason == reasonOverslept {
			continue
		}
		if _, ok := explains(s, recordLabel(r)); ok {
			return true
		}
	}
	return false
}

// recordsOf returns the records of sidecars that logged job's scheduled
// slot s as missed, skipped or failed.
func recordsOf(records []event, job string, s time.Time) []event {
	var out []event
	for _, r := range records {
		if r.Job == job && r.RunNow == "" && !s.Before(r.Slot) && !s.After(r.Until) {
			out = append(out, r)
		}
	}
	return out
}

// recorded returns the first record of a sidecar that logged job's slot s
// as missed, skipped or failed.
func recorded(records []event, job string, s time.Time) (event, bool) {
	if rs := recordsOf(records, job, s); len(rs) > 0 {
		return rs[0], true
	}
	return event{}, false
}

// recordLabel is what a record is matched against a window's reasons by: its
// reason, or "failed" for a failed trigger.
func recordLabel(e event) string {
	if e.Outcome == labelFailed {
		return labelFailed
	}
	return e.Reason
}

// mayBeClaimed reports whether a record says its slots may have been
// claimed in Consul without firing (so a new holder finds them taken).
func mayBeClaimed(e event) bool {
	switch e.Reason {
	case reasonUnknown, reasonClaim, reasonLease, reasonEnded:
		return true
	}
	return false
}

// dedupKey is what two triggers must not share: the Idempotency-Key, or a
// run-now's request id when no key was sent.
func dedupKey(e event) string {
	if e.Key != "" {
		return "key " + e.Key
	}
	if e.RunNow != "" {
		return "run-now " + e.RunNow
	}
	return ""
}

// triggerName names a trigger in a violation.
func triggerName(e event) string {
	if e.RunNow != "" {
		return fmt.Sprintf("%s run-now %s (slot %s)", e.Job, e.RunNow, hms(e.Slot))
	}
	return e.Job + "@" + hms(e.Slot)
}

// errInjectorBroken is what positiveControl returns when the naive
// baseline came through its partition clean.
var errInjectorBroken = errors.New("positive control failed")

// positiveControl checks the naive baseline's verdict: api.Lock and cron
// with no claims and no lease keep firing on both sides of a partition, so
// a run that shows no two-leader violation (a duplicate or a stale
// trigger) means the partition never happened: the fault injector is
// broken, and every clean verdict of this run is worthless.
func positiveControl(v verdict) error {
	for _, x := range v.Violations {
		if strings.HasPrefix(x, "duplicate") || strings.HasPrefix(x, "stale") {
			return nil
		}
	}
	return fmt.Errorf("%w: the naive leader showed no duplicate and no stale trigger under its partition (%d violations: %s); the fault injector is broken, so no other scenario's clean verdict means anything",
		errInjectorBroken, len(v.Violations), strings.Join(v.Violations, "; "))
}

// catchUpInFlight reports whether r (a skip for overlap of job's slot s)
// follows a catch-up by the same sidecar: a trigger of an earlier slot of
// job sent late (by more than catchUpTolerance, so not an on-time slot)
// that reached the app in the second before s fell due or since, and
// before r was recorded.
func catchUpInFlight(triggers []event, job string, r event, s time.Time) bool {
	for _, e := range triggers {
		if e.Job == job && e.Sidecar == r.Sidecar && e.RunNow == "" && e.Slot.Before(s) &&
			e.At.Sub(e.Slot) > catchUpTolerance && !e.At.Before(s.Add(-time.Second)) && !e.At.After(r.At) {
			return true
		}
	}
	return false
}

// report collects one verdict per scenario, for the summary.
type report struct {
	mu       sync.Mutex
	verdicts []verdict
}

func (r *report) add(v verdict) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.verdicts = append(r.verdicts, v)
}

// kinds counts violations by kind (the text before the first colon).
func kinds(vs []string) map[string]int {
	k := map[string]int{}
	for _, x := range vs {
		if i := strings.Index(x, ":"); i > 0 {
			k[x[:i]]++
		}
	}
	return k
}

// finish checks, records and prints one scenario's verdict, and fails the
// test on any violation (unless it is the naive baseline, which is only
// measured, and must show the violations it exists to show).
func finish(t *testing.T, h *history, c checkSpec, note string) verdict {
	t.Helper()
	evs, _ := h.Snapshot()
	v := check(t, t.Name(), evs, c)
	v.Name = strings.TrimPrefix(t.Name(), "Test")
	v.Note = note
	if c.naive {
		k := kinds(v.Violations)
		v.Note = fmt.Sprintf("not failed: %d duplicate, %d stale, %d fencing, %d missed, %d catch-up missing", k["duplicate"], k["stale"],
			k["fencing"], k["missed"]+k["misattributed"], k["catch-up missing"])
	}
	if len(v.Recorded) > 0 {
		t.Logf("slots not fired that sidecars recorded with a reason a fault explains:\n  %s", strings.Join(v.Recorded, "\n  "))
	}
	counts := map[string]int{}
	for _, e := range evs {
		counts[e.Kind]++
	}
	t.Logf("history: %d triggers, %d records, %d lock changes, %d acquires and %d lease ends logged by sidecars; %d catch-ups due",
		counts["trigger"], counts["record"], counts["lock"], counts["acquired"], counts["lease-ended"], v.CatchUps)
	the.report.add(v)
	t.Log(header())
	t.Log(v.line())
	switch {
	case c.naive:
		if err := positiveControl(v); err != nil {
			t.Errorf("%v\nhistory:\n%s", err, testkit.Dump(evs))
		}
	case len(v.Violations) > 0:
		t.Errorf("%d violations:\n  %s\nhistory:\n%s", len(v.Violations), strings.Join(v.Violations, "\n  "), testkit.Dump(evs))
	}
	return v
}

// TestCheckerCatches feeds the checker histories that break each rule,
// so that a clean verdict on a real run means something.
func TestCheckerCatches(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	sec := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	trig := func(ms int, id string, tok uint64, slot int) event {
		s := sec(slot)
		return event{At: at(ms), Kind: "trigger", Sidecar: id, Job: "tick", Slot: s, Token: tok, Key: slotKey("tick", s)}
	}
	runNow := func(ms int, id string, tok uint64, req string) event {
		e := trig(ms, id, tok, ms/1000)
		e.Slot = at(ms - 5)
		e.RunNow, e.Key = req, "tick@run-now/"+req
		return e
	}
	lock := func(ms int, id string) event {
		s := ""
		if id != "" {
			s = "session-" + id
		}
		return event{At: at(ms), Kind: "lock", Sidecar: id, Session: s}
	}
	rec := func(ms int, id string, slot int, outcome, reason string) event {
		return event{At: at(ms), Kind: "record", Sidecar: id, Job: "tick", Slot: sec(slot), Until: sec(slot), Outcome: outcome, Reason: reason}
	}
	missed := func(ms int, id string, slot int, reason string) event { return rec(ms, id, slot, "missed", reason) }
	acquired := func(ms int, id string, tok uint64) event {
		return event{At: at(ms), Kind: "acquired", Sidecar: id, Token: tok, Session: "session-" + id}
	}
	leaseEnded := func(ms int, id string, endedMs int) event {
		return event{At: at(ms), Kind: "lease-ended", Sidecar: id, Session: "session-" + id, Until: at(endedMs), Note: "lease expired"}
	}
	with := func(evs []event, more ...event) []event { return append(slices.Clone(evs), more...) }

	tick := map[string]string{"tick": "* * * * * *"}
	spec3 := checkSpec{jobs: tick, from: t0, to: sec(3)}
	good := []event{lock(0, "a"), trig(1010, "a", 5, 1), trig(2010, "a", 5, 2), trig(3010, "a", 5, 3)}
	gap := []event{lock(0, "a"), trig(1010, "a", 5, 1), trig(3010, "a", 5, 3)} // slot 2 did not fire
	win := func(w window) checkSpec {
		c := spec3
		c.excused = []window{w}
		return c
	}
	fault := window{from: at(1500), to: at(2500), why: "fault"}
	recordedFault := fault
	recordedFault.mustRecord = true
	recordedFault.reasons = []string{reasonLease}
	slow := window{from: at(1500), to: at(2500), why: "app slow", reasons: []string{reasonOverlap}, mustRecord: true}
	appDown := window{from: at(1500), to: at(2500), why: "app down", reasons: []string{labelFailed}, mustRecord: true}

	// Holder change: a holds until 1500, the key is free, b takes it at
	// 4200; slots 2, 3 and 4 fell due in the gap, 4 is the latest.
	handover := []event{lock(0, "a"), trig(1010, "a", 5, 1), lock(1500, ""), lock(4200, "b")}
	spec6 := checkSpec{jobs: tick, from: t0, to: sec(6)}
	caughtUp := with(handover, missed(4250, "b", 2, reasonNoLeader), trig(4260, "b", 9, 4), trig(5010, "b", 9, 5), trig(6010, "b", 9, 6))
	caughtUp[len(caughtUp)-4].Until = sec(3) // b recorded 2..3 as no_leader and fired 4 late

	// The app took slot 2's trigger and reset the connection.
	unanswered := slices.Clone(good)
	unanswered[2].Unanswered = true

	leaderless := []event{lock(0, "a"), trig(1010, "a", 5, 1), lock(1500, ""), lock(12000, "b"),
		func() event { e := missed(12050, "b", 2, reasonNoLeader); e.Until = sec(11); return e }(), trig(12010, "b", 9, 12)}

	type tc struct {
		name string
		evs  []event
		spec checkSpec
		// want is "" for a clean verdict; else the kind of violation
		// it must show, and after a "+" another kind it may show besides.
		want string
	}
	for _, tc := range []tc{
		{"clean", good, spec3, ""},
		{"duplicate", with(good, lock(3100, "b"), trig(3200, "b", 9, 3)), spec3, "duplicate"},
		{"duplicate: a key sent twice", with(good, func() event { e := trig(3020, "a", 5, 4); e.Key = slotKey("tick", sec(3)); return e }()), spec3, "duplicate"},
		{"duplicate: a run-now fired twice", with(good, runNow(2500, "a", 5, "r1"), runNow(2600, "a", 5, "r1")), func() checkSpec { c := spec3; c.runNows = 1; return c }(), "duplicate"},
		{"run-now: clean", with(good, runNow(2500, "a", 5, "r1"), runNow(2600, "a", 5, "r2")), func() checkSpec { c := spec3; c.runNows = 2; return c }(), ""},
		{"run-now lost", with(good, runNow(2500, "a", 5, "r1")), func() checkSpec { c := spec3; c.runNows = 2; return c }(), "run-now lost"},
		{"run-now is no scheduled slot", with(gap, func() event { e := runNow(2000, "a", 5, "r1"); e.Slot = sec(2); return e }()), func() checkSpec { c := spec3; c.runNows = 1; return c }(), "missed"},
		{"stale: after the lock moved", []event{lock(0, "a"), trig(1010, "a", 5, 1), lock(1500, "b"), trig(2010, "b", 9, 2), trig(3010, "a", 5, 3)}, spec3, "stale+fencing"},
		{"stale: before acquiring", []event{lock(0, ""), trig(1010, "a", 5, 1), lock(1500, "a"), trig(2010, "a", 5, 2), trig(3010, "a", 5, 3)}, spec3, "stale"},
		{"stale (own lease)", with(good, acquired(0, "a", 5), leaseEnded(2900, "a", 2700)), spec3, "stale (own lease)"},
		{"own lease: within its lease", with(good, acquired(0, "a", 5), leaseEnded(3500, "a", 3400)), spec3, ""},
		{"own lease: acquire never logged", with(good, leaseEnded(2900, "a", 2700)), spec3, ""},
		{"fencing", []event{lock(0, "a"), trig(1010, "a", 7, 1), trig(2010, "a", 5, 2), trig(3010, "a", 7, 3)}, spec3, "fencing"},
		{"missed", gap, spec3, "missed"},
		{"missed: in a window that must record", gap, win(recordedFault), "missed"},
		{"unrecorded in a fault window", gap, win(fault), ""},
		{"recorded with a matching reason", with(gap, missed(2100, "a", 2, reasonLease)), win(recordedFault), ""},
		{"misattributed: no fault then", with(gap, missed(2100, "a", 2, reasonClaim)), spec3, "misattributed"},
		{"misattributed: a reason the fault cannot cause", with(gap, missed(2100, "a", 2, reasonClaim)), win(recordedFault), "misattributed"},
		{"misattributed: a reason the fault cannot cause, even where it may lose slots unrecorded", with(gap, missed(2100, "a", 2, reasonOverlap)), win(fault), "misattributed"},
		{"overlap while the app was slow", with(gap, rec(2100, "a", 2, "skipped", reasonOverlap)), win(slow), ""},
		{"misattributed: overlap while the app was fast", with(gap, rec(2100, "a", 2, "skipped", reasonOverlap)), spec3, "misattributed"},
		{"overlap behind a catch-up run", with(gap, trig(1995, "a", 5, 0), rec(2006, "a", 2, "skipped", reasonOverlap)), spec3, ""},
		{"failed while the app was down", with(gap, rec(2100, "a", 2, labelFailed, "")), win(appDown), ""},
		{"misattributed: failed while the app was up", with(gap, rec(2100, "a", 2, labelFailed, "")), spec3, "misattributed"},
		{"app down, trigger not recorded", gap, win(appDown), "missed"},
		{"no_leader while the key was free", []event{lock(0, "a"), trig(1010, "a", 5, 1), lock(1500, ""), lock(2500, "a"), missed(2600, "a", 2, reasonNoLeader), trig(3010, "a", 5, 3)}, spec3, ""},
		{"misattributed: no_leader while the key was held", with(gap, missed(2100, "a", 2, reasonNoLeader)), spec3, "misattributed"},
		{"misattributed: no_leader in a free span, strict", []event{lock(0, "a"), trig(1010, "a", 5, 1), lock(1500, ""), lock(2500, "a"), missed(2600, "a", 2, reasonNoLeader), trig(3010, "a", 5, 3)},
			func() checkSpec { c := spec3; c.strict = true; return c }(), "misattributed"},
		{"catch-up: clean", caughtUp, spec6, ""},
		{"catch-up missing", with(handover, missed(4250, "b", 2, reasonNoLeader), trig(5010, "b", 9, 5), trig(6010, "b", 9, 6)), func() checkSpec {
			c := spec6
			c.excused = []window{{from: at(1500), to: at(4200), why: "fault", reasons: []string{reasonNoLeader}}}
			return c
		}(), "catch-up missing"},
		// b took the key at 4200 without knowing (no acquire line), c
		// took it at 5050 and caught up slot 5.
		{"catch-up: not of a holder that never knew", with(handover, acquired(100, "a", 5), lock(5050, "c"), acquired(5100, "c", 11), trig(5150, "c", 11, 5), trig(6010, "c", 11, 6)), func() checkSpec {
			c := spec6
			c.excused = []window{{from: at(1500), to: at(5050), why: "fault", reasons: []string{reasonNoLeader}}}
			return c
		}(), ""},
		{"catch-up missing after a holder that never knew", with(handover, acquired(100, "a", 5), lock(5050, "c"), acquired(5100, "c", 11), trig(6010, "c", 11, 6)), func() checkSpec {
			c := spec6
			c.excused = []window{{from: at(1500), to: at(5050), why: "fault", reasons: []string{reasonNoLeader}}, {from: at(5050), to: at(5500), why: "fault"}}
			return c
		}(), "catch-up missing"},
		// The key is free from 1500 to 12000; b records 2..11 as
		// no_leader and fires 12.
		{"leaderless: inside a fault window", leaderless, func() checkSpec {
			c := checkSpec{jobs: tick, from: t0, to: sec(12)}
			c.excused = []window{{from: at(1500), to: at(12000), why: "fault"}}
			return c
		}(), ""},
		{"leaderless", leaderless, func() checkSpec {
			c := checkSpec{jobs: tick, from: t0, to: sec(12)}
			c.excused = []window{{from: at(1500), to: at(3500), why: "fault"}}
			return c
		}(), "leaderless"},
		{"catch-up: skipped where the scenario says so", with(handover, trig(5010, "b", 9, 5), trig(6010, "b", 9, 6)), func() checkSpec {
			c := spec6
			c.noCatchUp = true
			c.excused = []window{{from: at(1500), to: at(4200), why: "fault"}}
			return c
		}(), ""},
		{"no_answer: recorded", with(unanswered, rec(2300, "a", 2, labelFailed, reasonNoAnswer)), spec3, ""},
		{"no_answer not recorded", unanswered, spec3, "no_answer not recorded"},
		{"no_answer not recorded: failed for another reason", with(unanswered, rec(2300, "a", 2, labelFailed, "")), spec3, "no_answer not recorded"},
	} {
		v := check(t, tc.name, tc.evs, tc.spec)
		k := kinds(v.Violations)
		want, also, _ := strings.Cut(tc.want, "+")
		delete(k, also)
		switch {
		case want == "" && len(v.Violations) > 0:
			t.Errorf("%s: want a clean verdict, got %q", tc.name, v.Violations)
		case want != "" && (k[want] == 0 || len(k) > 1):
			t.Errorf("%s: want %q violations, got %q", tc.name, tc.want, v.Violations)
		}
	}

	// The table separates the ways a slot may be lost.
	if v := check(t, "excused", gap, win(fault)); v.MissedExcused != 1 || v.MissedRecorded != 0 || v.Unexplained != 0 {
		t.Errorf("unrecorded in a fault window: %+v", v)
	}
	if v := check(t, "recorded", with(gap, missed(2100, "a", 2, reasonLease)), win(recordedFault)); v.MissedRecorded != 1 || v.MissedExcused != 0 {
		t.Errorf("recorded with a matching reason: %+v", v)
	}
	if v := check(t, "failed", with(gap, rec(2100, "a", 2, labelFailed, "")), win(appDown)); v.Failed != 1 || v.Missed != 0 || v.Expected != 3 {
		t.Errorf("failed while the app was down: %+v", v)
	}
	if v := check(t, "misattributed", with(gap, missed(2100, "a", 2, reasonClaim)), spec3); v.Unexplained != 1 || v.Missed != 1 {
		t.Errorf("misattributed: %+v", v)
	}
	if v := check(t, "stale", with(good, acquired(0, "a", 5), leaseEnded(2900, "a", 2700)), spec3); v.Stale != 1 {
		t.Errorf("stale (own lease) not counted: %+v", v)
	}

	// The positive control fails a clean baseline, and passes one that
	// showed two leaders.
	if err := positiveControl(check(t, "naive clean", good, spec3)); !errors.Is(err, errInjectorBroken) {
		t.Errorf("positive control passed a clean naive baseline: %v", err)
	}
	if err := positiveControl(check(t, "naive dup", with(good, lock(3100, "b"), trig(3200, "b", 9, 3)), spec3)); err != nil {
		t.Errorf("positive control failed a baseline with a duplicate: %v", err)
	}
}

func header() string {
	return "| scenario | slots expected | fired | failed | duplicates | missed: in fault window (unrecorded) / recorded with matching reason / unexplained | stale | violations | longest two-leader window | takeover | note |\n" +
		"|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"
}

func (v verdict) line() string {
	take := "-"
	if v.Takeover >= 0 {
		take = v.Takeover.Round(10 * time.Millisecond).String()
	}
	name := v.Name
	if v.Naive {
		name += " (baseline)"
	}
	return fmt.Sprintf("| %s | %d | %d | %d | %d | %d / %d / %d | %d | %d | %s | %s | %s |", name, v.Expected, v.Fired, v.Failed, v.Dups,
		v.MissedExcused, v.MissedRecorded, v.Unexplained, v.Stale, len(v.Violations), v.TwoLeaders.Round(10*time.Millisecond), take, v.Note)
}

// print writes the table and a summary line; with LEADERCRON_FAULT_REPORT
// set, it also writes them to that file.
func (r *report) print(w io.Writer, seed uint64) {
	r.mu.Lock()
	vs := slices.Clone(r.verdicts)
	r.mu.Unlock()
	if len(vs) == 0 {
		return
	}
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].Name < vs[j].Name })
	var b strings.Builder
	fmt.Fprintln(&b, header())
	var slots, fired, failed, dups, stale, unexplained, viol int
	for _, v := range vs {
		fmt.Fprintln(&b, v.line())
		if !v.Naive {
			slots += v.Expected
			fired += v.Fired
			failed += v.Failed
			dups += v.Dups
			stale += v.Stale
			unexplained += v.Unexplained
			viol += len(v.Violations)
		}
	}
	fmt.Fprintf(&b, "\nsummary: %d scenarios, seed %d: %d slots expected, %d fired, %d failed, %d duplicates, %d stale, %d unexplained, %d violations (baseline excluded)\n",
		len(vs), seed, slots, fired, failed, dups, stale, unexplained, viol)
	fmt.Fprint(w, b.String())
	if p := os.Getenv("LEADERCRON_FAULT_REPORT"); p != "" {
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintf(w, "write %s: %v\n", p, err)
		}
	}
}
