package leader_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/leader"
)

type claimResult struct {
	won, paused bool
	err         error
}

// readAll reads each job's record, as a term does when it starts.
func readAll(t *testing.T, term *leader.Term, jobs []string) {
	t.Helper()
	for _, j := range jobs {
		if _, err := term.LastClaim(context.Background(), j); err != nil {
			t.Fatal(err)
		}
	}
}

// claimAll claims slot for every job at once, as jobs due at one instant
// do.
func claimAll(t *testing.T, term *leader.Term, jobs []string, slot time.Time) map[string]claimResult {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	res := map[string]claimResult{}
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Go(func() {
			won, paused, err := term.Claim(ctx, j, slot)
			mu.Lock()
			res[j] = claimResult{won, paused, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	return res
}

func jobNames(n int) []string {
	jobs := make([]string, n)
	for i := range jobs {
		jobs[i] = fmt.Sprintf("j%03d", i)
	}
	return jobs
}

// A hundred jobs due at one instant are claimed in a couple of Txns, not a
// hundred, and each gets its own pause flag.
func TestClaimsDueTogetherShareATxn(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	term := waitTerm(t, campaign(t, c, options("a")), 10*time.Second)
	jobs := jobNames(100)
	if _, err := c.KV().Put(&api.KVPair{Key: kvlayout.New("leadercron/test").Paused("j042")}, nil); err != nil {
		t.Fatal(err)
	}
	slot := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	readAll(t, term, jobs)
	before := lt.txnCount()
	res := claimAll(t, term, jobs, slot)
	txns := lt.txnCount() - before
	for _, j := range jobs {
		if r := res[j]; !r.won || r.err != nil || r.paused != (j == "j042") {
			t.Errorf("claim %s = %+v; want won, paused only for j042", j, r)
		}
	}
	// 100 claims need at least 2 Txns (63 to a Txn); claims that miss
	// the first batch's linger make a few more.
	if txns < 2 || txns > 10 {
		t.Errorf("%d Txns for 100 claims due together, want 2 to 10", txns)
	}
	t.Logf("100 claims in %d Txns", txns)
}

// One job of a batch whose record moved (a peer claimed a later slot)
// costs that job its slot, never the batch: the others win in a re-sent
// Txn.
func TestBatchConflictCostsOneJob(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	term := waitTerm(t, campaign(t, c, options("a")), 10*time.Second)
	jobs := []string{"a", "b", "c"}
	slot := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	readAll(t, term, jobs)
	// Behind the term's back, b's record moves past the slot.
	later := fmt.Appendf(nil, `{"slot":%q,"fencing_token":1,"id":"peer"}`, slot.Add(time.Hour).Format(time.RFC3339))
	if _, err := c.KV().Put(&api.KVPair{Key: kvlayout.New("leadercron/test").Claim("b"), Value: later}, nil); err != nil {
		t.Fatal(err)
	}
	before := lt.txnCount()
	res := claimAll(t, term, jobs, slot)
	if r := res["a"]; !r.won || r.err != nil {
		t.Errorf("a = %+v, want won", r)
	}
	if r := res["c"]; !r.won || r.err != nil {
		t.Errorf("c = %+v, want won", r)
	}
	if r := res["b"]; r.won || r.err != nil {
		t.Errorf("b = %+v, want lost to the later claim, without an error", r)
	}
	if n := lt.txnCount() - before; n != 2 {
		t.Errorf("%d Txns, want 2: the batch refused for b's conflict, then a and c again; %+v", n, res)
	}
}

// A batch Txn that Consul applied but whose answer was lost leaves every
// claim of it unknown; each claim's retry re-reads its record and finds
// the slot its own.
func TestBatchAnswerLost(t *testing.T) {
	agent := consultest.Start(t)
	c, lt := lossyClient(t, agent.Addr)
	term := waitTerm(t, campaign(t, c, options("a")), 10*time.Second)
	jobs := jobNames(5)
	slot := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	readAll(t, term, jobs)
	lt.set(func(l *lossyTransport) { l.lose = once(txnWith("cas")) })
	res := claimAll(t, term, jobs, slot)
	if lt.lostCount() != 1 {
		t.Fatalf("lost %d answers, want 1", lt.lostCount())
	}
	unknown := 0
	for _, j := range jobs {
		r := res[j]
		if r.won {
			continue // claimed in a later batch than the lost one
		}
		if r.err == nil || leader.NotApplied(r.err) {
			t.Fatalf("claim %s in the lost batch = %+v; want an unknown outcome", j, r)
		}
		unknown++
		won, _, err := term.Claim(context.Background(), j, slot)
		if err != nil || !won {
			t.Errorf("retry of %s = %v, %v; want won (the lost batch was applied)", j, won, err)
		}
	}
	if unknown == 0 {
		t.Fatal("no claim was in the lost batch")
	}
	t.Logf("%d of %d claims were in the lost batch", unknown, len(jobs))
}
