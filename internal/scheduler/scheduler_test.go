package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
)

// t0 is where the fake clock starts: a multiple of every period used below.
var t0 = time.Unix(1_700_000_000, 0).UTC()

func at(d time.Duration) time.Time { return t0.Add(d) }

// every is a Schedule firing on the multiples of period since the Unix
// epoch: Next(t) is the first such multiple strictly after t.
type every time.Duration

func (e every) Next(t time.Time) time.Time {
	p := time.Duration(e).Nanoseconds()
	n := t.UnixNano()
	return time.Unix(0, (n/p+1)*p).In(t.Location())
}

func TestEverySchedule(t *testing.T) {
	e := every(10 * time.Second)
	for _, c := range []struct{ from, want time.Time }{
		{t0, at(10 * time.Second)},
		{at(time.Nanosecond), at(10 * time.Second)},
		{at(10*time.Second - time.Nanosecond), at(10 * time.Second)},
		{at(45 * time.Second), at(50 * time.Second)},
	} {
		if got := e.Next(c.from); !got.Equal(c.want) {
			t.Errorf("Next(%s) = %s, want %s", c.from, got, c.want)
		}
	}
}

// ---- fake Term ----

type claimCall struct {
	job  string
	slot time.Time
	won  bool
	err  error
}

// fakeTerm keeps each job's last claimed slot in memory, like the real
// Term: Claim wins only for a slot strictly after the stored one.
type fakeTerm struct {
	mu           sync.Mutex
	token        uint64
	remaining    time.Duration
	last         map[string]time.Time
	paused       map[string]bool
	claimErrs    int // the next claimErrs Claim calls fail with errClaim
	lastSlotErrs int // the next lastSlotErrs LastSlot calls fail with errLastSlot
	claims       []claimCall
	lastSlots    int // LastSlot calls
	// afterClaim, if set, runs after every Claim call, outside the lock.
	afterClaim func(c claimCall)
	// unknownWins are slots whose claim was applied although its caller
	// got an error: like leader.Term, a retry reports them won, once.
	unknownWins map[string]time.Time
	claimErr    error // what failing claims return; errClaim if nil
	// records are claim records to return from LastClaim (a previous
	// leader's, for the orphan tests) while last[job] matches their slot;
	// unclean makes PreviousClean false.
	records map[string]kvlayout.Claim
	unclean bool
	// races makes the next races[job] claims of job lose without any
	// record moving (another writer touched the record each time).
	races map[string]int
}

var (
	errClaim    = errors.New("fake: claim outcome unknown")
	errLastSlot = errors.New("fake: read last slot failed")
)

func newFakeTerm(token uint64) *fakeTerm {
	return &fakeTerm{token: token, remaining: time.Hour, last: map[string]time.Time{}, paused: map[string]bool{},
		unknownWins: map[string]time.Time{}}
}

func (f *fakeTerm) Token() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.token
}

func (f *fakeTerm) Remaining() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.remaining
}

func (f *fakeTerm) LastClaim(ctx context.Context, job string) (kvlayout.Claim, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastSlots++
	if err := ctx.Err(); err != nil {
		return kvlayout.Claim{}, err
	}
	if f.lastSlotErrs > 0 {
		f.lastSlotErrs--
		return kvlayout.Claim{}, errLastSlot
	}
	if c, ok := f.records[job]; ok && c.Slot.Equal(f.last[job]) {
		return c, nil // a record with a previous leader's token (orphan tests)
	}
	return kvlayout.Claim{Slot: f.last[job]}, nil
}

func (f *fakeTerm) PreviousClean() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.unclean
}

func (f *fakeTerm) Claim(ctx context.Context, job string, slot time.Time) (won, paused bool, err error) {
	f.mu.Lock()
	c := claimCall{job: job, slot: slot}
	switch {
	case ctx.Err() != nil:
		c.err = ctx.Err()
	case f.claimErrs > 0:
		f.claimErrs--
		c.err = errClaim
		if f.claimErr != nil {
			c.err = f.claimErr
		}
	case f.races[job] > 0:
		f.races[job]--
	case f.unknownWins[job].Equal(slot) && !slot.IsZero():
		delete(f.unknownWins, job)
		c.won = true
	case f.last[job].Before(slot):
		f.last[job] = slot
		c.won = true
	}
	f.claims = append(f.claims, c)
	hook := f.afterClaim
	f.mu.Unlock()
	if hook != nil {
		hook(c)
	}
	if err := ctx.Err(); err != nil && c.err == nil {
		// Like an HTTP client whose context ended mid-request: the
		// write happened, the answer is lost.
		return false, false, err
	}
	return c.won, c.won && f.isPaused(job), c.err
}

// applyUnknown stores slot as claimed by an attempt that got an error.
func (f *fakeTerm) applyUnknown(job string, slot time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last[job] = slot
	f.unknownWins[job] = slot
}

func (f *fakeTerm) isPaused(job string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused[job]
}

func (f *fakeTerm) setPaused(job string, v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused[job] = v
}

func (f *fakeTerm) setRemaining(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.remaining = d
}

