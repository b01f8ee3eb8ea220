package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/metrics"
)

// Options configures an Elector.
type Options struct {
	Keys        kvlayout.Layout // the fleet's keys: the lock, the claims, the run-now requests
	ID          string          // this sidecar's identity, stored in the key and in claims
	Service     string          // the fleet's name, stored in the key
	SessionName string          // shown in Consul's session list
	TTL         time.Duration   // session TTL
	LockDelay   time.Duration   // session lock-delay

	// WaitTime bounds one blocking query; keep it under any load
	// balancer's idle timeout. Default 30s.
	WaitTime time.Duration
	// RetryInterval is the pause after a failed request and between
	// acquire attempts while a lock-delay holds the free key. Default 500ms.
	RetryInterval time.Duration

	Metrics Metrics // optional
}

// Metrics receives counts of Consul errors by operation. It is optional.
type Metrics interface {
	ConsulError(op metrics.ConsulOp)
}

type nopMetrics struct{}

func (nopMetrics) ConsulError(metrics.ConsulOp) {}

// requestTimeout bounds one claim, take or read. At TTL/3 an unknown
// outcome is known to be unknown, and resolved by a re-read, well within
// the lease (TTL - TTL/5); the 500 ms floor
// covers a loopback round trip to a busy agent under a very short TTL.
func (o *Options) requestTimeout() time.Duration { return max(o.TTL/3, 500*time.Millisecond) }

// FinalRequestTimeout bounds each of the two last requests of a
// leadership, the release and the session destroy, so that they fit a
// shutdown budget: a healthy agent answers a write in milliseconds (a Raft
// commit on a LAN), and a second is many times that. Past it Consul is
// unreachable or very slow; the session then expires by TTL, with the
// lock-delay, which is safe but slower.
const FinalRequestTimeout = time.Second

// renewTimeout bounds one session create, renew or lock acquire. It must
// exceed the agent's latency for a slow agent not to end leadership, and a
// renew answered later than TTL/2 after its send extends the lease by less
// than 0.3 TTL, too little to wait for. See renewLoop for why, with renews
// every renewPeriod, an answer within this timeout keeps the lease whole.
func (o *Options) renewTimeout() time.Duration { return max(o.TTL/2, 500*time.Millisecond) }

// renewPeriod is how often the session is renewed, counted from the
// previous renew's send. TTL/4 rather than the usual TTL/3: with renews
// every TTL/3 the lease (TTL - TTL/5 from each send) would stay whole only
// while answers take under 0.47 TTL, less than the renew timeout; at TTL/4
// the bound is 0.55 TTL, above it. The cost is one renew a minute more at
// the default TTL of 15 s.
func (o *Options) renewPeriod() time.Duration { return o.TTL / 4 }

// leaseLength is TTL minus a margin of TTL/5 for clock-rate error and
// scheduling delay between taking sendTime and the server resetting its
// timer.
func (o *Options) leaseLength() time.Duration { return o.TTL - o.TTL/5 }

// Elector campaigns for the lock key and runs a lead function while it
// holds it.
type Elector struct {
	client *api.Client
	opts   Options
	log    hclog.Logger
}

// New returns an Elector. client is a ready Consul client; log receives the
// elector's events.
func New(client *api.Client, opts Options, log hclog.Logger) *Elector {
	if opts.WaitTime <= 0 {
		opts.WaitTime = 30 * time.Second
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 500 * time.Millisecond
	}
	if opts.Metrics == nil {
		opts.Metrics = nopMetrics{}
	}
	return &Elector{client: client, opts: opts, log: log}
}

// Run campaigns until ctx is done. Each time it acquires the lock it calls
// lead with a context that is cancelled when ctx is done or leadership is
// lost (context.Cause then wraps ErrLockLost), and waits for lead to return
// before doing anything else.
//
// When lead returns nil while still holding the lock (a shutdown, or a
// handover), the key is released, the session destroyed, and Run returns
// nil. When leadership was lost, Run campaigns again with a new session
// unless ctx is done. When lead returns an error, Run stops renewing
// without releasing (the lock then expires by TTL plus lock-delay) and
// returns that error. Run also returns an error wrapping
// ErrSessionRejected when Consul refuses the session settings.
func (e *Elector) Run(ctx context.Context, lead func(context.Context, *Term) error) error {
	for {
		s, got, err := e.acquire(ctx)
		if err != nil || s == nil {
			return err
		}
		lost, err := e.hold(ctx, s, got, lead)
		if err != nil || !lost {
			return err
		}
	}
}

