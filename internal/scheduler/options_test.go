package scheduler

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/fate"
)

// fakeRecorder keeps every recorded fate.
type fakeRecorder struct {
	mu   sync.Mutex
	runs []LastRun
	jobs []string
}

func (r *fakeRecorder) Record(job string, lr LastRun) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs = append(r.runs, lr)
	r.jobs = append(r.jobs, job)
}

func (r *fakeRecorder) all() []LastRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]LastRun(nil), r.runs...)
}

// checkRecorded compares outcome, reason, slot and Until of each record.
func checkRecorded(t *testing.T, got []LastRun, want ...LastRun) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = got[i].Outcome == want[i].Outcome && got[i].Reason == want[i].Reason &&
			got[i].Slot.Equal(want[i].Slot) && got[i].Until.Equal(want[i].Until) && got[i].Attempts == want[i].Attempts
	}
	if !ok {
		t.Errorf("recorded:\n%s\nwant:\n%s", fmtRuns(got), fmtRuns(want))
	}
}

func fmtRuns(rs []LastRun) string {
	s := ""
	for _, r := range rs {
		s += "  " + string(r.Outcome) + "/" + string(r.Reason) + " " + r.Slot.Sub(t0).String()
		if !r.Until.IsZero() {
			s += " until " + r.Until.Sub(t0).String()
		}
		if r.Attempts > 0 {
			s += " attempts " + time.Duration(r.Attempts).String()
		}
		s += "\n"
	}
	return s
}

func withRecorder(opts Options) (Options, *fakeRecorder) {
	r := &fakeRecorder{}
	opts.Recorder = r
	return opts, r
}

// A new leader fires the latest slot missed inside the catch-up window,
// late, with its own slot time; the older ones are recorded as missed.
func TestCatchUpAtTermStart(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	h := newHarness(t, []Job{job("hourly", 10*sec)}, opts) // catch-up 1m
	h.term.setLast("hourly", at(-100*sec))
	h.clock.AdvanceTo(at(5 * sec))
	h.lead()

	checkRun(t, h.app.next(t), "hourly", at(0), 42, at(35*sec))
	h.clock.waitPending(t, at(10*sec))
	h.settle()
	checkRecorded(t, rec.all(),
		LastRun{Outcome: fate.Missed, Reason: fate.NoLeader, Slot: at(-90 * sec), Until: at(-55 * sec)},
		LastRun{Outcome: fate.Missed, Reason: fate.NoLeader, Slot: at(-50 * sec), Until: at(-10 * sec)},
		LastRun{Outcome: "ok", Slot: at(0), Attempts: 1},
	)
	h.finish()
	checkClaims(t, h.term.claimCalls(), claimCall{job: "hourly", slot: at(0), won: true})
}

// With catchup=0 nothing missed fires late.
func TestCatchUpOff(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	j := job("hourly", 10*sec)
	j.Catchup = 0
	h := newHarness(t, []Job{j}, opts)
	h.term.setLast("hourly", at(-100*sec))
	h.clock.AdvanceTo(at(5 * sec))
	h.lead()
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	checkRun(t, h.app.next(t), "hourly", at(10*sec), 42, at(40*sec))
	h.clock.waitPending(t, at(20*sec))
	h.finish()
	checkRecorded(t, rec.all(),
		LastRun{Outcome: fate.Missed, Reason: fate.NoLeader, Slot: at(-90 * sec)},
		LastRun{Outcome: "ok", Slot: at(10 * sec), Attempts: 1},
	)
}

// A slot missed before the window opened is recorded, not fired.
func TestCatchUpOutsideWindow(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	j := job("slow", 50*sec)
	j.Catchup = 20 * sec
	h := newHarness(t, []Job{j}, opts)
	h.term.setLast("slow", at(-50*sec))
	h.clock.AdvanceTo(at(40 * sec))
	h.lead()
	h.clock.waitPending(t, at(50*sec))
	if got := h.app.drained(); len(got) != 0 {
		t.Fatalf("fired %v; want nothing before 50s", got)
	}
	checkRecorded(t, rec.all(), LastRun{Outcome: fate.Missed, Reason: fate.NoLeader, Slot: at(0), Until: at(20 * sec)})
	h.finish()
}