func (f *fakeTerm) setLast(job string, slot time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last[job] = slot
}

func (f *fakeTerm) getLast(job string) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last[job]
}

func (f *fakeTerm) setClaimErrs(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claimErrs = n
}

// setClaimErr makes every claim fail with err.
func (f *fakeTerm) setClaimErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claimErrs, f.claimErr = 1<<30, err
}

func (f *fakeTerm) claimCalls() []claimCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]claimCall(nil), f.claims...)
}

// ---- fake App ----

// fakeApp records every Trigger on started and answers with the job's
// result; a held job's triggers block until the job is released.
type fakeApp struct {
	started chan Run

	mu     sync.Mutex
	hold   map[string]chan struct{}
	result map[string]Result
}

func newFakeApp() *fakeApp {
	return &fakeApp{started: make(chan Run, 1000), hold: map[string]chan struct{}{}, result: map[string]Result{}}
}

func (a *fakeApp) Trigger(_ context.Context, r Run) Result {
	a.started <- r
	a.mu.Lock()
	hold := a.hold[r.Job]
	res, ok := a.result[r.Job]
	a.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if !ok {
		res = Result{Outcome: "ok", Status: 200, Duration: time.Second}
	}
	return res
}

// holdJob makes job's triggers block until release(job).
func (a *fakeApp) holdJob(job string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hold[job] = make(chan struct{})
}

func (a *fakeApp) release(job string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ch := a.hold[job]; ch != nil {
		close(ch)
		delete(a.hold, job)
	}
}

func (a *fakeApp) releaseAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for job, ch := range a.hold {
		close(ch)
		delete(a.hold, job)
	}
}

func (a *fakeApp) setResult(job string, r Result) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.result[job] = r
}

// next returns the next trigger the app received.
func (a *fakeApp) next(t testing.TB) Run {
	t.Helper()
	select {
	case r := <-a.started:
		return r
	case <-time.After(failsafe):
		t.Fatal("no trigger reached the app")
		return Run{}
	}
}

// drained returns every trigger received and not yet taken by next. It is
// exact only once the scheduler's Wait returned true.
func (a *fakeApp) drained() []Run {
	var out []Run
	for {
		select {
		case r := <-a.started:
			out = append(out, r)
		default:
			return out
		}
	}
}

// ---- harness ----

type harness struct {
	t     *testing.T
	clock *fakeClock
	term  *fakeTerm
	app   *fakeApp
	s     *Scheduler

	cancel context.CancelFunc
	done   chan struct{}
}

func newHarness(t *testing.T, jobs []Job, opts Options) *harness {
	t.Helper()
	h := &harness{
		t:     t,
		clock: newFakeClock(t0),
		term:  newFakeTerm(42),
		app:   newFakeApp(),
	}
	if opts.ClaimLead == nil {
		// These tests step the fake clock from instant to instant:
		// claims at the instant, as before claims moved ahead of it
		// (the early claim has tests of its own).
		opts.ClaimLead = func() time.Duration { return 0 }
	}
	h.s = New(jobs, h.app, h.clock, hclog.NewNullLogger(), opts)
	t.Cleanup(func() {
		h.stop()
		h.app.releaseAll()
		ctx, cancel := context.WithTimeout(context.Background(), failsafe)
		defer cancel()
		if !h.s.Wait(ctx) {
			t.Error("cleanup: triggers still in flight")
		}
	})
	return h
}

// lead starts Lead under the harness's term.
func (h *harness) lead() {
	h.t.Helper()
	if h.done != nil {
		h.t.Fatal("lead called twice")
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan struct{})
	go func() {
		defer close(h.done)
		h.s.Lead(ctx, h.term)
	}()
}

// stop cancels Lead's context and waits for Lead to return.
func (h *harness) stop() {
	h.t.Helper()
	if h.done == nil {
		return
	}
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(failsafe):
		h.t.Fatal("Lead did not return after its context was cancelled")
	}
}

// finish stops leading, waits for every trigger and returns the triggers
// not yet taken.
func (h *harness) finish() []Run {
	h.t.Helper()
	h.stop()
	ctx, cancel := context.WithTimeout(context.Background(), failsafe)
	defer cancel()
	if !h.s.Wait(ctx) {
		h.t.Fatal("Wait: triggers still in flight")
	}
	return h.app.drained()
}

// settle waits until every trigger sent so far has finished (and so has
// been recorded in Status).
func (h *harness) settle() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), failsafe)
	defer cancel()
	if !h.s.Wait(ctx) {
		h.t.Fatal("Wait: triggers still in flight")
	}
}

func (h *harness) status(job string) JobStatus {
	h.t.Helper()
	for _, js := range h.s.Status() {
		if js.Name == job {
			return js
		}
	}
	h.t.Fatalf("job %q not in Status", job)
	return JobStatus{}
}

func job(name string, period time.Duration) Job {
	return Job{
		Name:     name,
		Spec:     fmt.Sprintf("@every %s", period),
		Schedule: every(period),
		Location: time.UTC,
		Timeout:  30 * time.Second,
		Catchup:  time.Minute, // config's default
	}
}

