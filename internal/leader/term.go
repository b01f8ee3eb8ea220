package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/metrics"
)

// ErrNotLeader is returned by Claim when the lock is no longer held by this
// term's session. The term's lead context is cancelled at the same time.
var ErrNotLeader = fmt.Errorf("%w: session no longer holds the lock", ErrLockLost)

// Term is one leadership: the fencing token, the lease and the slot claims
// made under it. A Term is valid only inside the lead function it was
// given to.
type Term struct {
	token uint64
	sess  *session // nil in standalone mode: the lease never ends
	store slotStore
	clean bool // the previous holder released the key gracefully
}

// Token is the fencing token of this leadership.
func (t *Term) Token() uint64 { return t.token }

// Remaining is how long the lease still runs: zero or less once it has
// ended. In standalone mode it is always a large positive duration.
func (t *Term) Remaining() time.Duration {
	if t.sess == nil {
		return time.Duration(1<<63 - 1)
	}
	return t.sess.remaining()
}

// LastClaim returns the record of the latest slot claimed for job by any
// leader; its Slot is the zero time when none was.
func (t *Term) LastClaim(ctx context.Context, job string) (kvlayout.Claim, error) {
	return t.store.last(ctx, job)
}

// PreviousClean reports whether the leadership before this one ended with
// a graceful release (its drain finished, so every slot it claimed was
// fired or recorded), or there was none. When it did not (a crash, a cut,
// a lost session), the previous leader's last claims may have no recorded
// fate. Always true in standalone mode.
func (t *Term) PreviousClean() bool { return t.clean }

// Claim claims slot for job. won is true only if this term moved the
// job's last claimed slot from an earlier slot to slot; paused then reports
// whether the job was paused (its pause flag read in the same
// transaction, or in the re-read that resolved an unknown outcome), in
// which case the slot is spent and must not be triggered.
//
// Claim returns won=false with a nil error when slot (or a later one) was
// already claimed by someone else, and ErrNotLeader when the session lost
// the lock. An error for which NotApplied reports true means Consul
// refused the claim (an ACL denial, say): the slot is certainly not
// claimed. Any other error means the outcome is unknown; calling Claim
// again resolves it: it re-reads the record and reports won=true if the
// earlier attempt was applied (the record holds slot with this term's
// token and identity), so a claim that Consul applied but whose answer was
// lost is still this term's to fire.
func (t *Term) Claim(ctx context.Context, job string, slot time.Time) (won, paused bool, err error) {
	return t.store.claim(ctx, job, slot.UTC(), t.token)
}

// TakeRequest consumes job's run-now request, written at index, under this
// term's lock. It returns true for exactly one caller fleet-wide; false
// with a nil error means the request is gone (taken by a previous leader)
// or was rewritten since index. The Txn is not cut short by ctx ending (a
// shutdown must not leave a request deleted but unfired); when its answer
// is lost, TakeRequest re-reads the request: gone while this term's lease
// still runs means this term took it (no other leader can exist before the
// lease ends, and nothing else deletes requests). An error means the
// outcome stayed unknown: the request may be used up.
func (t *Term) TakeRequest(ctx context.Context, job string, index uint64) (bool, error) {
	return t.store.take(context.WithoutCancel(ctx), job, index)
}

// NotApplied reports whether err from Claim or TakeRequest says that
// Consul certainly did not apply the write.
func NotApplied(err error) bool {
	var r *refusedError
	return errors.Is(err, ErrNotLeader) || errors.As(err, &r)
}

// refusedError is a Txn that Consul answered but did not apply for a
// reason other than a lost lock or a lost race (an ACL denial, say).
type refusedError struct{ op, what string }

func (e *refusedError) Error() string { return e.op + ": consul refused it: " + e.what }

// NotApplied marks the write as certainly not applied.
func (e *refusedError) NotApplied() bool { return true }

// slotStore keeps each job's last claimed slot.
type slotStore interface {
	last(ctx context.Context, job string) (kvlayout.Claim, error)
	claim(ctx context.Context, job string, slot time.Time, token uint64) (won, paused bool, err error)
	take(ctx context.Context, job string, index uint64) (bool, error)
}

// consulSlots claims slots in Consul KV under the session's lock.
type consulSlots struct {
	e    *Elector
	sess *session

	mu       sync.Mutex
	known    map[string]claimState // per job: what we last read or wrote
	won      map[string]time.Time  // per job: the last slot Claim reported won
	inflight chan struct{}         // bounds concurrent requests
	batch    *claimBatcher
}

type claimState struct {
	rec    kvlayout.Claim
	index  uint64 // ModifyIndex of the record, 0 if absent
	paused bool   // the job's pause flag, as of the same read
}

// maxClaimRequests bounds the Consul requests a term's claims have in
// flight: the API client opens a connection per concurrent request, and
// Consul refuses a client more than http_max_conns_per_client (200 by
// default) with 429. Hundreds of jobs due in the same second queue here
// instead.
const maxClaimRequests = 64