// A stall longer than the catch-up window fires nothing and records the
// overslept slots.
func TestLateWakeBeyondCatchUp(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	j := job("report", 10*sec)
	j.Catchup = 3 * sec
	h := newHarness(t, []Job{j}, opts)
	h.lead()
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(25 * sec)) // 10 and 20 due; 20 is 5s late
	h.clock.waitPending(t, at(30*sec))
	h.clock.AdvanceTo(at(30 * sec))
	checkRun(t, h.app.next(t), "report", at(30*sec), 42, at(60*sec))
	h.clock.waitPending(t, at(40*sec))
	h.finish()
	checkRecorded(t, rec.all(),
		LastRun{Outcome: fate.Missed, Reason: fate.Overslept, Slot: at(10 * sec), Until: at(20 * sec)},
		LastRun{Outcome: "ok", Slot: at(30 * sec), Attempts: 1},
	)
}

// overlap=forbid: a slot whose previous run is in flight is skipped; an
// app answer of 409 is recorded the same way.
func TestOverlapForbidden(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	h := newHarness(t, []Job{job("sync", 10*sec)}, opts)
	h.app.holdJob("sync")
	h.lead()
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	h.app.next(t)
	h.clock.waitPending(t, at(20*sec))
	h.clock.AdvanceTo(at(20 * sec)) // the 10s run is still held
	h.clock.waitPending(t, at(30*sec))
	if js := h.status("sync"); js.Running != 1 {
		t.Errorf("Running = %d, want 1", js.Running)
	}
	h.app.release("sync")
	h.settle()
	h.app.setResult("sync", Result{Outcome: fate.Skipped, Status: 409, Duration: time.Millisecond})
	h.clock.AdvanceTo(at(30 * sec))
	checkRun(t, h.app.next(t), "sync", at(30*sec), 42, at(60*sec))
	h.clock.waitPending(t, at(40*sec))
	h.finish()
	checkRecorded(t, rec.all(),
		LastRun{Outcome: fate.Skipped, Reason: fate.Overlap, Slot: at(20 * sec)},
		LastRun{Outcome: "ok", Slot: at(10 * sec), Attempts: 1},
		LastRun{Outcome: fate.Skipped, Reason: fate.Overlap, Slot: at(30 * sec), Attempts: 1},
	)
	checkClaims(t, h.term.claimCalls(),
		claimCall{job: "sync", slot: at(10 * sec), won: true},
		claimCall{job: "sync", slot: at(20 * sec), won: true},
		claimCall{job: "sync", slot: at(30 * sec), won: true},
	)
}

// Jobs of one group never run at the same time: a slot that finds the
// group busy waits until its deadline, then is skipped; if the group frees
// up in time it runs then.
func TestGroup(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	a := job("a", 20*sec)
	a.Group = "api"
	b := job("b", 25*sec)
	b.Group = "api"
	b.Timeout = 4 * sec
	h := newHarness(t, []Job{a, b}, opts)
	h.app.holdJob("a")
	h.lead()

	h.clock.waitPending(t, at(20*sec), at(25*sec))
	h.clock.AdvanceTo(at(20 * sec))
	h.app.next(t) // a@20, held
	h.clock.waitPending(t, at(25*sec), at(40*sec))
	h.clock.AdvanceTo(at(25 * sec))
	h.clock.waitPending(t, at(29*sec), at(40*sec), at(50*sec)) // b@25 waits for the group until its deadline
	h.clock.AdvanceTo(at(29 * sec))
	h.clock.waitPending(t, at(40*sec), at(50*sec))
	if got := h.app.drained(); len(got) != 0 {
		t.Fatalf("b ran while a held the group: %v", got)
	}
	h.app.release("a")
	h.settle()

	// b@50 finds a@40 holding the group, and runs when a finishes.
	h.app.holdJob("a")
	h.clock.AdvanceTo(at(40 * sec))
	h.app.next(t) // a@40, held
	h.clock.waitPending(t, at(50*sec), at(60*sec))
	h.clock.AdvanceTo(at(50 * sec))
	h.clock.waitPending(t, at(54*sec), at(60*sec), at(75*sec))
	h.app.release("a")
	checkRun(t, h.app.next(t), "b", at(50*sec), 42, at(54*sec))
	h.settle()
	h.finish()
	var skipped []LastRun
	for _, r := range rec.all() {
		if r.Outcome == fate.Skipped {
			skipped = append(skipped, r)
		}
	}
	checkRecorded(t, skipped, LastRun{Outcome: fate.Skipped, Reason: fate.Group, Slot: at(25 * sec)})
}

