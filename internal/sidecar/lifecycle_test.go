package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/metrics"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// These tests run the sidecar in-process, as supercronic tests that its
// runner waits for its jobs: a fake elector that records when it hands the
// lock on, a fake ledger that hands out run-now requests, and an httptest
// app that records triggers and drain polls, all into one ordered log.

// events is the ordered log shared by the app, the elector and the ledger.
type events struct {
	mu      sync.Mutex
	list    []string
	changed chan struct{}
}

func newEvents() *events { return &events{changed: make(chan struct{})} }

func (e *events) add(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, fmt.Sprintf(format, args...))
	close(e.changed)
	e.changed = make(chan struct{})
}

func (e *events) snapshot() ([]string, <-chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list), e.changed
}

// await waits until the log holds want (n times), and returns the log.
func (e *events) await(t *testing.T, want string, n int) []string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		list, changed := e.snapshot()
		if count(list, want) >= n {
			return list
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("no %d× %q within 10s; events: %q", n, want, list)
		}
	}
}

func count(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// before asserts that a's first occurrence comes before b's.
func before(t *testing.T, list []string, a, b string) {
	t.Helper()
	i, j := slices.Index(list, a), slices.Index(list, b)
	if i < 0 || j < 0 || i > j {
		t.Fatalf("want %q before %q; events: %q", a, b, list)
	}
}

// fakeApp is the co-located app: a job answers 202 and runs until the
// test releases it; /drain reports what runs; /health answers as set.
type fakeApp struct {
	ev      *events
	running atomic.Int32
	release chan struct{} // closing it ends the runs
	healthy atomic.Bool
}

func newFakeApp(t *testing.T, ev *events) (*fakeApp, *url.URL) {
	a := &fakeApp{ev: ev, release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs/{name}", func(w http.ResponseWriter, r *http.Request) {
		a.running.Add(1)
		a.ev.add("run %s", r.PathValue("name"))
		go func() {
			<-a.release
			a.ev.add("run end")
			a.running.Add(-1)
		}()
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, _ *http.Request) {
		n := a.running.Load()
		a.ev.add("drain %d", n)
		_ = json.NewEncoder(w).Encode(map[string]int32{"running": n})
	})
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if a.healthy.Load() {
			a.ev.add("health ok")
			return
		}
		a.ev.add("health failed")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return a, u
}

// fakeElector leads at once, every time it is asked, with a new token;
// lose() ends the current term as a lost lock would.
type fakeElector struct {
	ev    *events
	token atomic.Uint64
	loss  chan struct{}
}

func newFakeElector(ev *events) *fakeElector {
	return &fakeElector{ev: ev, loss: make(chan struct{}, 1)}
}

func (f *fakeElector) lose() { f.loss <- struct{}{} }

func (f *fakeElector) Run(ctx context.Context, lead func(context.Context, Term) error) error {
	f.ev.add("campaign")
	for ctx.Err() == nil {
		lctx, cancel := context.WithCancel(ctx)
		var lost atomic.Bool
		done := make(chan struct{})
		go func() {
			select {
			case <-f.loss:
				lost.Store(true)
				cancel()
			case <-done:
			}
		}()
		term := &fakeTerm{token: f.token.Add(1), requests: map[uint64]bool{}}
		f.ev.add("lead %d", term.token)
		err := lead(lctx, term)
		close(done)
		cancel()
		switch {
		case err != nil:
			f.ev.add("abandon")
			return err
		case lost.Load():
			f.ev.add("lost")
		default:
			f.ev.add("release")
			return nil
		}
	}
	return nil
}

// fakeTerm never runs out of lease and claims in memory.
type fakeTerm struct {
	token    uint64
	mu       sync.Mutex
	last     map[string]time.Time
	requests map[uint64]bool
}

func (t *fakeTerm) Token() uint64            { return t.token }
func (t *fakeTerm) Remaining() time.Duration { return time.Hour }

func (t *fakeTerm) LastClaim(context.Context, string) (kvlayout.Claim, error) {
	return kvlayout.Claim{}, nil
}

func (t *fakeTerm) PreviousClean() bool { return true }

func (t *fakeTerm) Claim(_ context.Context, job string, slot time.Time) (bool, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.last == nil {
		t.last = map[string]time.Time{}
	}
	if !t.last[job].Before(slot) {
		return false, false, nil
	}
	t.last[job] = slot
	return true, false, nil
}

func (t *fakeTerm) TakeRequest(_ context.Context, _ string, index uint64) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	took := !t.requests[index]
	t.requests[index] = true
	return took, nil
}

