package leader_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/leader"
	"github.com/leadercron/leadercron/internal/metrics"
)

// The metrics satisfy the leader's interface, and a Term the metrics'.
var (
	_ leader.Metrics = (*metrics.Metrics)(nil)
	_ metrics.Term   = (*leader.Term)(nil)
)

const (
	ttl       = 2 * time.Second
	lockDelay = time.Second
)

func options(id string) leader.Options {
	return leader.Options{
		Keys:          kvlayout.New("leadercron/test"),
		ID:            id,
		SessionName:   "leadercron test " + id,
		TTL:           ttl,
		LockDelay:     lockDelay,
		WaitTime:      10 * time.Second,
		RetryInterval: 100 * time.Millisecond,
	}
}

// countingTransport counts the requests a client sends.
type countingTransport struct {
	n    atomic.Int64
	next http.RoundTripper
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

func client(t *testing.T, addr string, counter *countingTransport) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	if counter != nil {
		counter.next = cfg.Transport
		cfg.HttpClient = &http.Client{Transport: counter}
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// candidate runs an elector in the background and reports its terms.
type candidate struct {
	cancel  context.CancelFunc
	done    chan error
	terms   chan *leader.Term
	ended   chan error // cause of each leadership's end
	release chan struct{}
}

func campaign(t *testing.T, c *api.Client, opts leader.Options) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cd := &candidate{cancel: cancel, done: make(chan error, 1), terms: make(chan *leader.Term, 4),
		ended: make(chan error, 4), release: make(chan struct{})}
	e := leader.New(c, opts, hclog.NewNullLogger())
	go func() {
		cd.done <- e.Run(ctx, func(lctx context.Context, term *leader.Term) error {
			cd.terms <- term
			select {
			case <-lctx.Done():
			case <-cd.release:
			}
			cd.ended <- context.Cause(lctx)
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-cd.done:
		case <-time.After(10 * time.Second):
			t.Error("elector did not stop within 10s")
		}
	})
	return cd
}

func waitTerm(t *testing.T, cd *candidate, within time.Duration) *leader.Term {
	t.Helper()
	select {
	case term := <-cd.terms:
		return term
	case err := <-cd.done:
		t.Fatalf("elector stopped: %v", err)
	case <-time.After(within):
		t.Fatalf("no leadership within %s", within)
	}
	return nil
}

func holder(t *testing.T, c *api.Client, key string) string {
	t.Helper()
	pair, _, err := c.KV().Get(key, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		t.Fatal(err)
	}
	if pair == nil {
		return ""
	}
	return pair.Session
}

func TestStandbyBlocksAndTakesOverOnRelease(t *testing.T) {
	agent := consultest.Start(t)
	a := campaign(t, client(t, agent.Addr, nil), options("a"))
	termA := waitTerm(t, a, 10*time.Second)
	if termA.Token() == 0 {
		t.Fatal("fencing token is 0")
	}

	counter := &countingTransport{}
	b := campaign(t, client(t, agent.Addr, counter), options("b"))

	// For 3 TTLs the leader must keep its lease by renewing, and the
	// standby must neither lead nor poll: one blocking query waits 10s.
	select {
	case <-b.terms:
		t.Fatal("standby acquired the lock while the leader held it")
	case cause := <-a.ended:
		t.Fatalf("leader lost its lease while Consul was healthy: %v", cause)
	case <-time.After(3 * ttl):
	}
	if n := counter.n.Load(); n > 2 {
		t.Errorf("standby sent %d requests in %s; want at most 2 (a blocking query, not a poll loop)", n, 3*ttl)
	}
	if rem := termA.Remaining(); rem <= 0 || rem > ttl {
		t.Errorf("leader lease remaining %s; want in (0, %s]", rem, ttl)
	}

	released := time.Now()
	a.cancel()
	termB := waitTerm(t, b, 5*time.Second)
	takeover := time.Since(released)
	t.Logf("takeover after graceful release: %s", takeover)
	if takeover > time.Second {
		t.Errorf("standby took %s to take over after release; want under 1s", takeover)
	}
	if termB.Token() <= termA.Token() {
		t.Errorf("fencing token did not grow: %d then %d", termA.Token(), termB.Token())
	}
}

func TestSessionDestroyedEndsLeadership(t *testing.T) {
	agent := consultest.Start(t)
	c := client(t, agent.Addr, nil)
	a := campaign(t, c, options("a"))
	waitTerm(t, a, 10*time.Second)

	sess := holder(t, c, options("a").Keys.Lock())
	if _, err := c.Session().Destroy(sess, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-a.ended:
		if !errors.Is(cause, leader.ErrLockLost) {
			t.Errorf("cause %v; want ErrLockLost", cause)
		}
	case <-time.After(ttl):
		t.Fatal("leadership did not end within a TTL of the session being destroyed")
	}
}

// TestLeaseEndsWithoutConsul cuts the leader off from Consul with a proxy
// that holds bytes without closing connections. The leader must end its
// leadership on its own, before a peer can take the lock.
func TestLeaseEndsWithoutConsul(t *testing.T) {
	agent := consultest.Start(t)
	proxy := consultest.NewProxy(t, agent.Addr)
	a := campaign(t, client(t, proxy.Addr, nil), options("a"))
	waitTerm(t, a, 10*time.Second)

	b := campaign(t, client(t, agent.Addr, nil), options("b"))
	cut := time.Now()
	proxy.Blackhole()

	var aEnded time.Time
	select {
	case cause := <-a.ended:
		aEnded = time.Now()
		if !errors.Is(cause, leader.ErrLockLost) {
			t.Errorf("cause %v; want ErrLockLost", cause)
		}
	case <-b.terms:
		t.Fatal("peer acquired the lock while the cut-off leader still believed it led")
	case <-time.After(2 * ttl):
		t.Fatal("cut-off leader did not end its leadership within 2 TTLs")
	}
	t.Logf("lease ended %s after the cut", aEnded.Sub(cut))
	if d := aEnded.Sub(cut); d > ttl {
		t.Errorf("lease ended %s after the cut; want within one TTL (%s)", d, ttl)
	}

	termB := waitTerm(t, b, 2*ttl+lockDelay+2*time.Second)
	t.Logf("peer took over %s after the cut (bound 2xTTL+lock-delay = %s)", time.Since(cut), 2*ttl+lockDelay)
	if termB.Token() == 0 {
		t.Error("fencing token is 0")
	}
	proxy.Heal()
}

func TestClaims(t *testing.T) {
	agent := consultest.Start(t)
	c := client(t, agent.Addr, nil)
	a := campaign(t, c, options("a"))
	term := waitTerm(t, a, 10*time.Second)
	ctx := context.Background()

	slot := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	if last, err := term.LastClaim(ctx, "report"); err != nil || !last.Slot.IsZero() {
		t.Fatalf("LastSlot on a new job = %v, %v; want zero, nil", last, err)
	}
	steps := []struct {
		name string
		slot time.Time
		want bool
	}{
		{"first claim", slot, true},
		{"same slot again", slot, false},
		{"earlier slot", slot.Add(-time.Minute), false},
		{"next slot", slot.Add(time.Minute), true},
	}
	for _, s := range steps {
		got, paused, err := term.Claim(ctx, "report", s.slot)
		if err != nil || got != s.want || paused {
			t.Fatalf("%s: Claim = %v, paused %v, %v; want %v, not paused, nil", s.name, got, paused, err, s.want)
		}
	}
	if last, err := term.LastClaim(ctx, "report"); err != nil || !last.Slot.Equal(slot.Add(time.Minute)) {
		t.Fatalf("LastSlot = %v, %v; want %v", last, err, slot.Add(time.Minute))
	}

	// Another writer moves the record behind the term's cache: the CAS
	// fails and the term must re-read rather than claim twice.
	pair, _, err := c.KV().Get("leadercron/test/jobs/report/last", nil)
	if err != nil || pair == nil {
		t.Fatalf("read record: %v", err)
	}
	pair.Value = []byte(`{"slot":"2026-11-22T03:05:00Z","fencing_token":1,"id":"other"}`)
	if _, err := c.KV().Put(pair, nil); err != nil {
		t.Fatal(err)
	}
	if got, _, err := term.Claim(ctx, "report", slot.Add(2*time.Minute)); err != nil || got {
		t.Fatalf("claim behind a later record = %v, %v; want false, nil", got, err)
	}
	if got, _, err := term.Claim(ctx, "report", slot.Add(6*time.Minute)); err != nil || !got {
		t.Fatalf("claim after a later record = %v, %v; want true, nil", got, err)
	}

	// A pause flag is read in the claim's transaction: the slot is spent
	// and reported paused. A flag of a job whose name extends this one's
	// does not count.
	if _, err := c.KV().Put(&api.KVPair{Key: "leadercron/test/jobs/report-2/paused", Value: []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	if got, paused, err := term.Claim(ctx, "report", slot.Add(7*time.Minute)); err != nil || !got || paused {
		t.Fatalf("claim with another job paused = %v, paused %v, %v; want true, not paused", got, paused, err)
	}
	if _, err := c.KV().Put(&api.KVPair{Key: "leadercron/test/jobs/report/paused", Value: []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	if got, paused, err := term.Claim(ctx, "report", slot.Add(8*time.Minute)); err != nil || !got || !paused {
		t.Fatalf("claim while paused = %v, paused %v, %v; want true, paused", got, paused, err)
	}

	// A run request is taken once, and only at the index it was written.
	if _, err := c.KV().Put(&api.KVPair{Key: "leadercron/test/requests/report", Value: []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	req, _, err := c.KV().Get("leadercron/test/requests/report", nil)
	if err != nil || req == nil {
		t.Fatalf("read request: %v", err)
	}
	if took, err := term.TakeRequest(ctx, "report", req.ModifyIndex-1); err != nil || took {
		t.Fatalf("TakeRequest at a stale index = %v, %v; want false, nil", took, err)
	}
	if took, err := term.TakeRequest(ctx, "report", req.ModifyIndex); err != nil || !took {
		t.Fatalf("TakeRequest = %v, %v; want true, nil", took, err)
	}
	if took, err := term.TakeRequest(ctx, "report", req.ModifyIndex); err != nil || took {
		t.Fatalf("TakeRequest again = %v, %v; want false, nil", took, err)
	}

	// A session that no longer holds the lock cannot claim.
	if _, err := c.Session().Destroy(holder(t, c, options("a").Keys.Lock()), nil); err != nil {
		t.Fatal(err)
	}
	got, _, err := term.Claim(ctx, "other-job", slot)
	if got || !errors.Is(err, leader.ErrNotLeader) {
		t.Fatalf("claim without the lock = %v, %v; want false, ErrNotLeader", got, err)
	}
}

func TestSessionTTLRejected(t *testing.T) {
	agent := consultest.Start(t)
	opts := options("a")
	opts.TTL = 500 * time.Millisecond // below the agent's session_ttl_min of 1s
	e := leader.New(client(t, agent.Addr, nil), opts, hclog.NewNullLogger())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := e.Run(ctx, func(context.Context, *leader.Term) error {
		t.Error("lead called with a rejected session")
		return nil
	})
	if !errors.Is(err, leader.ErrSessionRejected) {
		t.Fatalf("Run = %v; want ErrSessionRejected", err)
	}
}

// The lock value is JSON whatever the identity holds (fmt's %q is not
// JSON for control characters), and says since when the leader leads.
func TestLockValueIsJSON(t *testing.T) {
	agent := consultest.Start(t)
	c := client(t, agent.Addr, nil)
	opts := options("a\x01\"b")
	opts.Service = "svc\x7f"
	before := time.Now().Add(-time.Second)
	a := campaign(t, c, opts)
	waitTerm(t, a, 10*time.Second)
	pair, _, err := c.KV().Get(opts.Keys.Lock(), nil)
	if err != nil || pair == nil {
		t.Fatalf("read lock key: %v", err)
	}
	var v kvlayout.LockValue
	if err := json.Unmarshal(pair.Value, &v); err != nil {
		t.Fatalf("lock value %q is not JSON: %v", pair.Value, err)
	}
	if v.ID != opts.ID || v.Service != opts.Service || v.Since.Before(before) || v.Since.After(time.Now()) {
		t.Errorf("lock value %+v; want id %q, service %q, since about now", v, opts.ID, opts.Service)
	}
}

// A term knows whether the leadership before it ended with a graceful
// release (its claims all have a recorded fate) or was ended by Consul (a
// crash, a cut, a destroyed session), read in the acquire Txn itself.
func TestPreviousClean(t *testing.T) {
	agent := consultest.Start(t)
	c := client(t, agent.Addr, nil)
	a := campaign(t, c, options("a"))
	if term := waitTerm(t, a, 10*time.Second); !term.PreviousClean() {
		t.Error("first leadership ever: want clean")
	}
	b := campaign(t, c, options("b"))
	close(a.release) // a drains (nothing here) and releases
	termB := waitTerm(t, b, 10*time.Second)
	if !termB.PreviousClean() {
		t.Error("after a graceful release: want clean")
	}
	a.cancel()
	cd := campaign(t, c, options("c"))
	// b's session is destroyed (as when its node dies): Consul frees the
	// key without a release.
	if _, err := c.Session().Destroy(holder(t, c, options("b").Keys.Lock()), nil); err != nil {
		t.Fatal(err)
	}
	// b campaigns again too: whichever of b and c leads next.
	select {
	case term := <-b.terms:
		if term.PreviousClean() {
			t.Error("b after Consul freed the key: want unclean")
		}
	case term := <-cd.terms:
		if term.PreviousClean() {
			t.Error("c after Consul freed the key: want unclean")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no leadership within 10s of the destroy")
	}
}
