package leader_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/leader"
)

// errAnswerLost is what the lossy transport returns in place of an
// answer that Consul sent.
var errAnswerLost = errors.New("test: answer lost after consul applied the request")

// lossyTransport forwards every request to Consul and, for the requests
// its rule picks, throws the answer away after Consul applied the request
// (or, with forge, answers in Consul's place without forwarding). It can
// also delay every request before forwarding it: a slow agent.
type lossyTransport struct {
	next http.RoundTripper

	mu    sync.Mutex
	lose  func(method, path string, body []byte) bool // drop this request's answer
	forge func(path string, body []byte) *http.Response
	delay time.Duration
	hold  chan struct{} // lost answers wait for the request's context
	lost  int
	txns  int // PUT /v1/txn requests seen
}

func (l *lossyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	l.mu.Lock()
	lose := l.lose != nil && l.lose(r.Method, r.URL.Path, body)
	forge, delay, hold := l.forge, l.delay, l.hold
	if lose {
		l.lost++
	}
	if r.Method == http.MethodPut && r.URL.Path == "/v1/txn" {
		l.txns++
	}
	l.mu.Unlock()
	if forge != nil {
		if resp := forge(r.URL.Path, body); resp != nil {
			return resp, nil
		}
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return nil, r.Context().Err()
		}
	}
	fwd := r
	if lose {
		// Forward on a context of its own: Consul applies the request
		// even when the caller gives up on it.
		fwd = r.Clone(context.WithoutCancel(r.Context()))
	}
	resp, err := l.next.RoundTrip(fwd)
	if err != nil || !lose {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if hold != nil {
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
	return nil, errAnswerLost
}

func (l *lossyTransport) set(f func(l *lossyTransport)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l)
}

func (l *lossyTransport) txnCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.txns
}

func (l *lossyTransport) lostCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

func lossyClient(t *testing.T, addr string) (*api.Client, *lossyTransport) {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	lt := &lossyTransport{next: cfg.Transport}
	cfg.HttpClient = &http.Client{Transport: lt}
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, lt
}

// once returns a rule that picks the first request for which match holds.
func once(match func(method, path string, body []byte) bool) func(string, string, []byte) bool {
	done := false
	return func(method, path string, body []byte) bool {
		if done || !match(method, path, body) {
			return false
		}
		done = true
		return true
	}
}

func txnWith(verb string) func(method, path string, body []byte) bool {
	return func(method, path string, body []byte) bool {
		return method == http.MethodPut && path == "/v1/txn" && bytes.Contains(body, []byte(`"Verb":"`+verb+`"`))
	}
}

// A claim that Consul applied but whose answer was lost is this term's:
// the retry recognises its own record and reports the slot won, once.
func TestClaimAppliedAnswerLost(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	a := campaign(t, c, options("a"))
	term := waitTerm(t, a, 10*time.Second)
	ctx := context.Background()
	slot := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)

	lt.set(func(l *lossyTransport) { l.lose = once(txnWith("cas")) })
	won, _, err := term.Claim(ctx, "report", slot)
	if err == nil || won || leader.NotApplied(err) || lt.lostCount() != 1 {
		t.Fatalf("claim with its answer lost = %v, %v (lost %d); want an unknown outcome", won, err, lt.lostCount())
	}
	won, paused, err := term.Claim(ctx, "report", slot)
	if err != nil || !won || paused {
		t.Fatalf("retry of an applied claim = %v, paused %v, %v; want won", won, paused, err)
	}
	if won, _, err := term.Claim(ctx, "report", slot); err != nil || won {
		t.Fatalf("third claim of the same slot = %v, %v; want false: it was reported won already", won, err)
	}

	// The same with the job paused: the re-read reports the pause.
	if _, err := c.KV().Put(&api.KVPair{Key: "leadercron/test/jobs/report/paused", Value: []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	next := slot.Add(time.Minute)
	lt.set(func(l *lossyTransport) { l.lose = once(txnWith("cas")) })
	if _, _, err := term.Claim(ctx, "report", next); err == nil {
		t.Fatal("claim with its answer lost: no error")
	}
	if won, paused, err := term.Claim(ctx, "report", next); err != nil || !won || !paused {
		t.Fatalf("retry of an applied claim of a paused job = %v, paused %v, %v; want won, paused", won, paused, err)
	}
}

// A Txn that Consul refuses at an op other than the lock check (here an
// ACL denial of the folder read) is an error saying it was not applied,
// never a silent "a peer claimed it".
func TestClaimRefusedIsAnError(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	a := campaign(t, c, options("a"))
	term := waitTerm(t, a, 10*time.Second)
	lt.set(func(l *lossyTransport) {
		l.forge = func(path string, body []byte) *http.Response {
			if path != "/v1/txn" || !bytes.Contains(body, []byte(`"Verb":"cas"`)) {
				return nil
			}
			return &http.Response{StatusCode: http.StatusConflict, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(strings.NewReader(`{"Results":null,"Errors":[{"OpIndex":2,"What":"Permission denied: token lacks permission 'key:read'"}]}`))}
		}
	})
	won, _, err := term.Claim(context.Background(), "report", time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC))
	if won || err == nil || !leader.NotApplied(err) || errors.Is(err, leader.ErrNotLeader) {
		t.Fatalf("refused claim = %v, %v; want an error for which NotApplied is true, not ErrNotLeader", won, err)
	}
	if term.Remaining() <= 0 {
		t.Error("a refused claim ended the leadership")
	}
}