// acquire campaigns until this sidecar's session holds the lock key, and
// returns that session, now the caller's, with the fencing token. It
// returns a nil session when ctx ends, and an error only when Consul
// refuses the session settings.
func (e *Elector) acquire(ctx context.Context) (*session, acquired, error) {
	c := &campaign{e: e, pause: e.newBackoff()}
	defer c.close()
	for ctx.Err() == nil {
		token, err := c.attempt(ctx)
		switch {
		case errors.Is(err, ErrSessionRejected):
			return nil, acquired{}, err
		case err == nil && token != 0:
			return c.handOff(), acquired{token: token, clean: c.clean}, nil
		case err != nil && !c.sleep(ctx):
			return nil, acquired{}, nil
		}
	}
	return nil, acquired{}, nil
}

// newBackoff paces retries after failed requests: from RetryInterval,
// doubling up to 5 s, with ±20 % jitter so that the standbys of a fleet do
// not retry a recovering Consul in lockstep. 5 s bounds how long a fleet
// stays leaderless after Consul comes back; the jitter is small enough
// that a lock-delay retry stays within RetryInterval×1.2.
func (e *Elector) newBackoff() *backoff.ExponentialBackOff {
	return &backoff.ExponentialBackOff{InitialInterval: e.opts.RetryInterval, RandomizationFactor: 0.2,
		Multiplier: 2, MaxInterval: 5 * time.Second}
}

// campaign is one acquire: the session it campaigns with (nil until one
// is created), the lock key's index to wait on (0 reads at once), and the
// pace of its retries.
type campaign struct {
	e     *Elector
	s     *session
	index uint64
	pause *backoff.ExponentialBackOff
	clean bool // the acquired key was released gracefully before
}

// attempt is one round: read the lock key (a blocking query while a peer
// holds it), and if it is free, acquire it with this campaign's session,
// creating one if needed. It returns the fencing token on success, 0 and a
// nil error to wait on the key again, and an error to retry after a pause.
func (c *campaign) attempt(ctx context.Context) (uint64, error) {
	e := c.e
	holder, next, err := e.watch(ctx, c.index)
	if err != nil {
		return 0, c.fail(ctx, metrics.OpWatch, "read lock key failed", err)
	}
	c.index = next
	if holder != "" && (c.s == nil || holder != c.s.id) {
		// Held by a peer: wait on the blocking query. A session kept
		// from an earlier attempt holds nothing; drop it so standbys
		// cost Consul no renewals.
		c.dropSession()
		c.pause.Reset()
		return 0, nil
	}
	if c.s != nil && c.s.lostCause() != nil {
		c.dropSession()
	}
	if c.s == nil {
		if c.s, err = newSession(ctx, e.client, &e.opts, e.log); err != nil {
			if errors.Is(err, ErrSessionRejected) {
				return 0, err
			}
			// The key was free: read it again at once after the
			// pause, not with a blocking query that would wait for
			// a change that may never come (a leaderless fleet for
			// WaitTime).
			return 0, c.fail(ctx, metrics.OpSessionCreate, "create session failed", err)
		}
	}
	got, err := e.acquireKey(ctx, c.s)
	switch {
	case err == nil:
		c.pause.Reset()
		c.clean = got.clean
		return got.token, nil
	case errors.Is(err, errLockDelay) || errors.Is(err, errHeld):
		e.log.Debug("lock not acquired", "key", e.opts.Keys.Lock(), "reason", err)
		if errors.Is(err, errLockDelay) {
			// No blocking query wakes us while a lock-delay holds
			// the free key: pace the attempts instead.
			c.pause.Reset()
		}
		c.index = 0
		return 0, err
	default:
		return 0, c.fail(ctx, metrics.OpAcquire, "acquire lock failed", err)
	}
}

// fail records a failed request, unless ctx ended (then the failure is
// the cancellation), and makes the next attempt read the key at once.
func (c *campaign) fail(ctx context.Context, op metrics.ConsulOp, msg string, err error) error {
	c.index = 0
	if ctx.Err() == nil {
		c.e.opts.Metrics.ConsulError(op)
		c.e.log.Warn(msg, "key", c.e.opts.Keys.Lock(), "error", err)
	}
	return err
}