func checkRun(t *testing.T, got Run, job string, slot time.Time, token uint64, deadline time.Time) {
	t.Helper()
	if got.Job != job || !got.Slot.Equal(slot) || got.FencingToken != token || !got.Deadline.Equal(deadline) {
		t.Errorf("run = {%s %s token=%d deadline=%s}, want {%s %s token=%d deadline=%s}",
			got.Job, got.Slot.UTC(), got.FencingToken, got.Deadline.UTC(),
			job, slot.UTC(), token, deadline.UTC())
	}
}

func checkSlots(t *testing.T, what string, got []Run, want ...time.Time) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = got[i].Slot.Equal(want[i])
	}
	if !ok {
		gs := make([]time.Time, len(got))
		for i, r := range got {
			gs[i] = r.Slot
		}
		t.Errorf("%s: slots %s, want %s", what, fmtTimes(gs), fmtTimes(want))
	}
}

func checkClaims(t *testing.T, got []claimCall, want ...claimCall) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = got[i].job == want[i].job && got[i].slot.Equal(want[i].slot) && got[i].won == want[i].won &&
			errors.Is(got[i].err, want[i].err)
	}
	if !ok {
		t.Errorf("claims = %v, want %v", got, want)
	}
}

func checkLast(t *testing.T, got *LastRun, want LastRun) {
	t.Helper()
	if got == nil {
		t.Fatalf("Last = nil, want %+v", want)
	}
	if !got.Slot.Equal(want.Slot) || got.Outcome != want.Outcome || got.Reason != want.Reason ||
		got.Status != want.Status || got.Duration != want.Duration {
		t.Errorf("Last = {%s %q reason=%q status=%d duration=%s}, want {%s %q reason=%q status=%d duration=%s}",
			got.Slot.UTC(), got.Outcome, got.Reason, got.Status, got.Duration,
			want.Slot.UTC(), want.Outcome, want.Reason, want.Status, want.Duration)
	}
}

// ---- tests ----

// 1. Each slot fires once, in order, with the slot, the token and a
// deadline of fire time plus timeout; nothing fires before its slot.
func TestFiresEachSlotOnceInOrder(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("report", 10*sec)}, Options{LeaseMargin: 5 * sec})
	h.lead()

	for i, slot := range []time.Time{at(10 * sec), at(20 * sec), at(30 * sec)} {
		h.clock.waitPending(t, slot)

		// Just before the slot: the scheduler still waits for it.
		h.clock.AdvanceTo(slot.Add(-time.Nanosecond))
		h.clock.waitPending(t, slot)
		if n := len(h.term.claimCalls()); n != i {
			t.Fatalf("before slot %s: %d claims, want %d", slot.UTC(), n, i)
		}
		if js := h.status("report"); !js.NextSlot.Equal(slot) {
			t.Errorf("NextSlot = %s, want %s", js.NextSlot.UTC(), slot.UTC())
		}

		// Fire a little after the slot, so the deadline shows it is
		// measured from the fire time, not from the slot.
		fireAt := slot.Add(2 * sec)
		h.clock.AdvanceTo(fireAt)
		checkRun(t, h.app.next(t), "report", slot, 42, fireAt.Add(30*sec))
	}
	h.clock.waitPending(t, at(40*sec))

	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
	checkClaims(t, h.term.claimCalls(),
		claimCall{job: "report", slot: at(10 * sec), won: true},
		claimCall{job: "report", slot: at(20 * sec), won: true},
		claimCall{job: "report", slot: at(30 * sec), won: true},
	)
}

