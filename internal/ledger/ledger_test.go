package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
)

var t0 = time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

// hookTransport calls before (once per matching request) ahead of
// forwarding it.
type hookTransport struct {
	next   http.RoundTripper
	mu     sync.Mutex
	before func(*http.Request)
	puts   atomic.Int64
}

func (h *hookTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut {
		h.puts.Add(1)
	}
	h.mu.Lock()
	f := h.before
	h.mu.Unlock()
	if f != nil {
		f(r)
	}
	return h.next.RoundTrip(r)
}

func hookedClient(t *testing.T, addr string) (*api.Client, *hookTransport) {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	cfg.Token = ""
	h := &hookTransport{next: cfg.Transport}
	cfg.HttpClient = &http.Client{Transport: h}
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, h
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func entry(i int) kvlayout.Entry {
	return kvlayout.Entry{Slot: t0.Add(time.Duration(i) * time.Minute), Outcome: fate.Fired, HTTPStatus: 200,
		DurationMS: int64(i), Attempts: 1, FencingToken: 7, ID: "a", At: t0.Add(time.Duration(i)*time.Minute + time.Second)}
}

// One agent for the whole package: each subtest uses its own prefix.
func TestLedger(t *testing.T) {
	agent := consultest.Start(t)
	addr := agent.Addr
	n := 0
	prefix := func() string { n++; return fmt.Sprintf("leadercron/t%d", n) }

	// With the marker, a blocking list of the requests folder sleeps
	// through claim and history writes under the same prefix (one per
	// slot) and wakes for a request. Without it, Consul wakes it for any
	// of them: the control half shows the fault the marker fixes.
	t.Run("RequestsWatchIsQuiet", func(t *testing.T) {
		ctx := ctxT(t)
		c := consultest.Client(t, addr)
		for _, marked := range []bool{false, true} {
			p := prefix()
			s := ledger.New(c, p)
			keys := kvlayout.New(p)
			if _, err := c.KV().Put(&api.KVPair{Key: keys.Claim("job"), Value: []byte("{}")}, nil); err != nil {
				t.Fatal(err)
			}
			if marked {
				if err := s.MarkRequests(ctx); err != nil {
					t.Fatal(err)
				}
				if err := s.MarkRequests(ctx); err != nil { // idempotent
					t.Fatal(err)
				}
			}
			_, index, err := s.Requests(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			woke := make(chan []kvlayout.Request, 1)
			go func() {
				reqs, _, _ := s.Requests(ctx, index)
				woke <- reqs
			}()
			for i := range 20 {
				if _, err := c.KV().Put(&api.KVPair{Key: keys.Claim("job"), Value: fmt.Appendf(nil, `{"n":%d}`, i)}, nil); err != nil {
					t.Fatal(err)
				}
				if _, err := c.KV().Put(&api.KVPair{Key: keys.History("job"), Value: []byte("[]")}, nil); err != nil {
					t.Fatal(err)
				}
			}
			// No event marks "did not wake": give a woken query the
			// time a loopback answer takes, many times over.
			select {
			case reqs := <-woke:
				if marked {
					t.Fatalf("marked folder: the watch woke for claim and history writes (requests %v)", reqs)
				}
				continue // the control: the fault is real
			case <-time.After(500 * time.Millisecond):
				if !marked {
					t.Fatal("unmarked folder: the watch slept through 40 writes; the control no longer shows the fault")
				}
			}
			if _, _, err := s.RequestRun(ctx, "job", "alice"); err != nil {
				t.Fatal(err)
			}
			select {
			case reqs := <-woke:
				if len(reqs) != 1 || reqs[0].Job != "job" {
					t.Fatalf("woke with %+v, want the one request (the marker is not a request)", reqs)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the watch did not wake for a request")
			}
		}
	})

	// A batch of many jobs' entries is one Txn once the lists are
	// cached; a list another writer changed is re-read and retried
	// alone, and nothing is lost or doubled.
	t.Run("AppendAllBatches", func(t *testing.T) {
		ctx := ctxT(t)
		p := prefix()
		c, hook := hookedClient(t, addr)
		s := ledger.New(c, p)
		batch := func(round int) map[string][]kvlayout.Entry {
			m := map[string][]kvlayout.Entry{}
			for j := range 40 {
				m[fmt.Sprintf("job%02d", j)] = []kvlayout.Entry{entry(2 * round), entry(2*round + 1)}
			}
			return m
		}
		if err := s.AppendAll(ctx, batch(0)); err != nil { // reads 40 lists, then one Txn
			t.Fatal(err)
		}
		puts := hook.puts.Load()
		if err := s.AppendAll(ctx, batch(1)); err != nil {
			t.Fatal(err)
		}
		if n := hook.puts.Load() - puts; n != 1 {
			t.Errorf("%d writes for 40 cached lists, want 1 Txn", n)
		}
		// Another writer appends to job07 behind this Store's cache.
		if err := ledger.New(consultest.Client(t, addr), p).Append(ctx, "job07", entry(100)); err != nil {
			t.Fatal(err)
		}
		puts = hook.puts.Load()
		if err := s.AppendAll(ctx, batch(2)); err != nil {
			t.Fatal(err)
		}
		if n := hook.puts.Load() - puts; n != 2 {
			t.Errorf("%d writes with one list changed behind the cache, want 2 (the batch, then the others again with job07 re-read)", n)
		}
		if err := s.AppendAll(ctx, batch(2)); err != nil { // a repeat adds nothing
			t.Fatal(err)
		}
		for _, job := range []string{"job00", "job07", "job39"} {
			list, err := s.History(ctx, job)
			if err != nil {
				t.Fatal(err)
			}
			want := 6
			if job == "job07" {
				want = 7
			}
			if len(list) != want {
				t.Errorf("%s holds %d entries, want %d: %+v", job, len(list), want, list)
			}
		}
	})

	// A batch Txn that Consul applied but whose answer was lost is
	// unknown: AppendAll re-reads and retries, and finds the entries
	// written, so each is stored exactly once.
	t.Run("AppendAllAnswerLost", func(t *testing.T) {
		ctx := ctxT(t)
		p := prefix()
		cfg := api.DefaultNonPooledConfig()
		cfg.Address = addr
		lt := &loseOnce{next: cfg.Transport}
		cfg.HttpClient = &http.Client{Transport: lt}
		c, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		s := ledger.New(c, p)
		batch := map[string][]kvlayout.Entry{"a": {entry(1)}, "b": {entry(1), entry(2)}}
		if err := s.AppendAll(ctx, batch); err != nil {
			t.Fatalf("AppendAll with one answer lost = %v, want the retry to resolve it", err)
		}
		if !lt.lost.Load() {
			t.Fatal("no answer was lost: the fault did nothing")
		}
		for job, want := range map[string]int{"a": 1, "b": 2} {
			list, err := s.History(ctx, job)
			if err != nil || len(list) != want {
				t.Errorf("%s: %d entries (%v), want %d: none lost, none doubled", job, len(list), err, want)
			}
		}
	})

	t.Run("ConcurrentAppendsLoseNothing", func(t *testing.T) {
		ctx := ctxT(t)
		p := prefix()
		const writers, each = 8, 5
		var wg sync.WaitGroup
		errs := make(chan error, writers*each)
		var hooks []*hookTransport
		for w := range writers {
			c, h := hookedClient(t, addr)
			hooks = append(hooks, h)
			s := ledger.New(c, p)
			wg.Go(func() {
				for i := range each {
					if err := s.Append(ctx, "job", entry(w*each+i)); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		var puts int64
		for _, h := range hooks {
			puts += h.puts.Load()
		}
		t.Logf("%d appends took %d CAS writes", writers*each, puts)
		list, err := ledger.New(consultest.Client(t, addr), p).History(ctx, "job")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != writers*each {
			t.Fatalf("history has %d entries, want %d", len(list), writers*each)
		}
		for i, e := range list {
			if want := entry(writers*each - 1 - i); !e.Slot.Equal(want.Slot) || e.DurationMS != want.DurationMS {
				t.Fatalf("entry %d = %+v, want slot %s (newest first, each once)", i, e, want.Slot)
			}
		}
	})

	t.Run("AppendRetriesAfterCASConflict", func(t *testing.T) {
		ctx := ctxT(t)
		p := prefix()
		other := ledger.New(consultest.Client(t, addr), p)
		if err := other.Append(ctx, "job", entry(1)); err != nil {
			t.Fatal(err)
		}
		c, h := hookedClient(t, addr)
		var once sync.Once
		h.before = func(r *http.Request) {
			if r.Method == http.MethodPut {
				// Another writer gets in between our read and our CAS.
				once.Do(func() {
					if err := other.Append(context.Background(), "job", entry(2)); err != nil {
						t.Error(err)
					}
				})
			}
		}
		if err := ledger.New(c, p).Append(ctx, "job", entry(3)); err != nil {
			t.Fatal(err)
		}
		if got := h.puts.Load(); got != 2 {
			t.Errorf("Append sent %d PUTs, want 2 (one lost CAS, one retry)", got)
		}
		list, err := other.History(ctx, "job")
		if err != nil {
			t.Fatal(err)
		}
		if got := slots(list); got != "3,2,1" {
			t.Fatalf("history slots = %s, want 3,2,1", got)
		}
	})

	t.Run("BoundAndOrder", func(t *testing.T) {
		ctx := ctxT(t)
		s := ledger.New(consultest.Client(t, addr), prefix())
		for i := 1; i <= ledger.MaxHistory+5; i++ {
			if err := s.Append(ctx, "job", entry(i)); err != nil {
				t.Fatal(err)
			}
		}
		// An old slot recorded late falls off; a retried Append is not
		// stored twice; a slot between others lands in order.
		for _, e := range []kvlayout.Entry{entry(0), entry(55), entry(30)} {
			if err := s.Append(ctx, "job", e); err != nil {
				t.Fatal(err)
			}
		}
		late := entry(30)
		late.Outcome, late.Reason, late.At = fate.Skipped, "overlap", late.At.Add(time.Hour)
		if err := s.Append(ctx, "job", late); err != nil {
			t.Fatal(err)
		}
		list, err := s.History(ctx, "job")
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != ledger.MaxHistory {
			t.Fatalf("history has %d entries, want %d", len(list), ledger.MaxHistory)
		}
		if !list[0].Slot.Equal(entry(55).Slot) || !list[len(list)-1].Slot.Equal(entry(7).Slot) {
			t.Fatalf("history spans %s..%s, want slots 55..7", list[0].Slot, list[len(list)-1].Slot)
		}
		i := 55 - 30
		if list[i].Outcome != fate.Skipped || list[i+1].Outcome != fate.Fired || !list[i+1].Slot.Equal(entry(30).Slot) {
			t.Fatalf("slot 30 entries = %+v, %+v; want the later record first", list[i], list[i+1])
		}
	})

	t.Run("PauseResume", func(t *testing.T) {
		ctx := ctxT(t)
		c := consultest.Client(t, addr)
		p := prefix()
		s := ledger.New(c, p)
		pz, created, err := s.Pause(ctx, "job", "alice", "vendor outage")
		if err != nil || !created || pz.By != "alice" || pz.Reason != "vendor outage" || pz.At.IsZero() {
			t.Fatalf("Pause = %+v, %v, %v", pz, created, err)
		}
		pair, _, err := c.KV().Get(p+"/jobs/job/paused", nil)
		if err != nil || pair == nil || !strings.Contains(string(pair.Value), `"by":"alice"`) {
			t.Fatalf("paused key = %v, %v", pair, err)
		}
		again, created, err := s.Pause(ctx, "job", "bob", "")
		if err != nil || created || again.By != "alice" {
			t.Fatalf("second Pause = %+v, %v, %v; want alice's pause kept", again, created, err)
		}
		if got, err := s.IsPaused(ctx, "job"); err != nil || got == nil || got.By != "alice" {
			t.Fatalf("IsPaused = %+v, %v", got, err)
		}
		was, ok, err := s.Resume(ctx, "job")
		if err != nil || !ok || was.By != "alice" {
			t.Fatalf("Resume = %+v, %v, %v", was, ok, err)
		}
		if pair, _, _ := c.KV().Get(p+"/jobs/job/paused", nil); pair != nil {
			t.Fatalf("paused key still there after Resume: %s", pair.Value)
		}
		if _, ok, err := s.Resume(ctx, "job"); err != nil || ok {
			t.Fatalf("second Resume = %v, %v; want not paused", ok, err)
		}
		if got, err := s.IsPaused(ctx, "job"); err != nil || got != nil {
			t.Fatalf("IsPaused after Resume = %+v, %v", got, err)
		}
	})

	t.Run("RequestRunIsIdempotentAndConsumedOnce", func(t *testing.T) {
		ctx := ctxT(t)
		c := consultest.Client(t, addr)
		p := prefix()
		s := ledger.New(c, p)
		r1, created, err := s.RequestRun(ctx, "job", "alice")
		if err != nil || !created || r1.ID == "" || r1.Job != "job" || r1.ModifyIndex == 0 {
			t.Fatalf("RequestRun = %+v, %v, %v", r1, created, err)
		}
		r2, created, err := s.RequestRun(ctx, "job", "bob")
		if err != nil || created || r2.ID != r1.ID || r2.By != "alice" || r2.ModifyIndex != r1.ModifyIndex {
			t.Fatalf("second RequestRun = %+v, %v, %v; want the pending %+v", r2, created, err, r1)
		}

		// Without the lock, nobody consumes it.
		sess, _, err := c.Session().CreateNoChecks(&api.SessionEntry{TTL: "10s", Behavior: api.SessionBehaviorDelete}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _, _, err := c.Txn().Txn(consumeOps(kvlayout.New(p), sess, r1), nil); err != nil || ok {
			t.Fatalf("consume without the lock = %v, %v; want refused", ok, err)
		}
		if ok, _, err := c.KV().Acquire(&api.KVPair{Key: kvlayout.New(p).Lock(), Value: []byte(`{"id":"a"}`), Session: sess}, nil); err != nil || !ok {
			t.Fatalf("acquire = %v, %v", ok, err)
		}
		if ok, resp, _, err := c.Txn().Txn(consumeOps(kvlayout.New(p), sess, r1), nil); err != nil || !ok {
			t.Fatalf("consume = %v, %+v, %v", ok, resp, err)
		}
		if ok, _, _, err := c.Txn().Txn(consumeOps(kvlayout.New(p), sess, r1), nil); err != nil || ok {
			t.Fatalf("second consume of the same request = %v, %v; want refused", ok, err)
		}
		reqs, _, err := s.Requests(ctx, 0)
		if err != nil || len(reqs) != 0 {
			t.Fatalf("Requests after consume = %+v, %v", reqs, err)
		}
		// A new request after the consumed one is a new one.
		r3, created, err := s.RequestRun(ctx, "job", "bob")
		if err != nil || !created || r3.ID == r1.ID {
			t.Fatalf("RequestRun after consume = %+v, %v, %v", r3, created, err)
		}
		if ok, _, _, err := c.Txn().Txn(consumeOps(kvlayout.New(p), sess, r1), nil); err != nil || ok {
			t.Fatalf("consuming the old request consumed the new one: %v, %v", ok, err)
		}
	})

	t.Run("RequestsBlocksUntilANewRequest", func(t *testing.T) {
		ctx := ctxT(t)
		p := prefix()
		c, h := hookedClient(t, addr)
		s := ledger.New(c, p)
		reqs, idx, err := s.Requests(ctx, 0)
		if err != nil || len(reqs) != 0 || idx == 0 {
			t.Fatalf("Requests(0) = %+v, %d, %v", reqs, idx, err)
		}
		// Nothing changes: the query blocks (here until its context ends).
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, _, err = s.Requests(short, idx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Requests(%d) with nothing new = %v, want it to block until the deadline", idx, err)
		}

		sent := make(chan struct{})
		var once sync.Once
		h.mu.Lock()
		h.before = func(r *http.Request) {
			if r.Method == http.MethodGet && r.URL.Query().Get("index") != "" {
				once.Do(func() { close(sent) })
			}
		}
		h.mu.Unlock()
		type result struct {
			reqs []kvlayout.Request
			idx  uint64
			err  error
			took time.Duration
		}
		done := make(chan result, 1)
		go func() {
			start := time.Now()
			reqs, idx2, err := s.Requests(ctx, idx)
			done <- result{reqs, idx2, err, time.Since(start)}
		}()
		<-sent
		other := ledger.New(consultest.Client(t, addr), p)
		want, _, err := other.RequestRun(ctx, "nightly", "alice")
		if err != nil {
			t.Fatal(err)
		}
		res := <-done
		if res.err != nil || len(res.reqs) != 1 || res.reqs[0].ID != want.ID || res.reqs[0].Job != "nightly" ||
			res.reqs[0].ModifyIndex != want.ModifyIndex || res.idx <= idx {
			t.Fatalf("Requests(%d) = %+v, %d, %v; want %+v", idx, res.reqs, res.idx, res.err, want)
		}
		if res.took > 5*time.Second {
			t.Fatalf("Requests woke after %s: it timed out rather than waking on the write", res.took)
		}
	})

	t.Run("Snapshot", func(t *testing.T) {
		ctx := ctxT(t)
		c := consultest.Client(t, addr)
		p := prefix()
		s := ledger.New(c, p)
		f, err := s.Snapshot(ctx)
		if err != nil || f.Leader != nil || len(f.Jobs) != 0 {
			t.Fatalf("empty Snapshot = %+v, %v", f, err)
		}

		sess, _, err := c.Session().CreateNoChecks(&api.SessionEntry{Name: "leadercron svc a", TTL: "10s"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _, err := c.KV().Acquire(&api.KVPair{Key: p + "/leader", Value: []byte(`{"id":"a","service":"svc"}`), Session: sess}, nil); err != nil || !ok {
			t.Fatalf("acquire = %v, %v", ok, err)
		}
		put := func(k, v string) {
			if _, err := c.KV().Put(&api.KVPair{Key: p + "/" + k, Value: []byte(v)}, nil); err != nil {
				t.Fatal(err)
			}
		}
		put("jobs/nightly/last", `{"slot":"2026-11-22T03:00:00Z","fencing_token":12,"id":"a","claimed_at":"2026-11-22T03:00:00.01Z"}`)
		put("jobs/broken/last", `not json`)
		if _, _, err := s.Pause(ctx, "nightly", "alice", "incident"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.RequestRun(ctx, "report", "bob"); err != nil {
			t.Fatal(err)
		}
		if err := s.Append(ctx, "nightly", entry(1)); err != nil {
			t.Fatal(err)
		}

		f, err = s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if f.Leader == nil || f.Leader.ID != "a" || f.Leader.Service != "svc" || f.Leader.Session != sess ||
			f.Leader.SessionName != "leadercron svc a" || f.Leader.TTL != "10s" || f.Leader.FencingToken == 0 {
			t.Fatalf("leader = %+v", f.Leader)
		}
		n := f.Jobs["nightly"]
		if n == nil || n.Last == nil || n.Last.FencingToken != 12 || n.Paused == nil || n.Paused.By != "alice" ||
			len(n.History) != 1 || n.Request != nil {
			t.Fatalf("nightly = %+v", n)
		}
		if r := f.Jobs["report"]; r == nil || r.Request == nil || r.Request.By != "bob" {
			t.Fatalf("report = %+v", r)
		}
		if len(f.Problems) != 1 || !strings.Contains(f.Problems[0], "jobs/broken/last") {
			t.Fatalf("problems = %q, want the undecodable claim record", f.Problems)
		}

		if _, err := c.Session().Destroy(sess, nil); err != nil {
			t.Fatal(err)
		}
		if f, err = s.Snapshot(ctx); err != nil || f.Leader != nil {
			t.Fatalf("Snapshot after the session ended: leader = %+v, %v", f.Leader, err)
		}
	})
}

func slots(list []kvlayout.Entry) string {
	parts := make([]string, len(list))
	for i, e := range list {
		parts[i] = fmt.Sprint(int(e.Slot.Sub(t0) / time.Minute))
	}
	return strings.Join(parts, ",")
}

// consumeOps are the operations leader.Term.TakeRequest sends (this
// package does not import the leader): check-session on the lock key,
// check-index and delete-cas at the request's ModifyIndex. The check-index
// is needed: delete-cas alone succeeds when the key is already gone.
func consumeOps(keys kvlayout.Layout, session string, r kvlayout.Request) api.TxnOps {
	key := keys.Request(r.Job)
	return api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: keys.Lock(), Session: session}},
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: r.ModifyIndex}},
		{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: r.ModifyIndex}},
	}
}

// loseOnce forwards every request, and throws away the answer of the first
// Txn after Consul applied it.
type loseOnce struct {
	next http.RoundTripper
	lost atomic.Bool
}

func (l *loseOnce) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err != nil || r.URL.Path != "/v1/txn" || !l.lost.CompareAndSwap(false, true) {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil, errors.New("test: answer lost after consul applied the txn")
}