// A take that Consul applied but whose answer was lost is resolved by a
// re-read: the request is gone while the lease runs, so it was taken.
func TestTakeAppliedAnswerLost(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	a := campaign(t, c, options("a"))
	term := waitTerm(t, a, 10*time.Second)
	key := "leadercron/test/requests/report"
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	req, _, err := c.KV().Get(key, nil)
	if err != nil || req == nil {
		t.Fatalf("read request: %v", err)
	}
	lt.set(func(l *lossyTransport) { l.lose = once(txnWith("delete-cas")) })
	took, err := term.TakeRequest(context.Background(), "report", req.ModifyIndex)
	if err != nil || !took || lt.lostCount() != 1 {
		t.Fatalf("take with its answer lost = %v, %v (lost %d); want true, nil", took, err, lt.lostCount())
	}

	// Cancelled as it runs (a SIGTERM): the take still completes.
	if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	req, _, _ = c.KV().Get(key, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if took, err := term.TakeRequest(ctx, "report", req.ModifyIndex); err != nil || !took {
		t.Fatalf("take under a cancelled context = %v, %v; want true, nil", took, err)
	}
}

// A slow agent, answering every request 40% of the TTL late (below the
// renew timeout of TTL/2), must not end leadership.
func TestSlowAgentKeepsLeadership(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	a := campaign(t, c, options("a"))
	term := waitTerm(t, a, 10*time.Second)
	lt.set(func(l *lossyTransport) { l.delay = ttl * 4 / 10 })
	select {
	case cause := <-a.ended:
		t.Fatalf("leadership ended under a slow agent: %v", cause)
	case <-time.After(5 * ttl):
	}
	if rem := term.Remaining(); rem <= 0 {
		t.Errorf("lease remaining %s after %s of a slow agent", rem, 5*ttl)
	}
}

// A standby whose acquire Consul applied as its campaign was cancelled
// must release the key on its way out, not leave it to the session's
// destroy, which would impose the lock-delay on the whole fleet.
func TestCancelledAcquireReleasesWithoutLockDelay(t *testing.T) {
	agent := consultest.Start(t)
	direct := client(t, agent.Addr, nil)
	c, lt := lossyClient(t, agent.Addr)
	applied := make(chan struct{})
	lt.set(func(l *lossyTransport) {
		l.hold = make(chan struct{})
		match := once(txnWith("lock"))
		l.lose = func(method, path string, body []byte) bool {
			if match(method, path, body) {
				close(applied)
				return true
			}
			return false
		}
	})
	opts := options("b")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	e := leader.New(c, opts, hclog.NewNullLogger())
	go func() {
		done <- e.Run(ctx, func(context.Context, *leader.Term) error {
			t.Error("lead called although the acquire's answer never came")
			return nil
		})
	}()
	select {
	case <-applied:
	case <-time.After(10 * time.Second):
		t.Fatal("no acquire within 10s")
	}
	// The acquire has been applied; its answer waits for the context.
	waitHolder(t, direct, opts.Keys.Lock(), func(s string) bool { return s != "" })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if h := holder(t, direct, opts.Keys.Lock()); h != "" {
		t.Fatalf("key still held by %s after the standby stopped", h)
	}
	// A new session acquires at once: no lock-delay is in force.
	sess, _, err := direct.Session().CreateNoChecks(&api.SessionEntry{TTL: "10s", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = direct.Session().Destroy(sess, nil) }()
	ok, _, err := direct.KV().Acquire(&api.KVPair{Key: opts.Keys.Lock(), Session: sess}, nil)
	if err != nil || !ok {
		t.Fatalf("acquire right after the standby stopped = %v, %v; want true (no lock-delay)", ok, err)
	}
}

func waitHolder(t *testing.T, c *api.Client, key string, cond func(string) bool) {
	t.Helper()
	var index uint64
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pair, meta, err := c.KV().Get(key, &api.QueryOptions{WaitIndex: index, WaitTime: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		s := ""
		if pair != nil {
			s = pair.Session
		}
		if cond(s) {
			return
		}
		index = meta.LastIndex
	}
	t.Fatalf("lock key %s did not reach the wanted holder within 10s", key)
}

// A session create that fails (Consul answering 500 or 429) while the key
// is free must not leave the candidate in a blocking query that waits for
// a change of a key nobody holds: the fleet would stay leaderless for the
// query's whole wait time.
func TestFailedSessionCreateRetriesAtOnce(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	var failed atomic.Bool
	lt.set(func(l *lossyTransport) {
		l.forge = func(path string, _ []byte) *http.Response {
			if path != "/v1/session/create" || !failed.CompareAndSwap(false, true) {
				return nil
			}
			return &http.Response{StatusCode: http.StatusInternalServerError, Header: http.Header{},
				Body: io.NopCloser(strings.NewReader("rpc error making call: No cluster leader"))}
		}
	})
	opts := options("a") // its blocking queries wait 10 s
	start := time.Now()
	a := campaign(t, c, opts)
	waitTerm(t, a, opts.WaitTime/2)
	if !failed.Load() {
		t.Fatal("the session create never failed: the fault did nothing")
	}
	t.Logf("led %s after a failed session create", time.Since(start).Round(time.Millisecond))
}