// 2. A stored last slot ahead of the local clock (a peer whose clock runs
// ahead) moves the first slot past it, and the term then follows the
// fleet's time: it does not wait for its own clock to catch up (the fleet
// would fire nothing meanwhile). One behind it changes nothing.
func TestStartsAfterStoredLastSlot(t *testing.T) {
	const sec = time.Second
	for _, c := range []struct {
		name         string
		stored       time.Time
		lastSlotErrs int
		first        time.Time
	}{
		{"none stored", time.Time{}, 0, at(10 * sec)},
		{"stored at the clock", at(0), 0, at(10 * sec)},
		{"stored ahead on a slot", at(40 * sec), 0, at(50 * sec)},
		{"stored ahead between slots", at(45 * sec), 0, at(50 * sec)},
		{"stored ahead after read errors", at(45 * sec), 2, at(50 * sec)},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, []Job{job("sync", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimRetry: 100 * time.Millisecond})
			if !c.stored.IsZero() {
				h.term.setLast("sync", c.stored)
			}
			h.term.lastSlotErrs = c.lastSlotErrs
			h.lead()

			// Read errors are retried after ClaimRetry, doubling.
			wait := 100 * time.Millisecond
			for range c.lastSlotErrs {
				d := h.clock.nextWaiter(t)
				if want := h.clock.Now().Add(wait); !d.Equal(want) {
					t.Fatalf("LastSlot retry at %s, want %s", d.UTC(), want.UTC())
				}
				h.clock.AdvanceTo(d)
				wait *= 2
			}
			var ahead time.Duration
			if c.stored.After(h.clock.Now()) {
				ahead = c.stored.Sub(h.clock.Now())
			}
			local := c.first.Add(-ahead) // when the first slot is due here
			if d := h.clock.nextWaiter(t); !d.Equal(local) {
				t.Fatalf("first wait until %s, want %s", d.UTC(), local.UTC())
			}
			if js := h.status("sync"); !js.NextSlot.Equal(c.first) {
				t.Errorf("NextSlot = %s, want %s", js.NextSlot.UTC(), c.first.UTC())
			}

			// Walking the clock up to just before the first slot
			// claims nothing.
			for now := h.clock.Now().Add(sec); now.Before(local); now = now.Add(5 * sec) {
				h.clock.AdvanceTo(now)
			}
			h.clock.AdvanceTo(local.Add(-time.Nanosecond))
			h.clock.waitPending(t, local)
			if cl := h.term.claimCalls(); len(cl) != 0 {
				t.Fatalf("claims before the first slot: %v", cl)
			}

			h.clock.AdvanceTo(local)
			checkRun(t, h.app.next(t), "sync", c.first, 42, local.Add(30*sec))
			h.clock.waitPending(t, local.Add(10*sec))
			if rest := h.finish(); len(rest) != 0 {
				checkSlots(t, "extra triggers", rest)
			}
			checkClaims(t, h.term.claimCalls(), claimCall{job: "sync", slot: c.first, won: true})
		})
	}
}

// 3. A slot claimed by someone else is not triggered, and the scheduler
// continues after the stored slot.
func TestSkipsSlotClaimedElsewhere(t *testing.T) {
	const sec = time.Second
	t.Run("peer ahead", func(t *testing.T) {
		h := newHarness(t, []Job{job("mail", 10*sec)}, Options{LeaseMargin: 5 * sec})
		h.lead()

		h.clock.waitPending(t, at(10*sec))
		h.clock.AdvanceTo(at(10 * sec))
		checkRun(t, h.app.next(t), "mail", at(10*sec), 42, at(40*sec))
		h.clock.waitPending(t, at(20*sec))

		// A peer whose clock runs ahead claims up to 40s meanwhile.
		h.term.setLast("mail", at(40*sec))
		h.clock.AdvanceTo(at(20 * sec))
		h.clock.waitPending(t, at(50*sec))
		if js := h.status("mail"); !js.NextSlot.Equal(at(50 * sec)) {
			t.Errorf("NextSlot = %s, want %s", js.NextSlot.UTC(), at(50*sec).UTC())
		}

		// 30s and 40s pass without a claim.
		h.clock.AdvanceTo(at(30 * sec))
		h.clock.AdvanceTo(at(40 * sec))
		h.clock.waitPending(t, at(50*sec))

		h.clock.AdvanceTo(at(50 * sec))
		checkRun(t, h.app.next(t), "mail", at(50*sec), 42, at(80*sec))
		h.clock.waitPending(t, at(60*sec))

		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "extra triggers", rest)
		}
		checkClaims(t, h.term.claimCalls(),
			claimCall{job: "mail", slot: at(10 * sec), won: true},
			claimCall{job: "mail", slot: at(20 * sec)},
			claimCall{job: "mail", slot: at(50 * sec), won: true},
		)
	})

	t.Run("same slot claimed", func(t *testing.T) {
		h := newHarness(t, []Job{job("mail", 10*sec)}, Options{LeaseMargin: 5 * sec})
		h.lead()
		h.clock.waitPending(t, at(10*sec))
		// Someone claimed exactly the slot we wait for.
		h.term.setLast("mail", at(10*sec))
		h.clock.AdvanceTo(at(10 * sec))
		h.clock.waitPending(t, at(20*sec))
		h.clock.AdvanceTo(at(20 * sec))
		checkRun(t, h.app.next(t), "mail", at(20*sec), 42, at(50*sec))
		h.clock.waitPending(t, at(30*sec))
		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "extra triggers", rest)
		}
		checkClaims(t, h.term.claimCalls(),
			claimCall{job: "mail", slot: at(10 * sec)},
			claimCall{job: "mail", slot: at(20 * sec), won: true},
		)
	})
}