// sleep waits out the next pause; false means ctx ended.
func (c *campaign) sleep(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(c.pause.NextBackOff()):
		return true
	}
}

// handOff gives the campaign's session, which holds the lock, to the
// caller: close no longer touches it.
func (c *campaign) handOff() *session {
	s := c.s
	c.s = nil
	return s
}

func (c *campaign) dropSession() {
	if c.s != nil {
		c.s.destroy()
		c.s = nil
	}
}

// close ends a campaign that did not hand its session off. An acquire cut
// short by ctx may have been applied: release what the session may hold
// before destroying it, or the key would get the lock-delay and keep the
// fleet leaderless that long.
func (c *campaign) close() {
	if c.s != nil {
		c.e.release(c.s, true)
		c.dropSession()
	}
}

// watch reads the lock key with a blocking query from index and returns
// the holding session ("" when free) and the index to wait on next.
func (e *Elector) watch(ctx context.Context, index uint64) (string, uint64, error) {
	q := &api.QueryOptions{WaitIndex: index, WaitTime: e.opts.WaitTime}
	rctx, cancel := context.WithTimeout(ctx, e.opts.WaitTime+e.opts.WaitTime/16+e.opts.requestTimeout())
	defer cancel()
	pair, meta, err := e.client.KV().Get(e.opts.Keys.Lock(), q.WithContext(rctx))
	if err != nil {
		return "", 0, fmt.Errorf("get %s: %w", e.opts.Keys.Lock(), err)
	}
	next := meta.LastIndex
	if next < index { // the index went backwards (snapshot restore): start over
		next = 0
	}
	if pair == nil {
		return "", next, nil
	}
	return pair.Session, next, nil
}

var (
	errLockDelay = errors.New("lock-delay in effect")
	errHeld      = errors.New("lock held by another session")
)

// acquireKey takes the lock key for s in one Txn that also reads the key
// back, so the fencing token is the index of the acquiring write itself.
// It also reads the key's value before the lock, in the same Txn: whether
// the previous holder released it gracefully (acquired.clean).
func (e *Elector) acquireKey(ctx context.Context, s *session) (acquired, error) {
	value, err := json.Marshal(kvlayout.LockValue{ID: e.opts.ID, Service: e.opts.Service, Since: time.Now().UTC()})
	if err != nil {
		return acquired{}, fmt.Errorf("acquire %s: encode value: %w", e.opts.Keys.Lock(), err)
	}
	ops := api.TxnOps{
		// get-tree, not get: no error when the key does not exist yet.
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: e.opts.Keys.Lock()}},
		{KV: &api.KVTxnOp{Verb: api.KVLock, Key: e.opts.Keys.Lock(), Value: value, Session: s.id}},
		{KV: &api.KVTxnOp{Verb: api.KVGet, Key: e.opts.Keys.Lock()}},
	}
	rctx, cancel := context.WithTimeout(ctx, e.opts.renewTimeout())
	defer cancel()
	ok, resp, _, err := e.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return acquired{}, fmt.Errorf("acquire %s: %w", e.opts.Keys.Lock(), err)
	}
	if !ok {
		return acquired{}, e.acquireRefused(resp)
	}
	// Results: the previous value (absent when the key did not exist),
	// the lock, the key as now held.
	n := len(resp.Results)
	if n < 2 || resp.Results[n-1].KV == nil || resp.Results[n-1].KV.Session != s.id {
		return acquired{}, fmt.Errorf("acquire %s: txn did not return the held key", e.opts.Keys.Lock())
	}
	a := acquired{token: resp.Results[n-1].KV.ModifyIndex, clean: true}
	if n >= 3 && resp.Results[0].KV != nil && resp.Results[0].KV.Key == e.opts.Keys.Lock() {
		var prev kvlayout.LockValue
		// A value that does not decode was not written by a graceful
		// release: unclean.
		a.clean = json.Unmarshal(resp.Results[0].KV.Value, &prev) == nil && !prev.ReleasedAt.IsZero()
	}
	return a, nil
}

// acquired is a lock acquired: the fencing token, and whether the previous
// holder released the key gracefully (or there was none).
type acquired struct {
	token uint64
	clean bool
}

