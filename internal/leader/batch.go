package leader

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/metrics"
)

// Claims that fall due together are sent together: one Txn holds one
// check-session on the lock key and, per claim, a check-and-set of the
// job's record and a get-tree of its folder (for the pause flag), so a
// hundred jobs due at one instant cost two Raft writes, not a hundred.
//
// A Txn is applied whole or not at all, and Consul names every op that
// failed. A claim whose check-and-set failed (a lost race) or that was
// denied is answered from that list; the claims the failure did not name
// are sent again at once without it. So one conflict costs one job its
// slot (which its caller resolves by re-reading, as for a single claim),
// never the batch.
const (
	// maxTxnOps is Consul's limit on operations in one Txn (maxTxnOps in
	// agent/txn_endpoint.go); a Txn over it is refused.
	maxTxnOps = 128
	// claimsPerTxn fits the check-session and two ops per claim.
	claimsPerTxn = (maxTxnOps - 1) / 2
	// claimLinger is how long the first claim of a batch waits for
	// others: it must exceed the spread of the wake-ups of goroutines
	// whose timers fire at the same instant (well under a millisecond
	// on an idle machine, about a millisecond on a loaded one), and it
	// adds to every claim's latency, so it stays at that.
	claimLinger = time.Millisecond
)

// claimBatcher gathers claims into Txns.
type claimBatcher struct {
	c       *consulSlots
	mu      sync.Mutex
	pending []*claimCall
	armed   bool // a flush is scheduled
}

// claimCall is one claim in a batch and, once done is closed, its result.
type claimCall struct {
	job   string
	value []byte
	index uint64 // the check-and-set's index; then the record's new ModifyIndex
	done  chan struct{}

	won    bool
	paused bool
	err    error // ErrNotLeader, a refusedError, or a transport error (unknown)
}

// submit queues call for the next batch.
func (b *claimBatcher) submit(call *claimCall) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = append(b.pending, call)
	if !b.armed {
		b.armed = true
		time.AfterFunc(claimLinger, b.flush)
	}
}

// flush sends what is pending, claimsPerTxn claims to a Txn, the Txns
// concurrently (bounded by the term's request slots).
func (b *claimBatcher) flush() {
	b.mu.Lock()
	calls := b.pending
	b.pending, b.armed = nil, false
	b.mu.Unlock()
	for len(calls) > 0 {
		n := min(len(calls), claimsPerTxn)
		go b.send(calls[:n])
		calls = calls[n:]
	}
}

// send runs calls' Txn, and again for the claims a failed Txn did not
// answer, until every call is answered.
func (b *claimBatcher) send(calls []*claimCall) {
	_ = b.c.acquire(context.Background()) // cannot fail: no deadline
	defer b.c.release()
	for len(calls) > 0 {
		calls = b.txn(calls)
	}
}

// txn sends one Txn for calls, answers the calls it can, and returns the
// ones to send again.
func (b *claimBatcher) txn(calls []*claimCall) []*claimCall {
	c := b.c
	keys := c.e.opts.Keys
	ops := make(api.TxnOps, 0, 1+2*len(calls))
	ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: keys.Lock(), Session: c.sess.id}})
	for _, call := range calls {
		ops = append(ops,
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: keys.Claim(call.job), Value: call.value, Index: call.index}},
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: keys.JobFolder(call.job)}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.e.opts.requestTimeout())
	defer cancel()
	ok, resp, _, err := c.e.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		c.e.opts.Metrics.ConsulError(metrics.OpClaim)
		answerAll(calls, err)
		return nil
	case ok:
		b.applied(calls, resp)
		return nil
	}
	return b.refused(calls, resp)
}

// applied answers the calls of an applied Txn: each won, with its
// record's new index and its folder's pause flag.
func (b *claimBatcher) applied(calls []*claimCall, resp *api.TxnResponse) {
	keys := b.c.e.opts.Keys
	byKey := make(map[string]*claimCall, 2*len(calls))
	for _, call := range calls {
		byKey[keys.Claim(call.job)] = call
		byKey[keys.Paused(call.job)] = call
	}
	for _, call := range calls {
		call.won, call.index = true, 0
	}
	for _, r := range resp.Results {
		if r.KV == nil {
			continue
		}
		call := byKey[r.KV.Key]
		switch {
		case call == nil:
		case r.KV.Key == keys.Paused(call.job):
			call.paused = true
		case call.index == 0 || r.KV.ModifyIndex > call.index:
			call.index = r.KV.ModifyIndex // the cas's result and the get-tree's agree
		}
	}
	answerAll(calls, nil)
}

// refused answers the calls a refused Txn names, and returns the others to
// send again. Op 0 failing (not by an ACL denial) means the session no
// longer holds the lock: every call gets ErrNotLeader. A Txn refused
// without naming a claim's op refuses them all, so the loop in send ends.
func (b *claimBatcher) refused(calls []*claimCall, resp *api.TxnResponse) []*claimCall {
	c := b.c
	if resp == nil || len(resp.Errors) == 0 {
		c.e.opts.Metrics.ConsulError(metrics.OpTxnRefused)
		answerAll(calls, &refusedError{op: "claim batch", what: "no reason given"})
		return nil
	}
	answered := make([]bool, len(calls))
	for _, te := range resp.Errors {
		i := te.OpIndex - 1
		switch {
		case te.OpIndex == 0 && !denied(te.What):
			c.sess.lose(ErrNotLeader)
			answerAll(calls, ErrNotLeader)
			return nil
		case te.OpIndex == 0:
			c.e.opts.Metrics.ConsulError(metrics.OpTxnRefused)
			answerAll(calls, &refusedError{op: "claim batch", what: te.What})
			return nil
		case i/2 >= len(calls) || answered[i/2]:
			continue // not a claim's op, or its claim is answered
		}
		call := calls[i/2]
		answered[i/2] = true
		if denied(te.What) || i%2 == 1 {
			// A denial, or a get-tree that failed: not a race.
			c.e.opts.Metrics.ConsulError(metrics.OpTxnRefused)
			call.err = &refusedError{op: fmt.Sprintf("claim %s", call.job), what: te.What}
		}
		// Otherwise the check-and-set lost a race: won stays false.
		close(call.done)
	}
	var again []*claimCall
	for i, call := range calls {
		if !answered[i] {
			again = append(again, call)
		}
	}
	if len(again) == len(calls) {
		answerAll(again, &refusedError{op: "claim batch", what: resp.Errors[0].What})
		return nil
	}
	// Unusual: only another writer of a job's record (an operator, or
	// this term's own claim whose outcome was unknown) makes a cas fail.
	c.e.log.Warn("claim batch refused in part: the others sent again", "refused", len(calls)-len(again),
		"sent_again", len(again), "what", resp.Errors[0].What)
	return again
}

// answerAll closes every call with err.
func answerAll(calls []*claimCall, err error) {
	for _, call := range calls {
		call.err = err
		close(call.done)
	}
}