// 4. A lease shorter than the margin: no claim, no trigger, recorded as
// missed with reason lease_short. Checked again after the claim.
func TestLeaseShort(t *testing.T) {
	const sec = time.Second
	t.Run("before claim", func(t *testing.T) {
		h := newHarness(t, []Job{job("bill", 10*sec)}, Options{LeaseMargin: 5 * sec})
		h.term.setRemaining(5*sec - time.Nanosecond)
		h.lead()

		h.clock.waitPending(t, at(10*sec))
		h.clock.AdvanceTo(at(10 * sec))
		h.clock.waitPending(t, at(20*sec))
		if cl := h.term.claimCalls(); len(cl) != 0 {
			t.Fatalf("claimed with a short lease: %v", cl)
		}
		checkLast(t, h.status("bill").Last, LastRun{Slot: at(10 * sec), Outcome: fate.Missed, Reason: "lease_short"})

		// A lease of exactly the margin is enough.
		h.term.setRemaining(5 * sec)
		h.clock.AdvanceTo(at(20 * sec))
		checkRun(t, h.app.next(t), "bill", at(20*sec), 42, at(50*sec))
		h.clock.waitPending(t, at(30*sec))
		h.settle()
		checkLast(t, h.status("bill").Last, LastRun{Slot: at(20 * sec), Outcome: "ok", Status: 200, Duration: sec})

		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "extra triggers", rest)
		}
		checkClaims(t, h.term.claimCalls(), claimCall{job: "bill", slot: at(20 * sec), won: true})
	})

	t.Run("after claim", func(t *testing.T) {
		h := newHarness(t, []Job{job("bill", 10*sec)}, Options{LeaseMargin: 5 * sec})
		// The lease runs short while the claim is in progress.
		h.term.afterClaim = func(claimCall) { h.term.setRemaining(sec) }
		h.lead()

		h.clock.waitPending(t, at(10*sec))
		h.clock.AdvanceTo(at(10 * sec))
		h.clock.waitPending(t, at(20*sec))
		checkLast(t, h.status("bill").Last, LastRun{Slot: at(10 * sec), Outcome: fate.Missed, Reason: "lease_short"})
		if got := h.term.getLast("bill"); !got.Equal(at(10 * sec)) {
			t.Errorf("stored slot = %s, want the spent slot %s", got.UTC(), at(10*sec).UTC())
		}
		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "triggers with a short lease", rest)
		}
		checkClaims(t, h.term.claimCalls(), claimCall{job: "bill", slot: at(10 * sec), won: true})
	})
}