// fakeLedger hands out the queued run-now requests once, then blocks like
// a blocking query with no change; it keeps every appended entry.
type fakeLedger struct {
	ev      *events
	mu      sync.Mutex
	pending []kvlayout.Request
	queued  chan struct{} // closed and replaced when a request is queued
	entries []kvlayout.Entry
}

func newFakeLedger(ev *events) *fakeLedger { return &fakeLedger{ev: ev, queued: make(chan struct{})} }

func (l *fakeLedger) queue(r kvlayout.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pending = append(l.pending, r)
	close(l.queued)
	l.queued = make(chan struct{})
}

func (l *fakeLedger) Requests(ctx context.Context, _ uint64) ([]kvlayout.Request, uint64, error) {
	for {
		l.mu.Lock()
		reqs, queued := l.pending, l.queued
		l.pending = nil
		l.mu.Unlock()
		if len(reqs) > 0 {
			return reqs, 1, nil
		}
		select {
		case <-ctx.Done():
			return nil, 1, ctx.Err()
		case <-queued:
		}
	}
}

func (l *fakeLedger) AppendAll(_ context.Context, entries map[string][]kvlayout.Entry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, job := range slices.Sorted(maps.Keys(entries)) {
		for _, e := range entries[job] {
			l.entries = append(l.entries, e)
			l.ev.add("history %s %s", job, e.Outcome)
		}
	}
	return nil
}

func (l *fakeLedger) Snapshot(context.Context) (ledger.Fleet, error) { return ledger.Fleet{}, nil }

func (l *fakeLedger) MarkRequests(context.Context) error { return nil }

func (l *fakeLedger) History(context.Context, string) ([]kvlayout.Entry, error) { return nil, nil }

// never is a schedule with no slot in the tests' lifetime: triggers come
// from run-now requests only.
type never struct{}

func (never) Next(t time.Time) time.Time { return t.AddDate(100, 0, 0) }

type rig struct {
	ev      *events
	app     *fakeApp
	elector *fakeElector
	ledger  *fakeLedger
	s       *Sidecar
	cancel  context.CancelFunc
	done    chan error
}

// start runs a sidecar with one job, "report", against the fakes; tweak
// adjusts the configuration first.
func start(t *testing.T, tweak func(*config.Config)) *rig {
	t.Helper()
	ev := newEvents()
	app, u := newFakeApp(t, ev)
	cfg := config.Config{
		Service: "lifecycle", ID: "sidecar-1", KVPrefix: "leadercron/lifecycle", AppURL: u,
		Lock: config.LockConsul, SessionTTL: 15 * time.Second,
		DrainTimeout: 10 * time.Second, DrainInterval: 20 * time.Millisecond, TriggerTimeout: 5 * time.Second,
		Jobs: []config.Job{{Job: scheduler.Job{Name: "report", Spec: "never", Schedule: never{},
			Location: time.UTC, Timeout: 5 * time.Second}}},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := metrics.New(nil, metrics.Options{Jobs: []string{"report"}, DrainTimeout: cfg.DrainTimeout})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{ev: ev, app: app, elector: newFakeElector(ev), ledger: newFakeLedger(ev), done: make(chan error, 1)}
	r.s = New(cfg, Deps{Elector: r.elector, Ledger: r.ledger, Metrics: m, Clock: scheduler.SystemClock{},
		AppClient: appclient.New(cfg.AppURL, cfg.ID, appclient.NewHTTPClient()),
		Log:       hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn})})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.s.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.app.release:
		default:
			close(r.app.release)
		}
		<-r.done
	})
	return r
}

// runNow queues a run-now request for report and waits for its trigger.
func (r *rig) runNow(t *testing.T, id string, index uint64, n int) {
	t.Helper()
	r.ledger.queue(kvlayout.Request{ID: id, By: "test", At: time.Now(), Job: "report", ModifyIndex: index})
	r.ev.await(t, "run report", n)
}

func (r *rig) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return within 15s")
		return nil
	}
}