func newConsulTerm(e *Elector, s *session, token uint64) *Term {
	c := &consulSlots{e: e, sess: s, known: map[string]claimState{}, won: map[string]time.Time{},
		inflight: make(chan struct{}, maxClaimRequests)}
	c.batch = &claimBatcher{c: c}
	return &Term{token: token, sess: s, store: c}
}

// acquire takes one of the term's request slots; release gives it back.
func (c *consulSlots) acquire(ctx context.Context) error {
	select {
	case c.inflight <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *consulSlots) release() { <-c.inflight }

// read lists the job's folder with a consistent read: its last claimed
// slot and its pause flag.
func (c *consulSlots) read(ctx context.Context, job string) (claimState, error) {
	if err := c.acquire(ctx); err != nil {
		return claimState{}, fmt.Errorf("read last slot of %s: %w", job, err)
	}
	defer c.release()
	rctx, cancel := context.WithTimeout(ctx, c.e.opts.requestTimeout())
	defer cancel()
	pairs, _, err := c.e.client.KV().List(c.e.opts.Keys.JobFolder(job), (&api.QueryOptions{RequireConsistent: true}).WithContext(rctx))
	if err != nil {
		c.e.opts.Metrics.ConsulError(metrics.OpReadSlot)
		return claimState{}, fmt.Errorf("read last slot of %s: %w", job, err)
	}
	var st claimState
	for _, p := range pairs {
		switch p.Key {
		case c.e.opts.Keys.Claim(job):
			if err := json.Unmarshal(p.Value, &st.rec); err != nil {
				return claimState{}, fmt.Errorf("read last slot of %s: decode %s: %w", job, p.Key, err)
			}
			st.index = p.ModifyIndex
		case c.e.opts.Keys.JobFolder(job) + "paused":
			st.paused = true
		}
	}
	c.remember(job, st)
	return st, nil
}

func (c *consulSlots) remember(job string, st claimState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.index == 0 && !st.rec.Slot.IsZero() {
		delete(c.known, job) // a write without its index: read next time
		return
	}
	c.known[job] = st
}

func (c *consulSlots) forget(job string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.known, job)
}

func (c *consulSlots) last(ctx context.Context, job string) (kvlayout.Claim, error) {
	st, err := c.read(ctx, job)
	return st.rec, err
}

func (c *consulSlots) claim(ctx context.Context, job string, slot time.Time, token uint64) (won, paused bool, err error) {
	c.mu.Lock()
	st, ok := c.known[job]
	c.mu.Unlock()
	if !ok {
		if st, err = c.read(ctx, job); err != nil {
			return false, false, err
		}
	}
	// Two rounds at most: the second after a CAS miss re-read the record.
	for range 2 {
		if c.mine(job, st, slot, token) {
			// An earlier attempt whose answer was lost was applied.
			c.markWon(job, slot)
			return true, st.paused, nil
		}
		if !st.rec.Slot.Before(slot) {
			return false, false, nil
		}
		won, paused, err := c.txn(ctx, job, slot, token, st.index)
		if err != nil || won {
			return won, paused, err
		}
		if st, err = c.read(ctx, job); err != nil {
			return false, false, err
		}
	}
	return false, false, nil
}