// 5. A claim with an unknown outcome is retried while the next slot is not
// due; when it never succeeds the slot is missed with claim_failed.
func TestClaimRetry(t *testing.T) {
	const (
		sec   = time.Second
		retry = 100 * time.Millisecond
	)
	t.Run("error then success", func(t *testing.T) {
		h := newHarness(t, []Job{job("sweep", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimRetry: retry})
		h.term.setClaimErrs(1)
		h.lead()

		if d := h.clock.nextWaiter(t); !d.Equal(at(10 * sec)) {
			t.Fatalf("first wait until %s, want %s", d.UTC(), at(10*sec).UTC())
		}
		h.clock.AdvanceTo(at(10 * sec))
		d := h.clock.nextWaiter(t)
		if want := at(10*sec + retry); !d.Equal(want) {
			t.Fatalf("claim retry at %s, want %s", d.UTC(), want.UTC())
		}
		h.clock.AdvanceTo(d)
		checkRun(t, h.app.next(t), "sweep", at(10*sec), 42, d.Add(30*sec))
		if d := h.clock.nextWaiter(t); !d.Equal(at(20 * sec)) {
			t.Fatalf("then wait until %s, want %s", d.UTC(), at(20*sec).UTC())
		}
		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "extra triggers", rest)
		}
		checkClaims(t, h.term.claimCalls(),
			claimCall{job: "sweep", slot: at(10 * sec), err: errClaim},
			claimCall{job: "sweep", slot: at(10 * sec), won: true},
		)
	})

	t.Run("errors until the next slot", func(t *testing.T) {
		h := newHarness(t, []Job{job("sweep", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimRetry: retry})
		h.term.setClaimErrs(1 << 30)
		h.lead()

		if d := h.clock.nextWaiter(t); !d.Equal(at(10 * sec)) {
			t.Fatalf("first wait until %s, want %s", d.UTC(), at(10*sec).UTC())
		}
		h.clock.AdvanceTo(at(10 * sec))
		// Retries wait 100ms, 200ms, 400ms, 800ms, then 1s each, and
		// stop when the next would not come before the next slot.
		wantWaits := []time.Duration{retry, 2 * retry, 4 * retry, 8 * retry}
		for range 8 {
			wantWaits = append(wantWaits, sec)
		}
		for i, w := range wantWaits {
			d := h.clock.nextWaiter(t)
			if want := h.clock.Now().Add(w); !d.Equal(want) {
				t.Fatalf("retry %d at %s, want %s", i+1, d.UTC(), want.UTC())
			}
			h.clock.AdvanceTo(d)
		}
		if d := h.clock.nextWaiter(t); !d.Equal(at(20 * sec)) {
			t.Fatalf("after giving up, wait until %s, want %s", d.UTC(), at(20*sec).UTC())
		}
		if n := len(h.term.claimCalls()); n != len(wantWaits)+1 {
			t.Errorf("%d claim attempts, want %d", n, len(wantWaits)+1)
		}
		checkLast(t, h.status("sweep").Last, LastRun{Slot: at(10 * sec), Outcome: fate.Missed, Reason: fate.ClaimUnknown})

		// Claims work again: the next slot fires.
		h.term.setClaimErrs(0)
		h.clock.AdvanceTo(at(20 * sec))
		checkRun(t, h.app.next(t), "sweep", at(20*sec), 42, at(50*sec))
		if d := h.clock.nextWaiter(t); !d.Equal(at(30 * sec)) {
			t.Fatalf("then wait until %s, want %s", d.UTC(), at(30*sec).UTC())
		}
		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "extra triggers", rest)
		}
	})

	t.Run("lease runs short while retrying", func(t *testing.T) {
		h := newHarness(t, []Job{job("sweep", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimRetry: retry})
		h.term.setClaimErrs(1 << 30)
		h.term.afterClaim = func(claimCall) { h.term.setRemaining(sec) }
		h.lead()
		h.clock.waitPending(t, at(10*sec))
		h.clock.AdvanceTo(at(10 * sec))
		h.clock.waitPending(t, at(20*sec))
		if n := len(h.term.claimCalls()); n != 1 {
			t.Errorf("%d claim attempts, want 1", n)
		}
		checkLast(t, h.status("sweep").Last, LastRun{Slot: at(10 * sec), Outcome: fate.Missed, Reason: fate.ClaimUnknown})
		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "triggers", rest)
		}
	})

	t.Run("write applied but reply lost", func(t *testing.T) {
		// The failed claim did store the slot: the retry resolves it
		// as this term's, and the slot fires once.
		h := newHarness(t, []Job{job("sweep", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimRetry: retry})
		h.term.setClaimErrs(1)
		h.term.afterClaim = func(c claimCall) {
			if c.err != nil {
				h.term.applyUnknown(c.job, c.slot)
			}
		}
		h.lead()
		h.clock.nextWaiter(t)
		h.clock.AdvanceTo(at(10 * sec))
		d := h.clock.nextWaiter(t)
		h.clock.AdvanceTo(d)
		checkRun(t, h.app.next(t), "sweep", at(10*sec), 42, d.Add(30*sec))
		if d := h.clock.nextWaiter(t); !d.Equal(at(20 * sec)) {
			t.Fatalf("then wait until %s, want %s", d.UTC(), at(20*sec).UTC())
		}
		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "extra triggers", rest)
		}
		checkClaims(t, h.term.claimCalls(),
			claimCall{job: "sweep", slot: at(10 * sec), err: errClaim},
			claimCall{job: "sweep", slot: at(10 * sec), won: true},
		)
	})

	t.Run("refused", func(t *testing.T) {
		// Consul refused the claim: certainly not claimed, recorded as
		// claim_failed at once, not retried.
		h := newHarness(t, []Job{job("sweep", 10*sec)}, Options{LeaseMargin: 5 * sec, ClaimRetry: retry})
		h.term.setClaimErr(errRefused{})
		h.lead()
		h.clock.waitPending(t, at(10*sec))
		h.clock.AdvanceTo(at(10 * sec))
		h.clock.waitPending(t, at(20*sec))
		checkLast(t, h.status("sweep").Last, LastRun{Slot: at(10 * sec), Outcome: fate.Missed, Reason: fate.ClaimFailed})
		if n := len(h.term.claimCalls()); n != 1 {
			t.Errorf("%d claim attempts, want 1", n)
		}
		if rest := h.finish(); len(rest) != 0 {
			checkSlots(t, "triggers", rest)
		}
	})

	t.Run("shutdown while the outcome is unknown", func(t *testing.T) {
		// Leadership ends while a claim's answer is lost: one more
		// attempt resolves it at once; applied, it fires (inside the
		// drain); still unknown, it is recorded, never dropped.
		for _, applied := range []bool{true, false} {
			opts, rec := withRecorder(Options{LeaseMargin: 5 * sec, ClaimRetry: retry})
			h := newHarness(t, []Job{job("sweep", 10*sec)}, opts)
			if applied {
				h.term.setClaimErrs(1)
			} else {
				h.term.setClaimErrs(1 << 30)
			}
			h.term.afterClaim = func(c claimCall) {
				if c.err != nil && applied {
					h.term.applyUnknown(c.job, c.slot)
				}
				h.cancel() // the SIGTERM lands while the claim is in flight
			}
			h.lead()
			h.clock.waitPending(t, at(10*sec))
			h.clock.AdvanceTo(at(10 * sec))
			rest := h.finish()
			if applied {
				if len(rest) != 1 || !rest[0].Slot.Equal(at(10*sec)) {
					t.Errorf("applied: triggers %v, want the slot once", rest)
				}
				continue
			}
			if len(rest) != 0 {
				t.Errorf("unknown: triggers %v, want none", rest)
			}
			checkRecorded(t, rec.all(), LastRun{Outcome: fate.Missed, Reason: fate.ClaimUnknown, Slot: at(10 * sec)})
			if n := len(h.term.claimCalls()); n != 2 {
				t.Errorf("unknown: %d claim attempts, want 2", n)
			}
		}
	})
}

// errRefused is a claim error that says Consul did not apply it.
type errRefused struct{}

func (errRefused) Error() string    { return "fake: claim refused" }
func (errRefused) NotApplied() bool { return true }