// The stop order: a stop signal while a run is in flight waits for the
// run (the drain reports it), and only then does the lead function
// return, so the elector hands the lock on after the app is drained.
func TestStopDrainsBeforeRelease(t *testing.T) {
	r := start(t, nil)
	r.ev.await(t, "lead 1", 1)
	r.runNow(t, "r1", 1, 1)
	r.cancel()
	// The app reports the run in flight at least once: the sidecar is
	// draining and has not handed the lock on.
	r.ev.await(t, "drain 1", 1)
	close(r.app.release)
	if err := r.wait(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	list, _ := r.ev.snapshot()
	before(t, list, "drain 1", "run end")
	before(t, list, "run end", "drain 0")
	before(t, list, "drain 0", "release")
	// The run-now's fate was written before Run returned.
	before(t, list, "history report fired", "release")
}

// A leadership lost (not ended by this sidecar) is not drained: the
// sidecar stops at once and campaigns again.
func TestLossDoesNotDrain(t *testing.T) {
	r := start(t, nil)
	r.ev.await(t, "lead 1", 1)
	r.runNow(t, "r1", 1, 1)
	r.elector.lose()
	list := r.ev.await(t, "lead 2", 1)
	if n := count(list, "lost"); n != 1 {
		t.Fatalf("events %q: want one loss", list)
	}
	for _, e := range list {
		if strings.HasPrefix(e, "drain") {
			t.Fatalf("drained after a loss; events: %q", list)
		}
	}
	// The new term still fires run-now requests.
	r.runNow(t, "r2", 2, 2)
	close(r.app.release)
	r.ev.await(t, "run end", 2)
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	list, _ = r.ev.snapshot()
	before(t, list, "lead 2", "drain 0")
	before(t, list, "drain 0", "release")
}

// POST /handover drains and releases while the process runs on, and the
// sidecar never campaigns again.
func TestHandoverReleasesAndStaysOut(t *testing.T) {
	r := start(t, nil)
	r.ev.await(t, "lead 1", 1)
	r.runNow(t, "r1", 1, 1)
	got := make(chan string, 1)
	go func() {
		res, err := r.s.handover(context.Background())
		got <- fmt.Sprintf("%s %v", res.Outcome, err)
	}()
	r.ev.await(t, "drain 1", 1)
	close(r.app.release)
	if res := <-got; res != "released <nil>" {
		t.Fatalf("handover = %s, want released <nil>", res)
	}
	list, _ := r.ev.snapshot()
	before(t, list, "run end", "release")
	if st := r.s.status(); st.Campaigning || !st.HandedOver || st.Leader {
		t.Fatalf("status after handover: campaigning %v, handed over %v, leader %v", st.Campaigning, st.HandedOver, st.Leader)
	}
	if res, _ := r.s.handover(context.Background()); res.Outcome != "already" {
		t.Fatalf("second handover = %s, want already", res.Outcome)
	}
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	list, _ = r.ev.snapshot()
	if n := count(list, "campaign"); n != 1 {
		t.Fatalf("campaigned %d times, want 1; events: %q", n, list)
	}
}

// The health gate: no campaign until the app's health URL answers; a
// failing app while leading hands leadership over (drained), and a
// recovered app campaigns again.
func TestHealthGate(t *testing.T) {
	r := start(t, func(c *config.Config) {
		c.AppHealthURL = c.AppURL.JoinPath("health")
		c.AppHealthInterval = 20 * time.Millisecond
		c.AppHealthFailures = 2
	})
	list := r.ev.await(t, "health failed", 3)
	if n := count(list, "campaign"); n != 0 {
		t.Fatalf("campaigned while the app was unhealthy; events: %q", list)
	}
	r.app.healthy.Store(true)
	r.ev.await(t, "lead 1", 1)
	r.app.healthy.Store(false)
	list = r.ev.await(t, "release", 1)
	before(t, list, "lead 1", "drain 0")
	before(t, list, "drain 0", "release")
	r.app.healthy.Store(true)
	r.ev.await(t, "lead 2", 1)
}

// A drain that does not finish in LEADERCRON_DRAIN_TIMEOUT ends the run
// with ErrDrainTimeout, and the lock is abandoned, not released.
func TestDrainTimeoutAbandonsTheLock(t *testing.T) {
	r := start(t, func(c *config.Config) { c.DrainTimeout = 300 * time.Millisecond })
	r.ev.await(t, "lead 1", 1)
	r.runNow(t, "r1", 1, 1)
	r.cancel()
	err := r.wait(t)
	if !errors.Is(err, appclient.ErrDrainTimeout) {
		t.Fatalf("Run = %v, want ErrDrainTimeout", err)
	}
	list, _ := r.ev.snapshot()
	if count(list, "abandon") != 1 || count(list, "release") != 0 {
		t.Fatalf("want the lock abandoned, not released; events: %q", list)
	}
}

// The history writer records every fate of the term, in order.
func TestHistoryRecordsRunNow(t *testing.T) {
	r := start(t, nil)
	r.ev.await(t, "lead 1", 1)
	r.runNow(t, "r1", 1, 1)
	r.ev.await(t, "history report fired", 1)
	r.ledger.mu.Lock()
	e := r.ledger.entries[0]
	r.ledger.mu.Unlock()
	if !e.RunNow || e.Request != "r1" || e.Outcome != fate.Fired || e.FencingToken != 1 || e.ID != "sidecar-1" {
		t.Fatalf("history entry %+v", e)
	}
}
