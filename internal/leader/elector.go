package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

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
// unless ctx is done. When lead returns an error, Run stops renewing without releasing (the lock then expires by TTL
// plus lock-delay) and returns that error. Run also returns an error
// wrapping ErrSessionRejected when Consul refuses the session settings.
func (e *Elector) Run(ctx context.Context, lead func(context.Context, *Term) error) error {
	var (
		s       *session
		index   uint64
		backoff = e.opts.RetryInterval
	)
	defer func() {
		if s != nil {
			// An acquire cut short by ctx may have been applied:
			// release what the session may hold before destroying
			// it, or the key would get the lock-delay and keep the
			// fleet leaderless that long.
			e.release(s, true)
			s.destroy()
		}
	}()
	pause := func() bool {
		t := time.NewTimer(backoff)
		defer t.Stop()
		backoff = min(backoff*2, 5*time.Second)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for ctx.Err() == nil {
		holder, next, err := e.watch(ctx, index)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			e.opts.Metrics.ConsulError(metrics.OpWatch)
			e.log.Warn("read lock key failed", "key", e.opts.Keys.Lock(), "error", err)
			index = 0
			if !pause() {
				return nil
			}
			continue
		}
		index = next
		if holder != "" && (s == nil || holder != s.id) {
			// Held by a peer: wait on the blocking query. A session
			// kept from an earlier attempt holds nothing; drop it so
			// standbys cost Consul no renewals.
			if s != nil {
				s.destroy()
				s = nil
			}
			backoff = e.opts.RetryInterval
			continue
		}
		if s != nil && s.lostCause() != nil {
			s.destroy()
			s = nil
		}
		if s == nil {
			s, err = newSession(ctx, e.client, &e.opts, e.log)
			if errors.Is(err, ErrSessionRejected) {
				return err
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				e.opts.Metrics.ConsulError(metrics.OpSessionCreate)
				e.log.Warn("create session failed", "error", err)
				// The key was free: read it again at once after the
				// pause, not with a blocking query that would wait
				// for a change that may never come (a leaderless
				// fleet for WaitTime).
				index = 0
				if !pause() {
					return nil
				}
				continue
			}
		}
		token, err := e.acquire(ctx, s)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, errLockDelay) && !errors.Is(err, errHeld) {
				e.opts.Metrics.ConsulError(metrics.OpAcquire)
				e.log.Warn("acquire lock failed", "key", e.opts.Keys.Lock(), "error", err)
			} else {
				e.log.Debug("lock not acquired", "key", e.opts.Keys.Lock(), "reason", err)
			}
			// Ask again at once on the next round; while a
			// lock-delay holds the free key no blocking query would
			// wake us, so pace the attempts instead.
			index = 0
			if errors.Is(err, errLockDelay) {
				backoff = e.opts.RetryInterval
			}
			if !pause() {
				return nil
			}
			continue
		}
		backoff = e.opts.RetryInterval
		held := s
		s = nil // from here hold owns the session
		lost, err := e.hold(ctx, held, token, lead)
		if err != nil || !lost {
			return err
		}
		index = 0
	}
	return nil
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

// acquire takes the lock key for s in one Txn that also reads the key back,
// so the fencing token is the index of the acquiring write itself.
func (e *Elector) acquire(ctx context.Context, s *session) (uint64, error) {
	value, err := json.Marshal(kvlayout.LockValue{ID: e.opts.ID, Service: e.opts.Service, Since: time.Now().UTC()})
	if err != nil {
		return 0, fmt.Errorf("acquire %s: encode value: %w", e.opts.Keys.Lock(), err)
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVLock, Key: e.opts.Keys.Lock(), Value: value, Session: s.id}},
		{KV: &api.KVTxnOp{Verb: api.KVGet, Key: e.opts.Keys.Lock()}},
	}
	rctx, cancel := context.WithTimeout(ctx, e.opts.renewTimeout())
	defer cancel()
	ok, resp, _, err := e.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		return 0, fmt.Errorf("acquire %s: %w", e.opts.Keys.Lock(), err)
	}
	if !ok {
		for _, te := range resp.Errors {
			if containsAny(te.What, "lock delay", "lock-delay") {
				return 0, errLockDelay
			}
			if denied(te.What) {
				// Not a race lost: the token cannot write the key.
				// Reported as a Consul error, at warn level.
				return 0, fmt.Errorf("acquire %s: %s", e.opts.Keys.Lock(), te.What)
			}
		}
		if len(resp.Errors) > 0 {
			return 0, fmt.Errorf("%w: %s", errHeld, resp.Errors[0].What)
		}
		return 0, errHeld
	}
	if len(resp.Results) < 2 || resp.Results[1].KV == nil || resp.Results[1].KV.Session != s.id {
		return 0, fmt.Errorf("acquire %s: txn did not return the held key", e.opts.Keys.Lock())
	}
	return resp.Results[1].KV.ModifyIndex, nil
}

// hold runs lead while s holds the key, then releases or abandons it. It
// reports whether leadership was lost (rather than given up).
func (e *Elector) hold(ctx context.Context, s *session, token uint64, lead func(context.Context, *Term) error) (bool, error) {
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.setOnLost(cancel)

	term := newConsulTerm(e, s, token)
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
	ok, _, err := e.client.KV().Release(&api.KVPair{Key: e.opts.Keys.Lock(), Session: s.id}, (&api.WriteOptions{}).WithContext(ctx))
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