// 6. Lead returns promptly when its context ends, without waiting for a
// trigger in flight; Wait waits for it.
func TestLeadReturnsWhileTriggerInFlight(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("export", 10*sec)}, Options{LeaseMargin: 5 * sec})
	h.app.holdJob("export")
	h.lead()

	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	checkRun(t, h.app.next(t), "export", at(10*sec), 42, at(40*sec))
	h.clock.waitPending(t, at(20*sec))

	h.stop() // fails the test unless Lead returns while the trigger is held

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if h.s.Wait(ended) {
		t.Fatal("Wait reported done while a trigger is held open")
	}

	waited := make(chan bool, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), failsafe)
		defer cancel()
		waited <- h.s.Wait(ctx)
	}()
	h.app.release("export")
	if !<-waited {
		t.Fatal("Wait did not report done after the trigger was released")
	}

	// No slot fires after Lead returned, however far the clock moves.
	h.clock.AdvanceTo(at(100 * sec))
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "triggers after Lead returned", rest)
	}
	checkLast(t, h.status("export").Last, LastRun{Slot: at(10 * sec), Outcome: "ok", Status: 200, Duration: sec})
}

// 7. Status lists the jobs sorted by name, with spec, location, the slot
// awaited while leading, and the last run as the app answered it.
func TestStatus(t *testing.T) {
	const sec = time.Second
	plus2 := time.FixedZone("Test/Plus2", 2*60*60)
	zeta := job("zeta", 10*sec)
	zeta.Spec = "*/10 * * * * *"
	alpha := job("alpha", 5*sec)
	alpha.Location = plus2
	mid := job("mid", 10*sec)
	mid.AllowOverlap = true
	h := newHarness(t, []Job{zeta, alpha, mid}, Options{LeaseMargin: 5 * sec})
	h.app.setResult("alpha", Result{Outcome: "ok", Status: 204, Duration: 1500 * time.Millisecond})
	h.app.setResult("zeta", Result{Outcome: "failed", Status: 500, Duration: 2 * sec, Err: errors.New("boom")})
	h.app.holdJob("mid")

	type want struct {
		name, spec, loc string
		next            time.Time
		last            *LastRun
	}
	check := func(what string, ws ...want) {
		t.Helper()
		st := h.s.Status()
		if len(st) != len(ws) {
			t.Fatalf("%s: %d jobs, want %d", what, len(st), len(ws))
		}
		for i, w := range ws {
			g := st[i]
			if g.Name != w.name || g.Spec != w.spec || g.Location != w.loc || !g.NextSlot.Equal(w.next) {
				t.Errorf("%s: job %d = {%s %q %s next=%s}, want {%s %q %s next=%s}", what, i,
					g.Name, g.Spec, g.Location, g.NextSlot.UTC(), w.name, w.spec, w.loc, w.next.UTC())
			}
			if w.last == nil {
				if g.Last != nil {
					t.Errorf("%s: %s Last = %+v, want nil", what, w.name, *g.Last)
				}
				continue
			}
			checkLast(t, g.Last, *w.last)
		}
	}

	// Not leading: the next slot after now.
	check("before leading",
		want{"alpha", "@every 5s", "Test/Plus2", at(5 * sec), nil},
		want{"mid", "@every 10s", "UTC", at(10 * sec), nil},
		want{"zeta", "*/10 * * * * *", "UTC", at(10 * sec), nil},
	)

	// Leading: the slot awaited, which for zeta is after its stored slot.
	// That slot is 10s ahead of this clock (a peer's clock ran ahead), so
	// zeta follows the fleet's time: its slots fire 10s early here.
	h.term.setLast("zeta", at(10*sec))
	h.lead()
	h.clock.waitPending(t, at(5*sec), at(10*sec), at(10*sec))
	check("leading",
		want{"alpha", "@every 5s", "Test/Plus2", at(5 * sec), nil},
		want{"mid", "@every 10s", "UTC", at(10 * sec), nil},
		want{"zeta", "*/10 * * * * *", "UTC", at(20 * sec), nil},
	)

	h.clock.AdvanceTo(at(5 * sec))
	h.app.next(t)
	h.clock.waitPending(t, at(10*sec), at(10*sec), at(10*sec))
	h.settle()
	alphaLast := &LastRun{Slot: at(5 * sec), Outcome: "ok", Status: 204, Duration: 1500 * time.Millisecond}
	check("after alpha's run",
		want{"alpha", "@every 5s", "Test/Plus2", at(10 * sec), alphaLast},
		want{"mid", "@every 10s", "UTC", at(10 * sec), nil},
		want{"zeta", "*/10 * * * * *", "UTC", at(20 * sec), nil},
	)

	h.clock.AdvanceTo(at(10 * sec))
	for range 3 {
		h.app.next(t)
	}
	h.clock.waitPending(t, at(15*sec), at(20*sec), at(20*sec))
	h.clock.AdvanceTo(at(15 * sec))
	h.app.next(t)
	h.clock.waitPending(t, at(20*sec), at(20*sec), at(20*sec))
	h.clock.AdvanceTo(at(20 * sec))
	for range 3 {
		h.app.next(t)
	}
	h.clock.waitPending(t, at(25*sec), at(30*sec), at(30*sec))
	// mid's runs are still held: Status has no result for it yet.
	h.app.release("mid")
	h.settle()
	check("after zeta's run",
		want{"alpha", "@every 5s", "Test/Plus2", at(25 * sec),
			&LastRun{Slot: at(20 * sec), Outcome: "ok", Status: 204, Duration: 1500 * time.Millisecond}},
		want{"mid", "@every 10s", "UTC", at(30 * sec),
			&LastRun{Slot: at(20 * sec), Outcome: "ok", Status: 200, Duration: sec}},
		want{"zeta", "*/10 * * * * *", "UTC", at(40 * sec),
			&LastRun{Slot: at(30 * sec), Outcome: "failed", Status: 500, Duration: 2 * sec}},
	)

	// Not leading any more: back to the next slot after now.
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
	// (Past the slots awaited while leading, so a stale one shows.)
	h.clock.AdvanceTo(at(41 * sec))
	st := h.s.Status()
	for i, w := range []time.Time{at(45 * sec), at(50 * sec), at(50 * sec)} {
		if !st[i].NextSlot.Equal(w) {
			t.Errorf("after leading: %s NextSlot = %s, want %s", st[i].Name, st[i].NextSlot.UTC(), w.UTC())
		}
	}
	if loc := st[0].NextSlot.Location(); loc != plus2 {
		t.Errorf("alpha NextSlot in %s, want %s", loc, plus2)
	}
}