// A failure worth retrying is sent again after the backoff, doubling,
// with the attempt number, while time remains before the deadline.
func TestRetries(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	j := job("pay", 100*sec)
	j.Retries = 5
	j.Backoff = 2 * sec
	j.Timeout = 10 * sec
	h := newHarness(t, []Job{j}, opts)
	h.app.setResult("pay", Result{Outcome: "failed", Status: 503, Err: errors.New("503"), Retryable: true})
	h.lead()
	h.clock.waitPending(t, at(100*sec))
	h.clock.AdvanceTo(at(100 * sec))
	if r := h.app.next(t); r.Attempt != 1 {
		t.Errorf("first attempt = %d", r.Attempt)
	}
	h.clock.waitPending(t, at(102*sec), at(200*sec))
	h.clock.AdvanceTo(at(102 * sec))
	if r := h.app.next(t); r.Attempt != 2 || !r.Slot.Equal(at(100*sec)) || !r.Deadline.Equal(at(110*sec)) {
		t.Errorf("retry = %+v, want attempt 2 of the 100s slot with deadline 110s", r)
	}
	// The next pause would be 4s: 106s is before the deadline of 110s.
	h.clock.waitPending(t, at(106*sec), at(200*sec))
	h.clock.AdvanceTo(at(106 * sec))
	if r := h.app.next(t); r.Attempt != 3 {
		t.Errorf("attempt = %d, want 3", r.Attempt)
	}
	// 106s + 8s is past the deadline: no fourth attempt.
	h.clock.waitPending(t, at(200*sec))
	h.settle()
	h.finish()
	checkRecorded(t, rec.all(), LastRun{Outcome: "failed", Slot: at(100 * sec), Attempts: 3})

	// A non-retryable failure (a timeout, a 4xx) is sent once.
	opts2, rec2 := withRecorder(Options{LeaseMargin: 5 * sec})
	h2 := newHarness(t, []Job{j}, opts2)
	h2.app.setResult("pay", Result{Outcome: "failed", Status: 400, Err: errors.New("400")})
	h2.lead()
	h2.clock.waitPending(t, at(100*sec))
	h2.clock.AdvanceTo(at(100 * sec))
	h2.app.next(t)
	h2.clock.waitPending(t, at(200*sec))
	h2.settle()
	h2.finish()
	checkRecorded(t, rec2.all(), LastRun{Outcome: "failed", Slot: at(100 * sec), Attempts: 1})
}

// A paused job's slot is claimed (spent) and recorded as skipped.
func TestPaused(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	h := newHarness(t, []Job{job("mail", 10*sec)}, opts)
	h.term.setPaused("mail", true)
	h.lead()
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	h.clock.waitPending(t, at(20*sec))
	h.term.setPaused("mail", false)
	h.clock.AdvanceTo(at(20 * sec))
	checkRun(t, h.app.next(t), "mail", at(20*sec), 42, at(50*sec))
	h.clock.waitPending(t, at(30*sec))
	h.finish()
	checkRecorded(t, rec.all(),
		LastRun{Outcome: fate.Skipped, Reason: fate.Paused, Slot: at(10 * sec)},
		LastRun{Outcome: "ok", Slot: at(20 * sec), Attempts: 1},
	)
}

// RunNow fires once with the request's time as its slot. A run-now that
// finds the job running waits for that run to end (until its deadline)
// instead of being skipped: the request is used up either way.
func TestRunNow(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	h := newHarness(t, []Job{job("mail", 100*sec)}, opts)
	h.app.holdJob("mail")
	h.lead()
	h.clock.waitPending(t, at(100*sec))
	ctx := context.Background()
	req := at(3 * sec)
	if err := h.s.RunNow(ctx, h.term, "mail", req, "r1"); err != nil {
		t.Fatal(err)
	}
	if r := h.app.next(t); !r.RunNow || !r.Slot.Equal(req) || r.FencingToken != 42 || r.Request != "r1" {
		t.Errorf("run = %+v, want a run-now for %s", r, req)
	}
	if err := h.s.RunNow(ctx, h.term, "mail", at(4*sec), "r2"); err != nil {
		t.Fatal(err)
	}
	if err := h.s.RunNow(ctx, h.term, "nope", req, "r3"); err == nil {
		t.Error("RunNow of an unknown job: no error")
	}
	h.app.release("mail")
	if r := h.app.next(t); r.Request != "r2" || !r.Slot.Equal(at(4*sec)) {
		t.Errorf("second run = %+v, want run-now r2 after the first ended", r)
	}
	h.settle()
	h.finish()
	got := rec.all()
	checkRecorded(t, got,
		LastRun{Outcome: "ok", Slot: req, Attempts: 1},
		LastRun{Outcome: "ok", Slot: at(4 * sec), Attempts: 1},
	)
	if len(got) == 2 && (!got[0].RunNow || !got[1].RunNow) {
		t.Errorf("records not marked run-now: %+v", got)
	}
	if len(h.term.claimCalls()) != 0 {
		t.Errorf("run-now claimed a slot: %v", h.term.claimCalls())
	}
}

