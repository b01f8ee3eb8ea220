package consultest

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestFaultProxyLoseAnswers checks the ambiguous modes against a real
// agent: the selected write is applied, its answer is lost as asked, the
// others pass, and Lost counts them per operation.
func TestFaultProxyLoseAnswers(t *testing.T) {
	a := Start(t)
	direct := Client(t, a.Addr)
	p := NewFaultProxy(t, a.Addr)
	via := Client(t, p.Addr)

	sid, _, err := direct.Session().CreateNoChecks(&api.SessionEntry{TTL: "10s", Behavior: api.SessionBehaviorRelease, LockDelay: time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const lock = "lc/leader"
	acquireOps := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVLock, Key: lock, Value: []byte("x"), Session: sid}},
		{KV: &api.KVTxnOp{Verb: api.KVGet, Key: lock}},
	}
	// The claim Txn as leadercron sends it.
	claimOps := func(n int, index uint64) api.TxnOps {
		return api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: lock, Session: sid}},
			{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: "lc/jobs/tick/last", Value: []byte{byte('0' + n)}, Index: index}},
			{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: "lc/jobs/tick/"}},
		}
	}
	value := func() string {
		pair, _, err := direct.KV().Get("lc/jobs/tick/last", nil)
		if err != nil {
			t.Fatal(err)
		}
		if pair == nil {
			return ""
		}
		return string(pair.Value)
	}
	casClaim := func(n int) error {
		pair, _, err := direct.KV().Get("lc/jobs/tick/last", nil)
		if err != nil {
			t.Fatal(err)
		}
		var idx uint64
		if pair != nil {
			idx = pair.ModifyIndex
		}
		ops := claimOps(n, idx)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		ok, resp, _, err := via.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil && !ok {
			t.Fatalf("claim %d refused: %+v", n, resp.Errors)
		}
		return err
	}

	// Acquire through the proxy: untouched (no rule yet).
	if ok, _, _, err := via.Txn().Txn(acquireOps, nil); err != nil || !ok {
		t.Fatalf("acquire: ok=%v err=%v", ok, err)
	}

	// Every 3rd claim reset after it was applied.
	var applied atomic.Int32
	p.LoseAnswers(Rule{Match: Ops(OpClaim), Every: 3, OnApplied: func(r Request) {
		if r.Op != OpClaim {
			t.Errorf("OnApplied got %s", r.Op)
		}
		applied.Add(1)
	}})
	for n := 1; n <= 6; n++ {
		err := casClaim(n)
		if n%3 == 0 {
			if err == nil {
				t.Fatalf("claim %d: answer not lost", n)
			}
			if !strings.Contains(err.Error(), "connection reset") {
				t.Fatalf("claim %d: want a transport error, got %v", n, err)
			}
		} else if err != nil {
			t.Fatalf("claim %d: %v", n, err)
		}
		if got := value(); got != string(rune('0'+n)) {
			t.Fatalf("claim %d not applied: value %q", n, got)
		}
	}
	if got := p.Lost()[OpClaim]; got != (LostAnswers{Lost: 2, Applied: 2}) || applied.Load() != 2 {
		t.Fatalf("lost claims %+v, OnApplied %d; want 2 lost, 2 applied", got, applied.Load())
	}
	// Reads are not claims: they pass.
	if _, _, err := via.KV().Get("lc/jobs/tick/last", nil); err != nil {
		t.Fatal(err)
	}

	// 500 instead of the answer, on renews and releases.
	p.LoseAnswers(Rule{Match: Ops(OpRenew, OpRelease), Loss: Answer500})
	_, _, err = via.Session().Renew(sid, nil)
	if err == nil || !strings.Contains(err.Error(), "response code: 500") {
		t.Fatalf("renew: want a 500, got %v", err)
	}
	_, _, err = via.KV().Release(&api.KVPair{Key: lock, Session: sid}, nil)
	if err == nil || !strings.Contains(err.Error(), "response code: 500") {
		t.Fatalf("release: want a 500, got %v", err)
	}
	if pair, _, _ := direct.KV().Get(lock, nil); pair == nil || pair.Session != "" {
		t.Fatalf("release not applied: %+v", pair)
	}
	// A second release is refused by the agent ("false"): lost, not applied.
	_, _, _ = via.KV().Release(&api.KVPair{Key: lock, Session: sid}, nil)
	lost := p.Lost()
	if lost[OpRenew] != (LostAnswers{Lost: 1, Applied: 1}) || lost[OpRelease] != (LostAnswers{Lost: 2, Applied: 1}) {
		t.Fatalf("lost %+v", lost)
	}

	// Held answer: the client times out, the acquire is applied.
	time.Sleep(10 * time.Millisecond) // past the 1 ms lock-delay of the release
	p.LoseAnswers(Rule{Match: Ops(OpAcquire), Loss: LateAnswer, Hold: time.Second, Max: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, _, _, err = via.Txn().Txn(acquireOps, (&api.QueryOptions{}).WithContext(ctx))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held acquire: want a timeout, got %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Lost()[OpAcquire].Applied != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("held acquire not counted: %+v", p.Lost())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pair, _, _ := direct.KV().Get(lock, nil); pair == nil || pair.Session != sid {
		t.Fatalf("held acquire not applied: %+v", pair)
	}
	// Max 1: the next one passes.
	if ok, _, _, err := via.Txn().Txn(acquireOps, nil); err != nil || !ok {
		t.Fatalf("second acquire: ok=%v err=%v", ok, err)
	}
	// A late answer to a client that waits long enough is delivered.
	p.LoseAnswers(Rule{Match: Ops(OpAcquire), Loss: LateAnswer, Hold: 100 * time.Millisecond})
	start := time.Now()
	if ok, _, _, err := via.Txn().Txn(acquireOps, nil); err != nil || !ok || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("late acquire: ok=%v err=%v after %s", ok, err, time.Since(start))
	}
	if got := p.Lost()[OpAcquire]; got != (LostAnswers{Lost: 1, Applied: 1, Late: 1}) {
		t.Fatalf("acquire answers %+v, want 1 lost (applied) and 1 late", got)
	}

	// Session create and destroy by probability 1.
	p.LoseAnswers(Rule{Match: Ops(OpSessionCreate, OpSessionDestroy), Probability: 1, Seed: 7})
	if _, _, err := via.Session().CreateNoChecks(&api.SessionEntry{TTL: "10s"}, nil); err == nil {
		t.Fatal("session create: answer not lost")
	}
	if _, err := via.Session().Destroy(sid, nil); err == nil {
		t.Fatal("session destroy: answer not lost")
	}
	if e, _, _ := direct.Session().Info(sid, nil); e != nil {
		t.Fatal("session destroy not applied")
	}
	sessions, _, _ := direct.Session().List(nil)
	if len(sessions) != 1 { // the one created through the proxy
		t.Fatalf("sessions after a lost create: %d, want 1", len(sessions))
	}

	// Fail takes precedence, Heal clears the rules.
	p.Fail(http.StatusTooManyRequests)
	if _, _, err := via.Session().CreateNoChecks(&api.SessionEntry{TTL: "10s"}, nil); err == nil || !strings.Contains(err.Error(), "response code: 429") {
		t.Fatalf("fail: want 429, got %v", err)
	}
	p.Heal()
	if _, _, err := via.Session().CreateNoChecks(&api.SessionEntry{TTL: "10s"}, nil); err != nil {
		t.Fatalf("after heal: %v", err)
	}
	if p.Injected() != 1 {
		t.Fatalf("injected %d, want 1", p.Injected())
	}
}

// TestFaultProxyDelayBetween checks that each request is held a random
// time in the range.
func TestFaultProxyDelayBetween(t *testing.T) {
	a := Start(t)
	p := NewFaultProxy(t, a.Addr)
	via := Client(t, p.Addr)
	p.DelayBetween(100*time.Millisecond, 200*time.Millisecond, 1)
	var lo, hi time.Duration = time.Hour, 0
	for range 5 {
		start := time.Now()
		if _, err := via.Status().Leader(); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 100*time.Millisecond || hi > time.Second {
		t.Fatalf("delays from %s to %s, want within [100ms, 200ms) plus the round trip", lo, hi)
	}
	p.Delay(0)
	start := time.Now()
	if _, err := via.Status().Leader(); err != nil || time.Since(start) > 90*time.Millisecond {
		t.Fatalf("after Delay(0): %s, %v", time.Since(start), err)
	}
}