// mine reports whether st shows slot claimed by this term (its token and
// identity) without Claim having reported it won yet.
func (c *consulSlots) mine(job string, st claimState, slot time.Time, token uint64) bool {
	if !st.rec.Slot.Equal(slot) || st.rec.FencingToken != token || st.rec.ID != c.e.opts.ID {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.won[job].Equal(slot)
}

func (c *consulSlots) markWon(job string, slot time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.won[job] = slot
}

// txn claims slot for job with a check-and-set at index, in the next
// batch Txn (see claimBatcher). won reports success, paused whether the
// job's folder holds a pause flag; a failed check-and-set returns
// won=false and a nil error. Consul applies a Txn whole or not at all, and
// the batcher re-sends the claims a refused batch did not refuse, so any
// other failure is a refusedError (or ErrNotLeader) for this claim alone,
// and a transport error, or ctx ending first, is unknown.
func (c *consulSlots) txn(ctx context.Context, job string, slot time.Time, token, index uint64) (won, paused bool, err error) {
	op := "claim " + job + "@" + slot.Format(time.RFC3339)
	rec := kvlayout.Claim{Slot: slot, FencingToken: token, ID: c.e.opts.ID, ClaimedAt: time.Now().UTC()}
	value, err := json.Marshal(rec)
	if err != nil {
		return false, false, fmt.Errorf("%s: encode: %w", op, err)
	}
	call := &claimCall{job: job, value: value, index: index, done: make(chan struct{})}
	c.batch.submit(call)
	select {
	case <-call.done:
	case <-ctx.Done():
		c.forget(job) // the write may or may not happen
		return false, false, fmt.Errorf("%s: %w", op, ctx.Err())
	}
	switch {
	case call.err != nil && !NotApplied(call.err):
		c.forget(job) // the write may or may not have happened
		return false, false, fmt.Errorf("%s: %w", op, call.err)
	case call.err != nil:
		return false, false, call.err
	case !call.won:
		return false, false, nil
	}
	c.remember(job, claimState{rec: rec, index: call.index, paused: call.paused})
	c.markWon(job, slot)
	return true, call.paused, nil
}

// txnFailed reads why Consul refused a Txn whose op 0 is check-session:
// ErrNotLeader for op 0 (the session lost the lock), nil for a lost race
// at raceOp, and a refusedError otherwise (an ACL denial, a malformed op).
func (c *consulSlots) txnFailed(op string, resp *api.TxnResponse, raceOp int) error {
	if resp == nil || len(resp.Errors) == 0 {
		return &refusedError{op: op, what: "no reason given"}
	}
	for _, te := range resp.Errors {
		if te.OpIndex == 0 && !denied(te.What) {
			c.sess.lose(ErrNotLeader)
			return ErrNotLeader
		}
	}
	// Consul lists every op that failed: the race op among them (and no
	// denial) is a lost race, whatever follows it.
	for _, te := range resp.Errors {
		if denied(te.What) {
			c.e.opts.Metrics.ConsulError(metrics.OpTxnRefused)
			return &refusedError{op: op, what: te.What}
		}
	}
	for _, te := range resp.Errors {
		if te.OpIndex == raceOp {
			return nil
		}
	}
	c.e.opts.Metrics.ConsulError(metrics.OpTxnRefused)
	return &refusedError{op: op, what: resp.Errors[0].What}
}

func (c *consulSlots) take(ctx context.Context, job string, index uint64) (bool, error) {
	op := "take run request of " + job
	key := c.e.opts.Keys.Request(job)
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: c.e.opts.Keys.Lock(), Session: c.sess.id}},
		// delete-cas alone succeeds on a missing key: check-index
		// fails unless the request is there, at index.
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: key, Index: index}},
		{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: key, Index: index}},
	}
	rctx, cancel := context.WithTimeout(ctx, c.e.opts.requestTimeout())
	defer cancel()
	ok, resp, _, err := c.e.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		c.e.opts.Metrics.ConsulError(metrics.OpTakeRequest)
		return c.takeResolve(ctx, op, key, index, err)
	}
	if ok {
		return true, nil
	}
	err = c.txnFailed(op, resp, 1)
	if errors.Is(err, ErrNotLeader) {
		// Certainly not applied: say so to callers that only know
		// the NotApplied method (see NotApplied).
		err = notAppliedError{err}
	}
	return false, err
}

// notAppliedError marks an error as a write Consul certainly did not
// apply.
type notAppliedError struct{ error }

func (e notAppliedError) Unwrap() error { return e.error }

// NotApplied reports true.
func (notAppliedError) NotApplied() bool { return true }

// takeResolve learns whether a take whose answer was lost was applied:
// the request gone while this term's lease still runs means it was (see
// TakeRequest).
func (c *consulSlots) takeResolve(ctx context.Context, op, key string, index uint64, cause error) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, c.e.opts.requestTimeout())
	defer cancel()
	pair, _, err := c.e.client.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(rctx))
	switch {
	case err != nil:
		return false, fmt.Errorf("%s: outcome unknown: %w (re-read: %v)", op, cause, err)
	case pair != nil && pair.ModifyIndex == index:
		return false, nil // not applied: still pending, taken next round
	case c.sess.remaining() <= 0:
		return false, fmt.Errorf("%s: outcome unknown: %w (request gone, lease ended)", op, cause)
	}
	// Gone, or replaced by a newer request (requests are only created
	// where none is pending): the take was applied.
	return true, nil
}

// Standalone is the LEADERCRON_LOCK=none mode: always the leader, no
// Consul, claims kept in memory. It is for running an app on a laptop; it
// gives no fleet-wide guarantee.
type Standalone struct {
	token uint64
}

// NewStandalone returns a Standalone elector. Its fencing token is the
// start time in Unix milliseconds, so that it grows across restarts on one
// machine.
func NewStandalone(now time.Time) *Standalone {
	return &Standalone{token: uint64(now.UnixMilli())}
}

// Run calls lead once with a term that never ends and returns lead's error.
func (s *Standalone) Run(ctx context.Context, lead func(context.Context, *Term) error) error {
	if ctx.Err() != nil {
		return nil
	}
	return lead(ctx, &Term{token: s.token, store: &memorySlots{slots: map[string]time.Time{}}, clean: true})
}

type memorySlots struct {
	mu    sync.Mutex
	slots map[string]time.Time
}

func (m *memorySlots) last(_ context.Context, job string) (kvlayout.Claim, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return kvlayout.Claim{Slot: m.slots[job]}, nil
}

func (m *memorySlots) claim(_ context.Context, job string, slot time.Time, _ uint64) (won, paused bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.slots[job].Before(slot) {
		return false, false, nil
	}
	m.slots[job] = slot
	return true, false, nil
}

// take is never called in standalone mode: there are no run requests
// without Consul.
func (m *memorySlots) take(context.Context, string, uint64) (bool, error) { return false, nil }