// A run-now whose job stays busy until the run-now's deadline is skipped
// for overlap, and recorded.
func TestRunNowWaitsUntilItsDeadline(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	h := newHarness(t, []Job{job("mail", 100*sec)}, opts)
	h.app.holdJob("mail")
	h.lead()
	h.clock.waitPending(t, at(100*sec))
	ctx := context.Background()
	if err := h.s.RunNow(ctx, h.term, "mail", at(0), "r1"); err != nil {
		t.Fatal(err)
	}
	h.app.next(t)
	if err := h.s.RunNow(ctx, h.term, "mail", at(0), "r2"); err != nil {
		t.Fatal(err)
	}
	h.clock.waitPending(t, at(30*sec), at(100*sec)) // r2 waits until its deadline (the job timeout); the next slot
	h.clock.AdvanceTo(at(30 * sec))
	h.app.release("mail")
	h.settle()
	h.finish()
	got := map[string]LastRun{}
	for _, r := range rec.all() {
		got[r.Request] = r
	}
	if r2 := got["r2"]; len(got) != 2 || r2.Outcome != fate.Skipped || r2.Reason != fate.Overlap || got["r1"].Outcome != "ok" {
		t.Errorf("recorded %+v; want r1 ok and r2 skipped for overlap", got)
	}
}

// Lead with no jobs keeps leading until its context ends.
func TestLeadWithoutJobsWaitsForContext(t *testing.T) {
	h := newHarness(t, nil, Options{LeaseMargin: time.Second})
	h.lead()
	select {
	case <-h.done:
		t.Fatal("Lead returned with no jobs while its context was live")
	case <-time.After(50 * time.Millisecond): // a negative check: nothing to await
	}
	h.stop()
}

// A claim in flight when leadership ends (SIGTERM) is not cut short: if it
// wins, the slot fires, and Wait covers it. Found by the fault suite: the
// slot used to be claimed in Consul but neither fired nor recorded.
func TestClaimInFlightAtShutdownStillFires(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("report", 10*sec)}, Options{LeaseMargin: 5 * sec})
	h.term.afterClaim = func(claimCall) { h.cancel() }
	h.lead()
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	checkRun(t, h.app.next(t), "report", at(10*sec), 42, at(40*sec))
	h.stop()
	h.settle()
	checkClaims(t, h.term.claimCalls(), claimCall{job: "report", slot: at(10 * sec), won: true})
}

// A run-now request taken as leadership ends still fires, inside the
// drain, while the lease allows; one whose take stayed unknown is
// recorded as missed, with its request id.
func TestRunNowAtLeadershipEnd(t *testing.T) {
	const sec = time.Second
	opts, rec := withRecorder(Options{LeaseMargin: 5 * sec})
	h := newHarness(t, []Job{job("mail", 100*sec)}, opts)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.s.RunNow(ctx, h.term, "mail", at(3*sec), "r1"); err != nil {
		t.Fatal(err)
	}
	if r := h.app.next(t); !r.RunNow || r.Request != "r1" || !r.Slot.Equal(at(3*sec)) {
		t.Errorf("run = %+v, want run-now r1", r)
	}
	h.settle()
	h.s.RequestLost("mail", at(4*sec), "r2", 42, fate.TakeUnknown)
	got := rec.all()
	checkRecorded(t, got,
		LastRun{Outcome: "ok", Slot: at(3 * sec), Attempts: 1},
		LastRun{Outcome: fate.Missed, Reason: fate.TakeUnknown, Slot: at(4 * sec)},
	)
	if len(got) == 2 && (got[0].Request != "r1" || got[1].Request != "r2") {
		t.Errorf("records do not carry their request ids: %+v", got)
	}
}