// 8. Jobs run independently: a held trigger of one job does not delay
// another job's slots.
func TestJobsRunIndependently(t *testing.T) {
	const sec = time.Second
	a := job("a", 10*sec)
	a.AllowOverlap = true
	h := newHarness(t, []Job{a, job("b", 5*sec)}, Options{LeaseMargin: 5 * sec})
	h.app.holdJob("a")
	h.lead()

	h.clock.waitPending(t, at(5*sec), at(10*sec))
	h.clock.AdvanceTo(at(5 * sec))
	checkRun(t, h.app.next(t), "b", at(5*sec), 42, at(35*sec))
	h.clock.waitPending(t, at(10*sec), at(10*sec))

	h.clock.AdvanceTo(at(10 * sec))
	got := map[string]Run{}
	for range 2 {
		r := h.app.next(t)
		got[r.Job] = r
	}
	checkRun(t, got["a"], "a", at(10*sec), 42, at(40*sec))
	checkRun(t, got["b"], "b", at(10*sec), 42, at(40*sec))
	h.clock.waitPending(t, at(15*sec), at(20*sec))

	// a's 10s run is still held; b goes on.
	h.clock.AdvanceTo(at(15 * sec))
	checkRun(t, h.app.next(t), "b", at(15*sec), 42, at(45*sec))
	h.clock.waitPending(t, at(20*sec), at(20*sec))

	// And a's next slot fires even though its previous run is held.
	h.clock.AdvanceTo(at(20 * sec))
	got = map[string]Run{}
	for range 2 {
		r := h.app.next(t)
		got[r.Job] = r
	}
	checkRun(t, got["a"], "a", at(20*sec), 42, at(50*sec))
	checkRun(t, got["b"], "b", at(20*sec), 42, at(50*sec))
	h.clock.waitPending(t, at(25*sec), at(30*sec))

	h.stop()
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if h.s.Wait(ended) {
		t.Fatal("Wait reported done while a's runs are held")
	}
	h.app.release("a")
	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
	checkLast(t, h.status("a").Last, LastRun{Slot: at(20 * sec), Outcome: "ok", Status: 200, Duration: sec})
}

// TestLateWakeFiresOnlyLatestDueSlot: after a stall that overslept several
// slots, only the latest due slot is claimed and fired, once, not a burst.
func TestLateWakeFiresOnlyLatestDueSlot(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("report", 10*sec)}, Options{LeaseMargin: 5 * sec})
	h.lead()

	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(65 * sec)) // slots 10..60 are all due
	checkRun(t, h.app.next(t), "report", at(60*sec), 42, at(65*sec).Add(30*sec))
	h.clock.waitPending(t, at(70*sec))

	if rest := h.finish(); len(rest) != 0 {
		checkSlots(t, "extra triggers", rest)
	}
	checkClaims(t, h.term.claimCalls(), claimCall{job: "report", slot: at(60 * sec), won: true})
}

// Each send carries how long the lease, less the margin, still ran at the
// check just before it, so that the App can refuse to put it on the wire
// after a pause that outlasted the lease.
func TestSendCarriesLeaseBudget(t *testing.T) {
	const sec = time.Second
	h := newHarness(t, []Job{job("sweep", 10*sec)}, Options{LeaseMargin: 5 * sec})
	h.term.setRemaining(12 * sec)
	h.lead()
	h.clock.waitPending(t, at(10*sec))
	h.clock.AdvanceTo(at(10 * sec))
	if r := h.app.next(t); r.SendWithin != 7*sec {
		t.Errorf("run %+v: SendWithin %s, want the lease 12s less the margin 5s", r, r.SendWithin)
	}
	h.finish()
}