// acquireRefused says why Consul refused an acquire Txn.
func (e *Elector) acquireRefused(resp *api.TxnResponse) error {
	for _, te := range resp.Errors {
		if containsAny(te.What, "lock delay", "lock-delay") {
			return errLockDelay
		}
		if denied(te.What) {
			// Not a race lost: the token cannot write the key.
			// Reported as a Consul error, at warn level.
			return fmt.Errorf("acquire %s: %s", e.opts.Keys.Lock(), te.What)
		}
	}
	if len(resp.Errors) > 0 {
		return fmt.Errorf("%w: %s", errHeld, resp.Errors[0].What)
	}
	return errHeld
}

// hold runs lead while s holds the key, then releases or abandons it. It
// reports whether leadership was lost (rather than given up).
func (e *Elector) hold(ctx context.Context, s *session, got acquired, lead func(context.Context, *Term) error) (bool, error) {
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.setOnLost(cancel)

	token := got.token
	term := newConsulTerm(e, s, token)
	term.clean = got.clean
	log := e.log.With("fencing_token", token)
	log.Info("leadership acquired", "key", e.opts.Keys.Lock(), "session", s.id, "lease_remaining", s.remaining().Round(time.Millisecond))

	monitored := make(chan struct{})
	go func() {
		defer close(monitored)
		e.monitor(lctx, s)
	}()

	leadErr := lead(lctx, term)
	cancel(nil)
	<-monitored

	if leadErr != nil {
		// Typically a drain that timed out: jobs may still run, so do
		// not hand the lock on. It expires by TTL plus lock-delay.
		s.halt()
		log.Error("leadership abandoned without release", "error", leadErr)
		return false, leadErr
	}
	if cause := s.lostCause(); cause != nil {
		s.destroy()
		log.Warn("leadership lost", "cause", cause)
		return true, nil
	}
	e.release(s, false)
	s.destroy()
	log.Info("leadership released", "key", e.opts.Keys.Lock())
	return false, nil
}

// monitor watches the lock key with consistent blocking queries while
// leading. It cancels with a cause only on proof of loss: the key shows
// another session, or no session. Errors only mean "unknown" and leave the
// lease in charge.
func (e *Elector) monitor(ctx context.Context, s *session) {
	var index uint64
	for ctx.Err() == nil {
		q := &api.QueryOptions{WaitIndex: index, WaitTime: e.opts.WaitTime, RequireConsistent: true}
		rctx, cancel := context.WithTimeout(ctx, e.opts.WaitTime+e.opts.WaitTime/16+e.opts.requestTimeout())
		pair, meta, err := e.client.KV().Get(e.opts.Keys.Lock(), q.WithContext(rctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.opts.Metrics.ConsulError(metrics.OpMonitor)
			e.log.Warn("monitor lock key failed", "key", e.opts.Keys.Lock(), "error", err)
			index = 0
			t := time.NewTimer(e.opts.RetryInterval)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			continue
		}
		switch {
		case pair == nil:
			s.lose(fmt.Errorf("%w: lock key deleted", ErrLockLost))
			return
		case pair.Session != s.id:
			s.lose(fmt.Errorf("%w: lock key held by session %q", ErrLockLost, pair.Session))
			return
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
	}
}

// release frees the key with ?release, which sets no lock-delay, so a
// standby's blocking query wakes at once. Consul refuses it unless s holds
// the key, so it is safe to call when s may hold nothing (maybe); its
// answer may be lost, which the destroy that always follows covers, with
// the lock-delay.
func (e *Elector) release(s *session, maybe bool) {
	ctx, cancel := context.WithTimeout(context.Background(), FinalRequestTimeout)
	defer cancel()
	// The value says the release was graceful (see kvlayout.LockValue);
	// Consul writes it only if s holds the key.
	value, _ := json.Marshal(kvlayout.LockValue{ID: e.opts.ID, Service: e.opts.Service, ReleasedAt: time.Now().UTC()})
	ok, _, err := e.client.KV().Release(&api.KVPair{Key: e.opts.Keys.Lock(), Session: s.id, Value: value}, (&api.WriteOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		e.opts.Metrics.ConsulError(metrics.OpRelease)
		e.log.Warn("release lock failed", "key", e.opts.Keys.Lock(), "error", err)
	case ok && maybe:
		e.log.Info("released a lock acquired as the campaign ended", "key", e.opts.Keys.Lock())
	case !ok && !maybe:
		e.log.Warn("release lock refused: key not held by this session", "key", e.opts.Keys.Lock())
	}
}

// denied reports whether a Txn error says the token may not do the op.
func denied(what string) bool { return containsAny(what, "ermission denied", "lacks permission") }

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
