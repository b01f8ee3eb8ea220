package leader

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
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

// LastSlot returns the latest slot claimed for job by any leader, or the
// zero time when none was.
func (t *Term) LastSlot(ctx context.Context, job string) (time.Time, error) {
	return t.store.last(ctx, job)
}

// Claim claims slot for job. won is true only if this call moved the job's
// last claimed slot from an earlier slot to slot, under this term's lock;
// paused then reports whether the job was paused (its pause flag read in
// the same transaction), in which case the slot is spent and must not be
// triggered. Claim returns won=false with a nil error when slot (or a later
// one) was already claimed, and ErrNotLeader when the session lost the
// lock. Any other error means the outcome is unknown; the slot must then
// not be triggered (a retry of Claim is safe).
func (t *Term) Claim(ctx context.Context, job string, slot time.Time) (won, paused bool, err error) {
	return t.store.claim(ctx, job, slot.UTC(), t.token)
}

// TakeRequest consumes job's run-now request, written at index, under this
// term's lock. It returns true for exactly one caller fleet-wide; false
// with a nil error means the request is gone (taken, or withdrawn) or was
// rewritten since index.
func (t *Term) TakeRequest(ctx context.Context, job string, index uint64) (bool, error) {
	return t.store.take(ctx, job, index)
}

// slotStore keeps each job's last claimed slot.
type slotStore interface {
	last(ctx context.Context, job string) (time.Time, error)
	claim(ctx context.Context, job string, slot time.Time, token uint64) (won, paused bool, err error)
	take(ctx context.Context, job string, index uint64) (bool, error)
}

// claimRecord is the JSON value of <prefix>/jobs/<job>/last.
type claimRecord struct {
	Slot         time.Time `json:"slot"`
	FencingToken uint64    `json:"fencing_token"`
	ID           string    `json:"id"`
	ClaimedAt    time.Time `json:"claimed_at"`
}

// consulSlots claims slots in Consul KV under the session's lock.
type consulSlots struct {
	e    *Elector
	sess *session

	mu       sync.Mutex
	known    map[string]claimState // per job: what we last read or wrote
	inflight chan struct{}         // bounds concurrent requests
}

type claimState struct {
	slot  time.Time
	index uint64 // ModifyIndex of the record, 0 if absent
}

// maxClaimRequests bounds the Consul requests a term's claims have in
// flight: the API client opens a connection per concurrent request, and
// Consul refuses a client more than http_max_conns_per_client (200 by
// default) with 429. Hundreds of jobs due in the same second queue here
// instead.
const maxClaimRequests = 64

func newConsulTerm(e *Elector, s *session, token uint64) *Term {
	return &Term{token: token, sess: s, store: &consulSlots{e: e, sess: s, known: map[string]claimState{},
		inflight: make(chan struct{}, maxClaimRequests)}}
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

func (c *consulSlots) key(job string) string { return c.e.opts.JobsPrefix + job + "/last" }

func (c *consulSlots) read(ctx context.Context, job string) (claimState, error) {
	if err := c.acquire(ctx); err != nil {
		return claimState{}, fmt.Errorf("read last slot of %s: %w", job, err)
	}
	defer c.release()
	rctx, cancel := context.WithTimeout(ctx, c.e.opts.requestTimeout())
	defer cancel()
	pair, _, err := c.e.client.KV().Get(c.key(job), (&api.QueryOptions{RequireConsistent: true}).WithContext(rctx))
	if err != nil {
		c.e.opts.Metrics.ConsulError("read_slot")
		return claimState{}, fmt.Errorf("read last slot of %s: %w", job, err)
	}
	if pair == nil {
		return claimState{}, nil
	}
	var rec claimRecord
	if err := json.Unmarshal(pair.Value, &rec); err != nil {
		return claimState{}, fmt.Errorf("read last slot of %s: decode %s: %w", job, c.key(job), err)
	}
	st := claimState{slot: rec.Slot, index: pair.ModifyIndex}
	c.mu.Lock()
	c.known[job] = st
	c.mu.Unlock()
	return st, nil
}

func (c *consulSlots) last(ctx context.Context, job string) (time.Time, error) {
	st, err := c.read(ctx, job)
	return st.slot, err
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
		if !st.slot.Before(slot) {
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

// txn runs [check-session on the lock key, cas on the job's record,
// get-tree of the job's folder]. won reports success, paused whether the
// folder holds a pause flag; a failed CAS returns won=false and a nil
// error.
func (c *consulSlots) txn(ctx context.Context, job string, slot time.Time, token, index uint64) (won, paused bool, err error) {
	value, err := json.Marshal(claimRecord{Slot: slot, FencingToken: token, ID: c.e.opts.ID, ClaimedAt: time.Now().UTC()})
	if err != nil {
		return false, false, fmt.Errorf("claim %s@%s: encode: %w", job, slot.Format(time.RFC3339), err)
	}
	folder := c.e.opts.JobsPrefix + job + "/"
	if err := c.acquire(ctx); err != nil {
		return false, false, fmt.Errorf("claim %s@%s: %w", job, slot.Format(time.RFC3339), err)
	}
	defer c.release()
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: c.e.opts.Key, Session: c.sess.id}},
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: c.key(job), Value: value, Index: index}},
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: folder}},
	}
	rctx, cancel := context.WithTimeout(ctx, c.e.opts.requestTimeout())
	defer cancel()
	ok, resp, _, err := c.e.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		c.mu.Lock()
		delete(c.known, job) // the write may or may not have happened
		c.mu.Unlock()
		c.e.opts.Metrics.ConsulError("claim")
		return false, false, fmt.Errorf("claim %s@%s: %w", job, slot.Format(time.RFC3339), err)
	}
	if ok {
		st := claimState{slot: slot}
		if len(resp.Results) > 1 && resp.Results[1].KV != nil {
			st.index = resp.Results[1].KV.ModifyIndex
		}
		for _, r := range resp.Results[min(2, len(resp.Results)):] {
			if r.KV != nil && r.KV.Key == folder+"paused" {
				paused = true
			}
		}
		c.mu.Lock()
		if st.index != 0 {
			c.known[job] = st
		} else {
			delete(c.known, job)
		}
		c.mu.Unlock()
		return true, paused, nil
	}
	for _, te := range resp.Errors {
		if te.OpIndex == 0 {
			c.sess.lose(ErrNotLeader)
			return false, false, ErrNotLeader
		}
	}
	return false, false, nil
}

func (c *consulSlots) take(ctx context.Context, job string, index uint64) (bool, error) {
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: c.e.opts.Key, Session: c.sess.id}},
		// delete-cas alone succeeds on a missing key: check-index
		// fails unless the request is there, at index.
		{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: c.e.opts.RequestsPrefix + job, Index: index}},
		{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: c.e.opts.RequestsPrefix + job, Index: index}},
	}
	rctx, cancel := context.WithTimeout(ctx, c.e.opts.requestTimeout())
	defer cancel()
	ok, resp, _, err := c.e.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		c.e.opts.Metrics.ConsulError("take_request")
		return false, fmt.Errorf("take run request of %s: %w", job, err)
	}
	if ok {
		return true, nil
	}
	for _, te := range resp.Errors {
		if te.OpIndex == 0 {
			c.sess.lose(ErrNotLeader)
			return false, ErrNotLeader
		}
	}
	return false, nil
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
	return lead(ctx, &Term{token: s.token, store: &memorySlots{slots: map[string]time.Time{}}})
}

type memorySlots struct {
	mu    sync.Mutex
	slots map[string]time.Time
}

func (m *memorySlots) last(_ context.Context, job string) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.slots[job], nil
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
